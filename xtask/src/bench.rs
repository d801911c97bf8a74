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
    measure_with(label, argv, &|| {})
}

/// Like [`measure`], running `before` ahead of every run (deleting an output
/// file, so no run pays for truncating the previous one).
fn measure_with(
    label: &str,
    argv: &[&str],
    before: &dyn Fn(),
) -> Result<(f64, f64, u64), super::DynError> {
    before();
    time_once(argv)?; // warm the page cache
    let samples: Vec<Sample> = (0..RUNS)
        .map(|_| {
            before();
            time_once(argv)
        })
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
    cat_bench(&bin, &dir)
}

/// `qconform cat` vs `qemu-img convert -O raw` on a 2 GiB image with mixed
/// data, zero and compressed clusters (built once with qemu-io, cached).
fn cat_bench(bin: &Path, dir: &Path) -> Result<(), super::DynError> {
    let img = dir.join("mixed-2g.qcow2");
    if !img.exists() {
        println!(
            "creating {} (2 GiB: 1 GiB data, 512 MiB zero, 256 MiB compressed) ...",
            img.display()
        );
        let tmp = dir.join("mixed-2g.tmp.qcow2");
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg("2G")
            .status()?
            .success()
            && Command::new("qemu-io")
                .args([
                    "-c",
                    "write -P 0x5a 0 1G",
                    "-c",
                    "write -z 1G 512M",
                    "-c",
                    "write -c -P 0x33 1536M 256M",
                ])
                .arg(&tmp)
                .stdout(std::process::Stdio::null())
                .status()?
                .success();
        if !ok {
            return Err("building the mixed image failed".into());
        }
        std::fs::rename(&tmp, &img)?;
    }
    let out = dir.join("mixed-2g.raw");
    let (img_s, out_s) = (
        img.to_str().ok_or("non-UTF-8 path")?,
        out.to_str().ok_or("non-UTF-8 path")?,
    );
    println!("virtual disk of a 2 GiB mixed image to a raw file, median of {RUNS} runs:");
    let clean = || {
        let _ = std::fs::remove_file(&out);
    };
    let (qw, _, qm) = measure_with(
        "qemu-img convert",
        &["qemu-img", "convert", "-O", "raw", img_s, out_s],
        &clean,
    )?;
    let (ow, _, om) = measure_with(
        "qconform cat -o",
        &[
            bin.to_str().ok_or("non-UTF-8 path")?,
            "cat",
            "-o",
            out_s,
            img_s,
        ],
        &clean,
    )?;
    let _ = std::fs::remove_file(&out);
    let ratio = qw / ow;
    println!(
        "ratio: {ratio:.2}x qemu-img's throughput, {:.2}x its peak memory",
        om as f64 / qm as f64
    );
    println!(
        "target: >= 1.5x qemu-img's throughput: {}",
        if ratio >= 1.5 { "MET" } else { "NOT MET" }
    );
    Ok(())
}
