//! `qconform vhost-user replay`: plays the front-end side of a transcript
//! against a back-end and compares every reply with the recorded one.
//!
//! File descriptors are recreated by kind (a memfd of the recorded size, an
//! eventfd, a socket pair for the back-end channel). Recorded addresses are
//! sent unchanged: they are the front-end's own numbers, used by the
//! back-end only to translate ring addresses through the memory table, so
//! they stay consistent with each other. Negotiation adapts to what this
//! back-end offers: acked features are masked by its offer, and a request
//! gated by a feature it does not offer (or a ring it does not have) is
//! skipped and said so. Replies are compared under a policy: exact where
//! the spec fixes the value, tolerant where implementations may differ.

use super::backend::Backend;
use super::conn::{eventfd, memfd, Conn, RecvError};
use super::tap::Tap;
use crate::Output;
use qconform_core::vhost_user::features::{ProtocolFeature as PF, F_PROTOCOL_FEATURES};
use qconform_core::vhost_user::payload::{self, Payload, PayloadKind};
use qconform_core::vhost_user::request::{Channel, FrontEnd as Fe, Gate, Reply};
use qconform_core::vhost_user::session::{Direction, Profile};
use qconform_core::vhost_user::transcript::{self, from_hex, Entry, FdInfo};
use qconform_core::vhost_user::wire::{Header, FLAG_NEED_REPLY, FLAG_REPLY};
use qconform_core::Report;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Replies whose contents describe the implementation, not the protocol:
/// compared by size and flags only.
const TOLERANT: &[Fe] = &[
    Fe::GetFeatures,
    Fe::GetProtocolFeatures,
    Fe::GetQueueNum,
    Fe::GetMaxMemSlots,
    Fe::GetConfig,
    // The ring position depends on what the guest did.
    Fe::GetVringBase,
    Fe::GetInflightFd,
    Fe::GetSharedObject,
];

/// Requests that name a ring, skipped for rings the back-end does not have.
const RING_REQUESTS: &[Fe] = &[
    Fe::SetVringNum,
    Fe::SetVringAddr,
    Fe::SetVringBase,
    Fe::GetVringBase,
    Fe::SetVringKick,
    Fe::SetVringCall,
    Fe::SetVringErr,
    Fe::SetVringEnable,
];

/// A reply that differs from the recorded one where the policy says it must not.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Divergence {
    pub seq: u64,
    pub request: String,
    pub field: String,
    pub recorded: String,
    pub got: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub seq: u64,
    pub request: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub transcript: String,
    /// Requests sent.
    pub sent: usize,
    pub skipped: Vec<Skipped>,
    pub divergences: Vec<Divergence>,
    /// What the rule engine found in the replayed conversation.
    pub findings: Report,
    /// Why the replay stopped early, if it did.
    pub stopped: Option<String>,
}

impl ReplayReport {
    pub fn conforming(&self) -> bool {
        self.divergences.is_empty() && self.findings.violations == 0 && self.stopped.is_none()
    }
}

/// What this back-end offered, as learned during the replay.
#[derive(Default)]
struct Offer {
    features: Option<u64>,
    protocol: Option<u64>,
    acked_protocol: u64,
    queues: Option<u64>,
}

impl Offer {
    fn has_pf(&self, f: PF) -> bool {
        self.protocol.is_some_and(|p| p & f.bit() != 0) && self.acked_protocol & f.bit() != 0
    }
    fn protocol_features_offered(&self) -> bool {
        self.features
            .is_some_and(|f| f >> F_PROTOCOL_FEATURES & 1 == 1)
    }
    /// Why `info` may not be sent to this back-end, if it may not.
    fn gate(&self, gate: Gate) -> Option<String> {
        match gate {
            Gate::None => None,
            Gate::ProtocolFeaturesOffered | Gate::ProtocolFeaturesNegotiated
                if !self.protocol_features_offered() =>
            {
                Some("the back-end does not offer VHOST_USER_F_PROTOCOL_FEATURES".into())
            }
            Gate::ProtocolFeaturesOffered | Gate::ProtocolFeaturesNegotiated => None,
            Gate::Feature(f) if !self.has_pf(f) => Some(format!(
                "protocol feature {} not offered or not acked",
                f.name()
            )),
            Gate::Feature(_) => None,
            Gate::VirtioFeature(b) if self.features.is_none_or(|f| f >> b & 1 != 1) => {
                Some(format!("virtio feature bit {b} not offered"))
            }
            Gate::VirtioFeature(_) => None,
        }
    }
}

