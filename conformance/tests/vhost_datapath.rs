//! `vhost-user probe --data-path`: virtio-blk requests on a split
//! virtqueue, against a real qemu-storage-daemon (missing, the test fails)
//! and against a fake back-end (test code) that serves the same requests
//! correctly, or breaks exactly one ring rule, which the probe must report
//! under that rule's id.

use qconform::vhost::conn::{Conn, RecvError};
use qconform::vhost::datapath::{pattern, MemfdMemory};
use qconform_core::vhost_user::wire::Header;
use qconform_core::virtio::split_ring::{device, Buffer, GuestMemory, Layout};
use rustix::fd::{AsFd, OwnedFd};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
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

fn rules_of(v: &Value) -> Vec<String> {
    v["conversation"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["rule"].as_str().map(String::from))
        .collect()
}

fn probe(sock: &Path, extra: &[&str]) -> (i32, Value) {
    json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--no-robustness",
                "--data-path",
                "blk",
                "--output",
                "json",
                "--timeout-ms",
                "1000",
            ])
            .args(extra)
            .arg("--socket")
            .arg(sock),
    )
}

/// The written sectors (8..16) as they must read back.
const SECTOR: u64 = 8;
const LEN: usize = 4096;

#[test]
fn data_path_against_qsd_is_clean_and_the_disk_holds_the_written_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let cmd = qconform_testkit::tools::qsd_cmd(dir.path(), &sock);
    let disk = dir.path().join("disk.img");
    let (code, v) = probe(
        &sock,
        &["--backend-cmd", &cmd, "--disk", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(rules_of(&v), Vec::<String>::new(), "{v:#}");
    let steps: Vec<String> = v["data_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}: {}",
                s["request"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect();
    // Every request was carried out, with the status the spec gives it.
    for want in [
        "Out sector 8: Ok",
        "In sector 8: Ok",
        "Flush sector 0: Ok",
        "GetId sector 0: Ok",
        // 64 MiB = 131072 sectors: the sector at the capacity is past the end.
        "In sector 131072: IoErr",
        "GET_VRING_BASE: 5 (available index 5)",
        "request on the stopped ring: left alone",
    ] {
        assert!(
            steps.iter().any(|s| s.starts_with(want)),
            "{want} missing: {steps:#?}"
        );
    }
    // The disk file qsd exports holds what we wrote, read here independently
    // of the probe; the stopped-ring write (zeros) never reached it.
    let bytes = std::fs::read(&disk).unwrap();
    let at = (SECTOR * 512) as usize;
    assert_eq!(&bytes[at..at + LEN], &pattern(LEN)[..]);
    assert!(bytes[..at].iter().all(|&b| b == 0));
}

/// How the fake back-end breaks the data path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Used elements name a descriptor that heads no chain.
    IdNeverPosted,
    /// Used lengths past the chain's writable buffers.
    LenPastBuffer,
    /// Used entries without a call.
    NoCall,
    /// Keeps processing after GET_VRING_BASE stopped the ring.
    ProcessesStoppedRing,
    /// GET_VRING_BASE answers 0.
    BaseZero,
    /// Stops answering on a malformed chain (instead of closing).
    HangsOnBadChain,
    /// Returns every chain with used len 0 (nothing written).
    UsedLenZero,
    /// Also writes a byte of guest memory no buffer covers.
    WritesOutsideBuffers,
    /// Reads return other bytes than were written.
    ReadsOtherBytes,
    /// A flush ends with VIRTIO_BLK_S_IOERR.
    FlushFails,
    /// GET_ID ends with VIRTIO_BLK_S_IOERR.
    GetIdFails,
    /// The used index moves two for each chain returned.
    UsedIndexJumps,
}

const F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const PF_REPLY_ACK: u64 = 1 << 3;

fn word64(p: &[u8], at: usize) -> u64 {
    p.get(at..at + 8)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

fn word32(p: &[u8], at: usize) -> u32 {
    p.get(at..at + 4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// The device state of the fake: one region, one ring, a 1 MiB disk.
struct Fake {
    fault: Fault,
    mem: Option<(OwnedFd, u64, u64, u64)>, // fd, guest address, size, user address
    size: u32,
    addrs: (u64, u64, u64), // desc, avail, used (user addresses)
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    started: bool,
    last_avail: u16,
    used_idx: u16,
    disk: Vec<u8>,
    /// A malformed chain or available index was seen: the connection ends
    /// (or, with HangsOnBadChain, goes silent).
    refused: bool,
}

impl Fake {
    fn layout(&self) -> Option<Layout> {
        let (_, gpa, _, ua) = self.mem.as_ref()?;
        let tr = |u: u64| u.checked_sub(*ua).map(|o| o + gpa);
        Some(Layout {
            size: self.size as u16,
            desc: tr(self.addrs.0)?,
            avail: tr(self.addrs.1)?,
            used: tr(self.addrs.2)?,
        })
    }

    /// Serves every request made available since the last kick.
    fn process(&mut self) {
        let Some(layout) = self.layout() else { return };
        let Some((fd, gpa, size, ua)) = self.mem.take() else {
            return;
        };
        self.serve(
            &layout,
            MemfdMemory {
                fd: fd.as_fd(),
                size,
            },
        );
        self.mem = Some((fd, gpa, size, ua));
    }

    fn serve(&mut self, layout: &Layout, mut mem: MemfdMemory<'_>) {
        let layout = *layout;
        let Ok(avail) = device::avail_index(&mem, &layout) else {
            return;
        };
        if avail.wrapping_sub(self.last_avail) > layout.size {
            self.refused = true;
            return;
        }
        while self.last_avail != avail {
            let Ok(head) = device::avail_head(&mem, &layout, self.last_avail) else {
                return;
            };
            self.last_avail = self.last_avail.wrapping_add(1);
            let Ok(bufs) = device::walk(&mem, &layout, head) else {
                self.refused = true;
                return;
            };
            // A buffer outside the one region is refused, as a chain.
            if bufs.iter().any(|b| {
                b.addr
                    .checked_add(b.len as u64)
                    .is_none_or(|e| e > mem.size)
            }) {
                self.refused = true;
                return;
            }
            let written = self.blk(&mut mem, &bufs);
            if self.fault == Fault::WritesOutsideBuffers {
                let _ = mem.write_at(0x18_0000, &[0]);
            }
            let (id, len) = match self.fault {
                Fault::IdNeverPosted => (self.size + 5, written),
                Fault::LenPastBuffer => (head as u32, written + 4096),
                Fault::UsedLenZero => (head as u32, 0),
                _ => (head as u32, written),
            };
            let _ = device::push_used(&mut mem, &layout, self.used_idx, id, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            if self.fault == Fault::UsedIndexJumps {
                self.used_idx = self.used_idx.wrapping_add(1);
                let _ = device::push_used(&mut mem, &layout, self.used_idx, id, len);
            }
        }
        if self.fault != Fault::NoCall {
            if let Some(c) = &self.call {
                let _ = rustix::io::write(c, &1u64.to_ne_bytes());
            }
        }
    }

    /// One virtio-blk request; returns the bytes written to the driver.
    fn blk(&mut self, mem: &mut MemfdMemory<'_>, bufs: &[Buffer]) -> u32 {
        let (Some(h), Some(st)) = (bufs.first(), bufs.last()) else {
            return 0;
        };
        let mut hdr = [0u8; 16];
        if mem.read_at(h.addr, &mut hdr).is_err() {
            return 0;
        }
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        let data = bufs.get(1..bufs.len() - 1).unwrap_or_default();
        let mut written = 1;
        let status = match kind {
            0 | 1 => {
                let mut off = sector.saturating_mul(512);
                let mut ok = true;
                for d in data {
                    let r = usize::try_from(off)
                        .ok()
                        .and_then(|o| Some(o..o.checked_add(d.len as usize)?));
                    match r.filter(|r| r.end <= self.disk.len()) {
                        Some(r) if kind == 0 => {
                            let mut bytes = self.disk[r].to_vec();
                            if self.fault == Fault::ReadsOtherBytes {
                                bytes.iter_mut().for_each(|b| *b ^= 0xff);
                            }
                            ok &= mem.write_at(d.addr, &bytes).is_ok();
                            written += d.len;
                        }
                        Some(r) => ok &= mem.read_at(d.addr, &mut self.disk[r]).is_ok(),
                        None => ok = false,
                    }
                    off += d.len as u64;
                }
                if ok {
                    0
                } else {
                    1
                }
            }
            4 if self.fault == Fault::FlushFails => 1,
            4 => 0,
            8 if self.fault == Fault::GetIdFails => 1,
            8 => {
                if let Some(d) = data.first() {
                    let _ = mem.write_at(d.addr, &[b'f'; 20][..(d.len as usize).min(20)]);
                    written += d.len.min(20);
                }
                0
            }
            _ => 2,
        };
        let _ = mem.write_at(st.addr, &[status]);
        written
    }
}

/// A fake vhost-user-blk back-end on `sock`, serving connections one
/// after the other.
fn fake_blk(sock: &Path, fault: Fault) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            // Each on its own thread: a hanging one must not hold up the next.
            std::thread::spawn(move || serve_one(Conn::from_stream(stream), fault));
        }
    })
}

fn serve_one(conn: Conn, fault: Fault) {
    {
        let mut f = Fake {
            fault,
            mem: None,
            size: 0,
            addrs: (0, 0, 0),
            kick: None,
            call: None,
            started: false,
            last_avail: 0,
            used_idx: 0,
            disk: vec![0; 1 << 20],
            refused: false,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            // Wait for a message to begin, then read it whole: a short
            // deadline inside a message would lose its first bytes.
            let readable = {
                let mut fds = [rustix::event::PollFd::new(
                    &conn.stream,
                    rustix::event::PollFlags::IN,
                )];
                let ts = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
            };
            let got = if readable {
                conn.recv(Instant::now() + Duration::from_secs(2))
            } else {
                Err(RecvError::Timeout)
            };
            let m = match got {
                Ok(m) => m,
                Err(RecvError::Timeout) => {
                    let kicked = f.kick.as_ref().is_some_and(|k| {
                        let mut b = [0u8; 8];
                        rustix::io::read(k, &mut b).is_ok()
                    });
                    if kicked && (f.started || f.fault == Fault::ProcessesStoppedRing) {
                        f.process();
                    }
                    if f.refused {
                        if fault == Fault::HangsOnBadChain {
                            std::thread::sleep(Duration::from_secs(3));
                        }
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            };
            let p = &m.payload;
            let mut fds = m.fds.into_iter();
            let reply: Option<Vec<u8>> = match m.header.request {
                1 => Some((F_VERSION_1 | F_PROTOCOL_FEATURES).to_ne_bytes().to_vec()),
                15 => Some(PF_REPLY_ACK.to_ne_bytes().to_vec()),
                5 => {
                    // nregions, pad, then guest address, size, user address, offset.
                    if let Some(fd) = fds.next() {
                        f.mem = Some((fd, word64(p, 8), word64(p, 16), word64(p, 24)));
                    }
                    None
                }
                8 => {
                    f.size = word32(p, 4);
                    None
                }
                9 => {
                    // index, flags, descriptor, used, available, log.
                    f.addrs = (word64(p, 8), word64(p, 24), word64(p, 16));
                    None
                }
                10 => {
                    f.last_avail = word32(p, 4) as u16;
                    None
                }
                11 => {
                    f.started = false;
                    let base = if fault == Fault::BaseZero {
                        0
                    } else {
                        f.last_avail as u32
                    };
                    let mut r = word32(p, 0).to_ne_bytes().to_vec();
                    r.extend_from_slice(&base.to_ne_bytes());
                    Some(r)
                }
                12 => {
                    f.kick = fds.next();
                    f.started = true;
                    None
                }
                13 => {
                    f.call = fds.next();
                    None
                }
                _ => None,
            };
            let reply =
                reply.or_else(|| m.header.need_reply().then(|| 0u64.to_ne_bytes().to_vec()));
            if let Some(body) = reply {
                let h = Header::reply(m.header.request, body.len() as u32);
                if conn.send(h, &body, &[]).is_err() {
                    return;
                }
            }
        }
    }
}

fn probe_fake(fault: Fault) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    let t = fake_blk(&sock, fault);
    let r = probe(&sock, &[]);
    drop(t);
    r
}

#[test]
fn the_fake_blk_back_end_is_clean() {
    // The fakes below differ from this one in their fault only: what the
    // probe reports there is the fault, not the fake.
    let (code, v) = probe_fake(Fault::None);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(rules_of(&v), Vec::<String>::new(), "{v:#}");
}

#[test]
fn each_broken_ring_rule_is_reported_under_its_id() {
    for (fault, rule) in [
        (Fault::IdNeverPosted, "virtio.used.id-posted"),
        (Fault::LenPastBuffer, "virtio.used.len-within-buffer"),
        (Fault::NoCall, "vhost-user.ring.call-fires"),
        (
            Fault::ProcessesStoppedRing,
            "vhost-user.ring.stopped-not-processed",
        ),
        (Fault::BaseZero, "vhost-user.ring.get-base-is-next-avail"),
        (
            Fault::WritesOutsideBuffers,
            "virtio.device.writes-only-writable-buffers",
        ),
        (Fault::ReadsOtherBytes, "virtio.blk.read-after-write"),
        (Fault::FlushFails, "virtio.blk.status"),
        (Fault::GetIdFails, "virtio.blk.get-id"),
        (Fault::UsedIndexJumps, "virtio.used.index-counts-returned"),
    ] {
        let (code, v) = probe_fake(fault);
        // A note (get-id may fail: the spec lets a device not know its id)
        // does not fail the probe; every other ring rule does.
        let note = qconform_core::rules::by_id(rule)
            .is_some_and(|r| r.severity == qconform_core::rules::Severity::Note);
        assert_eq!(code, if note { 0 } else { 2 }, "{fault:?}: {v:#}");
        let rules = rules_of(&v);
        assert!(
            rules.contains(&rule.to_string()),
            "{fault:?}: {rule} missing: {v:#}"
        );
        // The fault's own rule, and for an id never posted the chain that
        // then never came back; nothing else.
        for r in &rules {
            assert!(
                r == rule
                    || (fault == Fault::IdNeverPosted && r == "virtio.used.request-completed")
                    // The entry the jump skips names no chain we posted.
                    || (fault == Fault::UsedIndexJumps
                        && (r == "virtio.used.id-posted" || r == "virtio.used.request-completed")),
                "{fault:?}: unexpected {r}: {v:#}"
            );
        }
    }
}

fn ring_verdicts(v: &Value) -> Vec<(String, Vec<String>)> {
    v["robustness"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["sent"].as_str().unwrap().ends_with("on ring 0"))
        .map(|p| {
            let rules = p["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["rule"].as_str().unwrap().to_string())
                .collect();
            (p["probe"].as_str().unwrap().to_string(), rules)
        })
        .collect()
}

#[test]
fn malformed_chains_are_judged_by_whether_the_back_end_survives_them() {
    for (fault, expect) in [
        (Fault::None, None),
        (
            Fault::HangsOnBadChain,
            Some("vhost-user.robustness.no-hang"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fake.sock");
        let _t = fake_blk(&sock, fault);
        let out = qconform()
            .args([
                "vhost-user",
                "probe",
                "--data-path",
                "--output",
                "json",
                "--timeout-ms",
                "500",
                "--socket",
            ])
            .arg(&sock)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ring = ring_verdicts(&v);
        assert_eq!(ring.len(), 4, "{v:#}");
        for (probe, rules) in ring {
            // The 4 GiB buffer runs past the region too: refused like the rest.
            let want: Vec<String> = expect.map(|r| vec![r.to_string()]).unwrap_or_default();
            assert_eq!(rules, want, "{fault:?} {probe}: {v:#}");
        }
    }
}

#[test]
fn qsd_survives_every_malformed_chain() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let cmd = qconform_testkit::tools::qsd_cmd(dir.path(), &sock);
    let out = qconform()
        .args(["vhost-user", "probe", "--data-path", "--output", "json"])
        .args(["--backend-cmd", &cmd, "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ring = ring_verdicts(&v);
    assert_eq!(ring.len(), 4, "{v:#}");
    // qemu-storage-daemon 10.0.2 refuses each (it closes the connection)
    // and a fresh one serves again: no crash, no hang, nothing made up.
    for (probe, rules) in ring {
        assert_eq!(rules, Vec::<String>::new(), "{probe}: {v:#}");
    }
}

#[test]
fn data_path_against_vhost_device_rng_fills_every_buffer() {
    let bin = qconform::vhost::matrix::peers_dir().join("rust-vmm/bin/vhost-device-rng");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask peers` (CI does)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("rng.sock");
    // It listens on the path with its instance number appended.
    let sock = dir.path().join("rng.sock0");
    let cmd = format!("{} --socket-path {}", bin.display(), base.display());
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--no-robustness",
                "--data-path",
                "rng",
            ])
            .args(["--output", "json", "--backend-cmd", &cmd, "--socket"])
            .arg(&sock),
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(rules_of(&v), Vec::<String>::new(), "{v:#}");
    let steps: Vec<String> = v["data_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}: {}",
                s["request"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect();
    for k in 0..4 {
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with(&format!("entropy buffer {k}: used len"))),
            "{steps:#?}"
        );
    }
    assert!(
        steps
            .iter()
            .any(|s| s == "GET_VRING_BASE: 4 (available index 4)"),
        "{steps:#?}"
    );
}

#[test]
fn an_entropy_device_returning_empty_buffers_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    let _t = fake_blk(&sock, Fault::UsedLenZero);
    let (code, v) = json_of(
        qconform()
            .args([
                "vhost-user",
                "probe",
                "--no-robustness",
                "--data-path",
                "rng",
            ])
            .args(["--output", "json", "--timeout-ms", "1000", "--socket"])
            .arg(&sock),
    );
    assert_eq!(code, 2, "{v:#}");
    let rules = rules_of(&v);
    assert_eq!(rules.len(), 4, "{v:#}");
    assert!(
        rules.iter().all(|r| r == "virtio.rng.fills-buffer"),
        "{v:#}"
    );
}
