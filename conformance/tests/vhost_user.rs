//! vhost-user against real peers: qemu-storage-daemon 10.0.2 (on every
//! project machine; missing, these tests fail) and our own reference
//! back-end, plus the transcript corpus.

use qconform::vhost::corpus;
use qconform::vhost::matrix::peers_dir;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn json_of(cmd: &mut Command) -> (i32, Value) {
    let out = cmd.output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// A scratch directory, the socket path in it and the qemu-storage-daemon
/// command exporting a fresh disk there.
fn qsd() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let cmd = qconform_testkit::tools::qsd_cmd(dir.path(), &sock);
    (dir, sock, cmd)
}

fn rules_of(findings: &Value) -> Vec<String> {
    findings
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["rule"].as_str().map(String::from))
        .collect()
}

/// `qconform vhost-user serve` on `sock` with `extra` options, JSON
/// reports on its stdout; returns once the socket exists.
fn serve_json(sock: &Path, extra: &[&str]) -> std::process::Child {
    let serve = qconform()
        .args(["vhost-user", "serve", "--output", "json"])
        .args(extra)
        .arg("--socket")
        .arg(sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_path(sock);
    serve
}

#[test]
fn probe_judges_qsd_conversation_clean() {
    let (dir, sock, cmd) = qsd();
    let transcript = dir.path().join("qsd.jsonl");
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--no-robustness",
                "--output",
                "json",
                "--backend-cmd",
                &cmd,
                "--socket",
            ])
            .arg(&sock)
            .arg("--transcript")
            .arg(&transcript),
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["conversation"]["findings"],
        serde_json::json!([]),
        "{v:#}"
    );
    assert_eq!(v["queue_num"], 2);
    let proto: Vec<String> = serde_json::from_value(v["protocol_features"].clone()).unwrap();
    assert!(
        proto.contains(&"REPLY_ACK".to_string())
            && proto.contains(&"CONFIGURE_MEM_SLOTS".to_string()),
        "{proto:?}"
    );
    assert!(v["conversation"]["messages"].as_u64().unwrap() > 40);
    // The recorded transcript checks clean offline too.
    let (code, c) = json_of(
        qconform()
            .args(["vhost-user", "check", "--output", "json"])
            .arg(&transcript),
    );
    assert_eq!(code, 0, "{c:#}");
}

#[test]
fn probe_finds_qsd_crash_on_ring_index_100000() {
    let (_dir, sock, cmd) = qsd();
    let (code, v) = probe_started(&cmd, &sock);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(
        v["conversation"]["findings"],
        serde_json::json!([]),
        "the valid conversation must stay clean: {v:#}"
    );
    let probes = v["robustness"].as_array().unwrap();
    let set_num = probes
        .iter()
        .find(|p| p["probe"] == "ring-index-set-num")
        .unwrap();
    assert!(
        rules_of(&set_num["findings"]).contains(&"vhost-user.robustness.no-crash".to_string()),
        "{set_num:#}"
    );
    assert!(
        set_num["outcome"].as_str().unwrap().contains("SIGSEGV"),
        "{set_num:#}"
    );
    // libvhost-user acks a 4-byte SET_FEATURES with 0 (then panics): a success ack for invalid input.
    let wrong = probes.iter().find(|p| p["probe"] == "wrong-size").unwrap();
    assert!(
        rules_of(&wrong["findings"]).contains(&"vhost-user.robustness.rejects-invalid".to_string()),
        "{wrong:#}"
    );
    // Every probe ran (the back-end was restarted for each).
    assert!(
        probes
            .iter()
            .all(|p| !p["outcome"].as_str().unwrap().starts_with("skipped")),
        "{v:#}"
    );
}

#[test]
fn probe_against_a_running_qsd_reports_the_crash_and_continues() {
    let (_dir, sock, cmd) = qsd();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut qsd = Command::new(words[0]).args(&words[1..]).spawn().unwrap();
    for _ in 0..250 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--output",
                "json",
                "--timeout-ms",
                "1500",
                "--socket",
            ])
            .arg(&sock),
    );
    let _ = qsd.kill();
    let _ = qsd.wait();
    assert_eq!(code, 2, "{v:#}");
    let probes = v["robustness"].as_array().unwrap();
    let set_num = probes
        .iter()
        .find(|p| p["probe"] == "ring-index-set-num")
        .unwrap();
    assert!(
        rules_of(&set_num["findings"]).contains(&"vhost-user.robustness.no-crash".to_string()),
        "{set_num:#}"
    );
    // The back-end is gone; the next probe says so instead of hanging.
    let after = probes
        .iter()
        .find(|p| p["probe"] == "ring-index-get-base")
        .unwrap();
    assert!(
        after["outcome"].as_str().unwrap().starts_with("skipped"),
        "{after:#}"
    );
}

