//! `cargo xtask fuzz`: the fuzz smoke (regressions replayed, then every
//! target for a while from its committed seeds), the speed benchmark, the
//! seed writer and the coverage summary.
//!
//! fuzz [--secs N] [--target T]...   replay corpus/regressions/T, then fuzz T for N s
//! fuzz --bench [--secs N] [--save]  exec/s per target, ASan and not, vs fuzz/bench.json
//! fuzz --seeds                      rewrite the raw-format seeds and regressions from code
//! fuzz --coverage [--target T]...   lines of core/src the committed corpus reaches
//! fuzz --differential [--target T]... [--corpus DIR]... [--generate N --seed S]
//!                                   corpora (or generated images) against qemu-img
//!
//! Every libFuzzer run takes its flags from fuzz/options/T.options (the
//! file ClusterFuzzLite ships next to the binary): -max_len, -timeout,
//! -rss_limit_mb and -dict.

use crate::{root, DynError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The committed figures `--bench` compares with (and `--save` rewrites).
const BENCH_FILE: &str = "fuzz/bench.json";

pub fn run(args: &[String]) -> Result<(), DynError> {
    let mut secs: Option<u64> = None;
    let mut targets: Vec<String> = Vec::new();
    let (mut bench, mut save, mut seeds, mut coverage) = (false, false, false, false);
    let mut differential = false;
    let (mut corpus, mut generate, mut seed) = (Vec::new(), 0u64, 0u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => secs = Some(it.next().ok_or("--secs needs a value")?.parse()?),
            "--target" => targets.push(it.next().ok_or("--target needs a value")?.clone()),
            "--bench" => bench = true,
            "--save" => save = true,
            "--seeds" => seeds = true,
            "--coverage" => coverage = true,
            "--differential" => differential = true,
            "--corpus" => corpus.push(PathBuf::from(it.next().ok_or("--corpus needs a folder")?)),
            "--generate" => generate = it.next().ok_or("--generate needs a count")?.parse()?,
            "--seed" => seed = it.next().ok_or("--seed needs a value")?.parse()?,
            other => return Err(format!("unknown fuzz option {other}").into()),
        }
    }
    if seeds {
        return write_seeds(&root());
    }
    if targets.is_empty() {
        targets = list_targets()?;
    }
    if differential {
        return crate::differential::run(&crate::differential::Args {
            targets,
            corpus,
            generate,
            seed,
        });
    }
    if bench {
        return run_bench(&targets, secs.unwrap_or(10), save);
    }
    if coverage {
        return run_coverage(&targets);
    }
    smoke(&targets, secs.unwrap_or(60))
}

