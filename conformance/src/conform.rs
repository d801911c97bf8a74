//! `qconform conform`: the main job. Checks every corpus image and
//! transcript, compares each report with its golden file (recorded
//! conversations: their replay too), prints a table, then the vhost-user
//! conformance matrix of the back-ends present; fails on any mismatch or a
//! matrix cell that cannot run.

use crate::golden::{case_json, case_snap_path, corpus_cases, read_snap, Kind};
use crate::Output;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Row {
    case: String,
    format: String,
    verdict: &'static str,
    exit_code: i64,
    findings: usize,
    golden: Golden,
}

/// How a case compares with its golden files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum Golden {
    #[serde(rename = "match")]
    Match,
    #[serde(rename = "MISMATCH")]
    Mismatch,
    #[serde(rename = "NO GOLDEN")]
    Missing,
}

impl Golden {
    fn label(self) -> &'static str {
        match self {
            Golden::Match => "match",
            Golden::Mismatch => "MISMATCH",
            Golden::Missing => "NO GOLDEN",
        }
    }
    /// The worse of two outcomes: anything but a match wins.
    fn and(self, other: Golden) -> Golden {
        if self == Golden::Match {
            other
        } else {
            self
        }
    }
}

fn verdict(code: i64) -> &'static str {
    match code {
        0 => "clean",
        1 => "not checked",
        2 => "corrupt",
        3 => "leaks",
        _ => "?",
    }
}

/// A recorded conversation's matrix: its cells and the back-end names.
type Matrix = (Vec<crate::vhost::matrix::Cell>, Vec<String>);

pub fn run(root: &Path, output: Output) -> i32 {
    let cases = corpus_cases(root);
    if cases.is_empty() {
        eprintln!("qconform conform: no corpus cases under {} (run from the repository root or pass --root)", root.display());
        return 1;
    }
    let rows: Vec<Row> = cases.iter().map(|c| judge(root, c)).collect();
    let mut failures = rows.iter().filter(|r| r.golden != Golden::Match).count();
    let (matrix, matrix_failures) = matrix(root);
    failures += matrix_failures;
    match output {
        Output::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cases": rows,
                "matrix": matrix.as_ref().map(|(c, _)| c),
            }))
            .unwrap_or_default()
        ),
        Output::Human => print_human(&rows, matrix.as_ref()),
    }
    if failures > 0 {
        1
    } else {
        0
    }
}

/// One corpus case: its report against its golden file, and for images
/// `info` and `map` too, for recorded conversations their replay.
fn judge(root: &Path, c: &crate::golden::Case) -> Row {
    let name = &c.name;
    let report: serde_json::Value = serde_json::from_str(&case_json(root, c)).unwrap_or_default();
    let (format, code) = match c.kind {
        Kind::Image => (
            report["format"].as_str().unwrap_or("?").to_owned(),
            exit_code(&report),
        ),
        Kind::Transcript => ("vhost-user".to_owned(), transcript_exit_code(&report)),
    };
    let mut golden = match read_snap(&case_snap_path(root, c)) {
        None => Golden::Missing,
        Some(body) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(g) if g == report => Golden::Match,
            _ => Golden::Mismatch,
        },
    };
    if c.kind == Kind::Image && golden == Golden::Match {
        // `info` and `map` of the image must match their golden files too.
        for (dir, body) in [
            (
                crate::golden::GOLDEN_INFO_DIR,
                crate::golden::info_json(&c.path),
            ),
            (
                crate::golden::GOLDEN_MAP_DIR,
                crate::golden::map_json(&c.path),
            ),
        ] {
            let snap = root.join(dir).join(format!("{name}.snap"));
            golden = golden.and(compare(&format!("{name} ({dir})"), &snap, &body));
        }
    }
    if golden == Golden::Match && crate::golden::is_recording(root, c) {
        let body = crate::golden::replay_json(root, &c.path);
        let snap = crate::golden::replay_snap_path(root, c);
        golden = golden.and(compare(&format!("{name} (replay)"), &snap, &body));
    }
    if golden != Golden::Match {
        if let Some(g) = read_snap(&case_snap_path(root, c))
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        {
            explain(name, &g, &report);
        }
    }
    Row {
        case: name.clone(),
        verdict: match c.kind {
            Kind::Image => verdict(code),
            Kind::Transcript => match code {
                0 => "conforming",
                1 => "unreadable",
                _ => "findings",
            },
        },
        format,
        exit_code: code,
        findings: report["findings"].as_array().map_or(0, |a| a.len()),
        golden,
    }
}