#[test]
fn probe_and_serve_judge_each_other_clean() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("serve.sock");
    let serve = serve_json(&sock, &["--idle-timeout-ms", "3000"]);
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--output",
                "json",
                "--timeout-ms",
                "1000",
                "--socket",
            ])
            .arg(&sock),
    );
    assert_eq!(code, 0, "{v:#}");
    for p in v["robustness"].as_array().unwrap() {
        let o = p["outcome"].as_str().unwrap();
        assert!(
            o.starts_with("failure ack") || o.starts_with("closed"),
            "reference back-end must reject: {p:#}"
        );
    }
    let out = serve.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The first connection is the valid conversation: no findings against the probe.
    let first: Value = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first["violations"], 0, "{first:#}");
    assert!(first["messages"].as_u64().unwrap() > 30);
}

#[test]
fn every_transcript_case_reports_its_rules() {
    let base = std::fs::read_to_string(
        root()
            .join(corpus::DIR)
            .join(format!("{}.jsonl", corpus::BASE)),
    )
    .unwrap();
    for case in corpus::cases() {
        let text = corpus::build(&base, &case).unwrap();
        // The checked-in transcript is what the generator makes of the base.
        let on_disk = std::fs::read_to_string(
            root()
                .join(corpus::DIR)
                .join(format!("{}.jsonl", case.name)),
        )
        .unwrap();
        assert_eq!(
            text, on_disk,
            "{}: regenerate with `cargo xtask corpus`",
            case.name
        );
        let (_, entries) = qconform_core::vhost_user::transcript::parse(&text).unwrap();
        let s =
            qconform_core::vhost_user::transcript::check(case.name, &entries, Default::default());
        for rule in case.expect {
            assert!(
                s.report().findings.iter().any(|f| f.rule.id == *rule),
                "{}: {rule} not reported; got {:?}",
                case.name,
                s.report()
                    .findings
                    .iter()
                    .map(|f| f.rule.id)
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn check_exit_codes() {
    let dir = root().join(corpus::DIR);
    assert_eq!(
        qconform()
            .args(["vhost-user", "check"])
            .arg(dir.join("probe-vs-qsd.jsonl"))
            .status()
            .unwrap()
            .code(),
        Some(0)
    );
    assert_eq!(
        qconform()
            .args(["vhost-user", "check"])
            .arg(dir.join("reply-without-reply-flag.jsonl"))
            .status()
            .unwrap()
            .code(),
        Some(2)
    );
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"format\":\"something else\",\"version\":1}\n").unwrap();
    assert_eq!(
        qconform()
            .args(["vhost-user", "check"])
            .arg(&bad)
            .status()
            .unwrap()
            .code(),
        Some(1)
    );
    assert_eq!(
        qconform()
            .args(["vhost-user", "check", "/nonexistent.jsonl"])
            .status()
            .unwrap()
            .code(),
        Some(1)
    );
}

fn peer(rel: &str) -> PathBuf {
    let p = peers_dir().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask peers` (CI does) to fetch the real vhost-user peers",
        p.display()
    );
    p
}

fn wait_path(p: &Path) {
    for _ in 0..500 {
        if p.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", p.display());
}

#[test]
fn qemu_front_end_against_serve_is_judged_clean() {
    let qemu_root = peers_dir().join("qemu-7.2");
    let qemu = peer("qemu-7.2/usr/bin/qemu-system-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qemu.sock");
    let transcript = dir.path().join("qemu.jsonl");
    let serve = qconform()
        .args([
            "vhost-user",
            "serve",
            "--once",
            "--idle-timeout-ms",
            "30000",
            "--output",
            "json",
            "--socket",
        ])
        .arg(&sock)
        .arg("--transcript")
        .arg(&transcript)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_path(&sock);
    // QEMU under TCG with shared memfd guest RAM and a vhost-user-blk device on our socket.
    let mut q = qconform::vhost::qemu_blk_front_end(&qemu_root, &sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(qemu.exists());
    // Let SeaBIOS start the device, then stop QEMU the polite way so it stops the rings.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let pid = rustix::process::Pid::from_raw(q.id() as i32).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let _ = q.wait();
    let out = serve.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        v["violations"], 0,
        "QEMU 7.2 broke a rule, or qconform misjudged it: {v:#}"
    );
    assert!(v["messages"].as_u64().unwrap() > 30, "{v:#}");
    // The conversation went through memory, rings and the stop sequence.
    let text = std::fs::read_to_string(&transcript).unwrap();
    for name in [
        "ADD_MEM_REG",
        "SET_VRING_KICK",
        "SET_VRING_ENABLE",
        "GET_VRING_BASE",
        "GET_CONFIG",
    ] {
        assert!(
            text.contains(&format!("\"name\":\"{name}\"")),
            "QEMU never sent {name}"
        );
    }
    let (code, c) = json_of(
        qconform()
            .args(["vhost-user", "check", "--output", "json"])
            .arg(&transcript),
    );
    assert_eq!(code, 0, "{c:#}");
}

#[test]
fn probe_judges_virtiofsd_clean_and_robust() {
    let virtiofsd = peer("virtiofsd/bin/virtiofsd");
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = dir.path().join("fs.sock");
    // virtiofsd serves one front-end and exits: the probe restarts it for every connection.
    let cmd = format!(
        "{} --socket-path={} --shared-dir={} --sandbox=none",
        virtiofsd.display(),
        sock.display(),
        share.display()
    );
    let (code, v) = probe_started(&cmd, &sock);
    assert_eq!(
        v["conversation"]["findings"],
        serde_json::json!([]),
        "{v:#}"
    );
    let proto: Vec<String> = serde_json::from_value(v["protocol_features"].clone()).unwrap();
    assert!(proto.contains(&"DEVICE_STATE".to_string()), "{proto:?}");
    // rust-vmm closes the connection on malformed input or sends a failure ack.
    for p in v["robustness"].as_array().unwrap() {
        let o = p["outcome"].as_str().unwrap();
        assert!(
            o.starts_with("failure ack") || o.starts_with("closed"),
            "{p:#}"
        );
    }
    assert_eq!(code, 0, "{v:#}");
}

/// What must not change between two probes of the same back-end: the
/// exit code, the conversation's findings, and each robustness probe's
/// outcome and findings.
fn verdict_of(code: i32, v: &Value) -> Value {
    let robustness: Vec<Value> = v["robustness"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| serde_json::json!([p["name"], p["outcome"], p["findings"]]))
        .collect();
    serde_json::json!({
        "code": code,
        "conversation": v["conversation"]["findings"],
        "robustness": robustness,
    })
}

/// rust-vmm back-ends from the crate registry (vhost-device-rng, which
/// listens on its --socket-path with "0" appended, and vhost-device-vsock):
/// probed three times each, afresh for every connection, they get the same
/// verdict every time, clean, and close or fail-ack every invalid probe.
#[test]
fn probe_verdicts_on_rust_vmm_backends_are_clean_and_the_same_every_run() {
    let rng = peer("rust-vmm/bin/vhost-device-rng");
    let vsock = peer("rust-vmm/bin/vhost-device-vsock");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let backends = [
        (
            dir.path().join("rng.sock0"),
            format!("{} --socket-path {d}/rng.sock", rng.display()),
        ),
        (
            dir.path().join("vsock.sock"),
            format!(
                "{} --guest-cid 3 --socket {{socket}} --uds-path {d}/vm.vsock",
                vsock.display()
            ),
        ),
    ];
    for (sock, cmd) in &backends {
        let mut seen: Vec<Value> = Vec::new();
        for _ in 0..3 {
            let _ = std::fs::remove_file(dir.path().join("vm.vsock"));
            let (code, v) = probe_started(cmd, sock);
            assert_eq!(code, 0, "{cmd}: {v:#}");
            assert_eq!(
                v["conversation"]["findings"],
                serde_json::json!([]),
                "{v:#}"
            );
            for p in v["robustness"].as_array().unwrap() {
                let o = p["outcome"].as_str().unwrap();
                assert!(
                    o.starts_with("failure ack") || o.starts_with("closed"),
                    "{cmd}: {p:#}"
                );
            }
            seen.push(verdict_of(code, &v));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{cmd}: {seen:#?}");
    }
}

/// A hostile back-end (not a conformance subject: it exists to prove our
/// probe's own robustness): answers GET_FEATURES with `reply`, then stays
/// silent until the client goes away.
fn hostile_backend(sock: &Path, reply: Vec<u8>) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() {
                let _ = s.write_all(&reply);
            }
            // Hold the connection open and silent until the client gives up.
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut sink = [0u8; 4096];
            while let Ok(n) = s.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
    })
}

/// The probe against `sock` with `extra` options, as JSON.
fn probe_json(sock: &Path, timeout_ms: u32, extra: &[&str]) -> (i32, Value) {
    json_of(
        qconform()
            .args(["vhost-user", "probe", "--output", "json", "--timeout-ms"])
            .arg(timeout_ms.to_string())
            .args(extra)
            .arg("--socket")
            .arg(sock),
    )
}

/// The main conversation only (no robustness probes) against `sock`, as JSON.
fn probe_only(sock: &Path, timeout_ms: u32) -> (i32, Value) {
    probe_json(sock, timeout_ms, &["--no-robustness"])
}

/// The whole probe, robustness included, against the back-end `cmd`
/// starts (afresh for every connection) on `sock`, as JSON.
fn probe_started(cmd: &str, sock: &Path) -> (i32, Value) {
    probe_json(sock, 1500, &["--backend-cmd", cmd])
}

fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut h = request.to_ne_bytes().to_vec();
    h.extend_from_slice(&flags.to_ne_bytes());
    h.extend_from_slice(&size.to_ne_bytes());
    h
}

#[test]
fn a_back_end_claiming_4_gib_is_a_finding_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("evil.sock");
    let t = hostile_backend(&sock, header(1, 5, u32::MAX));
    let started = std::time::Instant::now();
    let (code, v) = probe_only(&sock, 500);
    assert_eq!(code, 2, "{v:#}");
    assert!(
        rules_of(&v["conversation"]["findings"])
            .contains(&"vhost-user.header.size-limit".to_string()),
        "{v:#}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(t);
}

#[test]
fn a_silent_back_end_is_a_hang_finding_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    // GET_FEATURES is answered, nothing after it.
    let mut reply = header(1, 5, 8);
    reply.extend_from_slice(&(1u64 << 32).to_ne_bytes());
    let t = hostile_backend(&sock, reply);
    let (code, v) = probe_only(&sock, 300);
    assert_eq!(code, 2, "{v:#}");
    assert!(
        rules_of(&v["conversation"]["findings"])
            .contains(&"vhost-user.robustness.no-hang".to_string()),
        "{v:#}"
    );
    drop(t);
}

#[test]
fn a_back_end_sending_garbage_is_judged_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("garbage.sock");
    // A "reply" with version 3, no reply flag, unknown request and a short payload.
    let mut reply = header(0xdead, 0x3, 4);
    reply.extend_from_slice(&[1, 2, 3, 4]);
    let t = hostile_backend(&sock, reply);
    let (code, v) = probe_only(&sock, 300);
    assert_eq!(code, 2, "{v:#}");
    let rules = rules_of(&v["conversation"]["findings"]);
    for r in ["vhost-user.header.version", "vhost-user.reply.request-echo"] {
        assert!(rules.contains(&r.to_string()), "{r} missing: {v:#}");
    }
    drop(t);
}

/// What a fake back-end does with one request.
enum Act {
    /// Reply with this payload.
    Reply(Vec<u8>),
    /// Say nothing.
    Nothing,
    /// Close the connection without a reply.
    Close,
    /// Stop reading (so the front-end's next write fails with EPIPE), then
    /// reply with this payload and close once the front-end is gone.
    StopReadingThenReply(Vec<u8>),
}

/// A request as a fake back-end saw it.
struct Request<'a> {
    /// Which request of its connection (0 = the first).
    nth: usize,
    request: u32,
    flags: u32,
    payload: &'a [u8],
}

fn u64_payload(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// What a plain back-end answers: `features` and `protocol` on GET_*,
/// one queue, a ring state on GET_VRING_BASE, ack 0 for need_reply.
fn plain_answer(r: &Request<'_>, features: u64, protocol: u64) -> Act {
    match r.request {
        1 => Act::Reply(u64_payload(features)),
        15 => Act::Reply(u64_payload(protocol)),
        17 => Act::Reply(u64_payload(1)),
        11 => {
            let mut p = r.payload.get(..4).unwrap_or(&[0; 4]).to_vec();
            p.extend_from_slice(&0u32.to_ne_bytes());
            Act::Reply(p)
        }
        _ if r.flags & 0x8 != 0 => Act::Reply(u64_payload(0)),
        _ => Act::Nothing,
    }
}

/// A fake back-end (test code, not a subject) on `sock`: every connection,
/// on its own thread, answered by `script`. Requests are read with a
/// timeout; file descriptors are dropped unread.
fn fake_backend(
    sock: &Path,
    script: impl Fn(&Request<'_>) -> Act + Send + Sync + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
    let script = std::sync::Arc::new(script);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let script = script.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                for nth in 0.. {
                    let mut head = [0u8; 12];
                    if s.read_exact(&mut head).is_err() {
                        return;
                    }
                    let word = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().unwrap());
                    let mut payload = vec![0u8; word(8).min(4096) as usize];
                    if s.read_exact(&mut payload).is_err() {
                        return;
                    }
                    let r = Request {
                        nth,
                        request: word(0),
                        flags: word(4),
                        payload: &payload,
                    };
                    let reply = |s: &mut std::os::unix::net::UnixStream, body: &[u8]| {
                        let mut m = header(r.request, 0x5, body.len() as u32);
                        m.extend_from_slice(body);
                        let _ = s.write_all(&m);
                    };
                    match script(&r) {
                        Act::Reply(body) => reply(&mut s, &body),
                        Act::Nothing => {}
                        Act::Close => return,
                        Act::StopReadingThenReply(body) => {
                            let _ = s.shutdown(std::net::Shutdown::Read);
                            reply(&mut s, &body);
                            // Hold the write side open until the front-end goes away.
                            std::thread::sleep(std::time::Duration::from_secs(3));
                            return;
                        }
                    }
                }
            });
        }
    })
}

const VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const REPLY_ACK: u64 = 1 << 3;

#[test]
fn a_close_mid_conversation_is_one_verdict_whether_a_read_or_a_write_sees_it() {
    let mut verdicts = Vec::new();
    for on_write in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("closing.sock");
        // No protocol features: nothing but GET_FEATURES and GET_VRING_BASE
        // is answered, so the second GET_FEATURES (message 2) is the only
        // read before the rings. The back-end goes away there: closing
        // (the probe is reading) or no longer reading after its reply (the
        // probe's next write, SET_FEATURES, fails).
        let _t = fake_backend(&sock, move |r| {
            let plain = plain_answer(r, VERSION_1, 0);
            match (r.request, r.nth, plain) {
                (1, 2, _) if !on_write => Act::Close,
                (1, 2, Act::Reply(b)) => Act::StopReadingThenReply(b),
                (_, _, plain) => plain,
            }
        });
        let (code, v) = probe_only(&sock, 1000);
        assert_eq!(
            code, 2,
            "a conversation the back-end cut short is never clean: {v:#}"
        );
        assert_eq!(
            v["conversation"]["stopped"], "the back-end closed the connection",
            "{v:#}"
        );
        let findings = &v["conversation"]["findings"];
        assert_eq!(
            rules_of(findings),
            ["vhost-user.peer.closed-valid-conversation"],
            "{v:#}"
        );
        // Where it was noticed shows in the detail: the reply that never
        // came, or the request that could not be written.
        let detail = findings[0]["detail"].as_str().unwrap();
        let noticed = if on_write {
            "the last request was SET_FEATURES"
        } else {
            "instead of replying to GET_FEATURES"
        };
        assert!(detail.contains(noticed), "{detail}");
        verdicts.push((
            code,
            rules_of(findings),
            v["conversation"]["stopped"].clone(),
        ));
    }
    assert_eq!(verdicts[0], verdicts[1]);
}

/// The probe's JSON verdict on `sock` with the conversation only.
fn ring_size_of(v: &Value) -> (u64, Vec<(u64, String)>) {
    let refused = v["ring_sizes_refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ring_size"].as_u64().unwrap(),
                r["by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (v["ring_size"].as_u64().unwrap(), refused)
}

/// A fake back-end that holds rings of at most 128 entries and refuses a
/// larger SET_VRING_NUM with `refuse`: the probe must settle on 128, with
/// 256 refused `by`, and a clean conversation.
fn negotiates_down_to_128(refuse: fn() -> Act, protocol: u64, by: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("max128.sock");
    let features = VERSION_1 | if protocol != 0 { PROTOCOL_FEATURES } else { 0 };
    let _t = fake_backend(&sock, move |r| {
        let num = r
            .payload
            .get(4..8)
            .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
        if r.request == 8 && num > 128 {
            return refuse();
        }
        plain_answer(r, features, protocol)
    });
    let (code, v) = probe_only(&sock, 1000);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        ring_size_of(&v),
        (128, vec![(256, by.to_string())]),
        "{v:#}"
    );
    assert_eq!(
        v["conversation"]["findings"],
        serde_json::json!([]),
        "{v:#}"
    );
}

#[test]
fn a_failure_ack_for_ring_size_256_negotiates_down_to_128() {
    // Like rust-vmm devices whose queues hold at most 128 entries, with REPLY_ACK.
    negotiates_down_to_128(|| Act::Reply(u64_payload(1)), REPLY_ACK, "failure ack (1)");
}

#[test]
fn a_close_on_ring_size_256_negotiates_down_on_a_fresh_connection() {
    // No REPLY_ACK: the close is the only answer, seen on a later write or read.
    negotiates_down_to_128(|| Act::Close, 0, "closed the connection");
}

#[test]
fn a_close_after_the_ring_size_was_taken_is_not_a_refused_size() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kick.sock");
    // No REPLY_ACK, and a close on SET_VRING_KICK: the GET_FEATURES after
    // SET_VRING_NUM was answered, so 256 was taken and the close is a close.
    let _t = fake_backend(&sock, |r| match r.request {
        12 => Act::Close,
        _ => plain_answer(r, VERSION_1, 0),
    });
    let (code, v) = probe_only(&sock, 1000);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(ring_size_of(&v), (256, vec![]), "{v:#}");
    assert_eq!(
        rules_of(&v["conversation"]["findings"]),
        ["vhost-user.peer.closed-valid-conversation"],
        "{v:#}"
    );
}

#[test]
fn probe_negotiates_the_ring_size_of_serve_and_both_stay_clean() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("serve128.sock");
    let serve = serve_json(
        &sock,
        &["--max-ring-size", "128", "--idle-timeout-ms", "2000"],
    );
    let (code, v) = probe_only(&sock, 1000);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        ring_size_of(&v),
        (128, vec![(256, "failure ack (1)".to_string())]),
        "{v:#}"
    );
    let out = serve.wait_with_output().unwrap();
    // Both connections: the refused size is no finding against the probe
    // (nothing tells a front-end the maximum).
    for c in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>() {
        let c = c.unwrap();
        assert_eq!(c["violations"], 0, "{c:#}");
    }
}

#[test]
fn tester_policy_is_a_note_and_a_false_success_ack_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("yes.sock");
    // A back-end that carries out, or acks with 0, whatever it gets.
    let _t = fake_backend(&sock, |r| {
        plain_answer(r, VERSION_1 | PROTOCOL_FEATURES, REPLY_ACK)
    });
    let (code, v) = probe_json(&sock, 500, &[]);
    assert_eq!(code, 2, "{v:#}");
    let probes = v["robustness"].as_array().unwrap();
    let graded = |name: &str| -> Vec<(String, String)> {
        let p = probes.iter().find(|p| p["probe"] == name).unwrap();
        let sent = p["sent"].as_str().unwrap();
        p["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let detail = f["detail"].as_str().unwrap();
                assert!(detail.contains(sent), "{detail} does not name {sent}");
                (
                    f["rule"].as_str().unwrap().to_string(),
                    f["severity"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let note = vec![(
        "vhost-user.robustness.tester-policy".to_string(),
        "note".to_string(),
    )];
    let violation = vec![(
        "vhost-user.robustness.rejects-invalid".to_string(),
        "violation".to_string(),
    )];
    // The front-end's "should"s: a back-end that carries them out breaks nothing.
    for name in ["bad-version", "extra-fds", "gated-request"] {
        assert_eq!(graded(name), note, "{name}: {v:#}");
    }
    // A success ack for what cannot have been carried out says something false.
    for name in [
        "unknown-request",
        "wrong-size",
        "missing-fd",
        "ring-index-set-num",
    ] {
        assert_eq!(graded(name), violation, "{name}: {v:#}");
    }
    // The gated probe says which request it sent.
    let gated = probes
        .iter()
        .find(|p| p["probe"] == "gated-request")
        .unwrap();
    assert_eq!(
        gated["sent"], "GET_STATUS without STATUS negotiated",
        "{gated:#}"
    );
    // --strict counts the notes.
    let (strict_code, s) = probe_json(&sock, 500, &["--strict"]);
    assert_eq!(strict_code, 2);
    assert!(
        s["violations"].as_u64().unwrap() > v["violations"].as_u64().unwrap(),
        "{s:#}"
    );
}

#[test]
fn serve_refuses_rings_it_does_not_have() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("serve1.sock");
    let serve = serve_json(
        &sock,
        &["--once", "--queues", "1", "--idle-timeout-ms", "3000"],
    );
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    // Sends a request; returns the reply payload if `reply`.
    let mut call = |request: u32, flags: u32, payload: &[u8], reply: bool| -> Option<Vec<u8>> {
        let mut m = header(request, flags, payload.len() as u32);
        m.extend_from_slice(payload);
        s.write_all(&m).unwrap();
        if !reply {
            return None;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        let mut body = vec![0u8; u32::from_ne_bytes(head[8..12].try_into().unwrap()) as usize];
        s.read_exact(&mut body).unwrap();
        Some(body)
    };
    let state = |index: u32, num: u32| {
        let mut p = index.to_ne_bytes().to_vec();
        p.extend_from_slice(&num.to_ne_bytes());
        p
    };
    let ack = |b: Option<Vec<u8>>| u64::from_ne_bytes(b.unwrap()[..8].try_into().unwrap());
    call(1, 1, &[], true);
    call(15, 1, &[], true);
    // MQ and REPLY_ACK, but no GET_QUEUE_NUM: serve knows its one queue anyway.
    call(16, 1, &u64_payload(1 | REPLY_ACK), false);
    call(3, 1, &[], false);
    call(2, 9, &u64_payload(VERSION_1 | PROTOCOL_FEATURES), true);
    assert_ne!(
        ack(call(8, 9, &state(200, 128), true)),
        0,
        "SET_VRING_NUM ring 200"
    );
    // Every time, also past the 32 findings a report keeps per rule.
    for n in 0..40 {
        assert_ne!(
            ack(call(18, 9, &state(200, 1), true)),
            0,
            "SET_VRING_ENABLE ring 200, time {n}"
        );
    }
    // Ring 0 exists; a size beyond the maximum (256) is refused, one within it taken.
    assert_ne!(ack(call(8, 9, &state(0, 512), true)), 0, "ring size 512");
    assert_eq!(ack(call(8, 9, &state(0, 256), true)), 0, "ring size 256");
    drop(s);
    let out = serve.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules = rules_of(&v["findings"]);
    assert!(
        rules.iter().all(|r| r == "vhost-user.ring.index-in-range"),
        "{v:#}"
    );
    // SET_VRING_NUM and 40 SET_VRING_ENABLEs of ring 200; sizes are no finding.
    assert_eq!(v["violations"], 41, "{v:#}");
}

#[test]
fn probe_verdicts_on_qsd_are_the_same_every_time() {
    let (_dir, sock, cmd) = qsd();
    let run = || {
        let (code, v) = probe_started(&cmd, &sock);
        (
            code,
            v["ring_size"].clone(),
            v["conversation"].clone(),
            v["robustness"].clone(),
        )
    };
    let first = run();
    assert_eq!(first.0, 2, "{first:#?}");
    for _ in 1..5 {
        assert_eq!(run(), first);
    }
}
