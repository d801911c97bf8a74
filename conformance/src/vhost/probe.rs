//! `qconform vhost-user probe`: we are the front-end. A full, valid
//! conversation first (negotiation, memory, rings, config, status, stop),
//! judged by the rule engine; then robustness probes, each on a fresh
//! connection, that send one invalid message and judge the answer: a
//! failure ack or a closed connection conforms; a crash or a hang is a
//! violation, and so is a success ack for a request the back-end cannot have
//! carried out; carrying out a request the spec only asks the front-end not
//! to send is a note (`--strict` counts notes as violations).
//!
//! vhost-user has no message that tells the front-end the largest ring a
//! back-end holds, so the ring size is negotiated: 256 first, then half of
//! it on each refusal (a failure ack, or a close before anything after the
//! SET_VRING_NUM was answered), each on a fresh connection.

use super::conn::{self, Conn, Received, RecvError};
use super::datapath::{self, DataPath, MemfdMemory};
use super::tap::Tap;
use crate::Output;
use qconform_core::report::{Finding, Location, Severity};
use qconform_core::rules::vhost_user as rule;
use qconform_core::vhost_user::features::{self as feat, ProtocolFeature as PF};
use qconform_core::vhost_user::payload::{self, encode, Payload, Region};
use qconform_core::vhost_user::request::FrontEnd as Fe;
use qconform_core::vhost_user::session::{Direction, Profile, ReplyOutcome};
use qconform_core::vhost_user::wire::{Header, FLAG_NEED_REPLY, VERSION};
use qconform_core::virtio::split_ring::Layout;
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
    /// Count notes (tester policy) as violations.
    pub strict: bool,
    /// Drive ring 0 with real requests (`--data-path`).
    pub data_path: Option<datapath::Options>,
}

/// Protocol features the probe can drive, acknowledged when offered.
pub(crate) const DRIVEN: [PF; 7] = [
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
pub(crate) const VIRTIO_ACK: u64 =
    1 << feat::F_VERSION_1 | 1 << feat::F_PROTOCOL_FEATURES | 1 << 28 | 1 << 29;
pub(crate) const GUEST_MEMORY: u64 = 2 << 20;
/// A made-up user address for our memory region (the back-end only uses it
/// to translate ring addresses).
pub(crate) const USER_BASE: u64 = 0x7f00_0000_0000;
/// The ring size tried first; each refusal halves it, down to 1.
const RING_SIZE: u32 = 256;

#[derive(Debug)]
enum Stop {
    Closed,
    Timeout,
    Io(String),
    /// The back-end refused the ring size (how: a failure ack or a close);
    /// the conversation is tried again with a smaller one.
    RingSize(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Closed => write!(f, "the back-end closed the connection"),
            Stop::Timeout => write!(f, "no reply before the deadline"),
            Stop::Io(e) => write!(f, "{e}"),
            Stop::RingSize(by) => write!(f, "the back-end refused the ring size: {by}"),
        }
    }
}

struct Prober<'a> {
    opts: &'a Options,
    tap: Tap,
    ring_size: u32,
    /// A SET_VRING_NUM was sent and nothing after it answered yet (its ack,
    /// or the GET_FEATURES sent after it without REPLY_ACK): a close now is
    /// the back-end refusing the size.
    ring_unconfirmed: bool,
    /// What the data path did, request by request.
    data_steps: Vec<datapath::Step>,
    /// Instead of valid requests, this malformed one (a data-path
    /// robustness probe).
    abuse: Option<datapath::RingAbuse>,
}

impl<'a> Prober<'a> {
    fn new(opts: &'a Options, conn: Conn, name: &str, ring_size: u32) -> Prober<'a> {
        Prober {
            opts,
            tap: Tap::new(conn, name, opts.profile, Direction::FrontToBack),
            ring_size,
            ring_unconfirmed: false,
            data_steps: Vec::new(),
            abuse: None,
        }
    }

    /// Sends a message exactly as given. A peer that is gone is the same
    /// close whether a write or a read notices it first.
    fn send(&mut self, header: Header, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Stop> {
        match self.tap.send(header, payload, fds) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(self.backend_closed())
            }
            Err(e) => Err(Stop::Io(e.to_string())),
        }
    }