/// The first u64 of a payload, in the machine's byte order (as every
/// vhost-user number is).
fn u64_of(p: &[u8]) -> Option<u64> {
    p.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
}

/// Overwrites the first u64 of a payload.
fn set_u64(p: &mut [u8], v: u64) {
    if let Some(b) = p.get_mut(..8) {
        b.copy_from_slice(&v.to_ne_bytes());
    }
}

/// The recorded request and the reply that followed it (before the next request).
struct Step<'a> {
    request: &'a Entry,
    reply: Option<&'a Entry>,
}

fn steps(entries: &[Entry]) -> Vec<Step<'_>> {
    let main = |e: &&Entry| e.event.is_none() && e.channel == Some(Channel::Main);
    let msgs: Vec<&Entry> = entries.iter().filter(main).collect();
    let mut out = Vec::new();
    for (i, e) in msgs.iter().enumerate() {
        if e.dir != Some(Direction::FrontToBack) || e.flags.unwrap_or(0) & FLAG_REPLY != 0 {
            continue;
        }
        let reply = msgs[i + 1..]
            .iter()
            .take_while(|n| n.dir == Some(Direction::BackToFront))
            .find(|n| n.request == e.request && n.flags.unwrap_or(0) & FLAG_REPLY != 0)
            .copied();
        out.push(Step { request: e, reply });
    }
    out
}

/// Descriptors like the recorded ones; a socket is the front-end end of a
/// new pair, whose other end is returned to keep (the back-end channel).
fn make_fds(
    infos: &[FdInfo],
    kind: Option<PayloadKind>,
    payload: &[u8],
) -> std::io::Result<(Vec<OwnedFd>, Option<std::os::unix::net::UnixStream>)> {
    let mut fds = Vec::new();
    let mut channel = None;
    if infos.len() > super::conn::MAX_SEND_FDS {
        return Err(std::io::Error::other(format!(
            "{} descriptors on one message",
            infos.len()
        )));
    }
    for (i, info) in infos.iter().enumerate() {
        match info.kind.as_str() {
            "memfd" | "file" => {
                // The recorded size, or what the region in the payload needs.
                let size = info
                    .size
                    .unwrap_or_else(|| region_end(kind, payload, i).unwrap_or(4096));
                fds.push(memfd(
                    "qconform-replay",
                    size.min(qconform_core::Limits::DEFAULT.vhost_max_memfd),
                )?);
            }
            "socket" => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
                channel = Some(ours);
                fds.push(OwnedFd::from(theirs));
            }
            _ => fds.push(eventfd()?),
        }
    }
    Ok((fds, channel))
}

/// mmap_offset + size of region `i` of a memory table or a single region.
fn region_end(kind: Option<PayloadKind>, payload: &[u8], i: usize) -> Option<u64> {
    let region = match payload::decode(kind?, payload, false).ok()? {
        Payload::MemTable(payload::MemTable { regions }) => *regions.get(i)?,
        Payload::SingleRegion(payload::SingleRegion { region }) if i == 0 => region,
        _ => return None,
    };
    region.mmap_offset.checked_add(region.size)
}

