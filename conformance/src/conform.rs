//! `qconform conform`: the main job. Checks every corpus image and
//! transcript, compares each report with its golden file (recorded
//! conversations: their replay too), prints a table, then the vhost-user
//! conformance matrix of the back-ends present. Exit 0 when everything
//! matches, 4 ([`DIFFERS`]) when any case differs from its golden files
//! (or has none), 1 when a matrix cell (or the matrix) could not run.

use crate::ci_report::{self, Case, Outcome, Targets};
use crate::golden::images::DIFFERS;
use crate::golden::{case_snap_path, corpus_cases, read_snap, Kind, TranscriptCheck};
use crate::progress::{self, Unit};
use crate::Output;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Row {
    case: String,
    format: String,
    verdict: &'static str,
    exit_code: i32,
    findings: usize,
    golden: Golden,
    /// Under a policy other than `default`: the image judged under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PolicyVerdict>,
    /// Where the case departs from its golden files.
    #[serde(skip)]
    differences: Vec<String>,
    /// Its findings, for SARIF.
    #[serde(skip)]
    results: Vec<ci_report::Result>,
}

/// An image judged under `conform --policy`: the golden files hold the
/// check under the default policy, so this is reported beside them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
struct PolicyVerdict {
    /// "accepted" (exit 0 under the policy) or "refused".
    verdict: &'static str,
    exit_code: i32,
    /// The rules of the findings the policy added or re-graded, sorted.
    refused_by: Vec<&'static str>,
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

/// How `conform` runs besides its output.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--junit FILE`, `--sarif FILE`.
    pub reports: Targets,
    /// `-q`: no progress bar.
    pub quiet: bool,
    /// `--policy`: images are also judged under it (the golden files stay
    /// the default policy's, see [`PolicyVerdict`]).
    pub policy: qconform_core::upload::Policy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reports: Targets::default(),
            quiet: false,
            policy: qconform_core::upload::Policy::default_policy(),
        }
    }
}

/// A recorded conversation's matrix: its cells and the back-end names.
type Matrix = (Vec<crate::vhost::matrix::Cell>, Vec<String>);

pub fn run(root: &Path, output: Output, settings: &Settings) -> i32 {
    let cases = corpus_cases(root);
    if cases.is_empty() {
        eprintln!("qconform conform: no corpus cases under {} (run from the repository root or pass --root)", root.display());
        return 1;
    }
    let bar = progress::bar(cases.len() as u64, Unit::Items, settings.quiet);
    bar.set_message("cases");
    let rows: Vec<Row> = cases
        .iter()
        .map(|c| {
            let r = judge(root, c, &settings.policy);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let differ = rows.iter().any(|r| r.golden != Golden::Match);
    let (matrix, matrix_failures) = matrix(root);
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
    // A difference is what conform is for: it outranks a cell that could not run.
    let code = if differ {
        DIFFERS
    } else if matrix_failures > 0 {
        1
    } else {
        0
    };
    if !settings.reports.any() {
        return code;
    }
    let mut junit: Vec<Case> = rows.iter().map(case).collect();
    if let Some((cells, _)) = &matrix {
        junit.extend(crate::vhost::matrix::ci_cases(cells));
    }
    let results: Vec<ci_report::Result> = rows.iter().flat_map(|r| r.results.clone()).collect();
    settings
        .reports
        .write_or_fail("qconform conform", &junit, &results, code)
}

/// A row as a JUnit test case: it fails when it departs from its golden files.
fn case(r: &Row) -> Case {
    Case {
        suite: format!("qconform conform ({})", r.format),
        name: r.case.clone(),
        outcome: match r.golden {
            Golden::Match => Outcome::Pass,
            g => Outcome::Fail {
                message: format!(
                    "{} (verdict {}, exit {})",
                    g.label(),
                    r.verdict,
                    r.exit_code
                ),
                detail: r.differences.join("\n"),
            },
        },
    }
}

/// A case judged now: its golden body, format, exit code, findings.
struct Judged {
    body: serde_json::Value,
    /// An image's check report (None for transcripts).
    report: Option<qconform_core::Report>,
    format: String,
    code: i32,
    findings: usize,
    results: Vec<ci_report::Result>,
}

fn judge_now(root: &Path, c: &crate::golden::Case) -> Judged {
    match c.kind {
        Kind::Image => {
            let report = crate::golden::image_report(root, &c.path);
            Judged {
                body: serde_json::to_value(&report).unwrap_or_default(),
                format: report.format.clone(),
                code: report.exit_code(false),
                findings: report.findings.len(),
                results: ci_report::image_results(&report, &report.filename),
                report: Some(report),
            }
        }
        Kind::Transcript => {
            let t = TranscriptCheck::of(root, &c.path);
            let (findings, results) = match &t.report {
                Ok(r) => (
                    r.findings.len(),
                    ci_report::results(&r.findings, &t.conversation),
                ),
                Err(_) => (0, Vec::new()),
            };
            Judged {
                body: t.json(),
                report: None,
                format: "vhost-user".to_owned(),
                code: t.exit_code(),
                findings,
                results,
            }
        }
    }
}

/// One corpus case: its report against its golden file, and for images
/// `info` and `map` too, for recorded conversations their replay.
fn judge(root: &Path, c: &crate::golden::Case, policy: &qconform_core::upload::Policy) -> Row {
    let name = &c.name;
    let mut now = judge_now(root, c);
    let policy = match &now.report {
        Some(r) if *policy != qconform_core::upload::Policy::default_policy() => {
            let (verdict, results) = under_policy(r, &c.path, policy);
            // SARIF carries what the policy judged.
            now.results = results;
            Some(verdict)
        }
        _ => None,
    };
    let mut differences = Vec::new();
    let mut golden = compare(name, &case_snap_path(root, c), &now.body, &mut differences);
    if let (Golden::Mismatch, Some(now_report)) = (golden, &now.report) {
        // Say what changed in the report's own terms, when the golden file
        // reads back as a Report; the JSON lines stay for what it does not type.
        let typed = read_snap(&case_snap_path(root, c))
            .map(|g| serde_json::from_str::<qconform_core::Report>(&g));
        match typed {
            Some(Ok(g)) => {
                let lines = crate::golden::diff::reports(&g, now_report);
                differences.extend(lines.into_iter().map(|l| format!("{name}: {l}")));
            }
            Some(Err(e)) => {
                differences.push(format!("{name}: the golden file is not a report: {e}"))
            }
            None => {}
        }
    }
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
            let body = serde_json::from_str(&body).unwrap_or_default();
            golden = golden.and(compare(
                &format!("{name} ({dir})"),
                &snap,
                &body,
                &mut differences,
            ));
        }
    }
    if golden == Golden::Match && crate::golden::is_recording(root, c) {
        let body =
            serde_json::from_str(&crate::golden::replay_json(root, &c.path)).unwrap_or_default();
        let snap = crate::golden::replay_snap_path(root, c);
        golden = golden.and(compare(
            &format!("{name} (replay)"),
            &snap,
            &body,
            &mut differences,
        ));
    }
    for d in &differences {
        eprintln!("{d}");
    }
    Row {
        case: name.clone(),
        verdict: match c.kind {
            Kind::Image => crate::golden::record::verdict(now.code),
            Kind::Transcript => match now.code {
                0 => "conforming",
                1 => "unreadable",
                _ => "findings",
            },
        },
        format: now.format,
        exit_code: now.code,
        findings: now.findings,
        golden,
        policy,
        differences,
        results: now.results,
    }
}

