//! `qconform golden update|verify PATH...`: golden records for any set of
//! images. `update` writes one record per image under the golden folder
//! (`<golden>/<key>.json`) and removes the records of images that are gone;
//! `verify` compares and reports every image as match, changed (with a
//! per-field diff), new (no record) or stale (a record without an image).
//! Images are judged in parallel on every core; results come in key order.

use super::record::{self, Options, Record};
use super::walk::{self, Found};
use crate::ci_report::{self, Case, Outcome, Targets};
use crate::progress::{self, Unit};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Exit code of `golden verify` and `conform` when anything differs from
/// the golden records (1 stays "could not run", 2 and 3 are check's).
pub const DIFFERS: i32 = 4;

/// How `golden update|verify PATH...` runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The folder of golden records.
    pub golden: PathBuf,
    pub record: Options,
    pub quiet: bool,
    pub reports: Targets,
    /// `verify`: the verdicts as text or as JSON.
    pub output: crate::Output,
}

/// How an image compares with its golden record.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Match,
    Changed(Vec<super::diff::Change>),
    New,
    Stale,
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Status::Match => "match",
            Status::Changed(_) => "changed",
            Status::New => "new",
            Status::Stale => "stale",
        }
    }
}

/// One image's line of `verify`.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub key: String,
    pub status: Status,
}

fn record_path(golden: &Path, key: &str) -> PathBuf {
    golden.join(format!("{key}.json"))
}