/// Answers back-end channel requests that want an answer with success, so
/// that a back-end waiting on its channel does not stall the replay.
fn serve_backend_channel(stream: std::os::unix::net::UnixStream) {
    std::thread::spawn(move || {
        let conn = Conn::from_stream(stream);
        while let Ok(r) = conn.recv(Instant::now() + Duration::from_secs(30)) {
            if r.header.need_reply() {
                let h = Header::reply(r.header.request, 8);
                let _ = conn.send(h, &0u64.to_ne_bytes(), &[]);
            }
        }
    });
}

/// Replays `entries` against the back-end at `socket`.
pub fn replay(
    name: &str,
    entries: &[Entry],
    socket: &Path,
    timeout: Duration,
    profile: Profile,
) -> Result<ReplayReport, String> {
    replay_started(&Backend::none(), name, entries, socket, timeout, profile)
}

/// [`replay`] against `backend`, which may have just been started (its
/// socket may not accept connections yet).
pub fn replay_started(
    backend: &Backend,
    name: &str,
    entries: &[Entry],
    socket: &Path,
    timeout: Duration,
    profile: Profile,
) -> Result<ReplayReport, String> {
    let conn = backend
        .connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let mut r = Replayer {
        tap: Tap::new(conn, name, profile, Direction::FrontToBack),
        offer: Offer::default(),
        report: ReplayReport {
            transcript: name.to_string(),
            sent: 0,
            skipped: Vec::new(),
            divergences: Vec::new(),
            findings: Report::new(name, "vhost-user", &qconform_core::Limits::default()),
            stopped: None,
        },
        keep: Vec::new(),
        timeout,
    };
    for step in steps(entries) {
        if let Flow::Stop(why) = r.step(&step)? {
            r.report.stopped = Some(why);
            break;
        }
    }
    if r.report.stopped.is_none() {
        r.tap.closed(Some(Direction::FrontToBack), false);
    }
    r.report.findings = r.tap.session.into_report();
    Ok(r.report)
}

/// Whether the replay goes on after a step.
enum Flow {
    Continue,
    /// The conversation ended (why).
    Stop(String),
}

/// A recorded request as it will be sent to this back-end.
struct Outgoing {
    request: Option<Fe>,
    name: String,
    header: Header,
    payload: Vec<u8>,
}

/// The state of one replay.
struct Replayer {
    tap: Tap,
    offer: Offer,
    report: ReplayReport,
    /// Guest memory and notifiers stay open for the whole conversation
    /// (the back-end maps and polls them).
    keep: Vec<OwnedFd>,
    timeout: Duration,
}

