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

pub fn run(args: &[String]) -> Result<(), super::DynError> {
    if args.first().map(String::as_str) == Some("proxy") {
        return proxy_bench();
    }
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
    cat_bench(&bin, &dir)?;
    proxy_bench()
}

/// A back-end that answers every request with an 8-byte reply, as fast as it can.
fn echo_backend(stream: std::os::unix::net::UnixStream) {
    use qconform::vhost::conn::Conn;
    use qconform_core::vhost_user::wire::Header;
    let c = Conn::from_stream(stream);
    let features = (1u64 << 30 | 1 << 32).to_le_bytes();
    while let Ok(r) = c.recv(std::time::Instant::now() + std::time::Duration::from_secs(10)) {
        if c.send(Header::reply(r.header.request, 8), &features, &[])
            .is_err()
        {
            return;
        }
    }
}

/// Forwards whole messages a -> b with nothing else: the baseline hop.
fn forward(a: std::os::unix::net::UnixStream, b: std::os::unix::net::UnixStream) {
    use qconform::vhost::conn::Conn;
    let (a, b) = (Conn::from_stream(a), Conn::from_stream(b));
    while let Ok(r) = a.recv(std::time::Instant::now() + std::time::Duration::from_secs(10)) {
        if b.send(r.header, &r.payload, &[]).is_err() {
            return;
        }
    }
}

/// `rounds` GET_FEATURES round trips over `front`; seconds taken.
fn round_trips(
    front: &std::os::unix::net::UnixStream,
    rounds: usize,
) -> Result<f64, super::DynError> {
    use qconform::vhost::conn::Conn;
    use qconform_core::vhost_user::wire::Header;
    let c = Conn::from_stream(front.try_clone()?);
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        c.send(Header::request(1, 0, false), &[], &[])?;
        c.recv(std::time::Instant::now() + std::time::Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The recording proxy's cost per forwarded message: GET_FEATURES round
/// trips to an in-process back-end, directly and through `record` (judged
/// and written to a transcript file), median of 5 runs of 20,000.
fn proxy_bench() -> Result<(), super::DynError> {
    use qconform::vhost::record::{proxy, Recorder};
    use qconform_core::vhost_user::session::Profile;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    const ROUNDS: usize = 20_000;
    let tmp = tempfile::tempdir()?;
    let mut per_message = Vec::new();
    for run in 0..7 {
        let (front, back) = UnixStream::pair()?;
        std::thread::spawn(move || echo_backend(back));
        let direct = round_trips(&front, ROUNDS)?;
        drop(front);
        let (front, proxy_front) = UnixStream::pair()?;
        let (proxy_back, back) = UnixStream::pair()?;
        std::thread::spawn(move || echo_backend(back));
        let file = std::fs::File::create(tmp.path().join(format!("bench-{run}.jsonl")))?;
        let mut rec = Recorder::new(
            "bench",
            Profile::default(),
            Box::new(std::io::BufWriter::with_capacity(1 << 18, file)),
            "proxy bench",
        );
        let p = std::thread::spawn(move || {
            proxy(
                proxy_front,
                proxy_back,
                &mut rec,
                Duration::from_secs(10),
                Duration::from_secs(2),
            )
        });
        let proxied = round_trips(&front, ROUNDS)?;
        drop(front);
        let _ = p.join();
        // Each round trip is two messages, each forwarded once.
        per_message.push((proxied - direct) / (2 * ROUNDS) as f64 * 1e6);
        println!(
            "proxy run {run}: direct {:.1} us/round trip, proxied {:.1} us/round trip",
            direct / ROUNDS as f64 * 1e6,
            proxied / ROUNDS as f64 * 1e6
        );
    }
    // The same path through a bare forwarder (no judging, no transcript):
    // what one more hop costs on this machine by itself.
    let mut bare = Vec::new();
    for _ in 0..5 {
        let (front, back) = UnixStream::pair()?;
        std::thread::spawn(move || echo_backend(back));
        let direct = round_trips(&front, ROUNDS)?;
        drop(front);
        let (front, proxy_front) = UnixStream::pair()?;
        let (proxy_back, back) = UnixStream::pair()?;
        std::thread::spawn(move || echo_backend(back));
        let (f2, b2) = (proxy_front.try_clone()?, proxy_back.try_clone()?);
        std::thread::spawn(move || forward(proxy_front, proxy_back));
        std::thread::spawn(move || forward(b2, f2));
        let forwarded = round_trips(&front, ROUNDS)?;
        bare.push((forwarded - direct) / (2 * ROUNDS) as f64 * 1e6);
    }
    let hop = median(bare);
    println!("for scale: a bare forwarder (two threads, blocking reads, no judging, no transcript) adds {hop:.1} us per message");
    let m = median(per_message);
    println!("vhost-user record proxy overhead: {m:.1} us per message end to end (median of 7 x {ROUNDS} round trips: read, judge, record, forward)");
    println!(
        "target: <= 20 us per message: {}",
        if m <= 20.0 { "MET" } else { "NOT MET" }
    );
    Ok(())
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
