//! `qconform vhost-user probe`: we are the front-end. A full, valid
//! conversation first (negotiation, memory, rings, config, status, stop),
//! judged by the rule engine; then robustness probes, each on a fresh
//! connection, that send one invalid message and judge the answer: a
//! failure ack or a closed connection conforms; a crash, a hang or a
//! success is a finding.

use super::conn::{self, Conn, Received, RecvError};
use super::tap::Tap;
use crate::Output;
use qconform_core::report::Finding;
use qconform_core::rules::vhost_user as rule;
use qconform_core::vhost_user::features::{self as feat, ProtocolFeature as PF};
use qconform_core::vhost_user::payload::{encode, Payload, Region};
use qconform_core::vhost_user::session::{Direction, Profile, ReplyOutcome};
use qconform_core::vhost_user::wire::{Header, VERSION};
use qconform_core::{Limits, Report};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::backend::Backend;
use std::time::{Duration, Instant};

pub struct Options {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub profile: Profile,
    pub transcript: Option<PathBuf>,
    pub robustness: bool,
    /// Start the back-end with this command (whitespace-separated words)
    /// for every connection, so each probe meets a fresh process.
    pub backend_cmd: Option<String>,
}

/// Protocol features the probe can drive, acknowledged when offered.
const DRIVEN: [PF; 7] = [
    PF::Mq,
    PF::ReplyAck,
    PF::Config,
    PF::ConfigureMemSlots,
    PF::Status,
    PF::ResetDevice,
    PF::LogShmfd,
];
/// Virtio features acknowledged when offered: VERSION_1, protocol features,
/// indirect descriptors, event index.
const VIRTIO_ACK: u64 = 1 << feat::F_VERSION_1 | 1 << feat::F_PROTOCOL_FEATURES | 1 << 28 | 1 << 29;
const GUEST_MEMORY: u64 = 2 << 20;
/// A made-up user address for our memory region (the back-end only uses it
/// to translate ring addresses).
const USER_BASE: u64 = 0x7f00_0000_0000;
const RING_SIZE: u32 = 256;
/// Rings the probe sets up at most (devices may report 128 queues).
const MAX_RINGS: u64 = 8;

#[derive(Debug)]
enum Stop {
    Closed,
    Timeout,
    Io(String),
}

struct Prober<'a> {
    opts: &'a Options,
    tap: Tap,
}

