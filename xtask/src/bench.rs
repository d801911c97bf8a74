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

/// One timed run of `argv`. A non-zero exit is an error unless `verdicts`
/// says the exit code is a check's verdict (corrupt images exit 2 or 3).
fn time_once(argv: &[&str], verdicts: bool) -> Result<Sample, super::DynError> {
    // Wall time from here (GNU time's %e has 10 ms steps: the sparse
    // 16 TiB checks take less); the time binary's own start-up falls on
    // both tools alike.
    let t = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "@@ %e %M"])
        .args(argv)
        .output()
        .map_err(|e| format!("cannot run /usr/bin/time ({e}); apt-get install time"))?;
    let wall = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("@@ "))
        .ok_or_else(|| format!("no timing from {argv:?}: {err}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    // A check's verdict is 0-3; a signal or another code is a failure.
    let verdict = out.status.code().is_some_and(|c| (0..=3).contains(&c));
    if !(out.status.success() || verdicts && verdict) {
        return Err(format!("{argv:?} failed: {err}").into());
    }
    Ok(Sample {
        wall,
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
        self.qemu_wall / self.ours_wall.max(1e-6)
    }
    fn met(&self) -> bool {
        self.ratio() >= self.target && self.ours_rss_kib <= self.qemu_rss_kib
    }
}

/// Times `qemu` and `ours` interleaved (one run of each in turn, after one
/// warm-up run each), so that load on a shared machine falls on both alike:
/// median wall of `runs`, highest peak RSS.
/// `verdicts`: the exit codes are check verdicts (corrupt inputs), not failures.
struct Cmds<'a> {
    qemu: &'a [&'a str],
    ours: &'a [&'a str],
    verdicts: bool,
}

