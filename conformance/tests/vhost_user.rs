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

/// The qemu-storage-daemon command exporting a fresh 64 MiB raw disk as
/// vhost-user-blk with two queues on `sock`.
fn qsd_cmd(dir: &Path, sock: &Path) -> String {
    let disk = dir.join("disk.img");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("qemu-img must be installed (qemu-utils)");
    assert!(st.success());
    assert!(
        Command::new("qemu-storage-daemon")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-storage-daemon must be installed (qemu-utils 10.0.2)"
    );
    format!(
        "qemu-storage-daemon --blockdev driver=file,node-name=file0,filename={} --export type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues=2",
        disk.display(), sock.display()
    )
}

fn rules_of(findings: &Value) -> Vec<String> {
    findings
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["rule"].as_str().map(String::from))
        .collect()
}

#[test]
fn probe_judges_qsd_conversation_clean() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let cmd = qsd_cmd(dir.path(), &sock);
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
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let cmd = qsd_cmd(dir.path(), &sock);
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--output",
                "json",
                "--timeout-ms",
                "1500",
                "--backend-cmd",
                &cmd,
                "--socket",
            ])
            .arg(&sock),
    );
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
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let cmd = qsd_cmd(dir.path(), &sock);
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
    let serve = qconform()
        .args([
            "vhost-user",
            "serve",
            "--idle-timeout-ms",
            "3000",
            "--output",
            "json",
            "--socket",
        ])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..250 {
        if sock.exists() {
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
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--output",
                "json",
                "--timeout-ms",
                "1500",
                "--backend-cmd",
                &cmd,
                "--socket",
            ])
            .arg(&sock),
    );
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

/// The main conversation only (no robustness probes) against `sock`, as JSON.
fn probe_only(sock: &Path, timeout_ms: u32) -> (i32, Value) {
    json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--no-robustness",
                "--output",
                "json",
                "--timeout-ms",
                &timeout_ms.to_string(),
                "--socket",
            ])
            .arg(sock),
    )
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