impl Prober<'_> {
    /// Sends a request and, if one is due, waits for the reply.
    fn call(
        &mut self,
        request: u32,
        payload: &Payload,
        fds: &[BorrowedFd<'_>],
        need_reply: bool,
    ) -> Result<Option<(Received, Option<ReplyOutcome>)>, Stop> {
        let bytes = encode(payload);
        let header = Header::request(request, bytes.len() as u32, need_reply);
        self.tap
            .send(header, &bytes, fds)
            .map_err(|e| Stop::Io(e.to_string()))?;
        if !self.tap.session.awaiting_reply() {
            return Ok(None);
        }
        self.wait_reply().map(Some)
    }

    fn wait_reply(&mut self) -> Result<(Received, Option<ReplyOutcome>), Stop> {
        match self.tap.recv(Instant::now() + self.opts.timeout) {
            // A claimed size past the protocol's maximum was recorded as a
            // finding and never read: the stream cannot be framed any more.
            Ok((r, _)) if r.oversize => Err(Stop::Io(format!(
                "the back-end claimed a {}-byte payload",
                r.header.size
            ))),
            Ok(r) => Ok(r),
            Err(RecvError::Timeout) => {
                self.tap.timed_out(self.opts.timeout.as_millis() as u64);
                Err(Stop::Timeout)
            }
            Err(RecvError::Closed { .. }) => {
                self.tap.closed(Some(Direction::BackToFront), false);
                Err(Stop::Closed)
            }
            Err(RecvError::Io(e)) => Err(Stop::Io(e.to_string())),
        }
    }

    fn u64_reply(r: Option<(Received, Option<ReplyOutcome>)>) -> Option<u64> {
        let (r, _) = r?;
        r.payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    }

    fn reply_ack(&self) -> bool {
        feat::has(self.tap.session.protocol_features(), PF::ReplyAck)
    }

    /// GET_FEATURES, protocol feature negotiation, SET_OWNER, GET_QUEUE_NUM.
    fn handshake(&mut self) -> Result<(), Stop> {
        let features = Self::u64_reply(self.call(1, &Payload::Empty, &[], false)?).unwrap_or(0);
        if features >> feat::F_PROTOCOL_FEATURES & 1 == 1 {
            let offered = Self::u64_reply(self.call(15, &Payload::Empty, &[], false)?).unwrap_or(0);
            let ack = DRIVEN.iter().map(|f| f.bit()).fold(0, |a, b| a | b) & offered;
            self.call(16, &Payload::U64 { value: ack }, &[], false)?;
        }
        let ra = self.reply_ack();
        self.call(3, &Payload::Empty, &[], ra)?;
        if feat::has(self.tap.session.protocol_features(), PF::Mq) {
            self.call(17, &Payload::Empty, &[], false)?;
        }
        Ok(())
    }

    /// The whole valid conversation.
    fn conversation(&mut self) -> Result<(), Stop> {
        self.handshake()?;
        let proto = self.tap.session.protocol_features();
        let ra = self.reply_ack();
        let has = |f: PF| feat::has(proto, f);
        if has(PF::ConfigureMemSlots) {
            self.call(36, &Payload::Empty, &[], false)?;
        }
        let offered = self.tap.session.offered_features().unwrap_or(0);
        let features = offered & VIRTIO_ACK;
        self.call(1, &Payload::Empty, &[], false)?;
        self.call(2, &Payload::U64 { value: features }, &[], ra)?;
        if has(PF::Config) {
            self.call(
                24,
                &Payload::Config {
                    offset: 0,
                    size: 8,
                    flags: 0,
                    data: vec![0; 8],
                },
                &[],
                false,
            )?;
        }
        if has(PF::Status) {
            self.call(39, &Payload::U64 { value: 0x0f }, &[], ra)?;
            self.call(40, &Payload::Empty, &[], false)?;
        }
        // Guest memory: one memfd region.
        let mem =
            conn::memfd("qconform-guest", GUEST_MEMORY).map_err(|e| Stop::Io(e.to_string()))?;
        let region = Region {
            guest_address: 0,
            size: GUEST_MEMORY,
            user_address: USER_BASE,
            mmap_offset: 0,
            xen_mmap_flags: None,
            domid: None,
        };
        if has(PF::ConfigureMemSlots) {
            self.call(37, &Payload::SingleRegion { region }, &[mem.as_fd()], ra)?;
        } else {
            self.call(
                5,
                &Payload::MemTable {
                    regions: vec![region],
                },
                &[mem.as_fd()],
                ra,
            )?;
        }
        // Rings: size, base, addresses, call, kick, enable.
        let rings = self
            .tap
            .session
            .queue_num()
            .unwrap_or(1)
            .clamp(1, MAX_RINGS);
        let mut notifiers: Vec<OwnedFd> = Vec::new();
        for i in 0..rings as u32 {
            let ring_base = USER_BASE + 0x10000 * (i as u64 + 1);
            self.call(
                8,
                &Payload::VringState {
                    index: i,
                    num: RING_SIZE,
                },
                &[],
                ra,
            )?;
            self.call(10, &Payload::VringState { index: i, num: 0 }, &[], ra)?;
            self.call(
                9,
                &Payload::VringAddr {
                    index: i,
                    flags: 0,
                    descriptor: ring_base,
                    available: ring_base + 0x1000,
                    used: ring_base + 0x2000,
                    log: 0,
                },
                &[],
                ra,
            )?;
            let call = conn::eventfd().map_err(|e| Stop::Io(e.to_string()))?;
            self.call(13, &Payload::U64 { value: i as u64 }, &[call.as_fd()], ra)?;
            let kick = conn::eventfd().map_err(|e| Stop::Io(e.to_string()))?;
            self.call(12, &Payload::U64 { value: i as u64 }, &[kick.as_fd()], ra)?;
            if features >> feat::F_PROTOCOL_FEATURES & 1 == 1 {
                self.call(18, &Payload::VringState { index: i, num: 1 }, &[], ra)?;
            }
            notifiers.push(call);
            notifiers.push(kick);
        }
        // Stop: disable, then GET_VRING_BASE stops each ring.
        for i in 0..rings as u32 {
            if features >> feat::F_PROTOCOL_FEATURES & 1 == 1 {
                self.call(18, &Payload::VringState { index: i, num: 0 }, &[], ra)?;
            }
            self.call(11, &Payload::VringState { index: i, num: 0 }, &[], false)?;
        }
        if has(PF::ConfigureMemSlots) {
            self.call(38, &Payload::SingleRegion { region }, &[], ra)?;
        }
        if has(PF::ResetDevice) {
            self.call(34, &Payload::Empty, &[], ra)?;
        }
        Ok(())
    }
}