    /// The back-end closed the connection: a refused ring size if nothing
    /// answered since the SET_VRING_NUM (and a smaller size is left), else
    /// a close of a valid conversation.
    fn backend_closed(&mut self) -> Stop {
        if self.ring_unconfirmed && self.ring_size > 1 {
            return Stop::RingSize("closed the connection".into());
        }
        self.tap.closed(Some(Direction::BackToFront), false);
        Stop::Closed
    }

    /// Sends a request and, if one is due, waits for the reply.
    fn call(
        &mut self,
        request: Fe,
        payload: &Payload,
        fds: &[BorrowedFd<'_>],
        need_reply: bool,
    ) -> Result<Option<(Received, Option<ReplyOutcome>)>, Stop> {
        let bytes = encode(payload);
        let header = Header::request(request.id(), bytes.len() as u32, need_reply);
        self.send(header, &bytes, fds)?;
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
            Ok(r) => {
                self.ring_unconfirmed = false;
                Ok(r)
            }
            Err(RecvError::Timeout) => {
                self.tap.timed_out(self.opts.timeout.as_millis() as u64);
                Err(Stop::Timeout)
            }
            Err(RecvError::Closed { .. }) => Err(self.backend_closed()),
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
        let features =
            Self::u64_reply(self.call(Fe::GetFeatures, &Payload::Empty, &[], false)?).unwrap_or(0);
        if features >> feat::F_PROTOCOL_FEATURES & 1 == 1 {
            let offered =
                Self::u64_reply(self.call(Fe::GetProtocolFeatures, &Payload::Empty, &[], false)?)
                    .unwrap_or(0);
            let ack = DRIVEN.iter().map(|f| f.bit()).fold(0, |a, b| a | b) & offered;
            self.call(
                Fe::SetProtocolFeatures,
                &Payload::U64(payload::U64 { value: ack }),
                &[],
                false,
            )?;
        }
        let ra = self.reply_ack();
        self.call(Fe::SetOwner, &Payload::Empty, &[], ra)?;
        if feat::has(self.tap.session.protocol_features(), PF::Mq) {
            self.call(Fe::GetQueueNum, &Payload::Empty, &[], false)?;
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
            self.call(Fe::GetMaxMemSlots, &Payload::Empty, &[], false)?;
        }
        let offered = self.tap.session.offered_features().unwrap_or(0);
        let data_path = self.opts.data_path.clone();
        let device_ack = match data_path.as_ref().map(|d| d.device) {
            Some(datapath::Device::Blk) => datapath::BLK_ACK,
            Some(datapath::Device::Rng) | None => 0,
        };
        let features = offered & (VIRTIO_ACK | device_ack);
        self.call(Fe::GetFeatures, &Payload::Empty, &[], false)?;
        self.call(
            Fe::SetFeatures,
            &Payload::U64(payload::U64 { value: features }),
            &[],
            ra,
        )?;
        let mut config = Vec::new();
        if has(PF::Config) {
            let reply = self.call(
                Fe::GetConfig,
                &Payload::Config(payload::Config {
                    offset: 0,
                    size: 8,
                    flags: 0,
                    data: vec![0; 8],
                }),
                &[],
                false,
            )?;
            // The config space's bytes follow the 12-byte config header.
            if let Some((r, _)) = reply {
                config = r.payload.get(12..).unwrap_or_default().to_vec();
            }
        }
        if has(PF::Status) {
            self.call(
                Fe::SetStatus,
                &Payload::U64(payload::U64 { value: 0x0f }),
                &[],
                ra,
            )?;
            self.call(Fe::GetStatus, &Payload::Empty, &[], false)?;
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
            self.call(
                Fe::AddMemReg,
                &Payload::SingleRegion(payload::SingleRegion { region }),
                &[mem.as_fd()],
                ra,
            )?;
        } else {
            self.call(
                Fe::SetMemTable,
                &Payload::MemTable(payload::MemTable {
                    regions: vec![region],
                }),
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
            .clamp(1, Limits::DEFAULT.vhost_probe_rings);
        let mut calls = Vec::new();
        let mut kicks = Vec::new();
        for _ in 0..rings {
            calls.push(conn::eventfd().map_err(|e| Stop::Io(e.to_string()))?);
            kicks.push(conn::eventfd().map_err(|e| Stop::Io(e.to_string()))?);
        }
        let ring_size = self.ring_size as u16;
        let layout = |i: u32| {
            let base = 0x10000 * (i as u64 + 1);
            Layout {
                size: ring_size,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
            }
        };
        // Ring 0 is laid out before the back-end learns where it is.
        let mut dp = match (&data_path, calls.first(), kicks.first()) {
            (Some(d), Some(call), Some(kick)) => Some(
                DataPath::new(
                    MemfdMemory {
                        fd: mem.as_fd(),
                        size: GUEST_MEMORY,
                    },
                    layout(0),
                    kick,
                    call,
                    self.opts.timeout,
                    features >> 29 & 1 == 1,
                    d.device,
                )
                .map_err(Stop::Io)?,
            ),
            _ => None,
        };
        for i in 0..rings as u32 {
            let ring = layout(i);
            self.ring_unconfirmed = true;
            let set_num = self.call(
                Fe::SetVringNum,
                &Payload::VringState(payload::VringState {
                    index: i,
                    num: self.ring_size,
                }),
                &[],
                ra,
            )?;
            if let Some((_, Some(ReplyOutcome::Ack(v)))) = set_num {
                if v != 0 && self.ring_size > 1 {
                    return Err(Stop::RingSize(format!("failure ack ({v})")));
                }
            }
            if !ra {
                // No ack says the size was taken: a GET_FEATURES round trip
                // (valid at any time) does, so that a later close is not
                // taken for a refused size.
                self.call(Fe::GetFeatures, &Payload::Empty, &[], false)?;
            }
            self.call(
                Fe::SetVringBase,
                &Payload::VringState(payload::VringState { index: i, num: 0 }),
                &[],
                ra,
            )?;
            self.call(
                Fe::SetVringAddr,
                &Payload::VringAddr(payload::VringAddr {
                    index: i,
                    flags: 0,
                    descriptor: USER_BASE + ring.desc,
                    available: USER_BASE + ring.avail,
                    used: USER_BASE + ring.used,
                    log: 0,
                }),
                &[],
                ra,
            )?;
            let (Some(call), Some(kick)) = (calls.get(i as usize), kicks.get(i as usize)) else {
                break;
            };
            self.call(
                Fe::SetVringCall,
                &Payload::U64(payload::U64 { value: i as u64 }),
                &[call.as_fd()],
                ra,
            )?;
            self.call(
                Fe::SetVringKick,
                &Payload::U64(payload::U64 { value: i as u64 }),
                &[kick.as_fd()],
                ra,
            )?;
            if features >> feat::F_PROTOCOL_FEATURES & 1 == 1 {
                self.call(
                    Fe::SetVringEnable,
                    &Payload::VringState(payload::VringState { index: i, num: 1 }),
                    &[],
                    ra,
                )?;
            }
        }
        if let Some(dp) = dp.as_mut() {
            dp.place_guard();
        }
        if let (Some(dp), Some(abuse)) = (dp.as_mut(), self.abuse) {
            let outcome = dp.abuse(abuse, GUEST_MEMORY);
            self.data_steps.push(datapath::Step {
                request: abuse.name().into(),
                outcome,
            });
            dp.check_guard();
            self.data_findings(dp);
        } else if let (Some(dp), Some(d)) = (dp.as_mut(), &data_path) {
            match d.device {
                datapath::Device::Blk => dp.blk(
                    qconform_core::virtio::blk::capacity(&config),
                    features & datapath::BLK_ACK != 0,
                    d.disk.as_deref(),
                ),
                datapath::Device::Rng => dp.rng(),
            }
            dp.check_guard();
            self.data_findings(dp);
        }
        // Stop: disable, then GET_VRING_BASE stops each ring.
        for i in 0..rings as u32 {
            if features >> feat::F_PROTOCOL_FEATURES & 1 == 1 {
                self.call(
                    Fe::SetVringEnable,
                    &Payload::VringState(payload::VringState { index: i, num: 0 }),
                    &[],
                    ra,
                )?;
            }
            let base = self.call(
                Fe::GetVringBase,
                &Payload::VringState(payload::VringState { index: i, num: 0 }),
                &[],
                false,
            )?;
            if let (0, Some(dp), Some((r, _)), None) = (i, dp.as_mut(), base, self.abuse) {
                let num = r.payload.get(4..8).and_then(|b| b.try_into().ok());
                if let Some(num) = num.map(u32::from_ne_bytes) {
                    dp.check_base(num);
                }
                dp.stopped_ring_idle();
                self.data_findings(dp);
            }
        }

        if has(PF::ConfigureMemSlots) {
            self.call(
                Fe::RemMemReg,
                &Payload::SingleRegion(payload::SingleRegion { region }),
                &[],
                ra,
            )?;
        }
        if has(PF::ResetDevice) {
            self.call(Fe::ResetDevice, &Payload::Empty, &[], ra)?;
        }
        Ok(())
    }
}

impl Prober<'_> {
    /// Moves the data path's findings into the session's report, at the
    /// message count they follow.
    fn data_findings(&mut self, dp: &mut DataPath<'_>) {
        let seq = self.tap.session.messages();
        for (rule, detail) in dp.findings.drain(..) {
            self.tap.session.finding(rule, seq, detail);
        }
        self.data_steps.append(&mut dp.steps);
    }
}

/// What accepting an invalid message means (spec sections "Communication"
/// and REPLY_ACK: the ack is "zero on success or non-zero on failure").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaks {
    /// The back-end cannot have carried the request out (an unknown
    /// request, a wrong size, a missing fd, a ring it does not have): a
    /// success ack says something false, a violation.
    CannotCarryOut,
    /// The spec asks the front-end not to send it (its "should" binds the
    /// front-end); a back-end that carries it out breaks nothing: a note.
    FrontEndShould,
}

/// The invalid message of one robustness probe.
struct Invalid {
    /// What was sent, naming the request.
    what: String,
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    /// Eventfds attached.
    fds: usize,
}

/// One robustness probe: the invalid message it sends after the handshake.
struct Robustness {
    name: &'static str,
    breaks: Breaks,
    message: fn(&Prober<'_>) -> Invalid,
}

/// A request's name from the request table.
fn name_of(request: u32) -> &'static str {
    Fe::from_id(request).map_or("an undefined request", Fe::name)
}

/// `request` as the probe sends it: `flags`, `payload`, `fds` eventfds.
fn invalid(
    what: String,
    request: impl Into<u32>,
    flags: u32,
    payload: Vec<u8>,
    fds: usize,
) -> Invalid {
    Invalid {
        what,
        request: request.into(),
        flags,
        payload,
        fds,
    }
}

/// Version 1, with need_reply when REPLY_ACK is negotiated (so the answer
/// says whether the back-end accepted the message).
fn need(p: &Prober<'_>) -> u32 {
    VERSION | if p.reply_ack() { FLAG_NEED_REPLY } else { 0 }
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    encode(&Payload::VringState(payload::VringState { index, num }))
}

static PROBES: &[Robustness] = &[
    Robustness {
        name: "unknown-request",
        breaks: Breaks::CannotCarryOut,
        // Beyond every id the spec defines (the table ends at 45).
        message: |p| invalid("request id 99".into(), 99u32, need(p), vec![], 0),
    },
    Robustness {
        name: "bad-version",
        breaks: Breaks::FrontEndShould,
        message: |_| {
            let r = Fe::GetFeatures;
            invalid(
                format!("{} with version bits 2", r.name()),
                r,
                0x2,
                vec![],
                0,
            )
        },
    },
    Robustness {
        name: "wrong-size",
        breaks: Breaks::CannotCarryOut,
        message: |p| {
            let r = Fe::SetFeatures;
            invalid(
                format!("{} with a 4-byte payload", r.name()),
                r,
                need(p),
                vec![0, 0, 0, 1],
                0,
            )
        },
    },
    Robustness {
        name: "missing-fd",
        breaks: Breaks::CannotCarryOut,
        message: |p| {
            let r = Fe::SetVringCall;
            invalid(
                format!("{} without its fd or NOFD", r.name()),
                r,
                need(p),
                0u64.to_ne_bytes().to_vec(),
                0,
            )
        },
    },
    Robustness {
        name: "extra-fds",
        breaks: Breaks::FrontEndShould,
        message: |p| {
            let r = Fe::SetVringCall;
            invalid(
                format!("{} with 2 fds", r.name()),
                r,
                need(p),
                0u64.to_ne_bytes().to_vec(),
                2,
            )
        },
    },
    Robustness {
        name: "too-many-fds",
        breaks: Breaks::FrontEndShould,
        message: |p| {
            let r = Fe::SetVringBase;
            invalid(
                format!("{} (takes no fd) with 9 fds", r.name()),
                r,
                need(p),
                vring_state(0, 0),
                9,
            )
        },
    },
    Robustness {
        name: "gated-request",
        breaks: Breaks::FrontEndShould,
        message: |p| {
            let proto = p.tap.session.protocol_features();
            // The first of these whose protocol feature is not negotiated.
            let candidates = [
                (Fe::GetStatus, PF::Status, vec![]),
                (Fe::NetSetMtu, PF::Mtu, 1500u64.to_ne_bytes().to_vec()),
                (
                    Fe::SendRarp,
                    PF::Rarp,
                    0x0200_0000_0001u64.to_ne_bytes().to_vec(),
                ),
                (Fe::ResetDevice, PF::ResetDevice, vec![]),
            ];
            let (request, gate, payload) = candidates
                .iter()
                .find(|(_, f, _)| !feat::has(proto, *f))
                .unwrap_or(&candidates[0])
                .clone();
            let what = if feat::has(proto, gate) {
                format!(
                    "{} (every candidate's feature is negotiated: valid)",
                    request.name()
                )
            } else {
                format!("{} without {} negotiated", request.name(), gate.name())
            };
            invalid(what, request, need(p), payload, 0)
        },
    },
    Robustness {
        name: "ring-index-set-num",
        breaks: Breaks::CannotCarryOut,
        message: |p| {
            let r = Fe::SetVringNum;
            invalid(
                format!("{} for ring 100000", r.name()),
                r,
                need(p),
                vring_state(100_000, p.ring_size),
                0,
            )
        },
    },
    Robustness {
        name: "ring-index-get-base",
        breaks: Breaks::CannotCarryOut,
        message: |_| {
            let r = Fe::GetVringBase;
            invalid(
                format!("{} for ring 100000", r.name()),
                r,
                VERSION,
                vring_state(100_000, 0),
                0,
            )
        },
    },
];

#[derive(Serialize)]
struct ProbeVerdict {
    probe: &'static str,
    sent: String,
    outcome: String,
    findings: Vec<Finding>,
}

/// How the back-end answered the invalid message.
fn judge_answer(
    p: &mut Prober<'_>,
    probe: &Robustness,
    what: &str,
    before: u64,
    findings: &mut Report,
) -> String {
    let opts = p.opts;
    match p.tap.recv(Instant::now() + opts.timeout) {
        Ok((r, outcome)) => match outcome {
            Some(ReplyOutcome::Ack(0)) => {
                let rule = match probe.breaks {
                    Breaks::CannotCarryOut => &rule::ROBUST_ACCEPTS,
                    Breaks::FrontEndShould => &rule::ROBUST_POLICY,
                };
                findings.add_at(rule, Some(Location::Message(before)), 1, || {
                    format!("back-end: acknowledged {what} as a success")
                });
                "success ack (0)".into()
            }
            Some(ReplyOutcome::Ack(v)) => format!("failure ack ({v})"),
            _ if r.header.is_reply() => {
                // A reply body, not an ack: REPLY_ACK's meaning is not at
                // stake, and no request here has a failure form of its body.
                findings.add_at(
                    &rule::ROBUST_POLICY,
                    Some(Location::Message(before)),
                    1,
                    || format!("back-end: answered {what} as if it were valid"),
                );
                format!("normal reply to {}", name_of(r.header.request))
            }
            _ => format!("unrelated message {}", r.header.request),
        },
        Err(RecvError::Closed { .. }) => {
            p.tap.closed(Some(Direction::BackToFront), true);
            "closed the connection".into()
        }
        Err(RecvError::Timeout) if p.tap.session.awaiting_reply() => {
            findings.add_at(
                &rule::ROBUST_HANG,
                Some(Location::Message(before)),
                1,
                || {
                    format!(
                        "back-end: neither replied to {what} nor closed within {} ms",
                        opts.timeout.as_millis()
                    )
                },
            );
            "no reply (hang)".into()
        }
        // Nothing was due: check the back-end still answers.
        Err(RecvError::Timeout) => match p.call(Fe::GetFeatures, &Payload::Empty, &[], false) {
            Ok(_) => "ignored; still answers".into(),
            Err(Stop::Timeout) => {
                findings.add_at(
                    &rule::ROBUST_HANG,
                    Some(Location::Message(before)),
                    1,
                    || format!("back-end: stopped answering after {what}"),
                );
                "hang".into()
            }
            Err(_) => "closed the connection".into(),
        },
        Err(RecvError::Io(e)) => format!("read error: {e}"),
    }
}

/// Runs one robustness probe on a fresh connection.
fn robustness(opts: &Options, probe: &Robustness, ring_size: u32) -> ProbeVerdict {
    let mut verdict = ProbeVerdict {
        probe: probe.name,
        sent: String::new(),
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
    let conn = match backend.connect(&opts.socket) {
        Ok(c) => c,
        Err(e) => {
            verdict.outcome = format!(
                "skipped: cannot connect ({e}); an earlier probe may have stopped the back-end"
            );
            return verdict;
        }
    };
    let mut p = Prober::new(opts, conn, probe.name, ring_size);
    if let Err(e) = p.handshake() {
        verdict.outcome = format!("skipped: the handshake failed ({e})");
        return verdict;
    }
    let before = p.tap.session.messages();
    let m = (probe.message)(&p);
    verdict.sent = m.what.clone();
    let fds = eventfds(m.fds);
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let header = Header {
        request: m.request,
        flags: m.flags,
        size: m.payload.len() as u32,
    };
    verdict.outcome = match p.send(header, &m.payload, &borrowed) {
        Ok(()) => judge_answer(&mut p, probe, &m.what, before, &mut findings),
        Err(Stop::Closed) => "closed the connection before the message was sent".into(),
        Err(e) => format!("could not send: {e}"),
    };
    // Did it survive? A process we started tells us how it died; otherwise a
    // refused connection says the back-end is gone.
    if let Some(how) = backend.crashed() {
        findings.add_at(
            &rule::ROBUST_CRASH,
            Some(Location::Message(before)),
            1,
            || format!("back-end: {how} after {}", m.what),
        );
        verdict.outcome.push_str(&format!("; process {how}"));
    } else if opts.backend_cmd.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(e) = Conn::connect_timeout(&opts.socket, Duration::from_millis(500)) {
            findings.add_at(
                &rule::ROBUST_CRASH,
                Some(Location::Message(before)),
                1,
                || {
                    format!(
                        "back-end: no longer accepts connections after {} ({e})",
                        m.what
                    )
                },
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
            findings.add_at(f.rule, f.location, 1, || f.detail.clone());
        }
    }
    verdict.findings = findings.findings;
    verdict
}

/// One data-path robustness probe on a fresh connection (and back-end,
/// with --backend-cmd): the whole conversation with `abuse` placed on ring
/// 0 instead of valid requests. The back-end may refuse it any way it
/// likes (an error, a reset, a close); it must neither crash nor hang.
fn ring_robustness(opts: &Options, abuse: datapath::RingAbuse, ring_size: u32) -> ProbeVerdict {
    let mut verdict = ProbeVerdict {
        probe: abuse.name(),
        sent: format!("{abuse:?} on ring 0"),
        outcome: String::new(),
        findings: Vec::new(),
    };
    let mut findings = Report::new(abuse.name(), "vhost-user", &Limits::default());
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
    let conn = match backend.connect(&opts.socket) {
        Ok(c) => c,
        Err(e) => {
            verdict.outcome = format!("skipped: cannot connect ({e})");
            return verdict;
        }
    };
    let mut p = Prober::new(opts, conn, abuse.name(), ring_size);
    p.abuse = Some(abuse);
    let end = p.conversation();
    let placed = p
        .data_steps
        .iter()
        .map(|s| s.outcome.clone())
        .collect::<Vec<_>>()
        .join("; ");
    verdict.outcome = match &end {
        Ok(()) => format!("{placed}; the conversation finished"),
        Err(Stop::Closed) => format!("{placed}; closed the connection"),
        Err(e) => format!("{placed}; {e}"),
    };
    let at = Some(Location::Message(p.tap.session.messages()));
    if let Err(Stop::Timeout) = end {
        findings.add_at(&rule::ROBUST_HANG, at, 1, || {
            format!("back-end: stopped answering after {abuse:?} was placed on ring 0")
        });
    }
    if let Some(how) = backend.crashed() {
        findings.add_at(&rule::ROBUST_CRASH, at, 1, || {
            format!("back-end: {how} after {abuse:?} was placed on ring 0")
        });
        verdict.outcome.push_str(&format!("; process {how}"));
    }
    // The back-end's own rule violations count (used entries it made up
    // among them); a close is its way of refusing, not a finding here.
    for f in &p.tap.session.report().findings {
        if f.detail.starts_with("back-end:")
            && f.rule.id != rule::PEER_CLOSED.id
            && f.rule.id != rule::REPLY_MISSING.id
            && f.rule.id != rule::ROBUST_HANG.id
        {
            findings.add_at(f.rule, f.location, 1, || f.detail.clone());
        }
    }
    verdict.findings = findings.findings;
    verdict
}

fn eventfds(n: usize) -> Vec<OwnedFd> {
    (0..n).filter_map(|_| conn::eventfd().ok()).collect()
}

/// A ring size the back-end refused, and how.
#[derive(Debug, Clone, Serialize)]
struct Refused {
    ring_size: u32,
    by: String,
}

/// The valid conversation as it ended, at the ring size the back-end took.
struct Conversation<'a> {
    prober: Prober<'a>,
    stopped: Option<Stop>,
    refused: Vec<Refused>,
    /// The back-end process of the last attempt, if we started it.
    backend: Backend,
}

/// Runs the valid conversation, each refused ring size again on a fresh
/// connection (and a fresh back-end process, with --backend-cmd) with half
/// the size.
fn negotiate<'a>(opts: &'a Options, name: &str) -> Result<Conversation<'a>, String> {
    let mut refused = Vec::new();
    let mut size = RING_SIZE;
    loop {
        let backend = Backend::start(
            opts.backend_cmd.as_deref(),
            &opts.socket,
            Duration::from_secs(5),
        )?;
        let conn = backend
            .connect(&opts.socket)
            .map_err(|e| format!("cannot connect to {}: {e}", opts.socket.display()))?;
        let mut prober = Prober::new(opts, conn, name, size);
        match prober.conversation() {
            Err(Stop::RingSize(by)) => {
                refused.push(Refused {
                    ring_size: size,
                    by,
                });
                size /= 2;
            }
            end => {
                if end.is_ok() {
                    prober.tap.closed(Some(Direction::FrontToBack), false);
                }
                return Ok(Conversation {
                    prober,
                    stopped: end.err(),
                    refused,
                    backend,
                });
            }
        }
    }
}

