//! `qconform vhost-user fuzz` is tested to find what it exists to find and
//! not to cry wolf: fixed-seed campaigns of a few seconds against
//! qemu-storage-daemon 10.0.2 (whose libvhost-user indexes its ring array
//! with SET_VRING_NUM's index unchecked and segfaults), virtiofsd and
//! qconform's own `serve` (no finding), and fake back-ends that hang,
//! segfault or send a malformed reply on purpose. The fakes are this test
//! binary itself, started again with `fake_backend --exact mode=M SOCKET`.

use qconform::vhost::conn::Conn;
use qconform::vhost::matrix::peers_dir;
use qconform_core::vhost_user::wire::{Header, VERSION};
use qconform_testkit::tools::{findings, has_rule, run_json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

/// Runs a campaign against `backend` (a command with {socket}); returns
/// (exit code, the JSON summary).
fn campaign(backend: &str, args: &[&str]) -> (i32, serde_json::Value) {
    run_json(
        qconform()
            .args([
                "vhost-user",
                "fuzz",
                "--output",
                "json",
                "--backend-cmd",
                backend,
            ])
            .args(args),
    )
}

/// qemu-storage-daemon exporting a fresh 1 MiB raw disk in `dir`.
fn qsd_cmd(dir: &Path) -> String {
    qconform_testkit::tools::qemu_img(dir, &["create", "-q", "-f", "raw", "disk.img", "1M"]);
    format!(
        "qemu-storage-daemon --blockdev driver=file,node-name=f,filename={} --export type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={{socket}}",
        dir.join("disk.img").display()
    )
}

/// (kind, run, detail) of every finding: what must not depend on the machine.
fn essence(v: &serde_json::Value) -> Vec<(String, u64, String)> {
    findings(v)
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_string(),
                f["run"].as_u64().unwrap_or(u64::MAX),
                f["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn finds_the_qsd_segfault_on_set_vring_num_and_the_reproducer_crashes_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let qsd = qsd_cmd(dir.path());
    let out = dir.path().join("findings");
    // Seed 31: run 4 draws an out-of-range ring index on SET_VRING_NUM.
    let out_arg = out.display().to_string();
    let (code, v) = campaign(
        &qsd,
        &[
            "--seed",
            "31",
            "--runs",
            "5",
            "--timeout-ms",
            "500",
            "--out",
            &out_arg,
        ],
    );
    assert_eq!(code, 2, "{v:#}");
    let crash = findings(&v)
        .into_iter()
        .find(|f| {
            f["kind"] == "crash" && f["detail"].as_str().unwrap_or("").contains("SET_VRING_NUM")
        })
        .unwrap_or_else(|| panic!("the SET_VRING_NUM segfault was not found: {v:#}"));
    assert_eq!(crash["signal"], 11, "{crash}");
    assert!(has_rule(crash, "vhost-user.ring.index-in-range"), "{crash}");
    let repro = PathBuf::from(crash["reproducer"].as_str().unwrap_or_default());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repro.join("finding.json")).unwrap()).unwrap();
    assert_eq!(meta["kind"], "crash");
    assert_eq!(meta["signal"], 11);
    assert_eq!(meta["seed"], 31);
    assert_eq!(meta["run"], crash["run"]);
    assert_eq!(meta["rule"], "vhost-user.ring.index-in-range");
    // Minimised: the one message that crashes it.
    assert_eq!(
        meta["input"]["messages"],
        serde_json::json!(["SET_VRING_NUM"]),
        "{meta:#}"
    );
    // The saved transcript crashes a fresh qemu-storage-daemon again.
    let sock = dir.path().join("replay.sock");
    let r = qconform_testkit::tools::output(
        qconform()
            .args([
                "vhost-user",
                "replay",
                "--output",
                "json",
                "--timeout-ms",
                "500",
            ])
            .arg(repro.join("transcript.jsonl"))
            .arg("--socket")
            .arg(&sock)
            .args(["--backend-cmd", &qsd]),
    );
    let text = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.status.code(), Some(2), "{text}");
    assert!(
        text.contains("vhost-user.robustness.no-crash") && text.contains("SIGSEGV"),
        "the replay did not crash qemu-storage-daemon: {text}"
    );
}

#[test]
fn the_same_seed_gives_the_same_findings_with_two_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let qsd = qsd_cmd(dir.path());
    let args = ["--seed", "31", "--runs", "5", "--timeout-ms", "500"];
    let (_, one) = campaign(&qsd, &args);
    let (_, two) = campaign(&qsd, &[&args[..], &["--jobs", "2"]].concat());
    assert!(!findings(&one).is_empty(), "{one:#}");
    assert_eq!(essence(&one), essence(&two));
}

