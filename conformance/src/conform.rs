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
    /// "match", "MISMATCH" or "NO GOLDEN".
    golden: &'static str,
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

pub fn run(root: &Path, output: Output) -> i32 {
    let cases = corpus_cases(root);
    if cases.is_empty() {
        eprintln!("qconform conform: no corpus cases under {} (run from the repository root or pass --root)", root.display());
        return 1;
    }
    let mut rows = Vec::new();
    let mut failures = 0;
    for c in &cases {
        let name = &c.name;
        let json = case_json(root, c);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let (format, code) = match c.kind {
            Kind::Image => (
                report["format"].as_str().unwrap_or("?").to_owned(),
                exit_code(&report),
            ),
            Kind::Transcript => (
                "vhost-user".to_owned(),
                if report.get("unreadable").is_some() {
                    1
                } else if report["violations"].as_u64().unwrap_or(0) > 0 {
                    2
                } else {
                    0
                },
            ),
        };
        let mut golden = match read_snap(&case_snap_path(root, c)) {
            None => "NO GOLDEN",
            Some(body) => match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(g) if g == report => "match",
                _ => "MISMATCH",
            },
        };
        if c.kind == Kind::Image && golden == "match" {
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
                let now: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                match read_snap(&root.join(dir).join(format!("{name}.snap")))
                    .and_then(|g| serde_json::from_str::<serde_json::Value>(&g).ok())
                {
                    None => golden = "NO GOLDEN",
                    Some(g) if g != now => {
                        explain(&format!("{name} ({dir})"), &g, &now);
                        golden = "MISMATCH";
                    }
                    _ => {}
                }
            }
        }
        if golden == "match" && crate::golden::is_recording(root, c) {
            let now: serde_json::Value =
                serde_json::from_str(&crate::golden::replay_json(root, &c.path))
                    .unwrap_or_default();
            match read_snap(&crate::golden::replay_snap_path(root, c))
                .and_then(|g| serde_json::from_str::<serde_json::Value>(&g).ok())
            {
                None => golden = "NO GOLDEN",
                Some(g) if g != now => {
                    explain(&format!("{name} (replay)"), &g, &now);
                    golden = "MISMATCH";
                }
                _ => {}
            }
        }
        if golden != "match" {
            failures += 1;
            if let Some(body) = read_snap(&case_snap_path(root, c)) {
                if let Ok(g) = serde_json::from_str::<serde_json::Value>(&body) {
                    explain(name, &g, &report);
                }
            }
        }
        rows.push(Row {
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
        });
    }
    // The conformance matrix: every recorded real conversation replayed
    // against every back-end this machine can start.
    let recorded = root.join(crate::golden::RECORDED_DIR);
    let mut matrix = None;
    if !crate::vhost::matrix::transcripts(&recorded).is_empty() {
        let scratch = tempfile::tempdir();
        let cells = scratch.map_err(|e| e.to_string()).and_then(|d| {
            let specs = crate::vhost::matrix::available_backends(d.path());
            crate::vhost::matrix::cells(&recorded, &specs, std::time::Duration::from_secs(2))
        });
        match cells {
            Ok((cells, names)) => {
                let errors = cells.iter().filter(|c| c.verdict == "error").count();
                failures += errors;
                matrix = Some((cells, names));
            }
            Err(e) => {
                eprintln!("qconform conform: matrix: {e}");
                failures += 1;
            }
        }
    }
    match output {
        Output::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cases": rows,
                "matrix": matrix.as_ref().map(|(c, _)| c),
            }))
            .unwrap_or_default()
        ),
        Output::Human => {
            crate::outln!(
                "{:<36} {:<9} {:<12} {:>8}  golden",
                "case",
                "format",
                "verdict",
                "findings"
            );
            for r in &rows {
                crate::outln!(
                    "{:<36} {:<9} {:<12} {:>8}  {}",
                    r.case,
                    r.format,
                    r.verdict,
                    r.findings,
                    r.golden
                );
            }
            let differ = rows.iter().filter(|r| r.golden != "match").count();
            crate::outln!(
                "\n{} cases, {} match golden, {} differ",
                rows.len(),
                rows.len() - differ,
                differ
            );
            if let Some((cells, names)) = &matrix {
                crate::outln!("\nvhost-user conformance matrix (recorded conversations replayed against the back-ends on this machine):");
                crate::out!("{}", crate::vhost::matrix::table(cells, names));
                for c in cells.iter().filter(|c| c.verdict == "error") {
                    crate::outln!(
                        "cannot run {} against {}: {}",
                        c.transcript,
                        c.backend,
                        c.detail.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    if failures > 0 {
        1
    } else {
        0
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
