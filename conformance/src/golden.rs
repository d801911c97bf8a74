//! Golden files: the expected `check --output json` report of every corpus
//! image, kept under golden/check/ as insta snapshots so `cargo test` and
//! `qconform conform` read the same files. `cargo insta`/`INSTA_UPDATE=always
//! cargo test` and `qconform golden update` both rewrite them.

use qconform_core::Limits;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const IMAGES_DIR: &str = "corpus/images";
pub const GOLDEN_DIR: &str = "golden/check";

/// The corpus images under `root`, sorted, as (case name, path).
pub fn corpus_images(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join(IMAGES_DIR)) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "qcow2") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    out.push((stem.to_owned(), p));
                }
            }
        }
    }
    out.sort();
    out
}

/// The report of one corpus case, as the golden file holds it: pretty JSON
/// whose filename is relative to the repository root.
pub fn report_json(root: &Path, name: &str, path: &Path) -> String {
    let mut report = crate::check::check_file(path, None, &Limits::default());
    let rel = path.strip_prefix(root).unwrap_or(path);
    report.filename = rel.display().to_string();
    let _ = name;
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

pub fn snap_path(root: &Path, name: &str) -> PathBuf {
    root.join(GOLDEN_DIR).join(format!("{name}.snap"))
}

/// The body of an insta snapshot file (after its `---` metadata block).
pub fn read_snap(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(rest[end + 5..].trim_end().to_owned())
}

fn write_snap(path: &Path, body: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        path,
        format!("---\nsource: conformance/tests/golden.rs\n---\n{body}\n"),
    )
}

/// `qconform golden update`: rewrites every golden file.
pub fn update(root: &Path) -> i32 {
    let images = corpus_images(root);
    if images.is_empty() {
        eprintln!(
            "qconform: no images under {}",
            root.join(IMAGES_DIR).display()
        );
        return 1;
    }
    for (name, path) in &images {
        if let Err(e) = write_snap(&snap_path(root, name), &report_json(root, name, path)) {
            eprintln!("qconform: {name}: {e}");
            return 1;
        }
    }
    println!(
        "updated {} golden files under {}",
        images.len(),
        root.join(GOLDEN_DIR).display()
    );
    0
}

/// For each rule id, the corpus cases whose golden report names it.
pub fn triggers(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(root.join(GOLDEN_DIR)) else {
        return map;
    };
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    for p in files {
        let Some(name) = p.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(body) = read_snap(&p) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        for f in v["findings"].as_array().into_iter().flatten() {
            if let Some(id) = f["rule"].as_str() {
                let cases = map.entry(id.to_owned()).or_default();
                if !cases.contains(&name) {
                    cases.push(name.clone());
                }
            }
        }
    }
    map
}
