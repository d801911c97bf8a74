//! The recording proxy, the replayer and the matrix, against real peers
//! (qconform serve, qemu-storage-daemon 10.0.2, virtiofsd and QEMU 7.2 from
//! `cargo xtask peers`; missing peers fail these tests) and against fake
//! peers that close or hang in the middle of a message.

use qconform::vhost::matrix;
use qconform::vhost::record::{proxy, Recorder};
use qconform_core::vhost_user::session::Profile;
use qconform_core::vhost_user::transcript::{self, Entry, Event};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(cmd: &str) -> Child {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    Command::new(words[0])
        .args(&words[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", words[0]))
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The back-end specs of this machine, which must include the real peers.
fn backends(scratch: &Path) -> Vec<String> {
    let v = matrix::available_backends(scratch);
    for name in ["qsd=", "virtiofsd="] {
        assert!(
            v.iter().any(|b| b.starts_with(name)),
            "{name} back-end missing: install qemu-utils 10.0.2 and run `cargo xtask peers`"
        );
    }
    v
}

fn backend_cmd(specs: &[String], name: &str) -> String {
    specs
        .iter()
        .find_map(|s| s.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_string()
}

fn messages(entries: &[Entry]) -> Vec<(u32, u32, u32, String)> {
    entries
        .iter()
        .filter(|e| e.event.is_none())
        .map(|e| {
            (
                e.request.unwrap(),
                e.flags.unwrap(),
                e.size.unwrap(),
                e.payload_hex.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn load(p: &Path) -> Vec<Entry> {
    transcript::parse(&std::fs::read_to_string(p).unwrap())
        .unwrap()
        .1
}

#[test]
fn recording_a_clean_pair_is_transparent_checks_clean_and_replays_without_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let (back, front) = (dir.path().join("back.sock"), dir.path().join("front.sock"));
    let me = env!("CARGO_BIN_EXE_qconform");
    let mut serve = spawn(&format!(
        "{me} vhost-user serve --socket {} --once --queues 2",
        back.display()
    ));
    wait_for(&back);
    let rec_file = dir.path().join("rec.jsonl");
    let recorder = qconform()
        .args(["vhost-user", "record", "--output", "json", "--listen"])
        .arg(&front)
        .arg("--connect")
        .arg(&back)
        .arg("--out")
        .arg(&rec_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&front);
    let probe_file = dir.path().join("probe.jsonl");
    let probe = qconform()
        .args([
            "vhost-user",
            "probe",
            "--no-robustness",
            "--output",
            "json",
            "--socket",
        ])
        .arg(&front)
        .arg("--transcript")
        .arg(&probe_file)
        .output()
        .unwrap();
    assert_eq!(
        probe.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&probe.stdout)
    );
    let rec = recorder.wait_with_output().unwrap();
    let _ = serve.wait();
    assert_eq!(
        rec.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rec.stdout)
    );
    // Transparent: the back-end said exactly what the front-end heard.
    let (recorded, probed) = (load(&rec_file), load(&probe_file));
    assert!(messages(&recorded).len() > 20);
    assert_eq!(messages(&recorded), messages(&probed));
    assert!(matches!(
        recorded.last().and_then(|e| e.event.clone()),
        Some(Event::Closed { .. })
    ));
    // The recording checks clean offline too.
    let check = qconform()
        .args(["vhost-user", "check", "--output", "json"])
        .arg(&rec_file)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // And replays against the back-end it was recorded from with no divergence.
    let replay = qconform()
        .args(["vhost-user", "replay", "--output", "json", "--socket"])
        .arg(dir.path().join("replay.sock"))
        .arg("--backend-cmd")
        .arg(format!(
            "{me} vhost-user serve --socket {{socket}} --once --queues 2"
        ))
        .arg(&rec_file)
        .output()
        .unwrap();
    let v = json(&replay);
    assert_eq!(replay.status.code(), Some(0), "{v:#}");
    assert_eq!(v["divergences"].as_array().unwrap().len(), 0);
    assert!(v["sent"].as_u64().unwrap() > 10);
}

#[test]
fn qemu_recorded_through_the_proxy_replays_against_qsd_without_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let specs = backends(dir.path());
    let qsd = backend_cmd(&specs, "qsd");
    let (back, front) = (dir.path().join("back.sock"), dir.path().join("front.sock"));
    let mut daemon = spawn(&qsd.replace("{socket}", back.to_str().unwrap()));
    wait_for(&back);
    let rec_file = dir.path().join("qemu.jsonl");
    let opts = qconform::vhost::record::Options {
        listen: front.clone(),
        connect: back.clone(),
        out: rec_file.clone(),
        idle_timeout: Duration::from_secs(20),
        message_timeout: Duration::from_secs(2),
        profile: Profile { lenient: true },
        description: "test".into(),
    };
    let recorder = std::thread::spawn(move || qconform::vhost::record::record_once(&opts));
    wait_for(&front);
    let qemu_root = matrix::peers_dir().join("qemu-7.2");
    assert!(
        qemu_root.exists(),
        "QEMU 7.2 missing: run `cargo xtask peers`"
    );
    let mut q = qconform::vhost::qemu_blk_front_end(&qemu_root, &front)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(q.id().to_string())
        .status();
    let _ = q.wait();
    let session = recorder.join().unwrap().unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(
        session.report().violations,
        0,
        "{:#?}",
        session.report().findings
    );
    let entries = load(&rec_file);
    // The back-end channel was interposed: qsd acknowledged a socket from us.
    let backend_fd = entries
        .iter()
        .find(|e| e.name.as_deref() == Some("SET_BACKEND_REQ_FD") && e.fds.len() == 1);
    assert!(backend_fd.is_some_and(|e| e.fds[0].kind == "socket"));
    assert!(entries
        .iter()
        .any(|e| e.name.as_deref() == Some("ADD_MEM_REG")
            && e.fds
                .first()
                .is_some_and(|f| f.kind == "memfd" && f.size == Some(128 << 20))));
    let replay = qconform()
        .args([
            "vhost-user",
            "replay",
            "--lenient",
            "--output",
            "json",
            "--socket",
        ])
        .arg(dir.path().join("replay.sock"))
        .arg("--backend-cmd")
        .arg(&qsd)
        .arg(&rec_file)
        .output()
        .unwrap();
    let v = json(&replay);
    assert_eq!(replay.status.code(), Some(0), "{v:#}");
    assert_eq!(v["skipped"].as_array().unwrap().len(), 0, "{v:#}");
}

#[test]
fn edited_recordings_are_reported_with_their_rule_and_replays_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        std::fs::read_to_string(root().join("corpus/vhost-user/recorded/qemu72-vs-qsd.jsonl"))
            .unwrap();
    let edit = |name: &str, f: &dyn Fn(&mut Value)| -> PathBuf {
        let mut done = false;
        let text: Vec<String> = base
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                if !done && v.get("seq").is_some() {
                    let before = v.clone();
                    f(&mut v);
                    done = v != before;
                }
                v.to_string()
            })
            .collect();
        assert!(done, "{name}: nothing edited");
        let p = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&p, text.join("\n")).unwrap();
        p
    };
    let check = |p: &Path| -> Vec<String> {
        let out = qconform()
            .args(["vhost-user", "check", "--lenient", "--output", "json"])
            .arg(p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        json(&out)["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap().to_string())
            .collect()
    };
    // A reply without the reply flag.
    let no_flag = edit("no-reply-flag", &|v| {
        if v["dir"] == "B->F" && v["name"] == "GET_FEATURES" {
            v["flags"] = 1.into();
        }
    });
    assert!(check(&no_flag).contains(&"vhost-user.header.reply-flag".to_string()));
    // A kick without its eventfd.
    let no_fd = edit("missing-fd", &|v| {
        if v["name"] == "SET_VRING_KICK" {
            v["fds"] = Value::Array(vec![]);
        }
    });
    assert!(check(&no_fd).contains(&"vhost-user.fds.count".to_string()));
    // A recorded failure ack: qsd acks success, the replay says where they part.
    let failed_ack = edit("failed-ack", &|v| {
        if v["dir"] == "B->F" && v["name"] == "ADD_MEM_REG" {
            v["payload_hex"] = "0100000000000000".into();
        }
    });
    let specs = backends(dir.path());
    let out = qconform()
        .args([
            "vhost-user",
            "replay",
            "--lenient",
            "--output",
            "json",
            "--socket",
        ])
        .arg(dir.path().join("r.sock"))
        .arg("--backend-cmd")
        .arg(backend_cmd(&specs, "qsd"))
        .arg(&failed_ack)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(out.status.code(), Some(2), "{v:#}");
    let d = &v["divergences"][0];
    assert_eq!(
        (
            d["request"].as_str(),
            d["field"].as_str(),
            d["recorded"].as_str(),
            d["got"].as_str()
        ),
        (
            Some("ADD_MEM_REG"),
            Some("ack"),
            Some("failure"),
            Some("success")
        ),
        "{v:#}"
    );
}

/// Runs a proxy between two fake peers; `front` and `back` script them.
/// Returns the transcript, or fails if the proxy does not end within 10 s.
fn fake_pair(
    front: impl FnOnce(UnixStream) + Send + 'static,
    back: impl FnOnce(UnixStream) + Send + 'static,
) -> Vec<Entry> {
    fake_pair_idle(front, back, Duration::from_secs(3))
}

/// [`fake_pair`] with the proxy's idle timeout (how long a due reply may take).
fn fake_pair_idle(
    front: impl FnOnce(UnixStream) + Send + 'static,
    back: impl FnOnce(UnixStream) + Send + 'static,
    idle: Duration,
) -> Vec<Entry> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (front_peer, proxy_front) = UnixStream::pair().unwrap();
    let (proxy_back, back_peer) = UnixStream::pair().unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rec = Recorder::new(
            "fake",
            Profile::default(),
            Box::new(std::io::BufWriter::new(file)),
            "fake peers",
        );
        proxy(
            proxy_front,
            proxy_back,
            &mut rec,
            idle,
            Duration::from_millis(300),
        );
        let _ = tx.send(());
    });
    std::thread::spawn(move || front(front_peer));
    std::thread::spawn(move || back(back_peer));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the proxy did not end");
    load(&path)
}