/// One robustness probe: what it sends after the handshake.
struct Robustness {
    name: &'static str,
    what: &'static str,
    send: fn(&mut Prober<'_>) -> Result<(), Stop>,
}

fn raw(
    p: &mut Prober<'_>,
    request: u32,
    flags: u32,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Stop> {
    p.tap
        .send(
            Header {
                request,
                flags,
                size: payload.len() as u32,
            },
            payload,
            fds,
        )
        .map_err(|e| Stop::Io(e.to_string()))
}

fn need(p: &Prober<'_>) -> u32 {
    VERSION
        | if p.reply_ack() {
            qconform_core::vhost_user::wire::FLAG_NEED_REPLY
        } else {
            0
        }
}

fn eventfds(n: usize) -> Vec<OwnedFd> {
    (0..n).filter_map(|_| conn::eventfd().ok()).collect()
}

static PROBES: &[Robustness] = &[
    Robustness {
        name: "unknown-request",
        what: "request id 99",
        send: |p| raw(p, 99, need(p), &[], &[]),
    },
    Robustness {
        name: "bad-version",
        what: "GET_FEATURES with version bits 2",
        send: |p| raw(p, 1, 0x2, &[], &[]),
    },
    Robustness {
        name: "wrong-size",
        what: "SET_FEATURES with a 4-byte payload",
        send: |p| raw(p, 2, need(p), &[0, 0, 0, 1], &[]),
    },
    Robustness {
        name: "missing-fd",
        what: "SET_VRING_CALL without its fd or NOFD",
        send: |p| raw(p, 13, need(p), &0u64.to_ne_bytes(), &[]),
    },
    Robustness {
        name: "extra-fds",
        what: "SET_VRING_CALL with 2 fds",
        send: |p| {
            let fds = eventfds(2);
            let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            raw(p, 13, need(p), &0u64.to_ne_bytes(), &b)
        },
    },
    Robustness {
        name: "too-many-fds",
        what: "SET_VRING_BASE (takes no fd) with 9 fds",
        send: |p| {
            let fds = eventfds(9);
            let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            raw(
                p,
                10,
                need(p),
                &encode(&Payload::VringState { index: 0, num: 0 }),
                &b,
            )
        },
    },
    Robustness {
        name: "gated-request",
        what: "a request whose protocol feature is not negotiated",
        send: |p| {
            let proto = p.tap.session.protocol_features();
            // The first of these whose gate is not negotiated.
            let pick = [
                (40u32, PF::Status),
                (20, PF::Mtu),
                (19, PF::Rarp),
                (34, PF::ResetDevice),
            ]
            .into_iter()
            .find(|(_, f)| !feat::has(proto, *f));
            match pick {
                Some((40, _)) | Some((34, _)) => {
                    raw(p, pick.map_or(40, |x| x.0), need(p), &[], &[])
                }
                Some((id, _)) => raw(p, id, need(p), &1500u64.to_ne_bytes(), &[]),
                None => raw(p, 40, need(p), &[], &[]),
            }
        },
    },
    Robustness {
        name: "ring-index-set-num",
        what: "SET_VRING_NUM for ring 100000",
        send: |p| {
            raw(
                p,
                8,
                need(p),
                &encode(&Payload::VringState {
                    index: 100_000,
                    num: 256,
                }),
                &[],
            )
        },
    },
    Robustness {
        name: "ring-index-get-base",
        what: "GET_VRING_BASE for ring 100000",
        send: |p| {
            raw(
                p,
                11,
                VERSION,
                &encode(&Payload::VringState {
                    index: 100_000,
                    num: 0,
                }),
                &[],
            )
        },
    },
];

#[derive(Serialize)]
struct ProbeVerdict {
    probe: &'static str,
    sent: &'static str,
    outcome: String,
    findings: Vec<Finding>,
}

/// Runs one robustness probe on a fresh connection.
fn robustness(opts: &Options, probe: &Robustness) -> ProbeVerdict {
    let mut verdict = ProbeVerdict {
        probe: probe.name,
        sent: probe.what,
        outcome: String::new(),
        findings: Vec::new(),
    };
    let mut findings = Report::new(probe.name, "vhost-user", &Limits::default());
    let mut backend = match Backend::start(
        opts.backend_cmd.as_deref(),
        &opts.socket,
        Duration::from_secs(5),
    ) {
        Ok(b) => b,
        Err(e) => {
            verdict.outcome = format!("skipped: {e}");
            return verdict;
        }
    };
    let conn = match Conn::connect(&opts.socket) {
        Ok(c) => c,
        Err(e) => {
            verdict.outcome = format!(
                "skipped: cannot connect ({e}); an earlier probe may have stopped the back-end"
            );
            return verdict;
        }
    };
    let mut p = Prober {
        opts,
        tap: Tap::new(conn, probe.name, opts.profile, Direction::FrontToBack),
    };
    if let Err(e) = p.handshake() {
        verdict.outcome = format!("skipped: the handshake failed ({e:?})");
        return verdict;
    }
    let before = p.tap.session.messages();
    let sent = (probe.send)(&mut p);
    verdict.outcome = match sent {
        Err(Stop::Io(e)) => format!("closed before the message was sent ({e})"),
        Err(_) => "closed".into(),
        Ok(()) => match p.tap.recv(Instant::now() + opts.timeout) {
            Ok((r, outcome)) => match outcome {
                Some(ReplyOutcome::Ack(0)) => {
                    findings.add(
                        &rule::ROBUST_ACCEPTS,
                        Some(before),
                        format!("back-end: acknowledged {} as a success", probe.what),
                    );
                    "success ack (0)".into()
                }
                Some(ReplyOutcome::Ack(v)) => format!("failure ack ({v})"),
                _ if r.header.is_reply() => {
                    findings.add(
                        &rule::ROBUST_ACCEPTS,
                        Some(before),
                        format!("back-end: answered {} as if it were valid", probe.what),
                    );
                    format!("normal reply to request {}", r.header.request)
                }
                _ => format!("unrelated message {}", r.header.request),
            },
            Err(RecvError::Closed { .. }) => {
                p.tap.closed(Some(Direction::BackToFront), true);
                "closed the connection".into()
            }
            Err(RecvError::Timeout) => {
                if p.tap.session.awaiting_reply() {
                    findings.add(
                        &rule::ROBUST_HANG,
                        Some(before),
                        format!(
                            "back-end: neither replied to {} nor closed within {} ms",
                            probe.what,
                            opts.timeout.as_millis()
                        ),
                    );
                    "no reply (hang)".into()
                } else {
                    // Nothing was due: check the back-end still answers.
                    match p.call(1, &Payload::Empty, &[], false) {
                        Ok(_) => "ignored; still answers".into(),
                        Err(Stop::Timeout) => {
                            findings.add(
                                &rule::ROBUST_HANG,
                                Some(before),
                                format!("back-end: stopped answering after {}", probe.what),
                            );
                            "hang".into()
                        }
                        Err(_) => "closed the connection".into(),
                    }
                }
            }
            Err(RecvError::Io(e)) => format!("read error: {e}"),
        },
    };
    // Did it survive? A process we started tells us how it died; otherwise a
    // refused connection says the back-end is gone.
    if let Some(how) = backend.crashed() {
        findings.add(
            &rule::ROBUST_CRASH,
            Some(before),
            format!("back-end: {how} after {}", probe.what),
        );
        verdict.outcome.push_str(&format!("; process {how}"));
    } else if opts.backend_cmd.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(e) = Conn::connect_timeout(&opts.socket, Duration::from_millis(500)) {
            findings.add(
                &rule::ROBUST_CRASH,
                Some(before),
                format!(
                    "back-end: no longer accepts connections after {} ({e})",
                    probe.what
                ),
            );
            verdict
                .outcome
                .push_str("; then refused new connections (crashed)");
        }
    }
    // The back-end's own rule violations during the probe count too; ours
    // (the invalid message) do not.
    for f in &p.tap.session.report().findings {
        if f.detail.starts_with("back-end:") {
            findings.add(f.rule, f.offset, f.detail.clone());
        }
    }
    verdict.findings = findings.findings;
    verdict
}

/// Runs the probe; exit 0 conforming, 1 could not connect, 2 findings.
pub fn run(opts: &Options, output: Output) -> i32 {
    let backend = Backend::start(
        opts.backend_cmd.as_deref(),
        &opts.socket,
        Duration::from_secs(5),
    );
    let _backend = match backend {
        Ok(b) => b,
        Err(e) => {
            eprintln!("qconform: {e}");
            return 1;
        }
    };
    let conn = match Conn::connect(&opts.socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qconform: cannot connect to {}: {e}", opts.socket.display());
            return 1;
        }
    };
    let mut p = Prober {
        opts,
        tap: Tap::new(
            conn,
            &opts.socket.display().to_string(),
            opts.profile,
            Direction::FrontToBack,
        ),
    };
    let stopped = p.conversation().err();
    if stopped.is_none() {
        p.tap.closed(Some(Direction::FrontToBack), false);
    }
    if let Some(path) = &opts.transcript {
        if let Err(e) = std::fs::write(
            path,
            p.tap
                .transcript(&format!("qconform probe of {}", opts.socket.display())),
        ) {
            eprintln!("qconform: cannot write {}: {e}", path.display());
        }
    }
    drop(_backend);
    let main = p.tap.session.report().clone();
    let offered = p.tap.session.offered_features();
    let proto = p.tap.session.offered_protocol_features();
    let queues = p.tap.session.queue_num();
    let messages = p.tap.session.messages();
    // The main connection ends before the probes: single-client back-ends
    // (qemu-storage-daemon) serve one connection at a time.
    drop(p);
    let verdicts: Vec<ProbeVerdict> = if opts.robustness {
        PROBES.iter().map(|r| robustness(opts, r)).collect()
    } else {
        Vec::new()
    };
    let violations = main.violations
        + verdicts
            .iter()
            .flat_map(|v| &v.findings)
            .filter(|f| f.severity == qconform_core::Severity::Violation)
            .count() as u64;
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "socket": opts.socket.display().to_string(),
                "features": offered,
                "protocol_features": proto.map(feat::protocol_feature_names),
                "queue_num": queues,
                "conversation": { "messages": messages, "stopped": stopped.as_ref().map(|s| format!("{s:?}")), "findings": main.findings },
                "robustness": verdicts,
                "violations": violations,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Human => {
            println!(
                "back-end {}: features {:#x}, protocol features {:?}, {} queues",
                opts.socket.display(),
                offered.unwrap_or(0),
                proto.map(feat::protocol_feature_names).unwrap_or_default(),
                queues.map_or("?".into(), |q| q.to_string())
            );
            if let Some(s) = &stopped {
                println!("conversation stopped early: {s:?}");
            }
            super::check::print_report("conversation", messages, &main, Output::Human);
            for v in &verdicts {
                println!("robustness {:<22} {:<48} -> {}", v.probe, v.sent, v.outcome);
                for f in &v.findings {
                    println!("    {:?} [{}] {}", f.severity, f.rule.id, f.detail);
                }
            }
            println!("{violations} violations");
        }
    }
    if violations > 0 {
        2
    } else {
        0
    }
}

/// Runs only the valid conversation against `socket` and returns its
/// transcript (the corpus generator records real peers with it).
pub fn record_conversation(
    socket: &Path,
    timeout: Duration,
    description: &str,
) -> Result<String, String> {
    let opts = Options {
        socket: socket.to_path_buf(),
        timeout,
        profile: Profile::default(),
        transcript: None,
        robustness: false,
        backend_cmd: None,
    };
    let conn = Conn::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let mut p = Prober {
        opts: &opts,
        tap: Tap::new(conn, description, opts.profile, Direction::FrontToBack),
    };
    if let Err(e) = p.conversation() {
        return Err(format!(
            "the conversation with {} stopped: {e:?}",
            socket.display()
        ));
    }
    p.tap.closed(Some(Direction::FrontToBack), false);
    Ok(p.tap.transcript(description))
}
