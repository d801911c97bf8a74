//! What changed between an image's golden record and its record now, one
//! [`Change`] per field, shown as a line ("allocated-clusters: 16 → 32",
//! "content: sha256 … → …", "finding added: [rule] at offset …") and
//! serialized as typed JSON for `golden verify --output json`. The
//! versions that made the records are not compared (a new qconform
//! release is not a change of the image).

use super::record::{Record, RecordedFinding};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One difference between a golden record and the record now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Change {
    /// A recorded value (a count, an info field path): `null` where absent.
    Field {
        field: String,
        golden: Option<Value>,
        now: Option<Value>,
    },
    /// A value shown as text (format, content digest, map size, map error).
    Text {
        field: String,
        golden: String,
        now: String,
    },
    /// The check's verdict and exit code.
    Verdict {
        golden: String,
        now: String,
        golden_exit: i32,
        now_exit: i32,
    },
    /// A finding now that the golden record does not hold.
    FindingAdded(RecordedFinding),
    /// A finding of the golden record that is gone.
    FindingRemoved(RecordedFinding),
    /// The first map entry that differs.
    MapEntry {
        index: usize,
        guest_offset: u64,
        golden: Option<Value>,
        now: Option<Value>,
    },
    /// More differences of one part than are shown.
    More { part: String, count: usize },
    /// The golden record cannot be read.
    Unreadable { error: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |x: &RecordedFinding| {
            x.offset
                .map_or(String::new(), |o| format!(" at offset {o:#x}"))
        };
        match self {
            Change::Field { field, golden, now } => {
                write!(
                    f,
                    "{field}: {} → {}",
                    show(golden.as_ref()),
                    show(now.as_ref())
                )
            }
            Change::Text { field, golden, now } => write!(f, "{field}: {golden} → {now}"),
            Change::Verdict {
                golden,
                now,
                golden_exit,
                now_exit,
            } => write!(
                f,
                "verdict: {golden} → {now} (exit {golden_exit} → {now_exit})"
            ),
            Change::FindingAdded(x) => {
                write!(f, "finding added: [{}]{} ({})", x.rule, at(x), x.severity)
            }
            Change::FindingRemoved(x) => {
                write!(f, "finding removed: [{}]{} ({})", x.rule, at(x), x.severity)
            }
            Change::MapEntry {
                index,
                guest_offset,
                golden,
                now,
            } => write!(
                f,
                "map entry {index} (guest offset {guest_offset:#x}): {} → {}",
                show(golden.as_ref()),
                show(now.as_ref())
            ),
            Change::More { part, count } => write!(f, "… and {count} more {part} differences"),
            Change::Unreadable { error } => write!(f, "{error}"),
        }
    }
}

fn text(field: &str, golden: String, now: String) -> Change {
    Change::Text {
        field: field.to_owned(),
        golden,
        now,
    }
}

/// Lines shown per part (info, map) before the rest is summed up.
const MAX_LINES_PER_PART: usize = 20;

/// The differences, in a stable order; empty when the records match.
/// `content`: compare the digests (both records must hold one).
pub fn diff(golden: &Record, now: &Record) -> Vec<Change> {
    let mut out = Vec::new();
    if golden.format != now.format {
        out.push(text("format", golden.format.clone(), now.format.clone()));
    }
    if golden.exit_code != now.exit_code || golden.verdict != now.verdict {
        out.push(Change::Verdict {
            golden: golden.verdict.clone(),
            now: now.verdict.clone(),
            golden_exit: golden.exit_code,
            now_exit: now.exit_code,
        });
    }
    fields("", &golden.counts, &now.counts, usize::MAX, &mut out);
    findings(&golden.findings, &now.findings, &mut out);
    fields(
        "info ",
        &golden.info,
        &now.info,
        MAX_LINES_PER_PART,
        &mut out,
    );
    map(golden, now, &mut out);
    if let (Some(g), Some(n)) = (&golden.content, &now.content) {
        if g != n {
            let show = |c: &super::record::Content| match (&c.sha256, &c.error) {
                (Some(h), _) => format!("sha256 {h}"),
                (None, Some(e)) => format!("unreadable ({e})"),
                (None, None) => "none".to_owned(),
            };
            out.push(text("content", show(g), show(n)));
            if g.bytes != n.bytes {
                out.push(text("content bytes", opt(g.bytes), opt(n.bytes)));
            }
        }
    }
    out
}

