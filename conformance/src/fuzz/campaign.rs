//! The campaign engine both out-of-process fuzzers share (`fuzz image`,
//! `vhost-user fuzz`): runs numbered from 0, run i's input drawn from
//! (seed, i) alone, spread over jobs; each finding kept once, with the
//! lowest run that shows it (so the result is the same on any machine and
//! with any number of jobs), minimised while the same kind reproduces,
//! and matched against an expectations file of known faults (rustls' BoGo
//! model) so that a campaign fails only on new ones.

use super::generate::Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A finding kind: its name is what expectations files and finding.json say.
pub trait FindingKind: Copy + Eq + Send + Serialize {
    /// The kind as written in an expectations file (`crash`, `hang`, …).
    fn name(self) -> &'static str;
}

/// One run's verdict before minimisation.
#[derive(Debug, Clone)]
pub struct Verdict<K> {
    /// What was found.
    pub kind: K,
    /// The signal that killed the target, if one did.
    pub signal: Option<i32>,
    /// What happened, in one line (numbers are blotted to compare findings).
    pub detail: String,
    /// The end of the target's stderr.
    pub stderr_tail: String,
    /// The rules the input breaks or the finding names (ids).
    pub rules: Vec<&'static str>,
}

/// What a fuzzer supplies to the engine.
pub trait Fuzzer: Sync {
    /// A generated input (with what minimisation may drop).
    type Input: Clone + Send;
    /// The kinds of finding it reports.
    type Kind: FindingKind;
    /// Run `index`'s input, drawn from `rng` (seeded by the campaign seed and the index).
    fn input(&self, rng: &mut Rng) -> Self::Input;
    /// Runs the target on `input` in the scratch directory `dir` (emptied
    /// before each call). Ok(None): nothing found; Err: the target cannot
    /// be run at all (the campaign stops and exits 1).
    fn judge(&self, input: &Self::Input, dir: &Path)
        -> Result<Option<Verdict<Self::Kind>>, String>;
    /// Inputs one step smaller than `input` (a mutation, a message, a cluster dropped).
    fn smaller(&self, input: &Self::Input) -> Vec<Self::Input>;
    /// How big an input is: minimisation keeps only smaller ones.
    fn weight(&self, input: &Self::Input) -> usize;
    /// Whether a smaller input's verdict is still the finding being
    /// minimised (by default: the same kind).
    fn reproduces(&self, got: &Verdict<Self::Kind>, want: &Verdict<Self::Kind>) -> bool {
        got.kind == want.kind
    }
}

/// A campaign's bounds and what counts as known.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stop after this long.
    pub time: Option<Duration>,
    /// Stop after this many runs.
    pub runs: Option<u64>,
    /// The campaign seed.
    pub seed: u64,
    /// Runs in parallel.
    pub jobs: usize,
    /// The expectations file's entries: (kind, rule or any).
    pub expect: Vec<(String, Option<String>)>,
    /// Most runs spent minimising one finding.
    pub minimise_budget: usize,
}

/// One finding, minimised.
#[derive(Debug, Clone, Serialize)]
#[serde(bound(serialize = "K: Serialize"))]
pub struct Finding<K: FindingKind, I> {
    pub kind: K,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The rules the input breaks or the finding names (ids).
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
    /// The minimised input.
    #[serde(skip)]
    pub input: I,
    /// The end of the target's stderr on the minimised input.
    #[serde(skip)]
    pub stderr_tail: String,
}

/// A campaign's result.
#[derive(Debug, Clone, Serialize)]
#[serde(bound(serialize = "K: Serialize"))]
pub struct Summary<K: FindingKind, I> {
    pub runs: u64,
    pub seconds: f64,
    pub execs_per_sec: f64,
    pub findings: Vec<Finding<K, I>>,
}

impl<K: FindingKind, I> Summary<K, I> {
    /// `fuzz` exit code: 2 when a finding is not expected, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.findings.iter().any(|f| !f.expected) {
            2
        } else {
            0
        }
    }

    /// The human summary: one line, then one per finding.
    pub fn print_human(&self) {
        crate::outln!(
            "{} runs in {:.1} s ({:.0} exec/s), {} findings",
            self.runs,
            self.seconds,
            self.execs_per_sec,
            self.findings.len()
        );
        for f in &self.findings {
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

/// Prints a campaign's result (or why it could not run, naming `command`)
/// and gives its exit code: 0 no new findings, 2 new findings, 1 could not run.
pub fn finish<K: FindingKind, I>(
    command: &str,
    result: Result<Summary<K, I>, String>,
    output: crate::Output,
) -> i32 {
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qconform {command}: {e}");
            return 1;
        }
    };
    match output {
        crate::Output::Json => {
            crate::outln!("{}", serde_json::to_string_pretty(&s).unwrap_or_default())
        }
        crate::Output::Human => s.print_human(),
    }
    s.exit_code()
}

