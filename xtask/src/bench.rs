//! `cargo xtask bench`: qconform against qemu-img on the same images, in
//! one table: median wall time of 5 interleaved runs and peak RSS of both
//! tools (GNU time), the ratio, the committed previous ratio and the
//! target of issue 15. Images are built once into target/bench. Needs
//! qemu-img, qemu-io and GNU time (Debian package `time`).

use std::path::Path;
use std::process::Command;

const RUNS: usize = 5;

struct Sample {
    wall: f64,
    rss_kib: u64,
}

fn time_once(argv: &[&str]) -> Result<Sample, super::DynError> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "@@ %e %M"])
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
        wall: f.get(1).ok_or("short timing line")?.parse()?,
        rss_kib: f.get(2).ok_or("short timing line")?.parse()?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The committed ratios of the previous bench (`name ratio` per line),
/// printed beside today's so a regression shows; `--record` rewrites it.
const PREVIOUS: &str = "xtask/bench-ratios.txt";

/// One row of the table: both tools timed on the same input.
struct Row {
    name: &'static str,
    qemu_wall: f64,
    qemu_rss_kib: u64,
    ours_wall: f64,
    ours_rss_kib: u64,
    /// Speed-up the issue asks for (qemu-img's wall / ours).
    target: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.qemu_wall / self.ours_wall.max(0.001)
    }
    fn met(&self) -> bool {
        self.ratio() >= self.target && self.ours_rss_kib <= self.qemu_rss_kib
    }
}

/// Times `qemu` and `ours` interleaved (one run of each in turn, after one
/// warm-up run each), so that load on a shared machine falls on both alike:
/// median wall of `runs`, highest peak RSS.
fn compare(
    name: &'static str,
    runs: usize,
    target: f64,
    qemu: &[&str],
    ours: &[&str],
    before: &dyn Fn(),
) -> Result<Row, super::DynError> {
    let (mut qs, mut os) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        before();
        let q = time_once(qemu)?;
        before();
        let o = time_once(ours)?;
        // Run 0 warms the page cache.
        if run > 0 {
            qs.push(q);
            os.push(o);
        }
    }
    let wall = |v: &[Sample]| median(v.iter().map(|s| s.wall).collect());
    let rss = |v: &[Sample]| v.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Ok(Row {
        name,
        qemu_wall: wall(&qs),
        qemu_rss_kib: rss(&qs),
        ours_wall: wall(&os),
        ours_rss_kib: rss(&os),
        target,
    })
}

fn previous_ratios(root: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(root.join(PREVIOUS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, r) = l.split_once(' ')?;
            Some((name.to_string(), r.trim().parse().ok()?))
        })
        .collect()
}

fn print_table(rows: &[Row], previous: &[(String, f64)], runs: usize) {
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "\n{:<14} {:>13} {:>10} {:>13} {:>10} {:>7} {:>7} {:>7}  (median of {runs}, peak RSS, interleaved)",
        "comparison", "qemu-img s", "RSS MiB", "qconform s", "RSS MiB", "ratio", "prev", "target"
    );
    for r in rows {
        let prev = previous
            .iter()
            .find(|(n, _)| n == r.name)
            .map_or("-".to_string(), |(_, p)| format!("{p:.1}x"));
        println!(
            "{:<14} {:>13.3} {:>10.1} {:>13.3} {:>10.1} {:>6.1}x {:>7} {:>6.1}x  {}",
            r.name,
            r.qemu_wall,
            mib(r.qemu_rss_kib),
            r.ours_wall,
            mib(r.ours_rss_kib),
            r.ratio(),
            prev,
            r.target,
            if r.met() { "MET" } else { "NOT MET" }
        );
    }
}

/// `cargo xtask bench [--quick] [--record] [FILTER]`: the comparisons whose
/// name contains FILTER (check-1t, cat-mixed, proxy), median of 5 runs (3
/// with --quick); --record writes the ratios to xtask/bench-ratios.txt.
pub fn run(args: &[String]) -> Result<(), super::DynError> {
    let quick = args.iter().any(|a| a == "--quick");
    let record = args.iter().any(|a| a == "--record");
    let filter = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("", String::as_str);
    let runs = if quick { 3 } else { RUNS };
    let wanted = |name: &str| name.contains(filter);
    let root = super::root();
    let st = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "qconform"])
        .current_dir(&root)
        .status()?;
    if !st.success() {
        return Err("cargo build failed".into());
    }
    let bin = root.join("target/release/qconform");
    let bin_s = bin.to_str().ok_or("non-UTF-8 path")?;
    // The cache folder: images are built once and kept.
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    if wanted("check-1t") {
        let img = prealloc_image(&dir)?;
        let img_s = img.to_str().ok_or("non-UTF-8 path")?;
        rows.push(compare(
            "check-1t",
            runs,
            10.0,
            &["qemu-img", "check", img_s],
            &[bin_s, "check", img_s],
            &|| {},
        )?);
    }
    if wanted("cat-mixed") {
        rows.push(cat_bench(bin_s, &dir, runs)?);
    }
    if !rows.is_empty() {
        print_table(&rows, &previous_ratios(&root), runs);
        if record {
            let mut all = previous_ratios(&root);
            all.retain(|(n, _)| !rows.iter().any(|r| r.name == n));
            all.extend(rows.iter().map(|r| (r.name.to_string(), r.ratio())));
            let text: String = all.iter().map(|(n, r)| format!("{n} {r:.1}\n")).collect();
            std::fs::write(root.join(PREVIOUS), text)?;
        }
    }
    if wanted("proxy") {
        proxy_bench()?;
    }
    Ok(())
}

/// The 1 TiB `preallocation=metadata` qcow2 (64 KiB clusters, about 161 MiB
/// of metadata, data clusters allocated in L2 but holes in the file).
fn prealloc_image(dir: &Path) -> Result<std::path::PathBuf, super::DynError> {
    let img = dir.join("prealloc-1t.qcow2");
    if !img.exists() {
        println!(
            "creating {} (1 TiB virtual, preallocation=metadata) ...",
            img.display()
        );
        let tmp = dir.join("prealloc-1t.tmp.qcow2");
        let st = Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "preallocation=metadata",
            ])
            .arg(&tmp)
            .arg("1T")
            .status()
            .map_err(|e| format!("cannot run qemu-img: {e}"))?;
        if !st.success() {
            return Err("qemu-img create failed".into());
        }
        std::fs::rename(&tmp, &img)?;
    }
    Ok(img)
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
fn cat_bench(bin: &str, dir: &Path, runs: usize) -> Result<Row, super::DynError> {
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
    let clean = || {
        let _ = std::fs::remove_file(&out);
    };
    let row = compare(
        "cat-mixed",
        runs,
        2.0,
        &["qemu-img", "convert", "-O", "raw", img_s, out_s],
        &[bin, "cat", "-o", out_s, img_s],
        &clean,
    );
    clean();
    row
}