/// Compares `body` with the golden file `snap`, explaining a difference.
fn compare(what: &str, snap: &Path, body: &str) -> Golden {
    let now: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match read_snap(snap).and_then(|g| serde_json::from_str::<serde_json::Value>(&g).ok()) {
        None => Golden::Missing,
        Some(g) if g != now => {
            explain(what, &g, &now);
            Golden::Mismatch
        }
        _ => Golden::Match,
    }
}

fn transcript_exit_code(report: &serde_json::Value) -> i64 {
    if report.get("unreadable").is_some() {
        1
    } else if report["violations"].as_u64().unwrap_or(0) > 0 {
        2
    } else {
        0
    }
}

/// The conformance matrix: every recorded real conversation replayed
/// against every back-end this machine can start; and how many cells (or
/// the matrix itself) could not run.
fn matrix(root: &Path) -> (Option<Matrix>, usize) {
    let recorded = root.join(crate::golden::RECORDED_DIR);
    if crate::vhost::matrix::transcripts(&recorded).is_empty() {
        return (None, 0);
    }
    let scratch = tempfile::tempdir();
    // A generous reply deadline: real back-ends answer in microseconds, but
    // a loaded CI machine can stall one for seconds.
    let cells = scratch.map_err(|e| e.to_string()).and_then(|d| {
        let specs = crate::vhost::matrix::available_backends(d.path());
        crate::vhost::matrix::cells(&recorded, &specs, std::time::Duration::from_secs(20))
    });
    match cells {
        Ok((cells, names)) => {
            let errors = cells
                .iter()
                .filter(|c| c.verdict == crate::vhost::matrix::Verdict::Error)
                .count();
            (Some((cells, names)), errors)
        }
        Err(e) => {
            eprintln!("qconform conform: matrix: {e}");
            (None, 1)
        }
    }
}

fn print_human(rows: &[Row], matrix: Option<&Matrix>) {
    crate::outln!(
        "{:<36} {:<9} {:<12} {:>8}  golden",
        "case",
        "format",
        "verdict",
        "findings"
    );
    for r in rows {
        crate::outln!(
            "{:<36} {:<9} {:<12} {:>8}  {}",
            r.case,
            r.format,
            r.verdict,
            r.findings,
            r.golden.label()
        );
    }
    let differ = rows.iter().filter(|r| r.golden != Golden::Match).count();
    crate::outln!(
        "\n{} cases, {} match golden, {} differ",
        rows.len(),
        rows.len() - differ,
        differ
    );
    if let Some((cells, names)) = matrix {
        crate::outln!("\nvhost-user conformance matrix (recorded conversations replayed against the back-ends on this machine):");
        crate::out!("{}", crate::vhost::matrix::table(cells, names));
        for c in cells
            .iter()
            .filter(|c| c.verdict == crate::vhost::matrix::Verdict::Error)
        {
            crate::outln!(
                "cannot run {} against {}: {}",
                c.transcript,
                c.backend,
                c.detail.as_deref().unwrap_or("")
            );
        }
    }
}

/// Says on stderr where a report departs from its golden file.
fn explain(name: &str, golden: &serde_json::Value, report: &serde_json::Value) {
    let (Some(g), Some(r)) = (golden.as_object(), report.as_object()) else {
        return;
    };
    for (k, gv) in g {
        let rv = r.get(k).unwrap_or(&serde_json::Value::Null);
        if gv == rv {
            continue;
        }
        match (gv.as_array(), rv.as_array()) {
            (Some(ga), Some(ra)) => {
                let i = ga
                    .iter()
                    .zip(ra.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(ga.len().min(ra.len()));
                eprintln!(
                    "{name}: {k}[{i}]: golden {} | now {}",
                    ga.get(i).map_or("(none)".into(), |v| v.to_string()),
                    ra.get(i).map_or("(none)".into(), |v| v.to_string())
                );
            }
            _ => eprintln!("{name}: {k}: golden {gv} | now {rv}"),
        }
    }
}

fn exit_code(report: &serde_json::Value) -> i64 {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    if n("check-errors") > 0 {
        1
    } else if n("corruptions") > 0 {
        2
    } else if n("leaks") > 0 {
        3
    } else {
        0
    }
}