/// Writes a finding's finding.json into its reproducer directory.
pub fn write_finding(dir: &Path, meta: &serde_json::Value) -> Result<(), String> {
    let path = dir.join("finding.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(meta).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads an expectations file: `KIND [RULE]` per line, `#` comments.
pub fn expectations(path: Option<&Path>) -> Result<Vec<(String, Option<String>)>, String> {
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

/// Whether a finding of `kind` on an input breaking `rules` is listed in
/// `expect` (an entry without a rule matches every finding of its kind).
pub fn is_expected<K: FindingKind>(
    expect: &[(String, Option<String>)],
    kind: K,
    rules: &[&str],
) -> bool {
    expect
        .iter()
        .any(|(k, r)| k == kind.name() && r.as_deref().is_none_or(|r| rules.contains(&r)))
}

/// Empties a scratch directory (files only; it holds no subdirectories).
pub fn clear(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Runs the campaign in a fresh scratch directory per job.
pub fn run<F: Fuzzer>(f: &F, s: &Settings) -> Result<Summary<F::Kind, F::Input>, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let found: Mutex<Vec<Finding<F::Kind, F::Input>>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for job in 0..s.jobs.max(1) {
            let (next, stop, found, failure, done) = (&next, &stop, &found, &failure, &done);
            let dir: PathBuf = scratch.path().join(format!("job-{job}"));
            scope.spawn(move || {
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if s.runs.is_some_and(|n| i >= n)
                        || s.time.is_some_and(|t| started.elapsed() >= t)
                    {
                        break;
                    }
                    let input = f.input(&mut Rng::for_run(s.seed, i));
                    clear(&dir);
                    let verdict = match f.judge(&input, &dir) {
                        Ok(v) => v,
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("cannot run the target: {e}"));
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Some(v) = verdict {
                        let deadline = s.time.map(|t| started + t);
                        record(f, s, found, input, v, i, &dir, deadline);
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut findings = found.into_inner().unwrap_or_else(|p| p.into_inner());
    findings.sort_by_key(|f| f.run);
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

/// Shrinks a finding's input while the same kind of finding reproduces,
/// within the settings' budget of runs and the campaign's `--time`
/// (`deadline`): past it the smallest input so far is kept, so a campaign
/// ends when it was told to even while minimising.
fn minimise<F: Fuzzer>(
    f: &F,
    s: &Settings,
    mut input: F::Input,
    want: &Verdict<F::Kind>,
    dir: &Path,
    deadline: Option<Instant>,
) -> F::Input {
    let mut budget = s.minimise_budget;
    'pass: loop {
        for v in f.smaller(&input) {
            if budget == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                break 'pass;
            }
            budget -= 1;
            clear(dir);
            if let Ok(Some(got)) = f.judge(&v, dir) {
                if f.reproduces(&got, want) && f.weight(&v) < f.weight(&input) {
                    input = v;
                    continue 'pass;
                }
            }
        }
        break;
    }
    input
}

/// What makes two verdicts the same finding: kind, signal and the detail
/// with its numbers blotted (one assertion, one exit-code pair).
fn same<K: FindingKind, I>(a: &Finding<K, I>, kind: K, signal: Option<i32>, detail: &str) -> bool {
    a.kind == kind && a.signal == signal && blot(&a.detail) == blot(detail)
}

/// A detail with its numbers blotted (every word that starts with a digit,
/// `0x…` included, becomes `#`): two runs hitting one fault at other
/// offsets, indices or message numbers say the same thing.
pub fn blot(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_number = false;
    for c in s.chars() {
        if in_number && c.is_ascii_alphanumeric() {
            continue;
        }
        in_number = c.is_ascii_digit();
        out.push(if in_number { '#' } else { c });
    }
    out
}

/// Adds a run's verdict to the findings: a new one is minimised; a known
/// one counts one more hit.
// The state of one job of `run`, its only caller, handed down whole.
#[allow(clippy::too_many_arguments)]
fn record<F: Fuzzer>(
    f: &F,
    s: &Settings,
    found: &Mutex<Vec<Finding<F::Kind, F::Input>>>,
    input: F::Input,
    v: Verdict<F::Kind>,
    run: u64,
    dir: &Path,
    deadline: Option<Instant>,
) {
    // A finding is kept with the lowest run that shows it, so the result is
    // the same whatever the number of jobs: a later run is one more hit.
    {
        let mut all = found.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = all
            .iter_mut()
            .find(|x| same(x, v.kind, v.signal, &v.detail))
        {
            if run > known.run {
                known.hits += 1;
                return;
            }
        }
    }
    let small = minimise(f, s, input, &v, dir, deadline);
    // The minimised input's own verdict and rules (a smaller input may
    // show the same kind of finding for another reason).
    clear(dir);
    let v = match f.judge(&small, dir) {
        Ok(Some(w)) if f.reproduces(&w, &v) => w,
        _ => v,
    };
    let expected = is_expected(&s.expect, v.kind, &v.rules);
    let mut all = found.lock().unwrap_or_else(|p| p.into_inner());
    // Another job may have found (and minimised) the same one meanwhile;
    // the lower run wins.
    if let Some(known) = all
        .iter_mut()
        .find(|x| same(x, v.kind, v.signal, &v.detail))
    {
        known.hits += 1;
        if run < known.run {
            known.run = run;
            known.rules = v.rules;
            known.input = small;
            known.stderr_tail = v.stderr_tail;
        }
        return;
    }
    all.push(Finding {
        kind: v.kind,
        signal: v.signal,
        rules: v.rules,
        detail: v.detail,
        run,
        hits: 1,
        expected,
        reproducer: None,
        input: small,
        stderr_tail: v.stderr_tail,
    });
}
