//! The golden record of one image for `qconform golden update|verify
//! PATH...`: the check verdict and counts, the findings (rule, severity,
//! offset), the info as flat field paths, the allocation map, a digest of
//! the guest bytes, and which tool and spec versions made it. Everything in
//! it follows from the image's content: no path, time or host name, so a
//! copy of the image elsewhere gives the same record.

use crate::read::ReadOptions;
use qconform_core::disk::Backing;
use qconform_core::{Limits, Report};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One image's golden record (a JSON file under the golden folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    /// The key it is filed by (its path relative to the folder given).
    pub image: String,
    pub produced_by: ProducedBy,
    pub format: String,
    /// `check`'s verdict: clean, leaks, corrupt, not checked.
    pub verdict: String,
    /// `check`'s exit code.
    pub exit_code: i32,
    /// qemu-img check's counters that the format reports, by their JSON names.
    pub counts: BTreeMap<String, u64>,
    pub findings: Vec<RecordedFinding>,
    /// `info --output json` flattened to field paths (`header.l1_size`), or `error`.
    pub info: BTreeMap<String, Value>,
    /// `map --output json`'s entries (holes ignored, corrupt images mapped best effort).
    pub map: Vec<Value>,
    /// Why the map could not be made, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_error: Option<String>,
    /// The guest bytes; None when made with `--no-content`.
    #[serde(default)]
    pub content: Option<Content>,
}

/// The versions a record was made with (informational: not compared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducedBy {
    pub tool: String,
    /// The spec file of the image's format and the upstream commit it was copied at.
    pub spec: BTreeMap<String, String>,
}

/// One finding, by what identifies it (its wording may improve between versions).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordedFinding {
    pub rule: String,
    pub severity: String,
    pub offset: Option<u64>,
}

/// What `cat` reads from the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// sha256 of the guest bytes, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How many guest bytes (the virtual size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Why `cat` refuses the image (a corruption, a refused name, encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How records are made.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hash the guest bytes (`--no-content` turns it off).
    pub content: bool,
    /// The backing policy `cat` reads under.
    pub backing: Backing,
    /// The admission policy the check is judged under (`--policy`): with
    /// `upload`, a record holds the upload refusals too, so a vendor image
    /// that starts carrying a backing file shows as changed.
    pub policy: qconform_core::upload::Policy,
}

/// The spec files and the upstream commits they were copied at
/// (specs/upstream/README.md: "- docs/interop/FILE — commit HASH — ...").
fn spec_commits() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("../../../specs/upstream/README.md")
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("- docs/interop/")?;
            let (file, rest) = rest.split_once(" — ")?;
            let commit = rest
                .split(" commit ")
                .nth(1)
                .or_else(|| rest.strip_prefix("commit "))?;
            Some((file, commit.split_whitespace().next()?))
        })
}

/// The spec a format's rules cite.
fn spec_of(format: &str) -> BTreeMap<String, String> {
    let prefix = format!("{format}.");
    let spec = qconform_core::rules::all()
        .find(|r| r.id.starts_with(&prefix))
        .map(|r| r.spec);
    spec_commits()
        .filter(|(file, _)| Some(*file) == spec)
        .map(|(f, c)| (f.to_owned(), c.to_owned()))
        .collect()
}

/// `check`'s verdict for its exit code.
pub fn verdict(code: i32) -> &'static str {
    match code {
        0 => "clean",
        1 => "not checked",
        2 => "corrupt",
        3 => "leaks",
        _ => "?",
    }
}

/// qemu-img check's counters that `report` holds, by their JSON names
/// (and the findings left out, per rule).
pub fn counts(report: &Report) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let stats = report.stats.unwrap_or_default();
    for (k, v) in [
        ("check-errors", Some(report.check_errors)),
        ("corruptions", Some(report.corruptions)),
        ("leaks", Some(report.leaks)),
        ("violations", Some(report.violations)),
        ("image-end-offset", stats.image_end_offset),
        ("total-clusters", stats.total_clusters),
        ("allocated-clusters", stats.allocated_clusters),
        ("fragmented-clusters", stats.fragmented_clusters),
        ("compressed-clusters", stats.compressed_clusters),
    ] {
        if let Some(v) = v {
            counts.insert(k.to_owned(), v);
        }
    }
    for (rule, n) in &report.findings_omitted() {
        counts.insert(format!("findings-omitted [{rule}]"), *n);
    }
    counts
}

/// The findings of `report` by what identifies them.
pub fn findings(report: &Report) -> Vec<RecordedFinding> {
    report
        .findings
        .iter()
        .map(|f| RecordedFinding {
            rule: f.rule.id.to_owned(),
            severity: serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            offset: f.offset(),
        })
        .collect()
}

/// Makes the record of the image at `path`, filed as `key`, and returns the
/// check report too (for SARIF).
pub fn make(key: &str, path: &Path, o: &Options) -> (Record, Report) {
    let limits = Limits::default();
    let (report, code) = crate::upload_policy::check(path, None, &limits, &o.policy, false);
    let counts = counts(&report);
    let findings = findings(&report);
    let mut info = BTreeMap::new();
    match crate::check::info_file(path, &limits) {
        Ok(i) => flatten("", &serde_json::to_value(&i).unwrap_or_default(), &mut info),
        Err(e) => {
            info.insert("error".to_owned(), Value::from(e.rule_id()));
        }
    }
    let (map, map_error) = match crate::read::map_of(path, &ReadOptions::golden(path)) {
        Ok(m) => (
            m.iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(reason(&e).to_owned())),
    };
    let content =
        o.content.then(
            || match crate::read::digest(path, &ReadOptions::new(o.backing)) {
                Ok((sha256, bytes)) => Content {
                    sha256: Some(sha256),
                    bytes: Some(bytes),
                    error: None,
                },
                Err(e) => Content {
                    sha256: None,
                    bytes: None,
                    error: Some(reason(&e).to_owned()),
                },
            },
        );
    let record = Record {
        image: key.to_owned(),
        produced_by: ProducedBy {
            tool: format!("qconform {}", env!("CARGO_PKG_VERSION")),
            spec: spec_of(&report.format),
        },
        format: report.format.clone(),
        verdict: verdict(code).to_owned(),
        exit_code: code,
        counts,
        findings,
        info,
        map,
        map_error,
        content,
    };
    (record, report)
}

/// An error message without the "PATH: " it starts with (the record must
/// not depend on where the image is).
fn reason(e: &str) -> &str {
    e.split_once(": ").map_or(e, |(_, r)| r)
}

/// Flattens JSON into `path -> scalar` (objects `a.b`, arrays `a[0]`);
/// empty objects and arrays are kept as values, so their presence shows.
pub fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

/// Reads a record; the error says why it cannot be used.
pub fn load(path: &Path) -> Result<Record, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a golden record: {e}", path.display()))
}

/// Writes a record (pretty JSON, one trailing newline), creating its folder.
pub fn save(path: &Path, r: &Record) -> Result<(), String> {
    let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}
