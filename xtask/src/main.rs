//! `cargo xtask <task>`: project automation (matklad's xtask convention).
//!
//! corpus [--only NAME...]  rebuild corpus/images from the recipes and the fuzz seeds from them
//! golden            rewrite golden/ from the current reports
//! seeds             rewrite the vhost-user fuzz seeds from corpus/vhost-user
//! peers             fetch QEMU 7.2 (front-end) and virtiofsd (back-end) into ~/.cache/qconform
//! fuzz [--secs N] [--target T]   replay regressions, then fuzz (nightly + ASan when present, else -s none)
//! fuzz --bench | --seeds | --coverage | --differential   exec/s, seeds from code, coverage, vs qemu-img (xtask/src/fuzz.rs)
//! bench [--quick] [--record] [FILTER]   qconform vs qemu-img side by side (xtask/src/bench.rs)
//! test [ARGS...]    provision what the tests need (peers), then `cargo test --workspace ARGS...`
//! ci                what .ci/run runs after installing tools

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod differential;
mod fuzz;
mod peers;

type DynError = Box<dyn std::error::Error>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match task {
        "corpus" => corpus(rest),
        "golden" => golden(),
        "seeds" => vhost_seeds(&root()),
        "recordings" => recordings(&root()),
        "peers" => peers::run_peers(),
        "fuzz" => fuzz::run(rest),
        "bench" => bench::run(rest),
        "test" => test(rest),
        "ci" => ci(),
        _ => {
            eprintln!(
                "usage: cargo xtask corpus | golden | fuzz [--secs N] [--target T] [--bench | --seeds | --coverage] | bench [--quick] [--record] [FILTER] | test [ARGS...] | ci"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Rebuilds every corpus image, or only the named cases (`--only NAME...`),
/// which keeps unrelated binary files (snapshot dates, LUKS salts) unchanged.
fn corpus(args: &[String]) -> Result<(), DynError> {
    let root = root();
    let dir = root.join("corpus/images");
    let only: Vec<&str> = match args.first().map(String::as_str) {
        Some("--only") => args[1..].iter().map(String::as_str).collect(),
        Some(other) => return Err(format!("unknown corpus option {other}").into()),
        None => Vec::new(),
    };
    if only.is_empty() && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    for (name, d) in qconform::corpus::writer_cases() {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let w = qconform_core::qcow2::write::write(&d).map_err(|e| format!("{name}: {e}"))?;
        std::fs::write(dir.join(format!("{name}.qcow2")), &w.image)?;
        if let (Some(bytes), Some((file, _))) = (&w.data_file, &d.data_file) {
            std::fs::write(dir.join(file), bytes)?;
        }
        println!("wrote {name}");
    }
    for (name, bytes) in qconform::corpus::writer_qed_parallels_cases() {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let ext = qconform_core::formats::probe(&bytes.as_slice())
            .ok_or_else(|| format!("{name}: the writer wrote no format qconform knows"))?
            .extension();
        std::fs::write(dir.join(format!("{name}.{ext}")), bytes)?;
        println!("wrote {name}");
    }
    parallels_corpus(&root, &dir, &only)?;
    for case in qconform::corpus::qed_cases() {
        if !only.is_empty() && !only.contains(&case.name) && !only.contains(&"qed") {
            continue;
        }
        let tmp = format!("{}.tmp", case.name);
        qconform::corpus::build_steps(&tmp, case.steps, None, &dir)?;
        let built = dir.join(format!("{tmp}.qcow2"));
        let mut bytes = std::fs::read(&built)?;
        std::fs::remove_file(&built)?;
        if let Some(edit) = case.edit {
            edit(&mut bytes);
        }
        std::fs::write(dir.join(format!("{}.qed", case.name)), bytes)?;
        println!("built {}", case.name);
    }
    let cases: Vec<_> = qconform::corpus::cases()
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .collect();
    for case in &cases {
        qconform::corpus::build(case, &dir)?;
        println!("built {}", case.name);
    }
    if only.is_empty() || only.contains(&"vhost-user") {
        transcripts(&root)?;
    }
    // Fuzz seeds of the raw-format targets: small images built from code.
    fuzz::write_seeds(&root)?;
    println!("{} cases under {}", cases.len(), dir.display());
    Ok(())
}

/// Records real front-end/back-end conversations through `qconform
/// vhost-user record` (corpus/vhost-user/recorded/): QEMU 7.2 against
/// qemu-storage-daemon 10.0.2 and against virtiofsd. Needs `cargo xtask peers`.
fn recordings(root: &Path) -> Result<(), DynError> {
    use std::time::Duration;
    let dir = root.join("corpus/vhost-user/recorded");
    std::fs::create_dir_all(&dir)?;
    let tmp = tempfile::tempdir()?;
    let peers = peers::cache_dir();
    let qemu_root = peers.join("qemu-7.2");
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let share = tmp.path().join("share");
    std::fs::create_dir_all(&share)?;
    let back = tmp.path().join("back.sock");
    let front = tmp.path().join("front.sock");
    let qsd = |queues: u32| {
        vec![
            "qemu-storage-daemon".to_string(),
            "--blockdev".into(),
            format!("driver=file,node-name=file0,filename={}", disk.display()),
            "--export".into(),
            format!("type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues={queues}", back.display()),
        ]
    };
    let virtiofsd = vec![
        peers.join("virtiofsd/bin/virtiofsd").display().to_string(),
        format!("--socket-path={}", back.display()),
        format!("--shared-dir={}", share.display()),
        "--sandbox=none".into(),
    ];
    // QEMU as front-end: `device` names chardev vu0; stopped with SIGTERM after 5 s.
    let qemu = |device: &'static str| {
        let qemu_root = qemu_root.clone();
        move |front: &Path| -> Result<(), DynError> {
            run_qemu_briefly(qconform::vhost::qemu_front_end(&qemu_root, front, device))
        }
    };
    // The probe as front-end: a longer conversation (config, status, memory
    // slots, REPLY_ACK, every ring) than a BIOS-era guest makes QEMU have.
    let probe = |front: &Path| -> Result<(), DynError> {
        qconform::vhost::probe::record_conversation(front, Duration::from_secs(2), "probe")?;
        Ok(())
    };
    type FrontEnd<'a> = Box<dyn Fn(&Path) -> Result<(), DynError> + 'a>;
    let runs: Vec<(&str, Vec<String>, FrontEnd<'_>, &str)> = vec![
        ("proxied-probe-vs-qsd", qsd(2), Box::new(probe), "qconform vhost-user probe --no-robustness -> qconform vhost-user record -> qemu-storage-daemon 10.0.2 (vhost-user-blk, 64 MiB raw, num-queues=2)"),
        ("proxied-probe-vs-virtiofsd", virtiofsd.clone(), Box::new(probe), "qconform vhost-user probe --no-robustness -> qconform vhost-user record -> virtiofsd 1.14.0 (--sandbox=none)"),
        ("qemu72-vs-qsd", qsd(1), Box::new(qemu("vhost-user-blk-pci,chardev=vu0,num-queues=1")), "QEMU 7.2.22 (-device vhost-user-blk-pci, TCG, SeaBIOS, memfd guest RAM, SIGTERM after 5 s) -> qconform vhost-user record -> qemu-storage-daemon 10.0.2 (vhost-user-blk, 64 MiB raw, num-queues=1)"),
        ("qemu72-vs-virtiofsd", virtiofsd, Box::new(qemu("vhost-user-fs-pci,chardev=vu0,tag=qconform")), "QEMU 7.2.22 (-device vhost-user-fs-pci, TCG, SeaBIOS, memfd guest RAM, SIGTERM after 5 s) -> qconform vhost-user record -> virtiofsd 1.14.0 (--sandbox=none)"),
    ];
    for (name, backend, front_end, description) in runs {
        record_one(
            &dir.join(format!("{name}.jsonl")),
            &backend,
            &back,
            &front,
            &*front_end,
            description,
        )?;
        println!("recorded {name}");
    }
    Ok(())
}

/// Runs QEMU (a front-end command) for 5 seconds, then stops it with
/// SIGTERM, which makes it stop its rings first.
fn run_qemu_briefly(mut cmd: Command) -> Result<(), DynError> {
    let mut q = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start QEMU (run `cargo xtask peers`): {e}"))?;
    std::thread::sleep(std::time::Duration::from_secs(5));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(q.id().to_string())
        .status();
    let _ = q.wait();
    Ok(())
}

/// Starts `backend` (which listens on `back`), records through the proxy
/// on `front` while `front_end` talks to it, and stops the back-end.
fn record_one(
    out: &Path,
    backend: &[String],
    back: &Path,
    front: &Path,
    front_end: &dyn Fn(&Path) -> Result<(), DynError>,
    description: &str,
) -> Result<(), DynError> {
    use qconform::vhost::record;
    use qconform_core::vhost_user::session::Profile;
    use std::time::Duration;
    let _ = std::fs::remove_file(back);
    let mut b = Command::new(&backend[0])
        .args(&backend[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {} (run `cargo xtask peers`): {e}", backend[0]))?;
    wait_for_path(back)?;
    let opts = record::Options {
        listen: front.to_path_buf(),
        connect: back.to_path_buf(),
        out: out.to_path_buf(),
        idle_timeout: Duration::from_secs(20),
        message_timeout: Duration::from_secs(2),
        profile: Profile { lenient: true },
        description: description.into(),
    };
    let recorder = std::thread::spawn(move || record::record_once(&opts));
    wait_for_path(front)?;
    let talked = front_end(front);
    let session = recorder.join().map_err(|_| "the recorder panicked")?;
    let _ = b.kill();
    let _ = b.wait();
    talked?;
    let session = session?;
    println!(
        "  {} messages, {} violations",
        session.messages(),
        session.report().violations
    );
    Ok(())
}

/// Records the clean conversations from real peers (our serve and
/// qemu-storage-daemon) and writes every edited transcript.
fn transcripts(root: &Path) -> Result<(), DynError> {
    use qconform::vhost::{corpus, probe, serve};
    use std::time::Duration;
    let dir = root.join(corpus::DIR);
    std::fs::create_dir_all(&dir)?;
    let tmp = std::env::temp_dir().join(format!("qconform-xtask-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    // 1. Our probe against our reference back-end.
    let sock = tmp.join("serve.sock");
    let opts = serve::Options::reference(sock.clone(), 1);
    let server = std::thread::spawn(move || serve::run(&opts, qconform::Output::Json));
    wait_for_path(&sock)?;
    let text = probe::record_conversation(
        &sock,
        Duration::from_secs(2),
        "qconform probe against qconform serve (reference back-end, 1 queue)",
    )?;
    let _ = server.join();
    std::fs::write(dir.join(format!("{}.jsonl", corpus::BASE)), &text)?;
    // 2. Our probe against qemu-storage-daemon exporting vhost-user-blk.
    let disk = tmp.join("disk.img");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&disk)
        .arg("64M")
        .status()?;
    if !st.success() {
        return Err("qemu-img create failed".into());
    }
    let qsock = tmp.join("qsd.sock");
    let mut qsd = Command::new("qemu-storage-daemon")
        .arg("--blockdev").arg(format!("driver=file,node-name=file0,filename={}", disk.display()))
        .arg("--export").arg(format!("type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues=2", qsock.display()))
        .stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null())
        .spawn().map_err(|e| format!("cannot start qemu-storage-daemon: {e}"))?;
    wait_for(&qsock)?;
    let qtext = probe::record_conversation(
        &qsock,
        Duration::from_secs(2),
        "qconform probe against qemu-storage-daemon 10.0.2 (vhost-user-blk, num-queues=2)",
    );
    let _ = qsd.kill();
    let _ = qsd.wait();
    std::fs::write(dir.join("probe-vs-qsd.jsonl"), qtext?)?;
    // 3. Our probe against virtiofsd (single-shot: one connection, then it exits).
    let peers = peers::cache_dir();
    let share = tmp.join("share");
    std::fs::create_dir_all(&share)?;
    let fsock = tmp.join("fs.sock");
    let mut vfs = Command::new(peers.join("virtiofsd/bin/virtiofsd"))
        .arg(format!("--socket-path={}", fsock.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .arg("--sandbox=none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start virtiofsd (run `cargo xtask peers`): {e}"))?;
    wait_for_path(&fsock)?;
    let ftext = probe::record_conversation(
        &fsock,
        Duration::from_secs(2),
        "qconform probe against virtiofsd 1.14.0 (rust-vmm vhost 0.16)",
    );
    let _ = vfs.kill();
    let _ = vfs.wait();
    std::fs::write(dir.join("probe-vs-virtiofsd.jsonl"), ftext?)?;
    // 4. QEMU 7.2 (vhost-user-blk-pci, TCG, SeaBIOS) against our serve.
    let qemu_root = peers.join("qemu-7.2");
    let ssock = tmp.join("qemu.sock");
    let qemu_transcript = dir.join("qemu72-vs-serve.jsonl");
    let sopts = serve::Options {
        idle_timeout: Duration::from_secs(30),
        transcript: Some(qemu_transcript.clone()),
        ..serve::Options::reference(ssock.clone(), 1)
    };
    let server = std::thread::spawn(move || serve::run(&sopts, qconform::Output::Json));
    wait_for_path(&ssock)?;
    run_qemu_briefly(qconform::vhost::qemu_blk_front_end(&qemu_root, &ssock))?;
    let _ = server.join();
    // Timestamps and QEMU's user addresses differ per run; the structure does not.
    // 5. Edited copies of the first, one broken rule each.
    for case in corpus::cases() {
        std::fs::write(
            dir.join(format!("{}.jsonl", case.name)),
            corpus::build(&text, &case)?,
        )?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "{} transcripts under {}",
        corpus::cases().len() + 4,
        dir.display()
    );
    vhost_seeds(root)
}

/// Fuzz seeds from the transcripts: each conversation as a session stream,
/// and each distinct request payload for the decoder.
fn vhost_seeds(root: &Path) -> Result<(), DynError> {
    use qconform_core::vhost_user::transcript;
    let session_dir = root.join("corpus/fuzz/vhost_user_session");
    let decode_dir = root.join("corpus/fuzz/vhost_user_decode");
    for d in [&session_dir, &decode_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        std::fs::create_dir_all(d)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, path) in list_files(&root.join(qconform::vhost::corpus::DIR), "jsonl")? {
        let (_, entries) =
            transcript::parse(&std::fs::read_to_string(&path)?).map_err(|e| e.to_string())?;
        std::fs::write(
            session_dir.join(&name),
            qconform_fuzz::encode_stream(&entries),
        )?;
        for e in &entries {
            let (Some(req), Some(hex)) = (e.request, e.payload_hex.as_deref()) else {
                continue;
            };
            let Some(payload) = transcript::from_hex(hex) else {
                continue;
            };
            let backend = e.channel == Some(qconform_core::vhost_user::request::Channel::Backend);
            let mut seed =
                vec![(req.saturating_sub(1) as u8 & 0x3f) | if backend { 0x80 } else { 0 }];
            seed.extend_from_slice(&payload);
            if seen.insert(seed.clone()) {
                std::fs::write(decode_dir.join(format!("{:03}-{req}", seen.len())), seed)?;
            }
        }
    }
    Ok(())
}

fn list_files(dir: &Path, ext: &str) -> Result<Vec<(String, PathBuf)>, DynError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == ext) {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                out.push((stem.to_owned(), p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Waits up to 5 s for a socket file to appear (without connecting: a
/// single-shot peer would take a test connection as its one front-end).
fn wait_for_path(sock: &Path) -> Result<(), DynError> {
    for _ in 0..250 {
        if sock.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("{} never appeared", sock.display()).into())
}

fn wait_for(sock: &Path) -> Result<(), DynError> {
    for _ in 0..250 {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!("nothing listens on {}", sock.display()).into())
}

fn golden() -> Result<(), DynError> {
    match qconform::golden::update(&root()) {
        0 => Ok(()),
        _ => Err("golden update failed".into()),
    }
}

/// Runs `cargo ARGS...` at the repository root.
fn cargo<S: AsRef<str>>(args: &[S]) -> Result<(), DynError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    println!("+ cargo {}", args.join(" "));
    let st = Command::new("cargo")
        .args(&args)
        .current_dir(root())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed", args.join(" ")).into())
    }
}

/// `cargo xtask test [ARGS...]`: the README's test command. Provisions the
/// peers the tests run against (cached; a fresh machine fetches them), then
/// runs `cargo test --workspace ARGS...`. A test whose tool is still missing
/// fails; nothing is skipped.
fn test(args: &[String]) -> Result<(), DynError> {
    peers::run_peers()?;
    let mut all = vec!["test".to_owned(), "--workspace".to_owned()];
    all.extend(args.iter().cloned());
    cargo(&all)
}

fn ci() -> Result<(), DynError> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    test(&["--release".to_owned()])?;
    cargo(&["run", "--release", "-q", "-p", "qconform", "--", "conform"])?;
    fuzz::run(&["--secs".into(), "20".into()])
}

/// The Parallels cases: QEMU's sample images (from shared/samples, bzip2)
/// and one edit each.
fn parallels_corpus(root: &Path, dir: &Path, only: &[&str]) -> Result<(), DynError> {
    let samples = root.join("../shared/samples/qemu-iotests/parallels");
    for case in qconform::corpus::parallels_cases() {
        if !only.is_empty() && !only.contains(&case.name) && !only.contains(&"parallels") {
            continue;
        }
        let out = Command::new("bunzip2")
            .arg("-c")
            .arg(samples.join(format!("{}.bz2", case.base)))
            .output()
            .map_err(|e| format!("bunzip2: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot decompress sample {} from {}",
                case.base,
                samples.display()
            )
            .into());
        }
        let mut bytes = out.stdout;
        if let Some(edit) = case.edit {
            edit(&mut bytes);
        }
        std::fs::write(dir.join(format!("{}.parallels", case.name)), bytes)?;
        println!("built {}", case.name);
    }
    Ok(())
}
