//! `qconform fuzz image`: out-of-process campaigns against any command
//! that reads images (`qemu-img check`, `qemu-img convert`, another
//! implementation's tool), with qconform's reference code as the oracle.
//!
//! Each run writes a generated input (see [`generate`]) into a scratch
//! directory, runs the target there (see [`target`]) and judges how it
//! ended: `crash` (a signal or a sanitizer report), `hang` (the timeout),
//! `memory` (the address-space limit), and by oracle `check` (the target
//! exits like `qemu-img check`, 0/2/3, and disagrees with our verdict) or
//! `read` (its guest bytes differ from ours on an image we call valid;
//! `accepts-corrupt` when it returns data without error for an image we
//! call corrupt). Findings are minimised and saved with everything needed
//! to reproduce them; an expectations file (rustls' BoGo model) lists the
//! target's known faults so that CI gates only on new ones.

pub mod campaign;
pub mod differential;
pub mod generate;
pub mod target;

use crate::Output;
use campaign::{clear, FindingKind, Verdict};
use generate::{GenFormat, Input, Rng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the target's behaviour is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Oracle {
    /// Crashes, hangs and memory exhaustion only.
    Crash,
    /// Also: exit codes like `qemu-img check`, compared with our check.
    Check,
    /// Also: the guest bytes it writes to {out}, compared with our reader.
    Read,
}

/// A campaign's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: GenFormat,
    /// Shell command line; `{image}` is the image's path, `{out}` a file
    /// the target may write guest bytes to, `{dir}` the scratch directory.
    pub target: String,
    pub oracle: Oracle,
    pub time: Option<Duration>,
    pub runs: Option<u64>,
    pub seed: u64,
    pub out: Option<PathBuf>,
    pub timeout: Duration,
    pub memory_mb: u64,
    pub jobs: usize,
    /// Known findings: lines of `KIND [RULE]` (# comments); matching
    /// findings are reported as expected and do not fail the campaign.
    pub expect: Option<PathBuf>,
}

/// The kind of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Crash,
    Hang,
    Memory,
    Check,
    Read,
    RejectsValid,
    AcceptsCorrupt,
}

impl FindingKind for Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::Memory => "memory",
            Kind::Check => "check",
            Kind::Read => "read",
            Kind::RejectsValid => "rejects-valid",
            Kind::AcceptsCorrupt => "accepts-corrupt",
        }
    }
}

/// One finding of an image campaign, minimised.
pub type Finding = campaign::Finding<Kind, Input>;
/// An image campaign's result.
pub type Summary = campaign::Summary<Kind, Input>;

/// The reference verdict on an input: our check's exit code, and the
/// guest bytes when our reader opens it (as the target would see it).
fn reference(format: GenFormat, dir: &Path, image: &Path) -> (i32, Option<Vec<u8>>) {
    let code = crate::check::check_file(
        image,
        Some(format.name()),
        &qconform_core::Limits::default(),
    )
    .exit_code(false);
    let opts = crate::read::ReadOptions {
        data_dir: Some(dir.to_path_buf()),
        ..crate::read::ReadOptions::new(qconform_core::disk::Backing::Confined)
    };
    let bytes = crate::read::open(image, &opts).ok().and_then(|mut d| {
        let mut b = vec![0u8; usize::try_from(d.size()).ok()?];
        d.read_at(0, &mut b).ok()?;
        Some(b)
    });
    (code, bytes)
}

