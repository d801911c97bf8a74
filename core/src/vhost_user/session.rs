//! The rule engine: consumes the messages of one vhost-user connection, in
//! order, and judges both sides against the spec.
//!
//! It is the same engine in every role: `probe` (we are the front-end),
//! `serve` (we are the back-end), `record` (a proxy), `check` (offline, over
//! a transcript) and the fuzz targets. It needs no socket: the caller says
//! who sent which header and payload bytes with how many file descriptors.

use super::features::{self as feat, ProtocolFeature as PF};
use super::payload::{self, Payload, PayloadError, PayloadKind, Region};
use super::request::{self, Channel, Fds, FrontEnd as Fe, Gate, Reply, Request, RequestInfo};
use super::wire::{self, Header};
use crate::limits::Limits;
use crate::report::{Detail, Location, Report};
use crate::rules::{vhost_user as rule, Rule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Front-end to back-end.
    #[serde(rename = "F->B")]
    FrontToBack,
    /// Back-end to front-end.
    #[serde(rename = "B->F")]
    BackToFront,
}

impl Direction {
    fn side(self) -> &'static str {
        match self {
            Direction::FrontToBack => "front-end",
            Direction::BackToFront => "back-end",
        }
    }
}

/// One message as it travelled.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The socket the message travelled on.
    pub channel: Channel,
    /// Which side sent it.
    pub dir: Direction,
    /// The decoded header (not yet validated: the session checks it).
    pub header: Header,
    /// The payload bytes actually received (at most `header.size`).
    pub payload: &'a [u8],
    /// File descriptors received with it.
    pub fds: usize,
}

/// How strictly ambiguous spec text is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// Accept the readings real peers rely on: bit 30 "negotiated" means
    /// offered (QEMU sends SET_VRING_ENABLE before SET_FEATURES), an ack for
    /// need_reply without REPLY_ACK, rust-vmm's 12-byte GET_CONFIG error.
    pub lenient: bool,
}

/// What a back-end knows about itself without asking: the values `serve`
/// answers GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM and
/// GET_MAX_MEM_SLOTS with, and the largest ring it can hold (vhost-user has
/// no message for that one). A session judging the conversation from the
/// back-end's side is given them, so it knows the rings that exist before
/// (or without) a GET_QUEUE_NUM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Virtio feature bits answered to GET_FEATURES.
    pub features: u64,
    /// Protocol feature bits answered to GET_PROTOCOL_FEATURES.
    pub protocol_features: u64,
    /// Number of queues answered to GET_QUEUE_NUM.
    pub queues: u64,
    /// Memory slots answered to GET_MAX_MEM_SLOTS.
    pub max_mem_slots: u64,
    /// The largest SET_VRING_NUM accepted.
    pub max_ring_size: u32,
}

/// What the engine concluded about one reply (for a probe's robustness verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// A reply body (not an ack).
    Body,
    /// A REPLY_ACK u64 with this value (0 = success).
    Ack(u64),
    /// Nothing was pending for it.
    Unexpected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Body(PayloadKind),
    Ack,
    /// need_reply without REPLY_ACK negotiated: an ack may or may not come.
    OptionalAck,
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    channel: Channel,
    /// The id as sent (the reply must echo it).
    request: u32,
    /// The request it is, when the id is defined.
    kind: Option<Request>,
    name: &'static str,
    expect: Expect,
    reply_fds: usize,
    /// GET_CONFIG: the size of the config space asked for.
    config_size: Option<u32>,
}

#[derive(Debug, Clone, Default)]
struct Ring {
    started: bool,
    enabled: Option<bool>,
}