/// The image's report under `policy` (as `check --policy`): the verdict and
/// the SARIF results of the judged report.
fn under_policy(
    report: &qconform_core::Report,
    path: &Path,
    policy: &qconform_core::upload::Policy,
) -> (PolicyVerdict, Vec<ci_report::Result>) {
    let limits = qconform_core::Limits::default();
    let mut judged = report.clone();
    crate::upload_policy::apply(&mut judged, path, None, &limits, policy);
    let code = policy.exit_code(&judged, false);
    // What the policy changed: findings that are new or graded otherwise.
    let before: std::collections::BTreeSet<(&str, qconform_core::Severity)> = report
        .findings
        .iter()
        .map(|f| (f.rule.id, f.severity))
        .collect();
    let mut refused_by: Vec<&'static str> = judged
        .findings
        .iter()
        .filter(|f| !before.contains(&(f.rule.id, f.severity)))
        .map(|f| f.rule.id)
        .collect();
    refused_by.sort_unstable();
    refused_by.dedup();
    let results = ci_report::image_results(&judged, &judged.filename);
    (
        PolicyVerdict {
            verdict: if code == 0 { "accepted" } else { "refused" },
            exit_code: code,
            refused_by,
        },
        results,
    )
}

/// Compares `now` with the golden file `snap`, adding where they differ to `out`.
fn compare(what: &str, snap: &Path, now: &serde_json::Value, out: &mut Vec<String>) -> Golden {
    match read_snap(snap).and_then(|g| serde_json::from_str::<serde_json::Value>(&g).ok()) {
        None => {
            out.push(format!("{what}: no golden file {}", snap.display()));
            Golden::Missing
        }
        Some(g) if &g != now => {
            explain(what, &g, now, out);
            Golden::Mismatch
        }
        _ => Golden::Match,
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
        // Under a policy: its verdict after the golden column.
        let policy = r.policy.as_ref().map_or(String::new(), |p| {
            format!(
                "  policy: {}{}",
                p.verdict,
                if p.refused_by.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", p.refused_by.join(", "))
                }
            )
        });
        crate::outln!(
            "{:<36} {:<9} {:<12} {:>8}  {}{policy}",
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

/// Where a report departs from its golden file, one line per field.
fn explain(
    name: &str,
    golden: &serde_json::Value,
    report: &serde_json::Value,
    out: &mut Vec<String>,
) {
    let wrap = |v: &serde_json::Value| match v {
        serde_json::Value::Object(m) => m.clone(),
        // A top-level array (a map) or scalar: compared as one field.
        v => serde_json::Map::from_iter([("entries".to_owned(), v.clone())]),
    };
    let (g, r) = (wrap(golden), wrap(report));
    let keys: std::collections::BTreeSet<&String> = g.keys().chain(r.keys()).collect();
    for k in keys {
        let gv = g.get(k).unwrap_or(&serde_json::Value::Null);
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
                out.push(format!(
                    "{name}: {k}[{i}]: golden {} | now {}",
                    ga.get(i).map_or("(none)".into(), |v| v.to_string()),
                    ra.get(i).map_or("(none)".into(), |v| v.to_string())
                ));
            }
            _ => out.push(format!("{name}: {k}: golden {gv} | now {rv}")),
        }
    }
}
