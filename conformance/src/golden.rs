//! Golden files: the expected report of every corpus case, kept as insta
//! snapshots so `cargo test` and `qconform conform` read the same files:
//! golden/check/<image>.snap (`check --output json`), golden/info/<image>.snap
//! (`info --output json`), golden/map/<image>.snap (`map --output json`) for
//! every image of a registered format (`qconform_core::formats::FORMATS`), and
//! golden/vhost-user/<transcript>.snap (`vhost-user check --output json`),
//! and for recorded real conversations golden/vhost-user-replay/<name>.snap
//! (`vhost-user replay --output json` against qconform's reference back-end).
//! `INSTA_UPDATE=always cargo test` and `qconform golden update` both
//! rewrite them.
//!
//! `qconform golden update|verify PATH...` keeps golden records for any set
//! of images instead: [`walk`] finds them, [`record`] makes one, [`diff`]
//! compares two, [`images`] runs the commands.

pub mod diff;
pub mod images;
pub mod record;
pub mod walk;

use qconform_core::vhost_user::session::Profile;
use qconform_core::vhost_user::transcript;
use qconform_core::{Limits, Report};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const IMAGES_DIR: &str = "corpus/images";
pub const TRANSCRIPTS_DIR: &str = "corpus/vhost-user";
pub const GOLDEN_DIR: &str = "golden/check";
pub const GOLDEN_VHOST_DIR: &str = "golden/vhost-user";
pub const GOLDEN_INFO_DIR: &str = "golden/info";
pub const GOLDEN_MAP_DIR: &str = "golden/map";
/// Real conversations recorded through `vhost-user record`.
pub const RECORDED_DIR: &str = "corpus/vhost-user/recorded";
/// Their replays against qconform's reference back-end.
pub const GOLDEN_REPLAY_DIR: &str = "golden/vhost-user-replay";

/// What a corpus case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Transcript,
}

/// One corpus case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
}

fn list(root: &Path, dir: &str, ext: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == ext) {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    out.push((stem.to_owned(), p));
                }
            }
        }
    }
    out.sort();
    out
}

/// The corpus images under `root`, sorted, as (case name, path): the files
/// named with the extension of a registered format.
pub fn corpus_images(root: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = qconform_core::formats::FORMATS
        .iter()
        .flat_map(|f| list(root, IMAGES_DIR, f.extension()))
        .collect();
    v.sort();
    v
}

/// Every corpus case: images, then transcripts.
pub fn corpus_cases(root: &Path) -> Vec<Case> {
    let images = corpus_images(root).into_iter().map(|(name, path)| Case {
        name,
        path,
        kind: Kind::Image,
    });
    let transcripts = list(root, TRANSCRIPTS_DIR, "jsonl")
        .into_iter()
        .chain(list(root, RECORDED_DIR, "jsonl"))
        .map(|(name, path)| Case {
            name,
            path,
            kind: Kind::Transcript,
        });
    images.chain(transcripts).collect()
}

/// The report of one image with its filename relative to the repository
/// root, as its golden file holds it.
pub fn image_report(root: &Path, path: &Path) -> Report {
    let mut report = crate::check::check_file(path, None, &Limits::default());
    let rel = path.strip_prefix(root).unwrap_or(path);
    report.filename = rel.display().to_string();
    report
}

/// The report of one image, as its golden file holds it: pretty JSON whose
/// filename is relative to the repository root.
pub fn report_json(root: &Path, _name: &str, path: &Path) -> String {
    serde_json::to_string_pretty(&image_report(root, path)).unwrap_or_default()
}

/// A transcript judged by the rule engine (what `vhost-user check` does).
pub struct TranscriptCheck {
    /// The transcript's path relative to the repository root.
    pub conversation: String,
    /// How many messages it holds.
    pub messages: u64,
    /// The rule engine's report, or why the transcript is unreadable.
    pub report: Result<Report, String>,
}

impl TranscriptCheck {
    /// Judges the transcript at `path`.
    pub fn of(root: &Path, path: &Path) -> TranscriptCheck {
        let conversation = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| transcript::parse(&t).map_err(|e| e.to_string()));
        let (messages, report) = match parsed {
            Err(e) => (0, Err(e)),
            Ok((_, entries)) => {
                let s = transcript::check(&conversation, &entries, Profile::default());
                (s.messages(), Ok(s.report().clone()))
            }
        };
        TranscriptCheck {
            conversation,
            messages,
            report,
        }
    }

    /// `vhost-user check`'s exit code: 0 conforming, 1 unreadable, 2 findings.
    pub fn exit_code(&self) -> i32 {
        match &self.report {
            Err(_) => 1,
            Ok(r) if r.violations > 0 => 2,
            Ok(_) => 0,
        }
    }

    /// What `vhost-user check --output json` prints (the golden body).
    pub fn json(&self) -> serde_json::Value {
        match &self.report {
            Err(e) => serde_json::json!({ "conversation": self.conversation, "unreadable": e }),
            Ok(r) => serde_json::json!({
                "conversation": self.conversation,
                "messages": self.messages,
                "violations": r.violations,
                "findings": r.findings,
                "findings-omitted": r.findings_omitted(),
            }),
        }
    }
}