impl Replayer {
    /// Replays one recorded request and, when one is due, its reply.
    fn step(&mut self, step: &Step<'_>) -> Result<Flow, String> {
        let e = step.request;
        let out = match self.adapt(e) {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(Flow::Continue),
            Err(reason) => {
                self.skip(e, reason);
                return Ok(Flow::Continue);
            }
        };
        let info = out.request.map(Fe::info);
        let (fds, channel) = make_fds(&e.fds, info.map(|i| i.payload), &out.payload)
            .map_err(|err| format!("cannot create descriptors: {err}"))?;
        if let Some(c) = channel {
            serve_backend_channel(c);
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        if let Err(err) = self.tap.send(out.header, &out.payload, &borrowed) {
            self.tap.closed(Some(Direction::BackToFront), false);
            return Ok(Flow::Stop(format!(
                "seq {} {}: send failed: {err}",
                e.seq, out.name
            )));
        }
        self.report.sent += 1;
        drop(borrowed);
        self.keep.extend(fds);
        let due = match info.map(|i| i.reply) {
            Some(Reply::Always(_)) => true,
            Some(Reply::IfFeature(f, _)) => self.offer.has_pf(f),
            _ => false,
        } || out.header.need_reply();
        if !due {
            if step.reply.is_some() {
                self.skip(
                    e,
                    "a reply was recorded, but with this back-end's features none is due".into(),
                );
            }
            return Ok(Flow::Continue);
        }
        Ok(self.await_reply(step, &out))
    }

    fn skip(&mut self, e: &Entry, reason: String) {
        let request = e.request.map_or_else(String::new, |id| {
            Fe::from_id(id).map_or_else(|| format!("request {id}"), |r| r.name().to_string())
        });
        self.report.skipped.push(Skipped {
            seq: e.seq,
            request,
            reason,
        });
    }

    /// The recorded request adapted to this back-end's offer: acked
    /// features masked by it, need_reply dropped without REPLY_ACK. None
    /// for an entry that is not a request; Err(why) for a request this
    /// back-end cannot be sent (a gate it does not offer, a ring it lacks).
    fn adapt(&mut self, e: &Entry) -> Result<Option<Outgoing>, String> {
        let (Some(id), Some(flags)) = (e.request, e.flags) else {
            return Ok(None);
        };
        let request = Fe::from_id(id);
        let info = request.map(Fe::info);
        let mut payload = e
            .payload_hex
            .as_deref()
            .and_then(from_hex)
            .unwrap_or_default();
        if let Some(reason) = info.and_then(|i| self.offer.gate(i.gate)) {
            return Err(reason);
        }
        if request.is_some_and(|r| RING_REQUESTS.contains(&r)) {
            let index = info
                .and_then(|i| payload::decode(i.payload, &payload, false).ok())
                .and_then(|p| p.ring_index());
            if let (Some(i), Some(q)) = (index.map(u64::from), self.offer.queues) {
                if i >= q {
                    return Err(format!("ring {i}: the back-end has {q} queues"));
                }
            }
        }
        match request {
            Some(Fe::SetFeatures) => {
                if let (Some(v), Some(o)) = (u64_of(&payload), self.offer.features) {
                    set_u64(&mut payload, v & o);
                }
            }
            Some(Fe::SetProtocolFeatures) => {
                if let Some(v) = u64_of(&payload) {
                    let v = v & self.offer.protocol.unwrap_or(v);
                    set_u64(&mut payload, v);
                    self.offer.acked_protocol = v;
                }
            }
            _ => {}
        }
        let mut header = Header {
            request: id,
            flags,
            size: payload.len() as u32,
        };
        if !self.offer.has_pf(PF::ReplyAck) {
            header.flags &= !FLAG_NEED_REPLY;
        }
        Ok(Some(Outgoing {
            request,
            name: request.map_or_else(|| format!("request {id}"), |r| r.name().to_string()),
            header,
            payload,
        }))
    }

    /// Waits for the reply `out` is due, learns the offer from it and
    /// compares it with the recorded one.
    fn await_reply(&mut self, step: &Step<'_>, out: &Outgoing) -> Flow {
        let e = step.request;
        match self.tap.recv(Instant::now() + self.timeout) {
            Ok((r, _)) => {
                match out.request {
                    Some(Fe::GetFeatures) => self.offer.features = u64_of(&r.payload),
                    Some(Fe::GetProtocolFeatures) => self.offer.protocol = u64_of(&r.payload),
                    Some(Fe::GetQueueNum) => self.offer.queues = u64_of(&r.payload),
                    _ => {}
                }
                if let Some(rec) = step.reply {
                    let is_ack = out.header.need_reply()
                        && matches!(
                            out.request.map(|r| r.info().reply),
                            Some(Reply::None) | None
                        );
                    compare(
                        &mut self.report,
                        e.seq,
                        (out.request, &out.name),
                        rec,
                        &r.header,
                        &r.payload,
                        is_ack,
                    );
                }
                Flow::Continue
            }
            Err(RecvError::Timeout) => {
                self.tap.timed_out(self.timeout.as_millis() as u64);
                Flow::Stop(format!(
                    "seq {} {}: no reply within {} ms",
                    e.seq,
                    out.name,
                    self.timeout.as_millis()
                ))
            }
            Err(err) => {
                self.tap.closed(Some(Direction::BackToFront), false);
                Flow::Stop(format!("seq {} {}: {err}", e.seq, out.name))
            }
        }
    }
}

/// Compares a reply with the recorded one: flags, request and size always;
/// the payload exactly unless the request is tolerant, and for REPLY_ACK
/// acks by their meaning (success or failure), not their value.
fn compare(
    report: &mut ReplayReport,
    seq: u64,
    (request, name): (Option<Fe>, &str),
    rec: &Entry,
    got: &Header,
    payload: &[u8],
    is_ack: bool,
) {
    let mut diverge = |field: &str, recorded: String, g: String| {
        if recorded != g {
            report.divergences.push(Divergence {
                seq,
                request: name.into(),
                field: field.into(),
                recorded,
                got: g,
            });
        }
    };
    diverge(
        "flags",
        format!("{:#x}", rec.flags.unwrap_or(0)),
        format!("{:#x}", got.flags),
    );
    diverge(
        "request",
        rec.request.unwrap_or(0).to_string(),
        got.request.to_string(),
    );
    diverge(
        "size",
        rec.size.unwrap_or(0).to_string(),
        got.size.to_string(),
    );
    let recorded = rec.payload_hex.clone().unwrap_or_default();
    if is_ack {
        let ok = |p: Option<u64>| if p == Some(0) { "success" } else { "failure" };
        diverge(
            "ack",
            ok(from_hex(&recorded).as_deref().and_then(u64_of)).into(),
            ok(u64_of(payload)).into(),
        );
    } else if !request.is_some_and(|r| TOLERANT.contains(&r)) {
        diverge("payload", recorded, transcript::to_hex(payload));
    }
}

pub fn print(report: &ReplayReport, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        ),
        Output::Human => {
            println!(
                "replay {}: {} requests sent, {} skipped",
                report.transcript,
                report.sent,
                report.skipped.len()
            );
            for s in &report.skipped {
                println!("  skipped seq {} {}: {}", s.seq, s.request, s.reason);
            }
            for d in &report.divergences {
                println!(
                    "  divergence seq {} {} {}: recorded {}, got {}",
                    d.seq, d.request, d.field, d.recorded, d.got
                );
            }
            for f in &report.findings.findings {
                println!("  {:?} [{}] {}", f.severity, f.rule.id, f.detail);
            }
            if let Some(s) = &report.stopped {
                println!("  stopped: {s}");
            }
            println!(
                "{}",
                if report.conforming() {
                    "conforming".to_string()
                } else {
                    format!(
                        "{} divergences, {} violations",
                        report.divergences.len(),
                        report.findings.violations
                    )
                }
            );
        }
    }
}