fn compare(
    name: &'static str,
    runs: usize,
    target: f64,
    cmds: Cmds<'_>,
    before: &dyn Fn(),
) -> Result<Row, super::DynError> {
    let (mut qs, mut os) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        before();
        let q = time_once(cmds.qemu, cmds.verdicts)?;
        before();
        let o = time_once(cmds.ours, cmds.verdicts)?;
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
        "\n{:<22} {:>11} {:>10} {:>13} {:>10} {:>7} {:>7} {:>7}  (median of {runs}, peak RSS, interleaved)",
        "comparison", "qemu-img s", "RSS MiB", "qconform s", "RSS MiB", "ratio", "prev", "target"
    );
    for r in rows {
        let prev = previous
            .iter()
            .find(|(n, _)| n == r.name)
            .map_or("-".to_string(), |(_, p)| format!("{p:.1}x"));
        println!(
            "{:<22} {:>11.4} {:>10.1} {:>13.4} {:>10.1} {:>6.1}x {:>7} {:>6.1}x  {}",
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
/// name contains FILTER (check-1t, cat-mixed, cat-falloc-4g,
/// cat-compressed-deflate, cat-compressed-zstd, cat-chain3, check-many, check-snapshots,
/// check-sparse-16t, map-sparse-16t, proxy), median of 5 runs (3
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
            Cmds {
                qemu: &["qemu-img", "check", img_s],
                ours: &[bin_s, "check", img_s],
                verdicts: false,
            },
            &|| {},
        )?);
    }
    for (name, img) in cat_images(&dir, filter)? {
        rows.push(cat_bench(name, bin_s, &img, runs)?);
    }
    if wanted("check-many") {
        rows.push(many_bench(bin_s, &dir, runs)?);
    }
    if wanted("check-snapshots") {
        rows.push(snapshots_bench(bin_s, &dir, runs)?);
    }
    if wanted("check-sparse-16t") || wanted("map-sparse-16t") {
        let img = sparse_image(&dir)?;
        let img_s = img.to_str().ok_or("non-UTF-8 path")?;
        if wanted("check-sparse-16t") {
            rows.push(compare(
                "check-sparse-16t",
                runs,
                1.0,
                Cmds {
                    qemu: &["qemu-img", "check", img_s],
                    ours: &[bin_s, "check", img_s],
                    verdicts: false,
                },
                &|| {},
            )?);
        }
        if wanted("map-sparse-16t") {
            rows.push(compare(
                "map-sparse-16t",
                runs,
                1.0,
                Cmds {
                    qemu: &["qemu-img", "map", "--output=json", img_s],
                    ours: &[bin_s, "map", "--output", "json", img_s],
                    verdicts: false,
                },
                &|| {},
            )?);
        }
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

/// Guest data for the cat images, like users' (not a repeating pattern):
/// `random` is incompressible, `text` is random letters from a 64-symbol
/// alphabet (deflate and zstd take it to about three quarters). 64 MiB
/// each, made once from /dev/urandom; qemu-io writes them with `-s`.
fn source_file(dir: &Path, kind: &str) -> Result<std::path::PathBuf, super::DynError> {
    use std::io::Read;
    let path = dir.join(format!("{kind}-64m.bin"));
    if !path.exists() {
        let mut bytes = vec![0u8; 64 << 20];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        if kind == "text" {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            for b in &mut bytes {
                *b = ALPHABET[(*b & 63) as usize];
            }
        }
        let tmp = dir.join(format!("{kind}-64m.tmp"));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// Builds `name` in the cache folder once: `create` (qemu-img arguments
/// before the file name and size), then each qemu-io command in turn.
/// `@random` and `@text` in a command stand for the source files.
fn cat_image(
    dir: &Path,
    name: &str,
    create: &[&str],
    size: &str,
    writes: &[String],
) -> Result<std::path::PathBuf, super::DynError> {
    let img = dir.join(name);
    if img.exists() {
        return Ok(img);
    }
    println!("creating {} ...", img.display());
    let random = source_file(dir, "random")?;
    let text = source_file(dir, "text")?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut args = vec!["create", "-q"];
    args.extend(create);
    let out = Command::new("qemu-img")
        .args(&args)
        .arg(&tmp)
        .arg(size)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let (r, t) = (
        random.to_str().ok_or("non-UTF-8 path")?,
        text.to_str().ok_or("non-UTF-8 path")?,
    );
    let cmds: Vec<String> = writes
        .iter()
        .map(|w| w.replace("@random", r).replace("@text", t))
        .collect();
    // The format is named: a probed raw image refuses writes to sector 0.
    let fmt = create
        .windows(2)
        .find(|w| w[0] == "-f")
        .map_or("qcow2", |w| w[1]);
    let mut io = vec!["-f", fmt];
    for c in &cmds {
        io.extend(["-c", c.as_str()]);
    }
    if !cmds.is_empty() {
        build_step("qemu-io", &io, &tmp)?;
    }
    std::fs::rename(&tmp, &img)?;
    Ok(img)
}

/// qemu-io commands writing `count` runs of `len` MiB from `source`, the
/// first at `first` MiB, one every `step` MiB (`flags` before the source).
fn runs_of(flags: &str, source: &str, first: u64, step: u64, len: u64, count: u64) -> Vec<String> {
    (0..count)
        .map(|i| format!("write {flags} -s {source} {}M {len}M", first + i * step))
        .collect()
}

/// The cat rows: (name, image). Built once into the cache folder.
fn cat_images(
    dir: &Path,
    filter: &str,
) -> Result<Vec<(&'static str, std::path::PathBuf)>, super::DynError> {
    let wanted = |n: &str| n.contains(filter);
    let mut out = Vec::new();
    if wanted("cat-mixed") {
        // 1 GiB random data, 512 MiB zero clusters, 256 MiB compressed
        // (compressible text), the rest unallocated.
        let mut w = runs_of("", "@random", 0, 64, 64, 16);
        w.push("write -z 1G 512M".into());
        w.extend(runs_of("-c", "@text", 1536, 64, 64, 4));
        out.push((
            "cat-mixed",
            cat_image(dir, "mixed-2g-random.qcow2", &["-f", "qcow2"], "2G", &w)?,
        ));
    }
    if wanted("cat-falloc-4g") {
        // 4 GiB preallocated with fallocate, 256 MiB of random data in 16
        // runs of 16 MiB spread over the disk: the rest reads as zeros
        // from allocated clusters (unwritten extents of the file).
        let w = runs_of("", "@random", 3, 256, 16, 16);
        out.push((
            "cat-falloc-4g",
            cat_image(
                dir,
                "falloc-4g.qcow2",
                &["-f", "qcow2", "-o", "preallocation=falloc"],
                "4G",
                &w,
            )?,
        ));
    }
    for (row, ctype) in [
        ("cat-compressed-deflate", "zlib"),
        ("cat-compressed-zstd", "zstd"),
    ] {
        if !wanted(row) {
            continue;
        }
        // 1 GiB of compressible text, every cluster compressed by
        // `qemu-img convert -c` from a raw image holding it.
        let raw = cat_image(
            dir,
            "text-1g.raw",
            &["-f", "raw"],
            "1G",
            &runs_of("", "@text", 0, 64, 64, 16),
        )?;
        let img = dir.join(format!("compressed-1g-{ctype}.qcow2"));
        if !img.exists() {
            println!("creating {} ...", img.display());
            let tmp = dir.join(format!("compressed-1g-{ctype}.tmp"));
            let o = format!("compression_type={ctype}");
            let out = Command::new("qemu-img")
                .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", &o])
                .arg(&raw)
                .arg(&tmp)
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "qemu-img convert -c: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            std::fs::rename(&tmp, &img)?;
        }
        out.push((row, img));
    }
    if wanted("cat-chain3") {
        // A 1 GiB disk over three images, data in each: the base holds
        // 512 MiB, the middle 256 MiB (half over the base's), the top
        // 64 MiB in 4 MiB runs across the disk.
        let base = cat_image(
            dir,
            "chain-base.qcow2",
            &["-f", "qcow2"],
            "1G",
            &runs_of("", "@random", 0, 64, 64, 8),
        )?;
        // Backing names relative to the image (the path policy follows
        // those by default, not absolute ones).
        let name = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .ok_or("non-UTF-8 path")
        };
        let b = name(&base)?;
        let mid = cat_image(
            dir,
            "chain-mid.qcow2",
            &["-f", "qcow2", "-F", "qcow2", "-b", &b],
            "1G",
            &runs_of("", "@text", 384, 128, 64, 4),
        )?;
        let m = name(&mid)?;
        let top = cat_image(
            dir,
            "chain-top.qcow2",
            &["-f", "qcow2", "-F", "qcow2", "-b", &m],
            "1G",
            &runs_of("", "@random", 1, 64, 4, 16),
        )?;
        out.push(("cat-chain3", top));
    }
    Ok(out)
}

/// `qconform cat -o` vs `qemu-img convert -O raw` on `img`; after the
/// timed runs both outputs are made once more and must be byte-identical
/// (cmp) and occupy the same blocks (st_blocks), else the row fails.
fn cat_bench(
    name: &'static str,
    bin: &str,
    img: &Path,
    runs: usize,
) -> Result<Row, super::DynError> {
    use std::os::unix::fs::MetadataExt;
    let theirs = img.with_extension("qemu.raw");
    let ours = img.with_extension("ours.raw");
    let (img_s, theirs_s, ours_s) = (
        img.to_str().ok_or("non-UTF-8 path")?,
        theirs.to_str().ok_or("non-UTF-8 path")?,
        ours.to_str().ok_or("non-UTF-8 path")?,
    );
    let clean = || {
        let _ = std::fs::remove_file(&theirs);
        let _ = std::fs::remove_file(&ours);
    };
    let qemu = ["qemu-img", "convert", "-O", "raw", img_s, theirs_s];
    let mine = [bin, "cat", "-o", ours_s, img_s];
    let row = compare(
        name,
        runs,
        2.0,
        Cmds {
            qemu: &qemu,
            ours: &mine,
            verdicts: false,
        },
        &clean,
    )?;
    clean();
    time_once(&qemu, false)?;
    time_once(&mine, false)?;
    let same = Command::new("cmp")
        .args(["-s", theirs_s, ours_s])
        .status()?;
    let blocks = |p: &Path| std::fs::metadata(p).map(|m| m.blocks() * 512);
    let (tb, ob) = (blocks(&theirs)?, blocks(&ours)?);
    clean();
    // qemu-img's raw driver allocates the first 4 KiB block of a new file
    // whatever it holds (file-posix allocate_first_block, for its alignment
    // probe): where the disk starts with zeros its output has one block
    // more than ours. st_blocks also counts ext4's extent-tree blocks,
    // which vary by a block or so from one copy to the next.
    println!(
        "{name}: output {} qemu-img's; allocated bytes qemu-img {tb}, qconform {ob}{}",
        if same.success() {
            "identical to"
        } else {
            "DIFFERS from"
        },
        match tb.checked_sub(ob) {
            Some(0) => String::new(),
            Some(d) => format!(" ({d} fewer: qemu-img's first block, or extent-tree blocks)"),
            None => " (MORE than qemu-img)".into(),
        }
    );
    if !same.success() {
        return Err(format!("{name}: cat -o output differs from qemu-img convert's").into());
    }
    if ob > tb {
        return Err(format!("{name}: cat -o allocates {ob} bytes, qemu-img convert {tb}").into());
    }
    Ok(row)
}

/// Runs a tool to build a bench image; its output is not wanted.
fn build_step(tool: &str, args: &[&str], at: &Path) -> Result<(), super::DynError> {
    let out = Command::new(tool)
        .args(args)
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {args:?} {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// How many images `check-many` checks.
const MANY: usize = 1000;

/// The small images of `check-many`: (format, create options, virtual
/// size, qemu-io writes). Each is made once by qemu-img create and qemu-io,
/// then copied (and one in five corrupted) to make up the thousand.
const SMALL: &[(&str, &str, &str, &[&str])] = &[
    (
        "qcow2",
        "cluster_size=65536",
        "64M",
        &["write -P 1 0 1M", "write -P 2 32M 256k"],
    ),
    (
        "qcow2",
        "cluster_size=4096",
        "16M",
        &["write -P 3 0 64k", "write -P 4 8M 512k", "write -z 12M 64k"],
    ),
    (
        "qcow2",
        "cluster_size=65536,compat=0.10",
        "1G",
        &["write -P 5 0 64k", "write -P 6 700M 1M"],
    ),
    (
        "qcow2",
        "cluster_size=16384,refcount_bits=8",
        "128M",
        &["write -c -P 7 0 64k", "write -P 8 100M 128k"],
    ),
    (
        "qed",
        "cluster_size=65536",
        "64M",
        &["write -P 1 0 1M", "write -P 2 32M 256k"],
    ),
    (
        "qed",
        "cluster_size=4096",
        "16M",
        &["write -P 3 0 64k", "write -P 4 8M 512k"],
    ),
    (
        "qed",
        "cluster_size=65536,table_size=4",
        "1G",
        &["write -P 5 0 64k", "write -P 6 700M 1M"],
    ),
    (
        "parallels",
        "",
        "64M",
        &["write -P 1 0 1M", "write -P 2 32M 256k"],
    ),
    (
        "parallels",
        "cluster_size=65536",
        "16M",
        &["write -P 3 0 64k", "write -P 4 8M 512k"],
    ),
    (
        "parallels",
        "",
        "1G",
        &["write -P 5 0 64k", "write -P 6 700M 1M"],
    ),
];

/// One structured corruption of a copy of a small image (`nth` picks the
/// cluster); false when the mutator finds nothing to corrupt.
fn corrupt(format: &str, nth: usize, img: &mut Vec<u8>) -> bool {
    use parallels::mutate as pm;
    use qconform_core::{parallels, qcow2, qed};
    use qcow2::mutate as qm;
    use qed::mutate as em;
    match (format, nth % 3) {
        ("qcow2", 0) => qm::apply(qm::Mutation::RefcountUp { nth }, img).is_some(),
        ("qcow2", 1) => qm::apply(qm::Mutation::RefcountZero { nth }, img).is_some(),
        ("qcow2", _) => qm::apply(qm::Mutation::DuplicateDataPointer { nth }, img).is_some(),
        ("qed", 0) => em::apply(em::Mutation::Leak, img).is_some(),
        ("qed", _) => em::apply(em::Mutation::DuplicateData { nth }, img).is_some(),
        (_, 0) => pm::apply(pm::Mutation::Leak, img).is_some(),
        (_, _) => pm::apply(pm::Mutation::BatDuplicate { nth }, img).is_some(),
    }
}

/// The thousand small images (cached in target/bench/many): (format, path).
fn many_images(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, super::DynError> {
    let many = dir.join("many");
    let done = many.join("complete");
    let list: Vec<(String, std::path::PathBuf)> = (0..MANY)
        .map(|i| {
            let (fmt, ..) = SMALL[i % SMALL.len()];
            (fmt.to_string(), many.join(format!("img-{i:04}.{fmt}")))
        })
        .collect();
    if done.exists() {
        return Ok(list);
    }
    println!(
        "creating {MANY} small images in {} (qemu-img create + qemu-io, one in five corrupted) ...",
        many.display()
    );
    std::fs::create_dir_all(&many)?;
    let mut templates = Vec::new();
    for (t, (fmt, opts, size, writes)) in SMALL.iter().enumerate() {
        let path = many.join(format!("template-{t}.{fmt}"));
        let mut create = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            create.extend(["-o", opts]);
        }
        let _ = std::fs::remove_file(&path);
        let out = Command::new("qemu-img")
            .args(&create)
            .arg(&path)
            .arg(size)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img {create:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let mut io = vec!["-f", fmt];
        for w in *writes {
            io.extend(["-c", w]);
        }
        build_step("qemu-io", &io, &path)?;
        templates.push(std::fs::read(&path)?);
    }
    for (i, (fmt, path)) in list.iter().enumerate() {
        let mut img = templates[i % SMALL.len()].clone();
        if i % 5 == 4 && !corrupt(fmt, i / 5, &mut img) {
            return Err(format!("no corruption applies to {}", path.display()).into());
        }
        std::fs::write(path, img)?;
    }
    std::fs::write(&done, "")?;
    Ok(list)
}

/// `check-many`: a shell loop of `qemu-img check -f FMT` over 1,000 small
/// images against one `qconform check` of all of them (both cores).
fn many_bench(bin: &str, dir: &Path, runs: usize) -> Result<Row, super::DynError> {
    let list = many_images(dir)?;
    let tagged: Vec<String> = list
        .iter()
        .map(|(f, p)| format!("{f}:{}", p.display()))
        .collect();
    let mut qemu = vec![
        "sh",
        "-c",
        "for f in \"$@\"; do qemu-img check -f \"${f%%:*}\" \"${f#*:}\"; done; true",
        "sh",
    ];
    qemu.extend(tagged.iter().map(String::as_str));
    let paths: Vec<&str> = list
        .iter()
        .map(|(_, p)| p.to_str().ok_or("non-UTF-8 path"))
        .collect::<Result<_, _>>()?;
    let mut ours = vec![bin, "check", "-q"];
    ours.extend(&paths);
    // What the images are, as both tools see them: so the bench is not
    // timing a thousand "cannot open" errors.
    let out = Command::new(bin)
        .args(["check", "-q", "--output", "json"])
        .args(&paths)
        .output()?;
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let n = |field: &str| {
        reports
            .iter()
            .filter(|r| r[field].as_u64().unwrap_or(0) > 0)
            .count()
    };
    println!(
        "check-many: {} images ({} qcow2, {} qed, {} parallels): {} with corruptions, {} with leaks, {} with check errors",
        reports.len(),
        list.iter().filter(|(f, _)| f == "qcow2").count(),
        list.iter().filter(|(f, _)| f == "qed").count(),
        list.iter().filter(|(f, _)| f == "parallels").count(),
        n("corruptions"),
        n("leaks"),
        n("check-errors"),
    );
    compare(
        "check-many",
        runs,
        5.0,
        Cmds {
            qemu: &qemu,
            ours: &ours,
            verdicts: true,
        },
        &|| {},
    )
}

/// `check-snapshots`: 65,536 snapshots (QEMU's maximum), each with its own
/// L1 copy sharing one L2 table and data cluster, as `qemu-img snapshot -c`
/// makes them. Taking them with qemu-img would take hours; our writer
/// makes the same structure in a second, and qemu-img check must call it
/// clean before it is used.
fn snapshots_bench(bin: &str, dir: &Path, runs: usize) -> Result<Row, super::DynError> {
    use qconform_core::qcow2::write;
    let img = dir.join("snapshots-65536.qcow2");
    if !img.exists() {
        println!(
            "creating {} (65,536 snapshots, our writer) ...",
            img.display()
        );
        let mut d = write::Description::new(1 << 20, 9);
        // 65,537 references to the shared clusters need 32-bit refcounts.
        d.refcount_order = 5;
        d.clusters
            .insert(0, write::ClusterData::Data(vec![0x5a; 512]));
        d.snapshots = (0..65536).map(|i| format!("snap-{i}")).collect();
        let w = write::write(&d).map_err(|e| format!("writer: {e:?}"))?;
        let tmp = dir.join("snapshots-65536.tmp.qcow2");
        std::fs::write(&tmp, w.image)?;
        build_step("qemu-img", &["check", "-q"], &tmp)
            .map_err(|e| format!("qemu-img check does not call the snapshot image clean: {e}"))?;
        std::fs::rename(&tmp, &img)?;
    }
    let img_s = img.to_str().ok_or("non-UTF-8 path")?;
    compare(
        "check-snapshots",
        runs,
        1.0,
        Cmds {
            qemu: &["qemu-img", "check", img_s],
            ours: &[bin, "check", img_s],
            verdicts: false,
        },
        &|| {},
    )
}

/// A 16 TiB qcow2 (64 KiB clusters) holding 4 MiB of data in eight runs
/// spread over the whole disk: a 256 KiB L1 table, eight L2 tables. Check
/// and map should cost what the metadata holds, not the virtual size.
fn sparse_image(dir: &Path) -> Result<std::path::PathBuf, super::DynError> {
    let img = dir.join("sparse-16t.qcow2");
    if !img.exists() {
        println!(
            "creating {} (16 TiB virtual, 4 MiB written) ...",
            img.display()
        );
        let tmp = dir.join("sparse-16t.tmp.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg("16T")
            .status()?;
        if !st.success() {
            return Err("qemu-img create 16T failed".into());
        }
        let writes: Vec<String> = (0..8u64)
            .map(|i| format!("write -P {} {}G 512k", i + 1, i * 2048 + 7))
            .collect();
        let mut io = Vec::new();
        for w in &writes {
            io.extend(["-c", w.as_str()]);
        }
        build_step("qemu-io", &io, &tmp)?;
        std::fs::rename(&tmp, &img)?;
    }
    Ok(img)
}