/// The findings of each robustness probe, by probe name (for the CI
/// reports, which also judge the main conversation's transcript).
pub type RobustnessFindings = Vec<(&'static str, Vec<Finding>)>;

/// Runs the probe; exit 0 conforming, 1 could not connect (or the
/// conversation could not finish for a reason of our own), 2 findings.
pub fn run(opts: &Options, output: Output) -> i32 {
    run_reporting(opts, output).0
}

/// [`run`], also returning the robustness probes' findings.
pub fn run_reporting(opts: &Options, output: Output) -> (i32, RobustnessFindings) {
    let name = opts.socket.display().to_string();
    let c = match negotiate(opts, &name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qconform: {e}");
            return (1, Vec::new());
        }
    };
    let Conversation {
        prober: mut p,
        stopped,
        refused,
        backend,
    } = c;
    if let Some(path) = &opts.transcript {
        if let Err(e) = std::fs::write(
            path,
            p.tap
                .transcript(&format!("qconform probe of {}", opts.socket.display())),
        ) {
            eprintln!("qconform: cannot write {}: {e}", path.display());
        }
    }
    drop(backend);
    let mut main = p.tap.session.report().clone();
    let offered = p.tap.session.offered_features();
    let proto = p.tap.session.offered_protocol_features();
    let queues = p.tap.session.queue_num();
    let messages = p.tap.session.messages();
    let ring_size = p.ring_size;
    let data_steps = std::mem::take(&mut p.data_steps);
    // The main connection ends before the probes: single-client back-ends
    // (qemu-storage-daemon) serve one connection at a time.
    drop(p);
    let mut verdicts: Vec<ProbeVerdict> = if opts.robustness {
        PROBES
            .iter()
            .map(|r| robustness(opts, r, ring_size))
            .collect()
    } else {
        Vec::new()
    };
    if opts.robustness && opts.data_path.is_some() {
        for abuse in datapath::RingAbuse::ALL {
            verdicts.push(ring_robustness(opts, abuse, ring_size));
        }
    }
    if opts.strict {
        // Tester policy counts as a violation.
        let raise = |f: &mut Finding| {
            if f.severity == Severity::Note {
                f.severity = Severity::Violation;
            }
        };
        main.findings.iter_mut().for_each(raise);
        verdicts
            .iter_mut()
            .flat_map(|v| v.findings.iter_mut())
            .for_each(raise);
    }
    let violations = main
        .findings
        .iter()
        .chain(verdicts.iter().flat_map(|v| &v.findings))
        .filter(|f| f.severity == Severity::Violation)
        .count() as u64
        + main.findings_omitted().values().sum::<u64>();
    let stopped = stopped.map(|s| s.to_string());
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "socket": opts.socket.display().to_string(),
                "features": offered,
                "protocol_features": proto.map(feat::protocol_feature_names),
                "queue_num": queues,
                "ring_size": ring_size,
                "ring_sizes_refused": refused,
                "conversation": { "messages": messages, "stopped": stopped, "findings": main.findings },
                "data_path": opts.data_path.as_ref().map(|_| &data_steps),
                "robustness": verdicts,
                "violations": violations,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Human => {
            println!(
                "back-end {}: features {:#x}, protocol features {:?}, {} queues, ring size {ring_size}",
                opts.socket.display(),
                offered.unwrap_or(0),
                proto.map(feat::protocol_feature_names).unwrap_or_default(),
                queues.map_or("?".into(), |q| q.to_string())
            );
            for r in &refused {
                println!("ring size {} refused: {}", r.ring_size, r.by);
            }
            if let Some(s) = &stopped {
                println!("conversation stopped early: {s}");
            }
            for s in &data_steps {
                println!("data path {:<28} -> {}", s.request, s.outcome);
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
    let code = if violations > 0 {
        2
    } else if stopped.is_some() {
        // A conversation that could not finish is never conforming.
        1
    } else {
        0
    };
    (
        code,
        verdicts
            .into_iter()
            .map(|v| (v.probe, v.findings))
            .collect(),
    )
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
        strict: false,
        data_path: None,
    };
    let c = negotiate(&opts, description)?;
    if let Some(e) = c.stopped {
        return Err(format!(
            "the conversation with {} stopped: {e}",
            socket.display()
        ));
    }
    Ok(c.prober.tap.transcript(description))
}
