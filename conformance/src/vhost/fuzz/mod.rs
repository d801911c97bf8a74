//! `qconform vhost-user fuzz`: stateful protocol fuzzing of a live
//! back-end. Each run starts a fresh back-end, holds the valid
//! conversation with it with structured mutations stacked on top (see
//! [`generate`]) and judges how it came through (see [`exec`]):
//!
//! - `crash`: the process died by a signal (its exit status says so), or
//!   its stderr holds a sanitizer report or a panic;
//! - `hang`: a reply that was due did not come within the timeout, or it
//!   stopped answering a GET_FEATURES sent after the input;
//! - `rule`: the rule engine found the back-end's own messages breaking a
//!   rule, or it acknowledged as a success a request it cannot have
//!   carried out (REPLY_ACK negotiated).
//!
//! A back-end that closes the connection on invalid input conforms, and so
//! does one that exits afterwards (single-shot back-ends such as virtiofsd
//! exit when their front-end leaves). The campaign engine is the image
//! fuzzer's ([`crate::fuzz::campaign`]): run i's input depends only on
//! (seed, i), findings are minimised by dropping mutations and messages
//! while the same kind reproduces, and each is saved as a transcript that
//! `qconform vhost-user replay` plays again, with finding.json.

pub mod exec;
pub mod generate;

use crate::fuzz::campaign::{self, FindingKind, Verdict};
use crate::fuzz::generate::Rng;
use crate::Output;
use generate::Input;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A campaign's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The back-end's command line (whitespace-separated words); `{socket}`
    /// is the socket path it must listen on.
    pub backend_cmd: String,
    pub time: Option<Duration>,
    pub runs: Option<u64>,
    pub seed: u64,
    pub out: Option<PathBuf>,
    /// Deadline of every read.
    pub timeout: Duration,
    pub jobs: usize,
    /// Known findings: lines of `KIND [RULE]`.
    pub expect: Option<PathBuf>,
}

/// The kind of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Crash,
    Hang,
    Rule,
}

impl FindingKind for Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::Rule => "rule",
        }
    }
}

/// One finding of a vhost-user campaign.
pub type Finding = campaign::Finding<Kind, Input>;
/// A vhost-user campaign's result.
pub type Summary = campaign::Summary<Kind, Input>;

struct Backends<'a>(&'a Options);

impl campaign::Fuzzer for Backends<'_> {
    type Input = Input;
    type Kind = Kind;
    fn input(&self, rng: &mut Rng) -> Input {
        generate::input(rng)
    }
    fn judge(&self, input: &Input, dir: &Path) -> Result<Option<Verdict<Kind>>, String> {
        exec::execute(&self.0.backend_cmd, input, dir, self.0.timeout).map(|r| r.verdict)
    }
    /// The same finding: kind, signal and what it says (the request after
    /// which it crashed, the rule broken), numbers aside.
    fn reproduces(&self, got: &Verdict<Kind>, want: &Verdict<Kind>) -> bool {
        got.kind == want.kind
            && got.signal == want.signal
            && campaign::blot(&got.detail) == campaign::blot(&want.detail)
    }
    fn smaller(&self, input: &Input) -> Vec<Input> {
        generate::smaller(input)
    }
    fn weight(&self, input: &Input) -> usize {
        generate::weight(input)
    }
}

/// Runs a campaign. Errors: the back-end cannot be started or reached.
pub fn campaign(o: &Options) -> Result<Summary, String> {
    let settings = campaign::Settings {
        time: o.time,
        runs: o.runs,
        seed: o.seed,
        jobs: o.jobs,
        expect: campaign::expectations(o.expect.as_deref())?,
        // Every try starts a back-end: fewer than for images.
        minimise_budget: 48,
    };
    let mut s = campaign::run(&Backends(o), &settings)?;
    if let Some(out) = &o.out {
        save(o, out, &mut s.findings)?;
    }
    Ok(s)
}

/// Saves each finding under `out/finding-N-KIND/`: the transcript of the
/// minimised conversation (replayable), finding.json and the back-end's
/// stderr.
fn save(o: &Options, out: &Path, findings: &mut [Finding]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    for (n, f) in findings.iter_mut().enumerate() {
        let dir = out.join(format!("finding-{n}-{}", f.kind.name()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        campaign::clear(scratch.path());
        // The saved transcript is that of a fresh run of the minimised
        // input; a timing-dependent finding may not show in it, so say
        // whether it did. A back-end that fails to restart costs this
        // reproducer, not the campaign's summary.
        let run = match exec::execute(&o.backend_cmd, &f.input, scratch.path(), o.timeout) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("finding {n}: reproducer not saved: {e}");
                continue;
            }
        };
        let want = campaign::Verdict {
            kind: f.kind,
            signal: f.signal,
            detail: f.detail.clone(),
            stderr_tail: String::new(),
            rules: Vec::new(),
        };
        let reproduced = run
            .verdict
            .as_ref()
            .is_some_and(|got| campaign::Fuzzer::reproduces(&Backends(o), got, &want));
        std::fs::write(dir.join("transcript.jsonl"), run.transcript).map_err(|e| e.to_string())?;
        let meta = serde_json::json!({
            "reproduced": reproduced,
            "kind": f.kind,
            "signal": f.signal,
            "rule": f.rules.first(),
            "rules": f.rules,
            "detail": f.detail,
            "backend_cmd": o.backend_cmd,
            "seed": o.seed,
            "run": f.run,
            "input": generate::summary(&f.input),
            "replay": format!(
                "qconform vhost-user replay transcript.jsonl --socket SOCKET --backend-cmd '{}'",
                o.backend_cmd
            ),
            "stderr_tail": f.stderr_tail,
        });
        campaign::write_finding(&dir, &meta)?;
        f.reproducer = Some(dir.display().to_string());
    }
    Ok(())
}

/// `qconform vhost-user fuzz`: exit 0 no new findings, 2 new findings, 1 could not run.
pub fn run(o: &Options, output: Output) -> i32 {
    campaign::finish("vhost-user fuzz", campaign(o), output)
}