const GET_FEATURES: [u8; 12] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];

fn read_request(s: &mut UnixStream) {
    let mut b = [0u8; 12];
    s.read_exact(&mut b).unwrap();
}

#[test]
fn the_proxy_survives_peers_that_close_or_hang_mid_message() {
    // The back-end starts a reply and hangs: a timeout, after the request.
    let t = fake_pair(
        |mut f| {
            f.write_all(&GET_FEATURES).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        },
        |mut b| {
            read_request(&mut b);
            b.write_all(&[1, 0, 0, 0, 5, 0]).unwrap();
            std::thread::sleep(Duration::from_secs(5));
        },
    );
    assert_eq!(t.iter().filter(|e| e.event.is_none()).count(), 1, "{t:?}");
    assert!(
        matches!(t.last().unwrap().event, Some(Event::Timeout { .. })),
        "{t:?}"
    );
    // The front-end closes in the middle of a header.
    let t = fake_pair(
        |mut f| {
            f.write_all(&GET_FEATURES).unwrap();
            f.write_all(&[1, 0, 0]).unwrap();
        },
        |mut b| {
            read_request(&mut b);
            std::thread::sleep(Duration::from_secs(1));
        },
    );
    assert!(
        matches!(
            t.last().unwrap().event,
            Some(Event::Closed {
                by: Some(qconform_core::vhost_user::session::Direction::FrontToBack),
                ..
            })
        ),
        "{t:?}"
    );
    // The back-end closes instead of replying: closed by the back-end, request kept.
    let t = fake_pair(
        |mut f| {
            f.write_all(&GET_FEATURES).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        },
        |mut b| read_request(&mut b),
    );
    assert_eq!(
        t.first().and_then(|e| e.name.clone()).as_deref(),
        Some("GET_FEATURES")
    );
    assert!(
        matches!(
            t.last().unwrap().event,
            Some(Event::Closed {
                by: Some(qconform_core::vhost_user::session::Direction::BackToFront),
                ..
            })
        ),
        "{t:?}"
    );
    // The front-end stops mid-payload and stays connected: a timeout.
    let t = fake_pair(
        |mut f| {
            // SET_FEATURES announcing 8 bytes, sending 3.
            f.write_all(&[2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 1, 2, 3])
                .unwrap();
            std::thread::sleep(Duration::from_secs(5));
        },
        |_b| std::thread::sleep(Duration::from_secs(5)),
    );
    assert!(
        matches!(t.last().unwrap().event, Some(Event::Timeout { .. })),
        "{t:?}"
    );
}