/// The keys of every record under the golden folder, sorted.
fn recorded_keys(golden: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 64 {
                walk(&e.path(), &format!("{prefix}{name}/"), depth + 1, out);
            } else if ft.is_file() {
                if let Some(stem) = name.strip_suffix(".json") {
                    out.push(format!("{prefix}{stem}"));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(golden, "", 0, &mut out);
    out.sort();
    out
}

/// Finds the images, printing what was skipped; None when the walk failed.
fn find(paths: &[PathBuf], s: &Settings) -> Option<Vec<Found>> {
    let w = walk::images(paths, &s.golden);
    for m in &w.skipped {
        eprintln!("qconform: skipped {m}");
    }
    for e in &w.errors {
        eprintln!("qconform: {e}");
    }
    w.errors.is_empty().then_some(w.images)
}

/// Makes every image's record, in parallel, in key order.
fn records(images: &[Found], s: &Settings) -> Vec<(Record, qconform_core::Report)> {
    let bar = progress::bar(images.len() as u64, Unit::Items, s.quiet);
    bar.set_message("images");
    let out = images
        .par_iter()
        .map(|f| {
            let r = record::make(&f.key, &f.path, &s.record);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    out
}

/// `golden update PATH...`.
pub fn update(paths: &[PathBuf], s: &Settings) -> i32 {
    let Some(images) = find(paths, s) else {
        return 1;
    };
    let made = records(&images, s);
    for (r, _) in &made {
        if let Err(e) = record::save(&record_path(&s.golden, &r.image), r) {
            eprintln!("qconform: {e}");
            return 1;
        }
    }
    let mut removed = 0;
    for key in recorded_keys(&s.golden) {
        if !images.iter().any(|f| f.key == key) {
            let p = record_path(&s.golden, &key);
            if let Err(e) = std::fs::remove_file(&p) {
                eprintln!("qconform: {}: {e}", p.display());
                return 1;
            }
            removed += 1;
        }
    }
    crate::outln!(
        "updated {} golden records in {}{}",
        made.len(),
        s.golden.display(),
        if removed > 0 {
            format!(", removed {removed} stale")
        } else {
            String::new()
        }
    );
    0
}

/// Compares the images with their records: the verdicts (images in key
/// order, then stale records) and the check reports for SARIF.
pub fn compare(
    images: &[Found],
    s: &Settings,
) -> (Vec<Verdict>, Vec<(Found, qconform_core::Report)>) {
    let made = records(images, s);
    let mut verdicts = Vec::new();
    let mut reports = Vec::new();
    for (f, (now, report)) in images.iter().zip(made) {
        let path = record_path(&s.golden, &f.key);
        let status = if !path.exists() {
            Status::New
        } else {
            match record::load(&path) {
                Err(error) => Status::Changed(vec![super::diff::Change::Unreadable { error }]),
                Ok(g) => {
                    let d = super::diff::diff(&g, &now);
                    if d.is_empty() {
                        Status::Match
                    } else {
                        Status::Changed(d)
                    }
                }
            }
        };
        verdicts.push(Verdict {
            key: f.key.clone(),
            status,
        });
        reports.push((f.clone(), report));
    }
    let present: BTreeMap<&str, ()> = images.iter().map(|f| (f.key.as_str(), ())).collect();
    for key in recorded_keys(&s.golden) {
        if !present.contains_key(key.as_str()) {
            verdicts.push(Verdict {
                key,
                status: Status::Stale,
            });
        }
    }
    (verdicts, reports)
}

fn count(verdicts: &[Verdict], label: &str) -> usize {
    verdicts
        .iter()
        .filter(|v| v.status.label() == label)
        .count()
}

/// The verdicts as text: one line per image, its changes indented below.
fn print_human(verdicts: &[Verdict]) {
    for v in verdicts {
        let note = match v.status {
            Status::New => " (no golden record)",
            Status::Stale => " (golden record without image)",
            _ => "",
        };
        crate::outln!("{:<8} {}{note}", v.status.label(), v.key);
        if let Status::Changed(lines) = &v.status {
            for l in lines {
                crate::outln!("    {l}");
            }
        }
    }
    crate::outln!(
        "\n{} images: {} match, {} changed, {} new, {} stale",
        verdicts.len(),
        count(verdicts, "match"),
        count(verdicts, "changed"),
        count(verdicts, "new"),
        count(verdicts, "stale")
    );
}

/// The verdicts as JSON, in the order of the text (images by key, then
/// stale records): `{"images": [{"image", "status", "changes": [typed
/// changes]}], "summary": {...}, "exit-code"}`.
fn json(verdicts: &[Verdict], code: i32) -> serde_json::Value {
    let images: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|v| {
            let changes = match &v.status {
                Status::Changed(c) => serde_json::to_value(c).unwrap_or_default(),
                _ => serde_json::json!([]),
            };
            serde_json::json!({ "image": v.key, "status": v.status.label(), "changes": changes })
        })
        .collect();
    serde_json::json!({
        "images": images,
        "summary": {
            "images": verdicts.len(),
            "match": count(verdicts, "match"),
            "changed": count(verdicts, "changed"),
            "new": count(verdicts, "new"),
            "stale": count(verdicts, "stale"),
        },
        "exit-code": code,
    })
}

/// `golden verify PATH...`: exit 0 when every image matches, 4 when any
/// differs, 1 when it could not run.
pub fn verify(paths: &[PathBuf], s: &Settings) -> i32 {
    let Some(images) = find(paths, s) else {
        return 1;
    };
    let (verdicts, reports) = compare(&images, s);
    let code = if verdicts.iter().all(|v| v.status == Status::Match) {
        0
    } else {
        DIFFERS
    };
    match s.output {
        crate::Output::Human => print_human(&verdicts),
        crate::Output::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json(&verdicts, code)).unwrap_or_default()
        ),
    }
    if !s.reports.any() {
        return code;
    }
    let cases: Vec<Case> = verdicts
        .iter()
        .map(|v| Case {
            suite: "qconform golden verify".into(),
            name: v.key.clone(),
            outcome: match &v.status {
                Status::Match => Outcome::Pass,
                Status::Changed(lines) => Outcome::Fail {
                    message: "changed since its golden record".into(),
                    detail: lines
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                },
                Status::New => Outcome::Fail {
                    message: "no golden record".into(),
                    detail: String::new(),
                },
                Status::Stale => Outcome::Fail {
                    message: "golden record without image".into(),
                    detail: String::new(),
                },
            },
        })
        .collect();
    let results: Vec<_> = reports
        .iter()
        .flat_map(|(f, r)| ci_report::image_results(r, &f.path.display().to_string()))
        .collect();
    s.reports
        .write_or_fail("qconform golden verify", &cases, &results, code)
}