/// The state of one connection and the findings so far.
pub struct Session {
    profile: Profile,
    /// The caps on what the session tracks (rings, regions, replies awaited,
    /// payload size, findings kept per rule).
    limits: Limits,
    report: Report,
    seq: u64,
    offered_features: Option<u64>,
    acked_features: Option<u64>,
    offered_protocol: Option<u64>,
    acked_protocol: Option<u64>,
    queue_num: Option<u64>,
    max_mem_slots: Option<u64>,
    regions: Vec<Region>,
    rings: BTreeMap<u32, Ring>,
    pending: VecDeque<Pending>,
    backend_channel: bool,
    closed: bool,
    /// The back-end's own capabilities, when the session is the back-end's.
    caps: Option<Caps>,
    /// Why the back-end must refuse the latest front-end request, if it must.
    refusal: Option<String>,
    /// The request being judged (message number, the side that sent it).
    judging: Option<(u64, &'static str)>,
    /// The latest request sent (message number and name), for a close.
    last_request: Option<(u64, &'static str)>,
}

impl Session {
    /// A session that knows the back-end only from the conversation (see
    /// [`Session::with_caps`] for the back-end's side); `name` is the report's filename.
    pub fn new(name: &str, profile: Profile) -> Session {
        Session::with_limits(name, profile, Limits::default())
    }

    /// [`Session::new`] with caps other than the defaults.
    pub fn with_limits(name: &str, profile: Profile, limits: Limits) -> Session {
        Session {
            profile,
            report: Report::new(name, "vhost-user", &limits),
            limits,
            seq: 0,
            offered_features: None,
            acked_features: None,
            offered_protocol: None,
            acked_protocol: None,
            queue_num: None,
            max_mem_slots: None,
            regions: Vec::new(),
            rings: BTreeMap::new(),
            pending: VecDeque::new(),
            backend_channel: false,
            closed: false,
            caps: None,
            refusal: None,
            judging: None,
            last_request: None,
        }
    }

    /// A session on the back-end's side, which knows its own capabilities.
    pub fn with_caps(name: &str, profile: Profile, caps: Caps) -> Session {
        Session {
            caps: Some(caps),
            ..Session::new(name, profile)
        }
    }

    /// The caps this session works within.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Why the back-end must refuse the latest front-end request: the
    /// request broke a rule, or names a ring or a ring size beyond the
    /// back-end's capabilities. None when it can carry it out.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// The findings so far (the report's `offset` is the message number).
    pub fn report(&self) -> &Report {
        &self.report
    }
    /// The findings of the whole conversation.
    pub fn into_report(self) -> Report {
        self.report
    }
    /// Messages seen.
    pub fn messages(&self) -> u64 {
        self.seq
    }
    /// Virtio features the back-end offered (its GET_FEATURES reply), if seen.
    pub fn offered_features(&self) -> Option<u64> {
        self.offered_features
    }
    /// Protocol features the back-end offered (its GET_PROTOCOL_FEATURES reply), if seen.
    pub fn offered_protocol_features(&self) -> Option<u64> {
        self.offered_protocol
    }
    /// Protocol features both sides agreed on (0 before SET_PROTOCOL_FEATURES).
    pub fn protocol_features(&self) -> u64 {
        self.acked_protocol.unwrap_or(0)
    }
    /// The back-end's GET_QUEUE_NUM reply, if seen.
    pub fn queue_num(&self) -> Option<u64> {
        self.queue_num
    }
    /// The number of queues the back-end has: its GET_QUEUE_NUM reply, or
    /// on the back-end's side its own count.
    fn queues(&self) -> Option<u64> {
        self.queue_num.or(self.caps.map(|c| c.queues))
    }
    /// Whether a reply is still awaited.
    pub fn awaiting_reply(&self) -> bool {
        self.pending.iter().any(|p| p.expect != Expect::OptionalAck)
    }

    /// Records a finding about message `seq`.
    pub fn finding(&mut self, rule: &'static Rule, seq: u64, detail: impl Detail) {
        let at = Some(Location::Message(seq));
        // A rule the request being judged broke is a reason to refuse it
        // (noted here, not looked up in the report, which keeps only the
        // first findings of each rule). Only then is the text needed
        // before the report decides to keep it.
        match self
            .judging
            .filter(|&(judged, _)| judged == seq && self.refusal.is_none())
        {
            Some((_, side)) => {
                let detail = detail.into_detail();
                if detail.starts_with(side) {
                    self.refusal = Some(detail.clone());
                }
                self.report.add_at(rule, at, 1, || detail);
            }
            None => self.report.add_at(rule, at, 1, || detail.into_detail()),
        }
    }

    fn negotiated(&self, f: PF) -> bool {
        self.acked_protocol.is_some_and(|p| feat::has(p, f))
    }

    fn bit30_offered(&self) -> bool {
        self.offered_features
            .is_some_and(|f| f >> feat::F_PROTOCOL_FEATURES & 1 == 1)
    }

    fn bit30_negotiated(&self) -> bool {
        if self.profile.lenient {
            self.bit30_offered()
        } else {
            self.acked_features
                .is_some_and(|f| f >> feat::F_PROTOCOL_FEATURES & 1 == 1)
        }
    }

    /// Feeds one message. Returns what a reply meant, for replies.
    pub fn on_message(&mut self, m: Message<'_>) -> Option<ReplyOutcome> {
        let seq = self.seq;
        self.seq += 1;
        let requester = match m.channel {
            Channel::Main => Direction::FrontToBack,
            Channel::Backend => Direction::BackToFront,
        };
        let side = m.dir.side();
        // A request is judged from its header on: every finding about it is
        // a reason to refuse it.
        self.judging = (m.dir == requester).then_some((seq, side));
        if self.judging.is_some() {
            self.refusal = None;
        }
        let h = m.header;
        if h.version() != wire::VERSION {
            self.finding(
                &rule::HEADER_VERSION,
                seq,
                format_args!("{side}: flags {:#x} carry version {}", h.flags, h.version()),
            );
        }
        if h.flags & !wire::KNOWN_FLAGS != 0 {
            self.finding(
                &rule::HEADER_RESERVED,
                seq,
                format_args!(
                    "{side}: reserved flag bits {:#x} set",
                    h.flags & !wire::KNOWN_FLAGS
                ),
            );
        }
        if m.fds > wire::MAX_FDS {
            self.finding(
                &rule::FDS_MAX,
                seq,
                format_args!("{side}: {} file descriptors on one message", m.fds),
            );
        }
        let max_payload = self.limits.vhost_max_payload;
        if h.size > max_payload {
            self.finding(
                &rule::HEADER_SIZE_LIMIT,
                seq,
                format_args!("{side}: size {} exceeds {max_payload}", h.size),
            );
        } else if (m.payload.len() as u64) < h.size as u64 {
            self.finding(
                &rule::HEADER_SIZE,
                seq,
                format_args!(
                    "{side}: size says {} bytes but the message ended after {}",
                    h.size,
                    m.payload.len()
                ),
            );
        }
        if m.dir == requester {
            if h.is_reply() {
                // A message with the reply flag from the requesting side: a
                // reply to nothing, or a request with a stray reply flag.
                self.finding(
                    &rule::HEADER_REPLY_FLAG,
                    seq,
                    format_args!("{side}: request {} has the reply flag set", h.request),
                );
            }
            self.on_request(seq, m);
            None
        } else {
            if !h.is_reply() {
                self.finding(
                    &rule::HEADER_REPLY_FLAG,
                    seq,
                    format_args!(
                        "{side}: reply to request {} lacks the reply flag",
                        h.request
                    ),
                );
            }
            if h.need_reply() {
                self.finding(
                    &rule::HEADER_NEED_REPLY_ON_REPLY,
                    seq,
                    format_args!("{side}: reply sets need_reply"),
                );
            }
            Some(self.on_reply(seq, m))
        }
    }

    fn on_request(&mut self, seq: u64, m: Message<'_>) {
        let side = m.dir.side();
        let h = m.header;
        let Some(info) = request::lookup(m.channel, h.request) else {
            self.finding(
                &rule::HEADER_KNOWN,
                seq,
                format_args!(
                    "{side}: request id {} is not defined ({})",
                    h.request,
                    request::id_range(m.channel)
                ),
            );
            self.last_request = Some((seq, "an undefined request"));
            // need_reply still asks for an ack (a failure one, from a conforming peer).
            if h.need_reply() && self.pending.len() < self.limits.vhost_max_pending {
                let expect = if self.negotiated(PF::ReplyAck) {
                    Expect::Ack
                } else {
                    Expect::OptionalAck
                };
                self.pending.push_back(Pending {
                    seq,
                    channel: m.channel,
                    request: h.request,
                    kind: None,
                    name: "an undefined request",
                    expect,
                    reply_fds: 0,
                    config_size: None,
                });
            }
            return;
        };
        let name = info.name;
        if m.channel == Channel::Main {
            self.last_request = Some((seq, name));
        }
        if m.channel == Channel::Backend {
            if !self.backend_channel {
                self.finding(
                    &rule::BACKEND_CHANNEL,
                    seq,
                    format_args!(
                        "back-end: {name} on a back-end channel that was never negotiated"
                    ),
                );
            }
            if m.fds > 0 && !self.negotiated(PF::BackendSendFd) {
                self.finding(
                    &rule::BACKEND_SEND_FD,
                    seq,
                    format_args!(
                        "back-end: {name} carries {} fds without BACKEND_SEND_FD",
                        m.fds
                    ),
                );
            }
        }
        self.check_gate(seq, info, side);
        let xen = self.negotiated(PF::XenMmap);
        let bytes = m
            .payload
            .get(..(h.size as usize).min(m.payload.len()))
            .unwrap_or(&[]);
        let decoded = if h.size > self.limits.vhost_max_payload {
            None
        } else {
            match payload::decode(info.payload, bytes, xen) {
                Ok(p) => Some(p),
                Err(PayloadError::Size { expected, got }) => {
                    if got as u64 == h.size as u64 {
                        self.finding(
                            &rule::HEADER_SIZE,
                            seq,
                            format_args!(
                                "{side}: {name} has size {got}, the request defines {expected}"
                            ),
                        );
                    }
                    None
                }
                Err(e @ PayloadError::TooLarge { what, .. }) => {
                    let r = if what == "nregions" {
                        &rule::MEM_MAX_REGIONS
                    } else {
                        &rule::PAYLOAD_VALID
                    };
                    self.finding(r, seq, format_args!("{side}: {name}: {e}"));
                    None
                }
            }
        };
        self.check_fds(seq, info, side, m.fds, decoded.as_ref());
        if let Some(p) = &decoded {
            self.apply_request(seq, info, p, side);
        }
        // What comes back.
        let body = match info.reply {
            Reply::Always(kind) => Some(kind),
            Reply::IfFeature(f, kind) if self.negotiated(f) => Some(kind),
            _ => None,
        };
        let expect = match body {
            Some(kind) => Some(Expect::Body(kind)),
            None if h.need_reply() && self.negotiated(PF::ReplyAck) => Some(Expect::Ack),
            None if h.need_reply() => Some(Expect::OptionalAck),
            None => None,
        };
        if let Some(expect) = expect {
            if self.pending.len() < self.limits.vhost_max_pending {
                let config_size = match &decoded {
                    Some(Payload::Config(payload::Config { size, .. }))
                        if info.request == Request::Front(Fe::GetConfig) =>
                    {
                        Some(*size)
                    }
                    _ => None,
                };
                self.pending.push_back(Pending {
                    seq,
                    channel: m.channel,
                    request: h.request,
                    kind: Some(info.request),
                    name,
                    expect,
                    reply_fds: info.reply_fds,
                    config_size,
                });
            }
        }
    }

    fn check_gate(&mut self, seq: u64, info: &RequestInfo, side: &str) {
        let name = info.name;
        match info.gate {
            Gate::None => {}
            Gate::ProtocolFeaturesOffered => {
                if !self.bit30_offered() {
                    self.finding(&rule::NEG_BIT30, seq, format_args!(
                        "{side}: {name} before the back-end offered VHOST_USER_F_PROTOCOL_FEATURES (bit 30)"));
                }
            }
            Gate::ProtocolFeaturesNegotiated => {
                if !self.bit30_negotiated() {
                    self.finding(
                        &rule::NEG_VRING_ENABLE,
                        seq,
                        format_args!(
                            "{side}: {name} while VHOST_USER_F_PROTOCOL_FEATURES is not {}",
                            if self.profile.lenient {
                                "offered"
                            } else {
                                "acknowledged by SET_FEATURES"
                            }
                        ),
                    );
                }
            }
            Gate::Feature(f) => {
                if !self.negotiated(f) {
                    self.finding(
                        &rule::NEG_GATED,
                        seq,
                        format_args!(
                            "{side}: {name} without protocol feature {} negotiated",
                            f.name()
                        ),
                    );
                }
            }
            Gate::VirtioFeature(bit) => {
                if self.acked_features.is_none_or(|a| a >> bit & 1 != 1) {
                    self.finding(
                        &rule::NEG_GATED,
                        seq,
                        format_args!("{side}: {name} without virtio feature bit {bit} negotiated"),
                    );
                }
            }
        }
        let postcopy = [Fe::PostcopyAdvise, Fe::PostcopyListen, Fe::PostcopyEnd]
            .map(Request::Front)
            .contains(&info.request);
        if self.negotiated(PF::ConfigureMemSlots) && postcopy {
            self.finding(
                &rule::NEG_POSTCOPY_SLOTS,
                seq,
                format_args!("{side}: {name} with CONFIGURE_MEM_SLOTS negotiated"),
            );
        }
    }

    fn check_fds(
        &mut self,
        seq: u64,
        info: &RequestInfo,
        side: &str,
        fds: usize,
        p: Option<&Payload>,
    ) {
        let name = info.name;
        let want: Option<(usize, usize)> = match info.fds {
            Fds::None => Some((0, 0)),
            Fds::One => Some((1, 1)),
            Fds::NoneOrOne => Some((0, 1)),
            Fds::OneIfFeature(f) => Some(if self.negotiated(f) { (1, 1) } else { (0, 0) }),
            Fds::PerRegion => match p {
                Some(Payload::MemTable(payload::MemTable { regions })) => {
                    Some((regions.len(), regions.len()))
                }
                _ => None,
            },
            Fds::OneUnlessNofd => match p {
                Some(Payload::U64(payload::U64 { value }))
                | Some(Payload::VringArea(payload::VringArea {
                    index_flags: value, ..
                })) => {
                    let (_, nofd) = payload::vring_fd_index(*value);
                    Some(if nofd { (0, 0) } else { (1, 1) })
                }
                _ => None,
            },
        };
        if let Some((lo, hi)) = want {
            if fds < lo || fds > hi {
                let expected = if lo == hi {
                    format!("{lo}")
                } else {
                    format!("{lo} or {hi}")
                };
                self.finding(&rule::FDS_COUNT, seq, format_args!("{side}: {name} carries {fds} file descriptors, the request defines {expected}"));
            }
        }
    }

    fn ring(&mut self, index: u32) -> Option<&mut Ring> {
        if self.rings.len() >= self.limits.vhost_max_rings && !self.rings.contains_key(&index) {
            return None;
        }
        let bit30_acked = self
            .acked_features
            .is_some_and(|f| f >> feat::F_PROTOCOL_FEATURES & 1 == 1);
        let features_set = self.acked_features.is_some();
        let r = self.rings.entry(index).or_default();
        if r.enabled.is_none() && features_set {
            // Without bit 30 negotiated every ring is enabled; with it, rings start disabled.
            r.enabled = Some(!bit30_acked);
        }
        Some(r)
    }

    fn check_index(&mut self, seq: u64, side: &str, name: &str, index: u32) -> bool {
        if let Some(n) = self.queues() {
            if index as u64 >= n {
                self.finding(
                    &rule::RING_INDEX,
                    seq,
                    format_args!("{side}: {name} names ring {index}, but there are {n} queues"),
                );
                return false;
            }
        }
        true
    }

    /// Applies a decoded front-end request to the connection's state,
    /// judging what it says against what was negotiated. Each family of
    /// requests has its own step: negotiation, rings, memory.
    fn apply_request(&mut self, seq: u64, info: &RequestInfo, p: &Payload, side: &str) {
        self.refuse_beyond_caps(info, p);
        let Request::Front(request) = info.request else {
            // Back-end requests change no state the engine tracks.
            return;
        };
        match request {
            Fe::SetFeatures | Fe::SetProtocolFeatures => {
                self.apply_negotiation(seq, request, p, side)
            }
            Fe::SetMemTable | Fe::AddMemReg | Fe::RemMemReg => {
                self.apply_memory(seq, info.name, request, p, side)
            }
            Fe::SetBackendReqFd => self.backend_channel = self.negotiated(PF::BackendReq),
            _ => self.apply_ring(seq, info.name, request, p, side),
        }
    }

    /// On the back-end's side: a ring size the back-end cannot hold is
    /// refused. Not the front-end's fault (no message tells it the
    /// maximum), so no finding; the back-end refuses it all the same.
    fn refuse_beyond_caps(&mut self, info: &RequestInfo, p: &Payload) {
        if let (
            Some(caps),
            Request::Front(Fe::SetVringNum),
            Payload::VringState(payload::VringState { num, .. }),
        ) = (self.caps, info.request, p)
        {
            if *num == 0 || *num > caps.max_ring_size {
                self.refusal = Some(format!(
                    "{}: ring size {num}; this back-end holds 1 to {}",
                    info.name, caps.max_ring_size
                ));
            }
        }
    }

    /// SET_FEATURES and SET_PROTOCOL_FEATURES: a subset of the offer, the
    /// feature dependencies the spec states, and what rings start as.
    fn apply_negotiation(&mut self, seq: u64, request: Fe, p: &Payload, side: &str) {
        let Payload::U64(payload::U64 { value }) = *p else {
            return;
        };
        if request == Fe::SetFeatures {
            if let Some(offered) = self.offered_features {
                let extra = value & !(offered | 1 << feat::F_PROTOCOL_FEATURES);
                if extra != 0 {
                    self.finding(
                        &rule::NEG_FEATURES_SUBSET,
                        seq,
                        format_args!("{side}: SET_FEATURES acknowledges {extra:#x}, never offered"),
                    );
                }
            }
            self.acked_features = Some(value);
            let bit30 = value >> feat::F_PROTOCOL_FEATURES & 1 == 1;
            for r in self.rings.values_mut() {
                if r.enabled.is_none() {
                    r.enabled = Some(!bit30);
                }
            }
            return;
        }
        if let Some(offered) = self.offered_protocol {
            let extra = value & !offered;
            if extra != 0 {
                self.finding(
                    &rule::NEG_PROTOCOL_SUBSET,
                    seq,
                    format_args!(
                        "{side}: SET_PROTOCOL_FEATURES acknowledges {:?}, never offered",
                        feat::protocol_feature_names(extra)
                    ),
                );
            }
        }
        if feat::has(value, PF::InbandNotifications)
            && !(feat::has(value, PF::ReplyAck) && feat::has(value, PF::BackendReq))
        {
            self.finding(
                &rule::NEG_INBAND,
                seq,
                format_args!("{side}: INBAND_NOTIFICATIONS without REPLY_ACK and BACKEND_REQ"),
            );
        }
        if feat::has(value, PF::GetVringBaseSkipDrain)
            && !(feat::has(value, PF::InflightShmfd) && feat::has(value, PF::GetVringBaseInflight))
        {
            self.finding(&rule::NEG_SKIP_DRAIN, seq, format_args!("{side}: GET_VRING_BASE_SKIP_DRAIN without INFLIGHT_SHMFD and GET_VRING_BASE_INFLIGHT"));
        }
        self.acked_protocol = Some(value);
    }

    /// Requests that name a ring: the index against the queues, reserved
    /// fields, and the ring's started/enabled state.
    fn apply_ring(&mut self, seq: u64, name: &str, request: Fe, p: &Payload, side: &str) {
        match (request, p) {
            (
                Fe::SetVringNum | Fe::SetVringBase,
                Payload::VringState(payload::VringState { index, .. }),
            )
            | (Fe::SetVringAddr, Payload::VringAddr(payload::VringAddr { index, .. }))
                if self.check_index(seq, side, name, *index) =>
            {
                self.ring(*index);
            }
            (
                Fe::GetVringBase | Fe::GetVringBaseSkipDrain,
                Payload::VringState(payload::VringState { index, num }),
            ) => {
                if *num != 0 {
                    self.finding(
                        &rule::RING_RESERVED,
                        seq,
                        format_args!(
                            "{side}: {name} num is {num}; the field is reserved and must be 0"
                        ),
                    );
                }
                if self.check_index(seq, side, name, *index) {
                    self.stop_ring(seq, side, name, *index);
                }
            }
            (
                Fe::SetVringKick | Fe::SetVringCall | Fe::SetVringErr,
                Payload::U64(payload::U64 { value }),
            ) => {
                let (index, _) = payload::vring_fd_index(*value);
                if value & !(wire::VRING_INDEX_MASK | wire::VRING_NOFD) != 0 {
                    self.finding(
                        &rule::RING_RESERVED,
                        seq,
                        format_args!("{side}: {name} payload {value:#x} sets bits above 8"),
                    );
                }
                if self.check_index(seq, side, name, index) && request == Fe::SetVringKick {
                    if let Some(r) = self.ring(index) {
                        r.started = true;
                    }
                }
            }
            (Fe::VringKick, Payload::VringState(payload::VringState { index, num })) => {
                if *num != 0 {
                    self.finding(
                        &rule::RING_RESERVED,
                        seq,
                        format_args!("{side}: VRING_KICK num is {num}, must be 0"),
                    );
                }
                self.check_index(seq, side, name, *index);
            }
            (
                Fe::SetVringEnable | Fe::SetVringEndian,
                Payload::VringState(payload::VringState { index, num }),
            ) => {
                if *num > 1 {
                    self.finding(
                        &rule::RING_ENABLE_VALUE,
                        seq,
                        format_args!("{side}: {name} num is {num}, must be 0 or 1"),
                    );
                }
                if self.check_index(seq, side, name, *index) && request == Fe::SetVringEnable {
                    if let Some(r) = self.ring(*index) {
                        r.enabled = Some(*num == 1);
                    }
                }
            }
            _ => {}
        }
    }

    /// GET_VRING_BASE stops a ring; stopping one never started is a finding.
    fn stop_ring(&mut self, seq: u64, side: &str, name: &str, index: u32) {
        let Some(r) = self.ring(index) else {
            return;
        };
        let was_started = r.started;
        r.started = false;
        if !was_started {
            self.finding(
                &rule::RING_NOT_STARTED,
                seq,
                format_args!("{side}: {name} for ring {index}, which was never started"),
            );
        }
    }

    /// The memory table and single regions: slots, overlaps, removal of
    /// live regions only.
    fn apply_memory(&mut self, seq: u64, name: &str, request: Fe, p: &Payload, side: &str) {
        match (request, p) {
            (Fe::SetMemTable, Payload::MemTable(payload::MemTable { regions })) => {
                self.regions.clear();
                for r in regions {
                    self.add_region(seq, side, name, *r);
                }
            }
            (Fe::AddMemReg, Payload::SingleRegion(payload::SingleRegion { region })) => {
                if let Some(max) = self.max_mem_slots {
                    if self.regions.len() as u64 >= max {
                        self.finding(
                            &rule::MEM_SLOTS,
                            seq,
                            format_args!(
                                "{side}: ADD_MEM_REG beyond the {max} slots the back-end offers"
                            ),
                        );
                    }
                }
                self.add_region(seq, side, name, *region);
            }
            (Fe::RemMemReg, Payload::SingleRegion(payload::SingleRegion { region })) => {
                let live = self.regions.iter().position(|r| {
                    r.guest_address == region.guest_address
                        && r.user_address == region.user_address
                        && r.size == region.size
                });
                match live {
                    Some(i) => {
                        self.regions.remove(i);
                    }
                    None => self.finding(&rule::MEM_REMOVE_LIVE, seq, format_args!(
                        "{side}: REM_MEM_REG of a region that is not live (guest {:#x}, size {:#x})", region.guest_address, region.size)),
                }
            }
            _ => {}
        }
    }

    fn add_region(&mut self, seq: u64, side: &str, name: &str, r: Region) {
        if self.negotiated(PF::GpaAddresses) && r.user_address != r.guest_address {
            self.finding(&rule::MEM_GPA, seq, format_args!(
                "{side}: {name}: user address {:#x} differs from guest address {:#x} with GPA_ADDRESSES", r.user_address, r.guest_address));
        }
        let overlaps = |a0: u64, a1: Option<u64>, b0: u64, b1: Option<u64>| {
            a0 < b1.unwrap_or(u64::MAX) && b0 < a1.unwrap_or(u64::MAX)
        };
        let clash = self.regions.iter().find(|o| {
            overlaps(
                r.guest_address,
                r.guest_end(),
                o.guest_address,
                o.guest_end(),
            ) || overlaps(r.user_address, r.user_end(), o.user_address, o.user_end())
        });
        if let Some((at, size)) = clash.map(|o| (o.guest_address, o.size)) {
            self.finding(&rule::MEM_OVERLAP, seq, format_args!(
                "{side}: {name}: region at guest {:#x} (+{:#x}) overlaps the live region at guest {at:#x} (+{size:#x})",
                r.guest_address, r.size));
        }
        if self.regions.len() < self.limits.vhost_max_regions {
            self.regions.push(r);
        }
    }

    fn on_reply(&mut self, seq: u64, m: Message<'_>) -> ReplyOutcome {
        let side = m.dir.side();
        let h = m.header;
        // Replies answer the oldest request on their channel; optional acks
        // that never came are skipped.
        let mut matched = None;
        while let Some(pos) = self.pending.iter().position(|p| p.channel == m.channel) {
            let Some(p) = self.pending.remove(pos) else {
                break;
            };
            if p.request == h.request || p.expect != Expect::OptionalAck {
                matched = Some(p);
                break;
            }
        }
        let Some(p) = matched else {
            let name =
                request::lookup(m.channel, h.request).map_or("an unknown request", |r| r.name);
            self.finding(
                &rule::REPLY_UNEXPECTED,
                seq,
                format_args!(
                    "{side}: reply for {name} ({}) when no reply was due",
                    h.request
                ),
            );
            return ReplyOutcome::Unexpected;
        };
        if p.request != h.request {
            self.finding(
                &rule::REPLY_ECHO,
                seq,
                format_args!(
                    "{side}: reply names request {} but answers {} (message {})",
                    h.request, p.name, p.seq
                ),
            );
        }
        if m.fds > p.reply_fds {
            self.finding(
                &rule::FDS_REPLY,
                seq,
                format_args!(
                    "{side}: reply to {} carries {} file descriptors (at most {})",
                    p.name, m.fds, p.reply_fds
                ),
            );
        }
        if h.size > self.limits.vhost_max_payload {
            return ReplyOutcome::Body;
        }
        let bytes = m
            .payload
            .get(..(h.size as usize).min(m.payload.len()))
            .unwrap_or(&[]);
        let complete = bytes.len() as u64 == h.size as u64;
        match p.expect {
            Expect::Ack | Expect::OptionalAck => {
                if p.expect == Expect::OptionalAck && !self.profile.lenient {
                    self.finding(&rule::REPLY_ACK_NOT_NEGOTIATED, seq, format_args!(
                        "{side}: ack for {} with need_reply although REPLY_ACK is not negotiated", p.name));
                }
                match payload::decode(PayloadKind::U64, bytes, false) {
                    Ok(Payload::U64(payload::U64 { value })) => ReplyOutcome::Ack(value),
                    _ => {
                        if complete {
                            self.finding(
                                &rule::REPLY_ACK_FORMAT,
                                seq,
                                format_args!(
                                    "{side}: ack for {} is {} bytes, not a u64",
                                    p.name,
                                    bytes.len()
                                ),
                            );
                        }
                        ReplyOutcome::Ack(u64::MAX)
                    }
                }
            }
            Expect::Body(kind) => {
                let xen = self.negotiated(PF::XenMmap);
                if let Some(size) = p.config_size {
                    // GET_CONFIG: the same size back, or an error: an empty payload
                    // (spec), or a config header with size 0 (rust-vmm; lenient).
                    let ok = bytes.len() as u64 == 12 + size as u64
                        || bytes.is_empty()
                        || (self.profile.lenient && bytes.len() == 12);
                    if !ok && complete {
                        self.finding(&rule::HEADER_SIZE, seq, format_args!(
                            "{side}: GET_CONFIG reply is {} bytes; {} (12 + the {size} asked for) or 0 (error) expected", bytes.len(), 12 + size as u64));
                    }
                    return ReplyOutcome::Body;
                }
                match payload::decode(kind, bytes, xen) {
                    Ok(body) => self.apply_reply(seq, p.kind, &body, side),
                    Err(e) if complete => self.finding(
                        &rule::HEADER_SIZE,
                        seq,
                        format_args!("{side}: reply to {}: {e}", p.name),
                    ),
                    Err(_) => {}
                }
                ReplyOutcome::Body
            }
        }
    }

    fn apply_reply(&mut self, seq: u64, request: Option<Request>, body: &Payload, side: &str) {
        let Some(Request::Front(request)) = request else {
            return;
        };
        match (request, body) {
            (Fe::GetFeatures, Payload::U64(payload::U64 { value })) => {
                self.offered_features = Some(*value)
            }
            (Fe::GetProtocolFeatures, Payload::U64(payload::U64 { value })) => {
                let unknown = value & !feat::KNOWN_PROTOCOL_FEATURES;
                if unknown != 0 {
                    self.finding(
                        &rule::NEG_UNKNOWN_PROTOCOL,
                        seq,
                        format_args!("{side}: offers undefined protocol feature bits {unknown:#x}"),
                    );
                }
                self.offered_protocol = Some(*value);
            }
            (Fe::GetQueueNum, Payload::U64(payload::U64 { value })) => {
                self.queue_num = Some(*value)
            }
            (Fe::GetMaxMemSlots, Payload::U64(payload::U64 { value })) => {
                if let Some(prev) = self.max_mem_slots {
                    if *value < prev {
                        self.finding(
                            &rule::NEG_MAX_SLOTS,
                            seq,
                            format_args!("{side}: GET_MAX_MEM_SLOTS fell from {prev} to {value}"),
                        );
                    }
                }
                self.max_mem_slots = Some(*value);
            }
            _ => {}
        }
    }

    /// The connection ended. `by` is the side that closed it, if known;
    /// `expected` is true when the caller provoked the close (a robustness
    /// probe sent invalid input), so pending replies are not findings.
    pub fn on_close(&mut self, by: Option<Direction>, expected: bool) {
        if self.closed {
            return;
        }
        self.closed = true;
        if expected {
            return;
        }
        let seq = self.seq;
        let missing: Vec<Pending> = self
            .pending
            .iter()
            .filter(|p| p.expect != Expect::OptionalAck)
            .cloned()
            .collect();
        if by == Some(Direction::BackToFront) {
            // One event, one finding, however the front-end noticed it: on
            // a read (a reply was due) or on a write (none was). The reply
            // that never came is named in it rather than counted apart.
            let detail = match (missing.first(), self.last_request) {
                (Some(p), _) => format!(
                    "back-end: closed the connection instead of replying to {} (message {})",
                    p.name, p.seq
                ),
                (None, Some((at, name))) => format!(
                    "back-end: closed the connection during the conversation; the last request was {name} (message {at})"
                ),
                (None, None) => "back-end: closed the connection before any request".into(),
            };
            self.finding(&rule::PEER_CLOSED, seq, detail);
            return;
        }
        for p in &missing {
            let who = match p.channel {
                Channel::Main => "back-end",
                Channel::Backend => "front-end",
            };
            self.finding(
                &rule::REPLY_MISSING,
                p.seq,
                format_args!(
                    "{who}: no reply to {} (message {}) before the connection ended",
                    p.name, p.seq
                ),
            );
        }
    }

    /// A reply did not arrive before the caller's deadline.
    pub fn on_timeout(&mut self, waited_ms: u64) {
        let seq = self.seq;
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| p.expect != Expect::OptionalAck)
            .cloned()
        {
            self.finding(
                &rule::ROBUST_HANG,
                seq,
                format_args!(
                    "back-end: no reply to {} (message {}) within {waited_ms} ms",
                    p.name, p.seq
                ),
            );
            self.pending.retain(|q| q.seq != p.seq);
        }
    }
}