#[test]
fn the_matrix_replays_every_recording_against_every_real_back_end() {
    let dir = tempfile::tempdir().unwrap();
    let specs = backends(dir.path());
    let junit = dir.path().join("matrix.xml");
    let mut cmd = qconform();
    cmd.args(["vhost-user", "matrix", "--output", "json", "--transcripts"])
        .arg(root().join("corpus/vhost-user/recorded"))
        .arg("--junit")
        .arg(&junit);
    for s in &specs {
        cmd.arg("--backend").arg(s);
    }
    let out = cmd.output().unwrap();
    let cells = json(&out);
    assert_eq!(out.status.code(), Some(0), "{cells:#}");
    let cells = cells.as_array().unwrap();
    let recordings = matrix::transcripts(&root().join("corpus/vhost-user/recorded"));
    assert!(recordings.len() >= 2);
    assert_eq!(cells.len(), recordings.len() * specs.len());
    assert!(cells.iter().all(|c| c["verdict"] != "error"), "{cells:#?}");
    // Each recording replays cleanly against the back-end it was recorded from.
    for (t, b) in [
        ("qemu72-vs-qsd", "qsd"),
        ("qemu72-vs-virtiofsd", "virtiofsd"),
    ] {
        let c = cells
            .iter()
            .find(|c| c["transcript"] == t && c["backend"] == b)
            .unwrap();
        assert_eq!(c["verdict"], "conforming", "{c:#}");
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testsuite ").count(), specs.len());
    assert_eq!(xml.matches("<testcase ").count(), cells.len());
}

#[test]
fn the_back_end_channel_is_interposed_forwarded_and_recorded() {
    use qconform::vhost::conn::Conn;
    use qconform_core::vhost_user::request::Channel;
    use qconform_core::vhost_user::session::Direction;
    use qconform_core::vhost_user::wire::Header;
    use rustix::fd::{AsFd, OwnedFd};
    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }
    let t = fake_pair(
        move |f| {
            // The front-end hands over its end of a back-end channel, then
            // answers the back-end's request on it.
            let (ours, theirs) = UnixStream::pair().unwrap();
            let main = Conn::from_stream(f);
            let theirs = OwnedFd::from(theirs);
            main.send(Header::request(21, 0, false), &[], &[theirs.as_fd()])
                .unwrap();
            let channel = Conn::from_stream(ours);
            let req = channel.recv(deadline()).unwrap();
            assert_eq!((req.header.request, req.header.need_reply()), (2, true));
            channel
                .send(Header::reply(2, 8), &0u64.to_le_bytes(), &[])
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
        },
        move |b| {
            let main = Conn::from_stream(b);
            let mut m = main.recv(deadline()).unwrap();
            assert_eq!((m.header.request, m.fds.len()), (21, 1));
            let channel = Conn::from_stream(UnixStream::from(m.fds.pop().unwrap()));
            // BACKEND_CONFIG_CHANGE_MSG, wanting an ack.
            channel.send(Header::request(2, 0, true), &[], &[]).unwrap();
            let ack = channel.recv(deadline()).unwrap();
            assert!(ack.header.is_reply() && ack.payload == 0u64.to_le_bytes());
        },
    );
    let on = |ch: Channel, dir: Direction| {
        t.iter()
            .filter(|e| e.channel == Some(ch) && e.dir == Some(dir))
            .count()
    };
    assert_eq!(t[0].name.as_deref(), Some("SET_BACKEND_REQ_FD"));
    assert_eq!(t[0].fds[0].kind, "socket");
    assert_eq!(on(Channel::Backend, Direction::BackToFront), 1, "{t:?}");
    assert_eq!(on(Channel::Backend, Direction::FrontToBack), 1, "{t:?}");
    let request = t
        .iter()
        .find(|e| e.channel == Some(Channel::Backend))
        .unwrap();
    assert_eq!(request.name.as_deref(), Some("BACKEND_CONFIG_CHANGE_MSG"));
    assert!(
        matches!(t.last().unwrap().event, Some(Event::Closed { .. })),
        "{t:?}"
    );
}

