//! CI reports of the commands that judge (`check`, `conform`, `golden
//! verify`, `vhost-user probe|check|matrix`): JUnit XML for test dashboards
//! and SARIF 2.1.0 for code-scanning views. Each command describes what it
//! judged as [`Case`]s (one per image, transcript or matrix cell) and the
//! findings behind them as [`Result`]s; the two writers turn those into files.

pub mod junit;
pub mod sarif;
pub mod vhost;

use qconform_core::{Finding, Report, Severity};
use std::path::{Path, PathBuf};

/// How one judged item came out, for JUnit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It conforms (or matches its golden record).
    Pass,
    /// It does not conform: a short message and the details.
    Fail { message: String, detail: String },
    /// It could not be judged at all.
    Error { message: String, detail: String },
}

/// One judged item: an image, a transcript, a matrix cell.
#[derive(Debug, Clone)]
pub struct Case {
    /// The test suite it belongs to (a command, or a matrix back-end).
    pub suite: String,
    /// Its name (the image or transcript as the user named it).
    pub name: String,
    pub outcome: Outcome,
}

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A byte offset of an image file (None: the file as a whole).
    Byte { file: String, offset: Option<u64> },
    /// A message of a vhost-user conversation (its index in the
    /// transcript), in `file` (a transcript, or the socket probed).
    Message { file: String, index: Option<u64> },
}

/// One finding, for SARIF.
#[derive(Debug, Clone)]
pub struct Result {
    pub rule: &'static qconform_core::rules::Rule,
    pub severity: Severity,
    pub message: String,
    pub location: Location,
}

/// Where the reports go (`--junit FILE`, `--sarif FILE`).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub junit: Option<PathBuf>,
    pub sarif: Option<PathBuf>,
}

impl Targets {
    /// Whether any report is asked for (callers skip gathering otherwise).
    pub fn any(&self) -> bool {
        self.junit.is_some() || self.sarif.is_some()
    }

    /// Writes the reports asked for; the error names the file.
    pub fn write(
        &self,
        title: &str,
        cases: &[Case],
        results: &[Result],
    ) -> std::result::Result<(), String> {
        if let Some(p) = &self.junit {
            write_file(p, &junit::render(title, cases)?)?;
        }
        if let Some(p) = &self.sarif {
            write_file(p, &sarif::render(results))?;
        }
        Ok(())
    }

    /// [`Targets::write`] for a command's exit code: a report that cannot be
    /// written turns `code` into 1 ("could not run"), with a message.
    pub fn write_or_fail(&self, title: &str, cases: &[Case], results: &[Result], code: i32) -> i32 {
        match self.write(title, cases, results) {
            Ok(()) => code,
            Err(e) => {
                eprintln!("qconform: {e}");
                1
            }
        }
    }
}

fn write_file(path: &Path, text: &str) -> std::result::Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The findings of an image report, located in `file`.
pub fn image_results(report: &Report, file: &str) -> Vec<Result> {
    results(&report.findings, file)
}

/// Findings as SARIF results in `file`, each at its typed location: a byte
/// offset of an image, a message of a conversation (or the file as a whole).
pub fn results(findings: &[Finding], file: &str) -> Vec<Result> {
    findings
        .iter()
        .map(|f| Result {
            rule: f.rule,
            severity: f.severity,
            message: f.detail.clone(),
            location: match f.location {
                Some(qconform_core::report::Location::Message(i)) => Location::Message {
                    file: file.to_owned(),
                    index: Some(i),
                },
                Some(qconform_core::report::Location::Byte(o)) => Location::Byte {
                    file: file.to_owned(),
                    offset: Some(o),
                },
                None => Location::Byte {
                    file: file.to_owned(),
                    offset: None,
                },
            },
        })
        .collect()
}

/// The JUnit outcome of an image check with `check`'s exit code.
pub fn check_outcome(report: &Report, code: i32) -> Outcome {
    let detail = || {
        report
            .findings
            .iter()
            .filter(|f| f.severity != Severity::Note)
            .map(|f| {
                let at = f
                    .offset()
                    .map_or(String::new(), |o| format!(" at offset {o:#x}"));
                format!("{:?} [{}]{at}: {}", f.severity, f.rule.id, f.detail)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    match code {
        0 => Outcome::Pass,
        1 => Outcome::Error {
            message: format!("not checked: {} check errors", report.check_errors),
            detail: detail(),
        },
        _ => Outcome::Fail {
            message: format!(
                "{} corruptions, {} leaks, {} violations (exit {code})",
                report.corruptions, report.leaks, report.violations
            ),
            detail: detail(),
        },
    }
}