/// Reads a transcript file and its entries.
pub fn load(file: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    transcript::parse(&text)
        .map(|(_, e)| e)
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// `qconform vhost-user replay`: exit 0 conforming, 1 could not run, 2 findings or divergences.
pub fn run_file(
    file: &Path,
    socket: &Path,
    backend_cmd: Option<&str>,
    timeout: Duration,
    profile: Profile,
    output: Output,
) -> i32 {
    let entries = match load(file) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("qconform: {e}");
            return 1;
        }
    };
    let cmd = backend_cmd.map(|c| c.replace("{socket}", &socket.display().to_string()));
    let mut backend = match Backend::start(cmd.as_deref(), socket, Duration::from_secs(10)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("qconform: {e}");
            return 1;
        }
    };
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match replay_started(&backend, &name, &entries, socket, timeout, profile) {
        Ok(mut r) => {
            // A back-end we started tells how it ended: a replayed fuzz
            // finding must show the crash, not only a closed connection.
            if let Some(how) = backend.crashed() {
                r.findings.add(
                    &qconform_core::rules::vhost_user::ROBUST_CRASH,
                    None,
                    format!("back-end: {how} during the replay"),
                );
            }
            print(&r, output);
            if r.conforming() {
                0
            } else {
                2
            }
        }
        Err(e) => {
            eprintln!("qconform: {e}");
            1
        }
    }
}