/// The fuzz targets (fuzz/fuzz_targets/*.rs), sorted.
pub fn list_targets() -> Result<Vec<String>, DynError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("fuzz/fuzz_targets"))? {
        let p = e?.path();
        if let Some(s) = p.file_stem().and_then(|s| s.to_str()) {
            out.push(s.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The `[libfuzzer]` section of fuzz/options/T.options as libFuzzer flags
/// (`dict = x.dict` names a file of fuzz/dictionaries/).
pub fn libfuzzer_flags(root: &Path, target: &str) -> Result<Vec<String>, DynError> {
    let path = root.join("fuzz/options").join(format!("{target}.options"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (every target has an options file)", path.display()))?;
    let mut flags = Vec::new();
    let mut in_libfuzzer = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_libfuzzer = line == "[libfuzzer]";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_libfuzzer || line.starts_with('#') {
            continue;
        }
        let (k, v) = (k.trim(), v.trim());
        let v = if k == "dict" {
            root.join("fuzz/dictionaries").join(v).display().to_string()
        } else {
            v.to_owned()
        };
        flags.push(format!("-{k}={v}"));
    }
    Ok(flags)
}

/// How cargo-fuzz is run here: nightly with a sanitizer when the image
/// has nightly, else stable with RUSTC_BOOTSTRAP and no sanitizer.
struct Toolchain {
    nightly: bool,
}

impl Toolchain {
    fn detect() -> Toolchain {
        let nightly = Command::new("cargo")
            .args(["+nightly", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !nightly {
            // A failed -Z probe is cached here and breaks every later bootstrap build.
            let _ = std::fs::remove_file(root().join("target/.rustc_info.json"));
        }
        Toolchain { nightly }
    }

    /// `cargo [+nightly] fuzz <sub> [-s none]`.
    fn cargo_fuzz(&self, sub: &str, asan: bool) -> Command {
        let mut cmd = Command::new("cargo");
        if self.nightly {
            cmd.arg("+nightly");
        } else {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        cmd.args(["fuzz", sub]);
        if !asan || !self.nightly {
            cmd.args(["-s", "none"]);
        }
        cmd.current_dir(root());
        cmd
    }
}

/// The regression files of a target (README.md excepted).
pub fn regression_files(root: &Path, target: &str) -> Result<Vec<PathBuf>, DynError> {
    let dir = root.join("corpus/regressions").join(target);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && name != "README.md" && !name.starts_with('.') {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The CI smoke: per target, its regressions replayed under libFuzzer
/// (crash or timeout fails), then `secs` of fuzzing from the committed seeds
/// with the target's options.
fn smoke(targets: &[String], secs: u64) -> Result<(), DynError> {
    let root = root();
    let tc = Toolchain::detect();
    for t in targets {
        let flags = libfuzzer_flags(&root, t)?;
        let replay: Vec<String> = flags
            .iter()
            .filter(|f| !f.starts_with("-max_len="))
            .cloned()
            .collect();
        let regressions = regression_files(&root, t)?;
        if !regressions.is_empty() {
            let mut cmd = tc.cargo_fuzz("run", true);
            cmd.arg(t).args(&regressions).arg("--").args(&replay);
            run_checked(cmd, &format!("{t}: a regression fails again"))?;
        }
        let work = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&work)?;
        let mut cmd = tc.cargo_fuzz("run", true);
        cmd.arg(t)
            .arg(&work)
            .arg(root.join("corpus/fuzz").join(t))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .args(&flags);
        run_checked(
            cmd,
            &format!("fuzz target {t} failed (crash? see fuzz/artifacts/{t})"),
        )?;
    }
    Ok(())
}

fn run_checked(mut cmd: Command, what: &str) -> Result<(), DynError> {
    println!("running {cmd:?}");
    if cmd.status()?.success() {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// One libFuzzer run of `secs` from the committed seeds only (new inputs
/// go to a temporary folder); returns exec/s from -print_final_stats.
fn measure(tc: &Toolchain, target: &str, asan: bool, secs: u64) -> Result<u64, DynError> {
    let root = root();
    let tmp = tempfile::tempdir()?;
    let mut cmd = tc.cargo_fuzz("run", asan);
    cmd.arg(target)
        .arg(tmp.path())
        .arg(root.join("corpus/fuzz").join(target))
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .args(libfuzzer_flags(&root, target)?)
        .stdout(std::process::Stdio::null());
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{target} failed:\n{}", tail.join("\n")).into());
    }
    let stat = |key: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let execs = stat("stat::number_of_executed_units:").ok_or("no final stats")?;
    // Over the whole run (seed loading included), as the fuzzer sees it.
    Ok(stat("stat::average_exec_per_sec:").unwrap_or(execs / secs.max(1)))
}

/// Committed figures: target -> (asan, none).
type Figures = Vec<(String, u64, u64)>;

/// Reads fuzz/bench.json: `{"targets": {"T": {"asan": N, "none": N}, ...}}`
/// (a flat format this parser and `save_bench` agree on).
fn load_bench(path: &Path) -> Figures {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let Some((name, rest)) = rest.split_once('"') else {
            continue;
        };
        let num = |key: &str| {
            rest.split_once(&format!("\"{key}\": "))
                .and_then(|(_, v)| {
                    v.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .map(str::to_owned)
                })
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(a), Some(n)) = (num("asan"), num("none")) {
            out.push((name.to_owned(), a, n));
        }
    }
    out
}

fn save_bench(path: &Path, figures: &Figures, note: &str) -> Result<(), DynError> {
    let mut s = String::from("{\n");
    s.push_str(&format!("  \"note\": {note:?},\n  \"targets\": {{\n"));
    for (i, (t, a, n)) in figures.iter().enumerate() {
        let comma = if i + 1 < figures.len() { "," } else { "" };
        s.push_str(&format!(
            "    \"{t}\": {{ \"asan\": {a}, \"none\": {n} }}{comma}\n"
        ));
    }
    s.push_str("  }\n}\n");
    std::fs::write(path, s)?;
    Ok(())
}

/// The 1, 5 and 15 minute load averages: the machine is shared.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ratio(now: u64, before: Option<u64>) -> String {
    match before {
        Some(b) if b > 0 => format!("{:.2}x", now as f64 / b as f64),
        _ => "-".into(),
    }
}

/// `--bench`: every target `secs` with ASan and `secs` without, one at a
/// time, printed beside the committed figures.
fn run_bench(targets: &[String], secs: u64, save: bool) -> Result<(), DynError> {
    let root = root();
    let tc = Toolchain::detect();
    let path = root.join(BENCH_FILE);
    let before = load_bench(&path);
    println!(
        "{secs} s per target and mode, one run at a time; load average before: {}",
        load_average()
    );
    if !tc.nightly {
        println!("(no nightly toolchain: the ASan column is -s none as well)");
    }
    let mut figures: Figures = Vec::new();
    for t in targets {
        let asan = measure(&tc, t, true, secs)?;
        let none = measure(&tc, t, false, secs)?;
        figures.push((t.clone(), asan, none));
    }
    println!(
        "{:<26} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "target", "asan", "committed", "ratio", "none", "committed", "ratio"
    );
    for (t, a, n) in &figures {
        let prev = before.iter().find(|(p, ..)| p == t);
        println!(
            "{t:<26} {a:>10} {:>10} {:>7}   {n:>10} {:>10} {:>7}",
            prev.map_or("-".into(), |p| p.1.to_string()),
            ratio(*a, prev.map(|p| p.1)),
            prev.map_or("-".into(), |p| p.2.to_string()),
            ratio(*n, prev.map(|p| p.2)),
        );
    }
    println!("load average after: {}", load_average());
    if save {
        let note = format!(
            "exec/s from `cargo xtask fuzz --bench --secs {secs}` (libFuzzer average_exec_per_sec, one job, committed seeds, options of fuzz/options)"
        );
        save_bench(&path, &figures, &note)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `--seeds`: the raw-format seeds and regressions built from code
/// (qconform_fuzz::seeds), replacing what corpus/fuzz/<fmt>_check held.
pub fn write_seeds(root: &Path) -> Result<(), DynError> {
    let seeds = qconform_fuzz::seeds::image_seeds();
    for f in qconform_core::formats::FORMATS {
        let dir = root
            .join("corpus/fuzz")
            .join(qconform_fuzz::check_target(f.name()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    for s in &seeds {
        std::fs::write(
            root.join("corpus/fuzz").join(s.target).join(&s.name),
            &s.bytes,
        )?;
    }
    for s in qconform_fuzz::seeds::regressions() {
        let dir = root.join("corpus/regressions").join(s.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&s.name), &s.bytes)?;
    }
    println!("wrote {} seeds", seeds.len());
    // The differential targets' seeds: generator inputs, not images.
    let differential = qconform_fuzz::seeds::differential_seeds();
    for t in qconform_fuzz::seeds::DIFFERENTIAL_TARGETS {
        let dir = root.join("corpus/fuzz").join(t);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    for s in &differential {
        std::fs::write(
            root.join("corpus/fuzz").join(s.target).join(&s.name),
            &s.bytes,
        )?;
    }
    println!("wrote {} differential seeds", differential.len());
    Ok(())
}

/// `--coverage`: `cargo fuzz coverage` over each target's committed seeds
/// and regressions, merged, then llvm-cov's line summary of core/src.
fn run_coverage(targets: &[String]) -> Result<(), DynError> {
    let root = root();
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()?;
    let sysroot = String::from_utf8(sysroot.stdout)?.trim().to_owned();
    let bin = Path::new(&sysroot).join("lib/rustlib/x86_64-unknown-linux-gnu/bin");
    if !bin.join("llvm-cov").exists() {
        return Err("llvm-cov missing: rustup component add llvm-tools --toolchain nightly".into());
    }
    let mut profiles = Vec::new();
    let mut objects = Vec::new();
    for t in targets {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "coverage", t])
            .arg(root.join("corpus/fuzz").join(t))
            .current_dir(&root);
        let regressions = root.join("corpus/regressions").join(t);
        cmd.arg(&regressions);
        run_checked(cmd, &format!("cargo fuzz coverage {t} failed"))?;
        profiles.push(root.join("fuzz/coverage").join(t).join("coverage.profdata"));
        objects.push(
            root.join("target/x86_64-unknown-linux-gnu/coverage/x86_64-unknown-linux-gnu/release")
                .join(t),
        );
    }
    let merged = root.join("fuzz/coverage/all.profdata");
    let st = Command::new(bin.join("llvm-profdata"))
        .args(["merge", "-sparse", "-o"])
        .arg(&merged)
        .args(&profiles)
        .status()?;
    if !st.success() {
        return Err("llvm-profdata merge failed".into());
    }
    let mut cmd = Command::new(bin.join("llvm-cov"));
    cmd.arg("report")
        .arg(format!("-instr-profile={}", merged.display()))
        .arg("-ignore-filename-regex=(/rustc/|\\.cargo/registry|/fuzz/)")
        .arg(&objects[0]);
    for o in &objects[1..] {
        cmd.arg(format!("-object={}", o.display()));
    }
    let core = root.join("core/src");
    cmd.arg(&core);
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if let Some(total) = text.lines().find(|l| l.starts_with("TOTAL")) {
        let cols: Vec<&str> = total.split_whitespace().collect();
        // TOTAL regions missed % functions missed % lines missed % ...
        if cols.len() >= 10 {
            println!(
                "core/src: {} of {} lines reached by the committed corpus ({})",
                cols[7].parse::<u64>().unwrap_or(0) - cols[8].parse::<u64>().unwrap_or(0),
                cols[7],
                cols[9]
            );
        }
    }
    Ok(())
}