/// What differs between two check reports of an image, typed: the verdict,
/// the counters, the findings (the golden report read back through
/// `Report`'s Deserialize).
pub fn reports(golden: &qconform_core::Report, now: &qconform_core::Report) -> Vec<String> {
    use super::record::{counts, findings, verdict};
    let mut out = Vec::new();
    if golden.format != now.format {
        out.push(text("format", golden.format.clone(), now.format.clone()));
    }
    let (g, n) = (golden.exit_code(false), now.exit_code(false));
    if g != n {
        out.push(Change::Verdict {
            golden: verdict(g).to_string(),
            now: verdict(n).to_string(),
            golden_exit: g,
            now_exit: n,
        });
    }
    fields("", &counts(golden), &counts(now), usize::MAX, &mut out);
    self::findings(&findings(golden), &findings(now), &mut out);
    out.iter().map(Change::to_string).collect()
}

fn opt(v: Option<u64>) -> String {
    v.map_or("(none)".to_owned(), |v| v.to_string())
}

fn show(v: Option<&Value>) -> String {
    v.map_or("(none)".to_owned(), Value::to_string)
}

/// Per key of two maps: changed, added and removed values.
fn fields<V: PartialEq + serde::Serialize>(
    label: &str,
    golden: &BTreeMap<String, V>,
    now: &BTreeMap<String, V>,
    max: usize,
    out: &mut Vec<Change>,
) {
    let mut lines = Vec::new();
    let keys: std::collections::BTreeSet<&String> = golden.keys().chain(now.keys()).collect();
    for k in keys {
        let (g, n) = (golden.get(k), now.get(k));
        if g != n {
            let v = |x: Option<&V>| x.and_then(|x| serde_json::to_value(x).ok());
            lines.push(Change::Field {
                field: format!("{label}{k}"),
                golden: v(g),
                now: v(n),
            });
        }
    }
    push_capped(label.trim(), lines, max, out);
}

fn push_capped(part: &str, lines: Vec<Change>, max: usize, out: &mut Vec<Change>) {
    let n = lines.len();
    out.extend(lines.into_iter().take(max));
    if n > max {
        out.push(Change::More {
            part: part.to_owned(),
            count: n - max,
        });
    }
}

/// Findings added and removed, as multisets of (rule, severity, offset).
fn findings(golden: &[RecordedFinding], now: &[RecordedFinding], out: &mut Vec<Change>) {
    let count = |v: &[RecordedFinding]| {
        let mut m: BTreeMap<RecordedFinding, usize> = BTreeMap::new();
        for f in v {
            *m.entry(f.clone()).or_default() += 1;
        }
        m
    };
    let (g, n) = (count(golden), count(now));
    for (f, &k) in &g {
        for _ in n.get(f).copied().unwrap_or(0)..k {
            out.push(Change::FindingRemoved(f.clone()));
        }
    }
    for (f, &k) in &n {
        for _ in g.get(f).copied().unwrap_or(0)..k {
            out.push(Change::FindingAdded(f.clone()));
        }
    }
}

/// The map: how many entries, and the first that differs.
fn map(golden: &Record, now: &Record, out: &mut Vec<Change>) {
    if golden.map_error != now.map_error {
        let e = |x: &Option<String>| x.clone().unwrap_or_else(|| "(none)".into());
        out.push(text("map error", e(&golden.map_error), e(&now.map_error)));
    }
    if golden.map == now.map {
        return;
    }
    if golden.map.len() != now.map.len() {
        out.push(text(
            "map",
            format!("{} entries", golden.map.len()),
            now.map.len().to_string(),
        ));
    }
    if let Some(i) =
        (0..golden.map.len().max(now.map.len())).find(|&i| golden.map.get(i) != now.map.get(i))
    {
        let (g, n) = (golden.map.get(i), now.map.get(i));
        let start = g.or(n).and_then(|e| e["start"].as_u64()).unwrap_or(0);
        out.push(Change::MapEntry {
            index: i,
            guest_offset: start,
            golden: g.cloned(),
            now: n.cloned(),
        });
    }
}