#[test]
fn virtiofsd_gives_only_its_known_sigbus_and_serve_nothing() {
    let virtiofsd = peers_dir().join("virtiofsd/bin/virtiofsd");
    assert!(
        virtiofsd.exists(),
        "{} is missing: run `cargo xtask peers`",
        virtiofsd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    // virtiofsd serves one front-end and exits; every run starts it afresh.
    let fs = format!(
        "{} --socket-path={{socket}} --shared-dir={} --sandbox=none",
        virtiofsd.display(),
        share.display()
    );
    // Its one fault (corpus/peers/virtiofsd/FINDINGS.md): a memory region
    // whose mmap offset lies past the end of its memfd is mapped, and the
    // first ring access dies of SIGBUS. Seed 1 reaches it at run 84.
    let expect = dir.path().join("expected.txt");
    std::fs::write(&expect, "crash vhost-user.robustness.no-crash\n").unwrap();
    let e = expect.display().to_string();
    let args = [
        "--seed",
        "1",
        "--runs",
        "90",
        "--timeout-ms",
        "500",
        "--expect",
        &e,
    ];
    let (code, v) = campaign(&fs, &args);
    assert_eq!(v["runs"], 90, "{v:#}");
    assert_eq!(code, 0, "{v:#}");
    let f = findings(&v);
    assert!(f.iter().all(|f| f["expected"] == true), "{v:#}");
    assert!(
        f.iter().any(|f| f["signal"] == 7),
        "the SIGBUS was not found: {v:#}"
    );
    // qconform's own back-end: nothing at all.
    let serve = format!(
        "{} vhost-user serve --socket {{socket}} --once --idle-timeout-ms 5000",
        env!("CARGO_BIN_EXE_qconform")
    );
    let (code, v) = campaign(
        &serve,
        &["--seed", "1", "--runs", "90", "--timeout-ms", "500"],
    );
    assert_eq!(v["runs"], 90, "{v:#}");
    assert_eq!(findings(&v), Vec::<&serde_json::Value>::new(), "{v:#}");
    assert_eq!(code, 0, "{v:#}");
}

/// A fake back-end started as this test binary: `fake_backend --exact mode=M SOCKET`.
fn fake(mode: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    format!(
        "{} fake_backend --exact --nocapture mode={mode} {{socket}}",
        exe.display()
    )
}

#[test]
fn fakes_that_hang_segfault_or_reply_malformed_are_caught_as_such() {
    for (mode, kind, says) in [
        ("hang", "hang", "no reply to GET_FEATURES"),
        (
            "segv",
            "crash",
            // No reply is due before the close is noticed: after some request.
            "killed by signal 11 (SIGSEGV) after ",
        ),
        ("malformed", "rule", "vhost-user.header.reply-flag"),
    ] {
        let (code, v) = campaign(
            &fake(mode),
            &["--seed", "1", "--runs", "2", "--timeout-ms", "200"],
        );
        assert_eq!(code, 2, "{mode}: {v:#}");
        let f = findings(&v);
        assert!(
            f.iter()
                .any(|f| f["kind"] == kind && f["detail"].as_str().unwrap_or("").contains(says)),
            "{mode}: {v:#}"
        );
        if mode == "segv" {
            assert!(f.iter().all(|f| f["signal"] == 11), "{v:#}");
        }
    }
}

#[test]
fn expected_findings_do_not_fail_the_campaign_and_a_missing_back_end_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("expected.txt");
    std::fs::write(&expect, "# the fake's fault\ncrash\n").unwrap();
    let (code, v) = campaign(
        &fake("segv"),
        &[
            "--seed",
            "1",
            "--runs",
            "2",
            "--timeout-ms",
            "200",
            "--expect",
            expect.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    assert!(findings(&v).iter().all(|f| f["expected"] == true), "{v:#}");
    let out = qconform_testkit::tools::output(qconform().args([
        "vhost-user",
        "fuzz",
        "--backend-cmd",
        "/nonexistent/backend {socket}",
        "--runs",
        "1",
    ]));
    assert_eq!(out.status.code(), Some(1));
}

/// The fake back-ends (does nothing unless started with `mode=`): offers
/// VERSION_1 only (no protocol features, so no acks are due) and answers
/// GET_FEATURES and GET_VRING_BASE; `hang` answers nothing, `segv` kills
/// itself with SIGSEGV on SET_OWNER, `malformed` answers GET_FEATURES
/// without the reply flag.
#[test]
fn fake_backend() {
    let args: Vec<String> = std::env::args().collect();
    let Some(mode) = args.iter().find_map(|a| a.strip_prefix("mode=")) else {
        return;
    };
    let socket = args.iter().find(|a| a.ends_with(".sock")).expect("socket");
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind");
    let (stream, _) = listener.accept().expect("accept");
    let conn = Conn::from_stream(stream);
    while let Ok(r) = conn.recv(Instant::now() + Duration::from_secs(30)) {
        let id = r.header.request;
        let reply = |flags: u32, body: &[u8]| {
            let h = Header {
                request: id,
                flags,
                size: body.len() as u32,
            };
            let _ = conn.send(h, body, &[]);
        };
        match (mode, id) {
            ("hang", _) => {}
            ("segv", 3) => {
                // Twice: Rust's own SIGSEGV handler (stack overflow
                // detection) takes the first, on whichever thread, and
                // restores the default action for the second.
                for _ in 0..2 {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::SEGV,
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            ("malformed", 1) => reply(VERSION, &(1u64 << 32).to_ne_bytes()),
            (_, 1) => reply(VERSION | 4, &(1u64 << 32).to_ne_bytes()),
            (_, 11) => reply(VERSION | 4, &r.payload),
            _ => {}
        }
    }
    std::process::exit(0);
}