#[test]
fn silence_ends_the_recording_only_when_a_reply_is_due() {
    let idle = Duration::from_millis(300);
    // GET_FEATURES needs a reply; the back-end reads it and says nothing.
    let t = fake_pair_idle(
        |mut f| {
            f.write_all(&GET_FEATURES).unwrap();
            std::thread::sleep(Duration::from_secs(3));
        },
        |mut b| {
            read_request(&mut b);
            std::thread::sleep(Duration::from_secs(3));
        },
        idle,
    );
    assert!(
        matches!(t.last().unwrap().event, Some(Event::Timeout { .. })),
        "{t:?}"
    );
    // SET_OWNER needs none: a second of silence (three idle timeouts) is
    // normal, and the recording goes on until the front-end closes.
    let t = fake_pair_idle(
        |mut f| {
            f.write_all(&[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            f.write_all(&GET_FEATURES).unwrap();
            let mut reply = [0u8; 20];
            f.read_exact(&mut reply).unwrap();
        },
        |mut b| {
            read_request(&mut b);
            read_request(&mut b);
            b.write_all(&[1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap();
            std::thread::sleep(Duration::from_secs(2));
        },
        idle,
    );
    let names: Vec<_> = t.iter().filter_map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        ["SET_OWNER", "GET_FEATURES", "GET_FEATURES"],
        "{t:?}"
    );
    assert!(
        matches!(
            t.last().unwrap().event,
            Some(Event::Closed {
                by: Some(qconform_core::vhost_user::session::Direction::FrontToBack),
                ..
            })
        ),
        "{t:?}"
    );
}