/// The report of one transcript (what `vhost-user check --output json` prints).
pub fn transcript_json(root: &Path, path: &Path) -> String {
    serde_json::to_string_pretty(&TranscriptCheck::of(root, path).json()).unwrap_or_default()
}

/// Whether a case is a recorded real conversation (it has a replay golden file).
pub fn is_recording(root: &Path, c: &Case) -> bool {
    c.kind == Kind::Transcript && c.path.starts_with(root.join(RECORDED_DIR))
}

pub fn replay_snap_path(root: &Path, c: &Case) -> PathBuf {
    root.join(GOLDEN_REPLAY_DIR)
        .join(format!("{}.snap", c.name))
}

/// The replay of a recorded conversation against qconform's reference
/// back-end (`vhost-user replay --output json`, lenient as the matrix is).
pub fn replay_json(root: &Path, path: &Path) -> String {
    use crate::vhost::{replay, serve};
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let v = (|| -> Result<serde_json::Value, String> {
        let entries = replay::load(path)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let sock = dir.path().join("serve.sock");
        let server = serve::spawn_quiet(&sock, 2);
        // A generous reply deadline: the reference back-end answers in
        // microseconds, but a loaded CI machine (tests run in parallel on two
        // cores) can stall a thread for seconds, and a golden file must not
        // depend on the scheduler.
        let r = replay::replay(
            &rel,
            &entries,
            &sock,
            std::time::Duration::from_secs(20),
            Profile { lenient: true },
        );
        let _ = server.join();
        serde_json::to_value(r?).map_err(|e| e.to_string())
    })()
    .unwrap_or_else(|e| serde_json::json!({ "transcript": rel, "error": e }));
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// `qconform info --output json` of an image, or the error it gives.
pub fn info_json(path: &Path) -> String {
    let v = match crate::check::info_file(path, &Limits::default()) {
        Ok(info) => serde_json::to_value(&info).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e.rule_id() }),
    };
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// `qconform map --output json` of an image, or the error it gives.
pub fn map_json(path: &Path) -> String {
    // Holes ignored: a fresh checkout writes the corpus densely.
    let v = match crate::read::map_of(path, &crate::read::ReadOptions::golden(path)) {
        Ok(map) => serde_json::to_value(&map).unwrap_or_default(),
        // The message names the file by the path it was given; keep only the reason.
        Err(e) => serde_json::json!({ "error": e.split_once(": ").map_or(e.as_str(), |(_, r)| r) }),
    };
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// The golden body of any case.
pub fn case_json(root: &Path, c: &Case) -> String {
    match c.kind {
        Kind::Image => report_json(root, &c.name, &c.path),
        Kind::Transcript => transcript_json(root, &c.path),
    }
}

pub fn snap_path(root: &Path, name: &str) -> PathBuf {
    root.join(GOLDEN_DIR).join(format!("{name}.snap"))
}

pub fn case_snap_path(root: &Path, c: &Case) -> PathBuf {
    match c.kind {
        Kind::Image => snap_path(root, &c.name),
        Kind::Transcript => root.join(GOLDEN_VHOST_DIR).join(format!("{}.snap", c.name)),
    }
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
    let cases = corpus_cases(root);
    if cases.is_empty() {
        eprintln!("qconform: no corpus cases under {}", root.display());
        return 1;
    }
    for c in &cases {
        let mut files = vec![(case_snap_path(root, c), case_json(root, c))];
        if is_recording(root, c) {
            files.push((replay_snap_path(root, c), replay_json(root, &c.path)));
        }
        if c.kind == Kind::Image {
            files.push((
                root.join(GOLDEN_INFO_DIR).join(format!("{}.snap", c.name)),
                info_json(&c.path),
            ));
            files.push((
                root.join(GOLDEN_MAP_DIR).join(format!("{}.snap", c.name)),
                map_json(&c.path),
            ));
        }
        for (path, body) in files {
            if let Err(e) = write_snap(&path, &body) {
                eprintln!("qconform: {}: {e}", c.name);
                return 1;
            }
        }
    }
    crate::outln!("updated {} golden files", cases.len());
    0
}

/// For each rule id, the corpus cases whose golden report names it.
pub fn triggers(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for dir in [GOLDEN_DIR, GOLDEN_VHOST_DIR] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
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
    }
    map
}
