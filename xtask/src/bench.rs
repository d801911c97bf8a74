//! `cargo xtask bench`: qconform check vs qemu-img check on a
//! metadata-preallocated 1 TiB qcow2 image (sparse; about 161 MiB of
//! metadata), side by side: median wall and user time and peak RSS over
//! several runs, and the ratios against the targets (>= 5x faster, no more
//! peak memory). Needs qemu-img and GNU time (Debian package `time`).

use std::path::Path;
use std::process::Command;

const RUNS: usize = 5;

struct Sample {
    wall: f64,
    user: f64,
    rss_kib: u64,
}

fn time_once(argv: &[&str]) -> Result<Sample, super::DynError> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "@@ %e %U %M"])
        .args(argv)
        .output()
        .map_err(|e| format!("cannot run /usr/bin/time ({e}); apt-get install time"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("@@ "))
        .ok_or_else(|| format!("no timing from {argv:?}: {err}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if !out.status.success() {
        return Err(format!("{argv:?} failed: {err}").into());
    }
    Ok(Sample {
        wall: f[1].parse()?,
        user: f[2].parse()?,
        rss_kib: f[3].parse()?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(label: &str, argv: &[&str]) -> Result<(f64, f64, u64), super::DynError> {
    time_once(argv)?; // warm the page cache
    let samples: Vec<Sample> = (0..RUNS)
        .map(|_| time_once(argv))
        .collect::<Result<_, _>>()?;
    let wall = median(samples.iter().map(|s| s.wall).collect());
    let user = median(samples.iter().map(|s| s.user).collect());
    let rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "{label:<22} wall {wall:>6.3} s   user {user:>6.3} s   peak RSS {:>7.1} MiB",
        rss as f64 / 1024.0
    );
    Ok((wall, user, rss))
}

pub fn run(_args: &[String]) -> Result<(), super::DynError> {
    let root = super::root();
    let st = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "qconform"])
        .current_dir(&root)
        .status()?;
    if !st.success() {
        return Err("cargo build failed".into());
    }
    let bin = root.join("target/release/qconform");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("prealloc-1t.qcow2");
    if !img.exists() {
        println!(
            "creating {} (1 TiB virtual, preallocation=metadata) ...",
            img.display()
        );
        let st = Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "preallocation=metadata",
            ])
            .arg(&img)
            .arg("1T")
            .status()
            .map_err(|e| format!("cannot run qemu-img: {e}"))?;
        if !st.success() {
            return Err("qemu-img create failed".into());
        }
    }
    let img_s = img.to_str().ok_or("non-UTF-8 path")?;
    println!("qcow2 check of a 1 TiB metadata-preallocated image, median of {RUNS} runs:");
    let (qw, qu, qm) = measure("qemu-img check", &["qemu-img", "check", img_s])?;
    let (ow, ou, om) = measure(
        "qconform check",
        &[bin.to_str().ok_or("non-UTF-8 path")?, "check", img_s],
    )?;
    let speed = qw / ow;
    let mem = om as f64 / qm as f64;
    println!(
        "ratio: {speed:.1}x faster (wall), {:.1}x less user time, {:.2}x qemu-img's peak memory",
        qu / ou.max(0.001),
        mem
    );
    println!(
        "target: >= 5x faster at no more peak memory: {}",
        if speed >= 5.0 && om <= qm {
            "MET"
        } else {
            "NOT MET"
        }
    );
    let _ = Path::new(&img);
    Ok(())
}
