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

pub mod generate;
pub mod target;

use crate::Output;
use generate::{GenFormat, Input, Rng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

impl Kind {
    pub fn name(self) -> &'static str {
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

/// One finding, minimised.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The rules the mutations break (ids).
    pub rules: Vec<&'static str>,
    /// What happened, in one line.
    pub detail: String,
    /// The run that first found it.
    pub run: u64,
    /// How many runs found it.
    pub hits: u64,
    /// Listed in the expectations file.
    pub expected: bool,
    /// The directory holding the reproducer (with --out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reproducer: Option<String>,
    /// The minimised input (description and mutations).
    #[serde(skip)]
    pub input: Input,
    /// The end of the target's stderr on the first hit.
    #[serde(skip)]
    pub stderr_tail: String,
}

/// A campaign's result.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub runs: u64,
    pub seconds: f64,
    pub execs_per_sec: f64,
    pub findings: Vec<Finding>,
}

/// What one run's verdict is, before minimisation.
struct Verdict {
    kind: Kind,
    signal: Option<i32>,
    detail: String,
    stderr_tail: String,
}

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
fn judge(
    o: &Options,
    input: &Input,
    dir: &Path,
) -> std::io::Result<Option<(Verdict, Vec<&'static str>)>> {
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
    let verdict = if r.timed_out {
        Some(Verdict {
            kind: Kind::Hang,
            signal: None,
            detail: format!("no exit within {} ms", o.timeout.as_millis()),
            stderr_tail: r.stderr_tail.clone(),
        })
    } else if r.out_of_memory() {
        Some(Verdict {
            kind: Kind::Memory,
            signal: r.signal,
            detail: format!("address-space limit of {} MiB hit", o.memory_mb),
            stderr_tail: r.stderr_tail.clone(),
        })
    } else if r.signal.is_some() || r.sanitizer_report() {
        let last = r
            .stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Some(Verdict {
            kind: Kind::Crash,
            signal: r.signal,
            detail: match r.signal {
                Some(s) => format!("killed by signal {s}: {last}"),
                None => format!("sanitizer report: {last}"),
            },
            stderr_tail: r.stderr_tail.clone(),
        })
    } else if o.oracle == Oracle::Crash {
        None
    } else {
        let (ours, bytes) = reference(o.format, dir, &image);
        let theirs = r.code.unwrap_or(-1);
        let check_like = |c: i32| matches!(c, 0 | 2 | 3);
        if o.oracle == Oracle::Check && check_like(theirs) && check_like(ours) && theirs != ours {
            Some(Verdict {
                kind: Kind::Check,
                signal: None,
                detail: format!("target exits {theirs}, qconform check {ours}"),
                stderr_tail: r.stderr_tail.clone(),
            })
        } else if o.oracle == Oracle::Read && theirs != 0 {
            // A reader that refuses an image we call valid (and can read).
            match (ours, bytes) {
                (0 | 3, Some(_)) => Some(Verdict {
                    kind: Kind::RejectsValid,
                    signal: None,
                    detail: format!("target exits {theirs} on an image qconform reads"),
                    stderr_tail: r.stderr_tail.clone(),
                }),
                _ => None,
            }
        } else if o.oracle == Oracle::Read {
            let got = std::fs::read(&out).unwrap_or_default();
            match (ours, bytes) {
                (0 | 3, Some(want)) if got != want => Some(Verdict {
                    kind: Kind::Read,
                    signal: None,
                    detail: format!(
                        "guest bytes differ from qconform cat ({} bytes against {})",
                        got.len(),
                        want.len()
                    ),
                    stderr_tail: r.stderr_tail.clone(),
                }),
                (2, _) => Some(Verdict {
                    kind: Kind::AcceptsCorrupt,
                    signal: None,
                    detail: "read an image qconform check calls corrupt without an error".into(),
                    stderr_tail: r.stderr_tail.clone(),
                }),
                _ => None,
            }
        } else {
            None
        }
    };
    Ok(verdict.map(|v| (v, rules)))
}

/// Shrinks a finding's input while the same kind of finding reproduces.
fn minimise(o: &Options, mut input: Input, kind: Kind, dir: &Path) -> Input {
    // Each pass tries every smaller variant; at most a bounded number of runs.
    let mut budget = 64;
    'pass: loop {
        for v in generate::smaller(&input) {
            if budget == 0 {
                break 'pass;
            }
            budget -= 1;
            clear(dir);
            if let Ok(Some((got, _))) = judge(o, &v, dir) {
                if got.kind == kind && generate::weight(&v) < generate::weight(&input) {
                    input = v;
                    continue 'pass;
                }
            }
        }
        break;
    }
    input
}

fn clear(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The expectations file: `KIND [RULE]` per line.
fn expectations(path: Option<&Path>) -> Result<Vec<(String, Option<String>)>, String> {
    let Some(p) = path else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            (
                w.next().unwrap_or("").to_owned(),
                w.next().map(str::to_owned),
            )
        })
        .collect())
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