/// Writes `input` into `dir` and judges one run of the target on it.
/// None: the writer refused the description, or nothing was found.
fn judge(o: &Options, input: &Input, dir: &Path) -> std::io::Result<Option<Verdict<Kind>>> {
    let Some(built) = generate::build(input) else {
        return Ok(None);
    };
    let image = dir.join(format!("image.{}", o.format.name()));
    std::fs::write(&image, &built.image)?;
    for (name, bytes) in &built.beside {
        std::fs::write(dir.join(name), bytes)?;
    }
    let out = dir.join("out.raw");
    let _ = std::fs::remove_file(&out);
    let command = o
        .target
        .replace(
            "{image}",
            &target::shell_quote(&image.display().to_string()),
        )
        .replace("{out}", &target::shell_quote(&out.display().to_string()))
        .replace("{dir}", &target::shell_quote(&dir.display().to_string()));
    let r = target::run(&command, dir, o.timeout, o.memory_mb)?;
    // sh's "not found" / "not executable": the campaign cannot run at all.
    if matches!(r.code, Some(126 | 127)) {
        return Err(std::io::Error::other(format!(
            "the target exits {}: {}",
            r.code.unwrap_or(0),
            r.stderr_tail.trim()
        )));
    }
    let rules: Vec<&'static str> = built.rules.iter().map(|r| r.id).collect();
    let verdict = |kind, signal, detail| Verdict {
        kind,
        signal,
        detail,
        stderr_tail: r.stderr_tail.clone(),
        rules: rules.clone(),
    };
    let verdict = if r.timed_out {
        Some(verdict(
            Kind::Hang,
            None,
            format!("no exit within {} ms", o.timeout.as_millis()),
        ))
    } else if r.out_of_memory() {
        Some(verdict(
            Kind::Memory,
            r.signal,
            format!("address-space limit of {} MiB hit", o.memory_mb),
        ))
    } else if r.signal.is_some() || r.sanitizer_report() {
        let last = r
            .stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Some(verdict(
            Kind::Crash,
            r.signal,
            match r.signal {
                Some(s) => format!("killed by signal {s}: {last}"),
                None => format!("sanitizer report: {last}"),
            },
        ))
    } else if o.oracle == Oracle::Crash {
        None
    } else {
        let (ours, bytes) = reference(o.format, dir, &image);
        let theirs = r.code.unwrap_or(-1);
        let check_like = |c: i32| matches!(c, 0 | 2 | 3);
        if o.oracle == Oracle::Check && check_like(theirs) && check_like(ours) && theirs != ours {
            Some(verdict(
                Kind::Check,
                None,
                format!("target exits {theirs}, qconform check {ours}"),
            ))
        } else if o.oracle == Oracle::Read && theirs != 0 {
            // A reader that refuses an image we call valid (and can read).
            match (ours, bytes) {
                (0 | 3, Some(_)) => Some(verdict(
                    Kind::RejectsValid,
                    None,
                    format!("target exits {theirs} on an image qconform reads"),
                )),
                _ => None,
            }
        } else if o.oracle == Oracle::Read {
            let got = std::fs::read(&out).unwrap_or_default();
            match (ours, bytes) {
                (0 | 3, Some(want)) if got != want => Some(verdict(
                    Kind::Read,
                    None,
                    format!(
                        "guest bytes differ from qconform cat ({} bytes against {})",
                        got.len(),
                        want.len()
                    ),
                )),
                (2, _) => Some(verdict(
                    Kind::AcceptsCorrupt,
                    None,
                    "read an image qconform check calls corrupt without an error".into(),
                )),
                _ => None,
            }
        } else {
            None
        }
    };
    Ok(verdict)
}

/// `cmd` with its first word made absolute when it is a relative path
/// (`target/debug/tool {image}` -> `/cwd/target/debug/tool {image}`).
fn absolute_program(cmd: &str) -> String {
    let trimmed = cmd.trim_start();
    let first = trimmed.split_whitespace().next().unwrap_or("");
    if first.contains('/') && !first.starts_with('/') {
        if let Ok(cwd) = std::env::current_dir() {
            let rest = &trimmed[first.len()..];
            let abs = cwd.join(first).display().to_string();
            return format!("{}{rest}", target::shell_quote(&abs));
        }
    }
    cmd.to_owned()
}

/// The image campaign as the engine sees it.
struct Images<'a>(&'a Options);

impl campaign::Fuzzer for Images<'_> {
    type Input = Input;
    type Kind = Kind;
    fn input(&self, rng: &mut Rng) -> Input {
        generate::input(self.0.format, rng)
    }
    fn judge(&self, input: &Input, dir: &Path) -> Result<Option<Verdict<Kind>>, String> {
        judge(self.0, input, dir).map_err(|e| e.to_string())
    }
    fn smaller(&self, input: &Input) -> Vec<Input> {
        generate::smaller(input)
    }
    fn weight(&self, input: &Input) -> usize {
        generate::weight(input)
    }
}

/// Runs a campaign. Errors: the scratch space or the target cannot be used.
pub fn campaign(o: &Options) -> Result<Summary, String> {
    let settings = campaign::Settings {
        time: o.time,
        runs: o.runs,
        seed: o.seed,
        jobs: o.jobs,
        expect: campaign::expectations(o.expect.as_deref())?,
        minimise_budget: 64,
    };
    // The target runs in a scratch directory: a relative program path is
    // made absolute against the directory the campaign was started from.
    let o = &Options {
        target: absolute_program(&o.target),
        ..o.clone()
    };
    let mut s = campaign::run(&Images(o), &settings)?;
    if let Some(out) = &o.out {
        save(o, out, &mut s.findings)?;
    }
    Ok(s)
}

/// Saves each finding's minimised reproducer under `out/finding-N/`: the
/// image and the files beside it, finding.json and the command.
fn save(o: &Options, out: &Path, findings: &mut [Finding]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (n, f) in findings.iter_mut().enumerate() {
        let dir = out.join(format!("finding-{n}-{}", f.kind.name()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // The minimised input's files, as the target last saw them.
        clear(&dir);
        let _ = judge(o, &f.input, &dir);
        let _ = std::fs::remove_file(dir.join("out.raw"));
        let meta = serde_json::json!({
            "kind": f.kind,
            "signal": f.signal,
            "rules": f.rules,
            "detail": f.detail,
            "target": o.target,
            "format": o.format.name(),
            "seed": o.seed,
            "run": f.run,
            "input": generate::summary(&f.input),
            "stderr_tail": f.stderr_tail,
        });
        campaign::write_finding(&dir, &meta)?;
        f.reproducer = Some(dir.display().to_string());
    }
    Ok(())
}

/// `qconform fuzz image`: exit 0 no new findings, 2 new findings, 1 could not run.
pub fn run(o: &Options, output: Output) -> i32 {
    campaign::finish("fuzz image", campaign(o), output)
}
