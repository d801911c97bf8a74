//! What changed between an image's golden record and its record now, one
//! line per field: "allocated-clusters: 16 → 32", "content: sha256 … → …",
//! "finding added: [rule] at offset …". The versions that made the records
//! are not compared (a new qconform release is not a change of the image).

use super::record::{Record, RecordedFinding};
use serde_json::Value;
use std::collections::BTreeMap;

/// Lines shown per part (info, map) before the rest is summed up.
const MAX_LINES_PER_PART: usize = 20;

/// The differences, in a stable order; empty when the records match.
/// `content`: compare the digests (both records must hold one).
pub fn diff(golden: &Record, now: &Record) -> Vec<String> {
    let mut out = Vec::new();
    if golden.format != now.format {
        out.push(format!("format: {} → {}", golden.format, now.format));
    }
    if golden.exit_code != now.exit_code || golden.verdict != now.verdict {
        out.push(format!(
            "verdict: {} → {} (exit {} → {})",
            golden.verdict, now.verdict, golden.exit_code, now.exit_code
        ));
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
            out.push(format!("content: {} → {}", show(g), show(n)));
            if g.bytes != n.bytes {
                out.push(format!(
                    "content bytes: {} → {}",
                    opt(g.bytes),
                    opt(n.bytes)
                ));
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
        out.push(format!("format: {} → {}", golden.format, now.format));
    }
    let (g, n) = (golden.exit_code(false), now.exit_code(false));
    if g != n {
        out.push(format!(
            "verdict: {} → {} (exit {g} → {n})",
            verdict(g),
            verdict(n)
        ));
    }
    fields("", &counts(golden), &counts(now), usize::MAX, &mut out);
    self::findings(&findings(golden), &findings(now), &mut out);
    out
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
    out: &mut Vec<String>,
) {
    let mut lines = Vec::new();
    let keys: std::collections::BTreeSet<&String> = golden.keys().chain(now.keys()).collect();
    for k in keys {
        let (g, n) = (golden.get(k), now.get(k));
        if g != n {
            let v = |x: Option<&V>| show(x.and_then(|x| serde_json::to_value(x).ok()).as_ref());
            lines.push(format!("{label}{k}: {} → {}", v(g), v(n)));
        }
    }
    push_capped(label.trim(), lines, max, out);
}

fn push_capped(part: &str, lines: Vec<String>, max: usize, out: &mut Vec<String>) {
    let n = lines.len();
    out.extend(lines.into_iter().take(max));
    if n > max {
        out.push(format!("… and {} more {part} differences", n - max));
    }
}

/// Findings added and removed, as multisets of (rule, severity, offset).
fn findings(golden: &[RecordedFinding], now: &[RecordedFinding], out: &mut Vec<String>) {
    let count = |v: &[RecordedFinding]| {
        let mut m: BTreeMap<RecordedFinding, usize> = BTreeMap::new();
        for f in v {
            *m.entry(f.clone()).or_default() += 1;
        }
        m
    };
    let (g, n) = (count(golden), count(now));
    let at = |f: &RecordedFinding| {
        f.offset
            .map_or(String::new(), |o| format!(" at offset {o:#x}"))
    };
    for (f, &k) in &g {
        for _ in n.get(f).copied().unwrap_or(0)..k {
            out.push(format!(
                "finding removed: [{}]{} ({})",
                f.rule,
                at(f),
                f.severity
            ));
        }
    }
    for (f, &k) in &n {
        for _ in g.get(f).copied().unwrap_or(0)..k {
            out.push(format!(
                "finding added: [{}]{} ({})",
                f.rule,
                at(f),
                f.severity
            ));
        }
    }
}

/// The map: how many entries, and the first that differs.
fn map(golden: &Record, now: &Record, out: &mut Vec<String>) {
    if golden.map_error != now.map_error {
        let e = |x: &Option<String>| x.clone().unwrap_or_else(|| "(none)".into());
        out.push(format!(
            "map error: {} → {}",
            e(&golden.map_error),
            e(&now.map_error)
        ));
    }
    if golden.map == now.map {
        return;
    }
    if golden.map.len() != now.map.len() {
        out.push(format!(
            "map: {} entries → {}",
            golden.map.len(),
            now.map.len()
        ));
    }
    if let Some(i) =
        (0..golden.map.len().max(now.map.len())).find(|&i| golden.map.get(i) != now.map.get(i))
    {
        let (g, n) = (golden.map.get(i), now.map.get(i));
        let start = g.or(n).and_then(|e| e["start"].as_u64()).unwrap_or(0);
        out.push(format!(
            "map entry {i} (guest offset {start:#x}): {} → {}",
            show(g),
            show(n)
        ));
    }
}