/// Runs a campaign. Errors: the scratch space or the target cannot be used.
pub fn campaign(o: &Options) -> Result<Summary, String> {
    let expect = expectations(o.expect.as_deref())?;
    // The target runs in a scratch directory: a relative program path is
    // made absolute against the directory the campaign was started from.
    let o = &Options {
        target: absolute_program(&o.target),
        ..o.clone()
    };
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let found: Mutex<Vec<Finding>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for job in 0..o.jobs.max(1) {
            let (next, stop, found, failure, done) = (&next, &stop, &found, &failure, &done);
            let expect = &expect;
            let dir = scratch.path().join(format!("job-{job}"));
            s.spawn(move || {
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if o.runs.is_some_and(|n| i >= n)
                        || o.time.is_some_and(|t| started.elapsed() >= t)
                    {
                        break;
                    }
                    let input = generate::input(o.format, &mut Rng::for_run(o.seed, i));
                    clear(&dir);
                    let judged = match judge(o, &input, &dir) {
                        Ok(j) => j,
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("cannot run the target: {e}"));
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    let Some((v, rules)) = judged else { continue };
                    record(o, found, expect, input, v, rules, i, &dir);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut findings = found.into_inner().unwrap_or_else(|p| p.into_inner());
    findings.sort_by_key(|f| f.run);
    if let Some(out) = &o.out {
        save(o, out, &mut findings)?;
    }
    let runs = done.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        runs,
        seconds,
        execs_per_sec: if seconds > 0.0 {
            runs as f64 / seconds
        } else {
            0.0
        },
        findings,
    })
}

/// What makes two verdicts the same finding: kind, signal and the detail
/// with its numbers blotted (one assertion, one exit-code pair).
fn same(a: &Finding, kind: Kind, signal: Option<i32>, detail: &str) -> bool {
    let blot = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect()
    };
    a.kind == kind && a.signal == signal && blot(&a.detail) == blot(detail)
}

/// Adds a run's verdict to the findings: a new one is minimised; a known
/// one counts one more hit.
#[allow(clippy::too_many_arguments)]
fn record(
    o: &Options,
    found: &Mutex<Vec<Finding>>,
    expect: &[(String, Option<String>)],
    input: Input,
    v: Verdict,
    rules: Vec<&'static str>,
    run: u64,
    dir: &Path,
) {
    // A finding is kept with the lowest run that shows it, so the result is
    // the same whatever the number of jobs: a later run is one more hit.
    {
        let mut f = found.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = f.iter_mut().find(|x| same(x, v.kind, v.signal, &v.detail)) {
            if run > known.run {
                known.hits += 1;
                return;
            }
        }
    }
    let small = minimise(o, input, v.kind, dir);
    // The minimised input's own verdict and rules (a smaller input may
    // show the same kind of finding for another reason).
    clear(dir);
    let (v, rules) = match judge(o, &small, dir) {
        Ok(Some((w, r))) if w.kind == v.kind => (w, r),
        _ => (v, rules),
    };
    let expected = expect
        .iter()
        .any(|(k, r)| k == v.kind.name() && r.as_deref().is_none_or(|r| rules.contains(&r)));
    let mut f = found.lock().unwrap_or_else(|p| p.into_inner());
    // Another job may have found (and minimised) the same one meanwhile;
    // the lower run wins.
    if let Some(known) = f.iter_mut().find(|x| same(x, v.kind, v.signal, &v.detail)) {
        known.hits += 1;
        if run < known.run {
            known.run = run;
            known.rules = rules;
            known.input = small;
            known.stderr_tail = v.stderr_tail;
        }
        return;
    }
    f.push(Finding {
        kind: v.kind,
        signal: v.signal,
        rules,
        detail: v.detail,
        run,
        hits: 1,
        expected,
        reproducer: None,
        input: small,
        stderr_tail: v.stderr_tail,
    });
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
        std::fs::write(
            dir.join("finding.json"),
            serde_json::to_string_pretty(&meta).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        f.reproducer = Some(dir.display().to_string());
    }
    Ok(())
}

/// `qconform fuzz image`: exit 0 no new findings, 2 new findings, 1 could not run.
pub fn run(o: &Options, output: Output) -> i32 {
    let s = match campaign(o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qconform fuzz image: {e}");
            return 1;
        }
    };
    match output {
        Output::Json => crate::outln!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
        Output::Human => {
            crate::outln!(
                "{} runs in {:.1} s ({:.0} exec/s), {} findings",
                s.runs,
                s.seconds,
                s.execs_per_sec,
                s.findings.len()
            );
            for f in &s.findings {
                crate::outln!(
                    "{}{} [{}] run {} ({} hits): {}{}",
                    f.kind.name(),
                    if f.expected { " (expected)" } else { "" },
                    f.rules.join(", "),
                    f.run,
                    f.hits,
                    f.detail,
                    f.reproducer
                        .as_ref()
                        .map_or(String::new(), |r| format!(" -> {r}"))
                );
            }
        }
    }
    if s.findings.iter().any(|f| !f.expected) {
        2
    } else {
        0
    }
}
