//! `qconform vhost-user matrix`: every transcript replayed against every
//! back-end, one fresh back-end process per cell. Rows are transcripts,
//! columns back-ends; a cell is conforming, N findings / M divergences, or
//! why it could not run. Also JSON and JUnit XML (one test suite per
//! back-end, one test case per transcript) for CI gating.

use super::backend::Backend;
use super::replay::{self, ReplayReport};
use crate::Output;
use qconform_core::vhost_user::session::Profile;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub transcript: String,
    pub backend: String,
    pub verdict: Verdict,
    pub findings: u64,
    pub divergences: usize,
    pub skipped: usize,
    pub detail: Option<String>,
}

/// How one transcript replayed against one back-end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every compared reply as recorded, no rule broken.
    Conforming,
    /// Rule findings on the back-end's side.
    Findings,
    /// Replies that differ from the recording.
    Divergences,
    /// The cell could not run (back-end did not start, transcript unreadable).
    Error,
}

impl Cell {
    fn text(&self) -> String {
        let skipped = if self.skipped > 0 {
            format!(" ({}S)", self.skipped)
        } else {
            String::new()
        };
        match self.verdict {
            Verdict::Conforming => format!("conforming{skipped}"),
            Verdict::Error => "cannot run".into(),
            Verdict::Findings | Verdict::Divergences => {
                format!("{}F/{}D{skipped}", self.findings, self.divergences)
            }
        }
    }
}

/// The command naming qconform's own reference back-end (run in-process, 2 queues).
pub const SERVE: &str = "serve";

/// A back-end column: its name and the command that starts it ({socket}
/// replaced); [`SERVE`] is qconform's own reference back-end.
pub fn parse_backend(spec: &str) -> Result<(String, String), String> {
    let (name, cmd) = spec
        .split_once('=')
        .ok_or_else(|| format!("--backend {spec}: expected NAME=COMMAND"))?;
    Ok((name.to_string(), cmd.trim().to_string()))
}

/// The transcripts of `dir` (*.jsonl), sorted.
pub fn transcripts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

/// One cell: a fresh back-end, one replay.
pub fn cell(
    transcript: &Path,
    backend: &str,
    cmd: &str,
    timeout: Duration,
) -> (Cell, Option<ReplayReport>) {
    let name = transcript
        .file_stem()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut cell = Cell {
        transcript: name.clone(),
        backend: backend.into(),
        verdict: Verdict::Error,
        findings: 0,
        divergences: 0,
        skipped: 0,
        detail: None,
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            cell.detail = Some(e.to_string());
            return (cell, None);
        }
    };
    let socket = dir.path().join("vhost.sock");
    let cmd = cmd.replace("{socket}", &socket.display().to_string());
    let result = replay::load(transcript).and_then(|entries| {
        if cmd == SERVE {
            let server = super::serve::spawn_quiet(&socket, 2);
            let r = replay::replay(&name, &entries, &socket, timeout, Profile { lenient: true });
            let _ = server.join();
            r
        } else {
            let b = Backend::start(Some(&cmd), &socket, Duration::from_secs(10))?;
            let lenient = Profile { lenient: true };
            replay::replay_started(&b, &name, &entries, &socket, timeout, lenient)
        }
    });
    match result {
        Ok(r) => {
            cell.findings = r.findings.violations;
            cell.divergences = r.divergences.len();
            cell.skipped = r.skipped.len();
            cell.detail = r.stopped.clone();
            cell.verdict = if r.conforming() {
                Verdict::Conforming
            } else if cell.divergences > 0 {
                Verdict::Divergences
            } else {
                Verdict::Findings
            };
            (cell, Some(r))
        }
        Err(e) => {
            cell.detail = Some(e);
            (cell, None)
        }
    }
}

/// The cells as CI test cases: one suite per back-end, one case per
/// transcript; findings or divergences fail it, a cell that cannot run is an error.
pub fn ci_cases(cells: &[Cell]) -> Vec<crate::ci_report::Case> {
    use crate::ci_report::{Case, Outcome};
    cells
        .iter()
        .map(|c| {
            let detail = c.detail.clone().unwrap_or_default();
            Case {
                suite: c.backend.clone(),
                name: c.transcript.clone(),
                outcome: match c.verdict {
                    Verdict::Conforming => Outcome::Pass,
                    Verdict::Error => Outcome::Error {
                        message: "cannot run".into(),
                        detail,
                    },
                    Verdict::Findings | Verdict::Divergences => Outcome::Fail {
                        message: format!("{} findings, {} divergences", c.findings, c.divergences),
                        detail,
                    },
                },
            }
        })
        .collect()
}

/// The matrix as JUnit XML (one test suite per back-end).
pub fn junit(cells: &[Cell]) -> Result<String, String> {
    crate::ci_report::junit::render("qconform vhost-user matrix", &ci_cases(cells))
}

pub fn table(cells: &[Cell], backends: &[String]) -> String {
    let mut rows: Vec<&str> = cells.iter().map(|c| c.transcript.as_str()).collect();
    rows.dedup();
    let w = rows.iter().map(|r| r.len()).max().unwrap_or(10).max(10);
    let mut out = format!("{:<w$}", "transcript");
    for b in backends {
        out.push_str(&format!("  {b:<18}"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{r:<w$}"));
        for b in backends {
            let t = cells
                .iter()
                .find(|c| c.transcript == r && &c.backend == b)
                .map_or("-".into(), Cell::text);
            out.push_str(&format!("  {t:<18}"));
        }
        out.push('\n');
    }
    out.push_str("(F = rule findings, D = reply divergences, S = requests skipped: gated by a feature the back-end does not offer, or a ring it does not have)\n");
    out
}

/// Runs the matrix; exit 0 when every cell ran, 1 when one could not.
pub fn run(
    dir: &Path,
    specs: &[String],
    output: Output,
    reports_to: &crate::ci_report::Targets,
    timeout: Duration,
) -> i32 {
    if transcripts(dir).is_empty() {
        eprintln!("qconform: no transcripts (*.jsonl) in {}", dir.display());
        return 1;
    }
    let (cells, reports, names) = match cells_with_reports(dir, specs, timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qconform: {e}");
            return 1;
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&cells).unwrap_or_default()
        ),
        Output::Human => print!("{}", table(&cells, &names)),
    }
    let code = if cells.iter().any(|c| c.verdict == Verdict::Error) {
        1
    } else {
        0
    };
    let results: Vec<crate::ci_report::Result> = reports
        .iter()
        .flat_map(|(path, backend, r)| {
            let mut v = crate::ci_report::results(&r.findings.findings, path);
            for f in &mut v {
                f.message = format!("{backend}: {}", f.message);
            }
            v
        })
        .collect();
    reports_to.write_or_fail(
        "qconform vhost-user matrix",
        &ci_cases(&cells),
        &results,
        code,
    )
}

/// Where `cargo xtask peers` puts the real vhost-user peers.
pub fn peers_dir() -> PathBuf {
    std::env::var_os("QCONFORM_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/qconform")
        })
}

/// The back-ends this machine can start, as NAME=COMMAND specs: qconform
/// serve always; qemu-storage-daemon (a 64 MiB raw disk in `scratch`,
/// one queue) when installed; virtiofsd (sharing `scratch`) when
/// `cargo xtask peers` has built it.
pub fn available_backends(scratch: &Path) -> Vec<String> {
    let mut v = vec!["serve=serve".to_string()];
    let qsd_ok = std::process::Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let disk = scratch.join("disk.img");
    if qsd_ok
        && std::fs::File::create(&disk)
            .and_then(|f| f.set_len(64 << 20))
            .is_ok()
    {
        v.push(format!(
            "qsd=qemu-storage-daemon --blockdev driver=file,node-name=file0,filename={} --export type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={{socket}},writable=on,num-queues=1",
            disk.display()
        ));
    }
    let virtiofsd = peers_dir().join("virtiofsd/bin/virtiofsd");
    let share = scratch.join("share");
    if virtiofsd.exists() && std::fs::create_dir_all(&share).is_ok() {
        v.push(format!(
            "virtiofsd={} --socket-path={{socket}} --shared-dir={} --sandbox=none",
            virtiofsd.display(),
            share.display()
        ));
    }
    v
}

/// Runs the matrix and returns its cells (for `qconform conform`).
pub fn cells(
    dir: &Path,
    specs: &[String],
    timeout: Duration,
) -> Result<(Vec<Cell>, Vec<String>), String> {
    cells_with_reports(dir, specs, timeout).map(|(c, _, n)| (c, n))
}

/// A replay that ran: the transcript's path, the back-end, the report.
type Replayed = (String, String, ReplayReport);

/// The matrix run: its cells, the replays that ran, the back-end names.
type Run = (Vec<Cell>, Vec<Replayed>, Vec<String>);

/// Runs the matrix: its cells, the replays that ran (for SARIF) and the back-end names.
fn cells_with_reports(dir: &Path, specs: &[String], timeout: Duration) -> Result<Run, String> {
    let backends: Vec<(String, String)> = specs
        .iter()
        .map(|s| parse_backend(s))
        .collect::<Result<_, _>>()?;
    let mut cells = Vec::new();
    let mut reports = Vec::new();
    for f in &transcripts(dir) {
        for (name, cmd) in &backends {
            let (c, r) = cell(f, name, cmd, timeout);
            cells.push(c);
            if let Some(r) = r {
                reports.push((f.display().to_string(), name.clone(), r));
            }
        }
    }
    Ok((
        cells,
        reports,
        backends.into_iter().map(|(n, _)| n).collect(),
    ))
}
