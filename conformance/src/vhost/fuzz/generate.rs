//! Inputs of a vhost-user campaign: the valid conversation a front-end
//! holds with a back-end (negotiation, memory table with a real memfd, ring
//! setup with eventfds, stop) built from the request table and the payload
//! codecs, with structured mutations stacked on top, each knowing the rule
//! it probes. An input depends only on the campaign seed and the run's
//! index; what the back-end offers decides, at run time, which of the
//! conversation's messages apply (ADD_MEM_REG or SET_MEM_TABLE, say) and
//! what SET_FEATURES acknowledges, so the same input drives any back-end.

use crate::fuzz::generate::Rng;
use qconform_core::field::{self, Endian};
use qconform_core::rules::{vhost_user as rule, Rule};
use qconform_core::vhost_user::features::ProtocolFeature as PF;
use qconform_core::vhost_user::payload::{self, encode, Payload, Region};
use qconform_core::vhost_user::request::{Fds, FrontEnd as Fe, Gate, Reply, FRONT_END};
use qconform_core::vhost_user::wire::{FLAG_REPLY, VERSION, VERSION_MASK};

// The probe's choices: the protocol and virtio features acknowledged when
// offered (every request they gate is in the conversation), guest memory
// and its made-up user address.
use crate::vhost::probe::{DRIVEN, GUEST_MEMORY, USER_BASE, VIRTIO_ACK};
/// Where ring 0's descriptor table, available and used rings lie.
const RING_BASE: u64 = USER_BASE + 0x10000;
/// A ring size every back-end here holds (QEMU's vhost-user-blk asks for 128).
const RING_SIZE: u32 = 128;

/// When a message of the conversation is sent: what the back-end offered
/// (and we acknowledged) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// VHOST_USER_F_PROTOCOL_FEATURES was offered (and is acknowledged).
    Bit30,
    /// The protocol feature was negotiated.
    Negotiated(PF),
    /// The protocol feature was not negotiated.
    NotNegotiated(PF),
}

/// A payload, resolved when it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bytes(Vec<u8>),
    /// A u64: the back-end's GET_FEATURES offer masked, with `extra` set.
    Features {
        mask: u64,
        extra: u64,
    },
    /// A u64: its GET_PROTOCOL_FEATURES offer masked, with `extra` set.
    Protocol {
        mask: u64,
        extra: u64,
    },
}

/// A descriptor sent with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fd {
    /// A memfd of this size (guest memory).
    Memfd(u64),
    /// An eventfd (kick, call, err).
    Event,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub request: u32,
    pub flags: u32,
    /// NEED_REPLY is set when REPLY_ACK is negotiated.
    pub ack: bool,
    pub body: Body,
    pub fds: Vec<Fd>,
    pub when: When,
    /// Only this many bytes of header and payload are sent, then our side
    /// of the connection is shut (a truncated message).
    pub cut: Option<usize>,
    /// The rules the mutations applied to this message probe.
    pub probes: Vec<&'static Rule>,
    /// The back-end cannot carry it out: a success ack says something false.
    pub impossible: bool,
}

impl Msg {
    fn new(request: Fe, payload: &Payload, when: When) -> Msg {
        Msg {
            request: request.id(),
            flags: VERSION,
            // need_reply only where the reply is an ack: a reply body
            // already answers (and some back-ends echo the flag on it).
            ack: request.info().reply == Reply::None,
            body: Body::Bytes(encode(payload)),
            fds: Vec::new(),
            when,
            cut: None,
            probes: Vec::new(),
            impossible: false,
        }
    }
    fn fds(mut self, fds: &[Fd]) -> Msg {
        self.fds = fds.to_vec();
        self
    }
    /// The request's name (from the table), or its id.
    pub fn name(&self) -> String {
        Fe::from_id(self.request)
            .map_or_else(|| format!("request {}", self.request), |r| r.name().into())
    }
    fn is(&self, r: Fe) -> bool {
        self.request == r.id()
    }
    fn bytes_mut(&mut self) -> Option<&mut Vec<u8>> {
        match &mut self.body {
            Body::Bytes(b) => Some(b),
            _ => None,
        }
    }
    fn probe(&mut self, r: &'static Rule, impossible: bool) {
        self.probes.push(r);
        self.impossible |= impossible;
    }
}

fn state(index: u32, num: u32) -> Payload {
    Payload::VringState(payload::VringState { index, num })
}
fn u64p(value: u64) -> Payload {
    Payload::U64(payload::U64 { value })
}
fn region() -> Region {
    Region {
        guest_address: 0,
        size: GUEST_MEMORY,
        user_address: USER_BASE,
        mmap_offset: 0,
        xen_mmap_flags: None,
        domid: None,
    }
}
fn mem_table(regions: Vec<Region>) -> Payload {
    Payload::MemTable(payload::MemTable { regions })
}
fn single(region: Region) -> Payload {
    Payload::SingleRegion(payload::SingleRegion { region })
}

/// The valid conversation: the probe's, on ring 0.
pub fn conversation() -> Vec<Msg> {
    use When::*;
    let cms = PF::ConfigureMemSlots;
    vec![
        Msg::new(Fe::GetFeatures, &Payload::Empty, Always),
        Msg::new(Fe::GetProtocolFeatures, &Payload::Empty, Bit30),
        Msg {
            body: Body::Protocol {
                mask: DRIVEN.iter().fold(0, |a, f| a | f.bit()),
                extra: 0,
            },
            // Before REPLY_ACK is negotiated.
            ack: false,
            ..Msg::new(Fe::SetProtocolFeatures, &Payload::Empty, Bit30)
        },
        Msg::new(Fe::SetOwner, &Payload::Empty, Always),
        Msg::new(Fe::GetQueueNum, &Payload::Empty, Negotiated(PF::Mq)),
        Msg::new(Fe::GetMaxMemSlots, &Payload::Empty, Negotiated(cms)),
        Msg {
            body: Body::Features {
                mask: VIRTIO_ACK,
                extra: 0,
            },
            ..Msg::new(Fe::SetFeatures, &Payload::Empty, Always)
        },
        Msg::new(
            Fe::GetConfig,
            &Payload::Config(payload::Config {
                offset: 0,
                size: 8,
                flags: 0,
                data: vec![0; 8],
            }),
            Negotiated(PF::Config),
        ),
        Msg::new(Fe::SetStatus, &u64p(0x0f), Negotiated(PF::Status)),
        Msg::new(Fe::GetStatus, &Payload::Empty, Negotiated(PF::Status)),
        Msg::new(Fe::AddMemReg, &single(region()), Negotiated(cms)).fds(&[Fd::Memfd(GUEST_MEMORY)]),
        Msg::new(
            Fe::SetMemTable,
            &mem_table(vec![region()]),
            NotNegotiated(cms),
        )
        .fds(&[Fd::Memfd(GUEST_MEMORY)]),
        Msg::new(Fe::SetVringNum, &state(0, RING_SIZE), Always),
        Msg::new(Fe::SetVringBase, &state(0, 0), Always),
        Msg::new(
            Fe::SetVringAddr,
            &Payload::VringAddr(payload::VringAddr {
                index: 0,
                flags: 0,
                descriptor: RING_BASE,
                available: RING_BASE + 0x1000,
                used: RING_BASE + 0x2000,
                log: 0,
            }),
            Always,
        ),
        Msg::new(Fe::SetVringCall, &u64p(0), Always).fds(&[Fd::Event]),
        Msg::new(Fe::SetVringKick, &u64p(0), Always).fds(&[Fd::Event]),
        Msg::new(Fe::SetVringEnable, &state(0, 1), Bit30),
        Msg::new(Fe::SetVringEnable, &state(0, 0), Bit30),
        Msg::new(Fe::GetVringBase, &state(0, 0), Always),
        Msg::new(Fe::RemMemReg, &single(region()), Negotiated(cms)),
        Msg::new(
            Fe::ResetDevice,
            &Payload::Empty,
            Negotiated(PF::ResetDevice),
        ),
    ]
}

/// The structured mutations, each with the rules it probes. Where no
/// spec rule applies (a ring size or address no memory backs, messages
/// out of order), the rule probed is the robustness one: invalid input is
/// refused, never a crash or a hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutKind {
    RingIndex,
    RingSize,
    RingAddress,
    WrongSize,
    MissingFd,
    ExtraFds,
    Unnegotiated,
    Reorder,
    Repeat,
    ResetOwner,
    Truncate,
    Flags,
    UnknownRequest,
    MemoryTable,
    FeaturesOutsideOffer,
    EarlyClose,
}

impl MutKind {
    const ALL: [MutKind; 16] = [
        MutKind::RingIndex,
        MutKind::RingSize,
        MutKind::RingAddress,
        MutKind::WrongSize,
        MutKind::MissingFd,
        MutKind::ExtraFds,
        MutKind::Unnegotiated,
        MutKind::Reorder,
        MutKind::Repeat,
        MutKind::ResetOwner,
        MutKind::Truncate,
        MutKind::Flags,
        MutKind::UnknownRequest,
        MutKind::MemoryTable,
        MutKind::FeaturesOutsideOffer,
        MutKind::EarlyClose,
    ];
    /// The name finding.json gives it.
    pub fn name(self) -> &'static str {
        match self {
            MutKind::RingIndex => "ring-index",
            MutKind::RingSize => "ring-size",
            MutKind::RingAddress => "ring-address",
            MutKind::WrongSize => "wrong-size",
            MutKind::MissingFd => "missing-fd",
            MutKind::ExtraFds => "extra-fds",
            MutKind::Unnegotiated => "unnegotiated-request",
            MutKind::Reorder => "reorder",
            MutKind::Repeat => "repeat",
            MutKind::ResetOwner => "reset-owner",
            MutKind::Truncate => "truncate",
            MutKind::Flags => "flags",
            MutKind::UnknownRequest => "unknown-request",
            MutKind::MemoryTable => "memory-table",
            MutKind::FeaturesOutsideOffer => "features-outside-offer",
            MutKind::EarlyClose => "early-close",
        }
    }
}

/// One mutation as drawn: its kind and the two numbers that place and
/// shape it (so dropping another mutation leaves it meaning the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mutation {
    pub kind: MutKind,
    pub at: u64,
    pub value: u64,
}

/// A run's input: the conversation, the mutations stacked on it in order,
/// and the messages minimisation dropped (positions in the result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    pub mutations: Vec<Mutation>,
    pub dropped: Vec<usize>,
}

/// How often each kind is drawn: every kind once, out-of-range ring
/// indices three times, as the class of fault back-ends have most (vhost
/// libraries indexing their ring array with the message's index: the
/// libvhost-user of QEMU 10.0.2 does it in SET_VRING_NUM, SET_VRING_BASE,
/// SET_VRING_ADDR and GET_VRING_BASE).
fn draw(rng: &mut Rng) -> MutKind {
    let n = MutKind::ALL.len() as u64 + 2;
    match rng.below(n) {
        i if (i as usize) < MutKind::ALL.len() => MutKind::ALL[i as usize],
        _ => MutKind::RingIndex,
    }
}

/// Run `rng`'s input: mostly one mutation, sometimes none or a stack of up to three.
pub fn input(rng: &mut Rng) -> Input {
    let n = rng.pick(&[0usize, 1, 1, 1, 2, 2, 3]);
    Input {
        mutations: (0..n)
            .map(|_| Mutation {
                kind: draw(rng),
                at: rng.next_u64(),
                value: rng.next_u64(),
            })
            .collect(),
        dropped: Vec::new(),
    }
}

/// The messages of an input.
pub fn build(input: &Input) -> Vec<Msg> {
    let mut msgs = conversation();
    for m in &input.mutations {
        apply(*m, &mut msgs);
    }
    let mut i = 0;
    msgs.retain(|_| {
        i += 1;
        !input.dropped.contains(&(i - 1))
    });
    msgs
}

/// Inputs one step smaller: a mutation dropped; the later or the earlier
/// half of the messages left dropped (a crash early in the conversation
/// loses everything after it at once); a single message dropped.
pub fn smaller(input: &Input) -> Vec<Input> {
    let mut out = Vec::new();
    for i in 0..input.mutations.len() {
        let mut v = input.clone();
        v.mutations.remove(i);
        out.push(v);
    }
    let n = build(&Input {
        dropped: Vec::new(),
        ..input.clone()
    })
    .len();
    let kept: Vec<usize> = (0..n).filter(|j| !input.dropped.contains(j)).collect();
    let (early, late) = kept.split_at(kept.len() / 2);
    for half in [late, early] {
        if !half.is_empty() && half.len() < kept.len() {
            let mut v = input.clone();
            v.dropped.extend_from_slice(half);
            out.push(v);
        }
    }
    for j in kept {
        let mut v = input.clone();
        v.dropped.push(j);
        out.push(v);
    }
    out
}

/// Messages sent plus mutations: minimisation keeps only lighter inputs.
pub fn weight(input: &Input) -> usize {
    build(input).len() + input.mutations.len()
}

/// Ring indices no back-end here has (they hold 1 or 2 queues): just
/// past them, a byte's worth, and far beyond any table.
const RING_INDICES: [u32; 9] = [1, 2, 8, 255, 256, 1024, 100_000, 0x8000_0000, u32::MAX];
const RING_SIZES: [u32; 8] = [0, 3, 100, 32768, 65535, 65536, 100_000, u32::MAX];
const ADDRESSES: [u64; 6] = [
    0,
    1,
    USER_BASE - 0x1000,
    USER_BASE + GUEST_MEMORY,
    u64::MAX - 0xfff,
    0xdead_beef_0000,
];

/// Positions of the messages `pred` picks.
fn positions(msgs: &[Msg], pred: impl Fn(&Msg) -> bool) -> Vec<usize> {
    msgs.iter()
        .enumerate()
        .filter(|(_, m)| pred(m))
        .map(|(i, _)| i)
        .collect()
}

/// The message at `at` among those `pred` picks.
fn choose(msgs: &mut [Msg], at: u64, pred: impl Fn(&Msg) -> bool) -> Option<&mut Msg> {
    let p = positions(msgs, pred);
    let i = *p.get((at % p.len().max(1) as u64) as usize)?;
    msgs.get_mut(i)
}

/// vhost-user numbers are in the machine's byte order.
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    field::write(b, at, Endian::NATIVE, v)
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    field::write(b, at, Endian::NATIVE, v)
}
fn pick<T: Copy>(v: &[T], value: u64) -> T {
    v[(value % v.len() as u64) as usize]
}

/// A request gated by a protocol feature the conversation never
/// negotiates, with a payload of its natural size and the descriptor its
/// table row asks for.
fn unnegotiated(value: u64) -> Msg {
    let gated: Vec<_> = FRONT_END
        .iter()
        .filter(|r| matches!(r.gate, Gate::Feature(f) if !DRIVEN.contains(&f)))
        .collect();
    let Some(r) = gated.get((value % gated.len().max(1) as u64) as usize) else {
        return Msg::new(Fe::GetFeatures, &Payload::Empty, When::Always);
    };
    let size = payload::expected_size(r.payload, &[], false).unwrap_or(0);
    let fds = match r.fds {
        Fds::One | Fds::OneUnlessNofd => vec![Fd::Event],
        _ => Vec::new(),
    };
    Msg {
        request: r.id,
        flags: VERSION,
        ack: r.reply == Reply::None,
        body: Body::Bytes(vec![0; size]),
        fds,
        when: When::Always,
        cut: None,
        probes: vec![&rule::NEG_GATED],
        impossible: false,
    }
}

/// Applies one mutation; one that finds nothing to change changes nothing.
fn apply(m: Mutation, msgs: &mut Vec<Msg>) {
    let len = msgs.len().max(1) as u64;
    let at = (m.at % len) as usize;
    let ring = |x: &Msg| {
        [
            Fe::SetVringNum,
            Fe::SetVringBase,
            Fe::SetVringAddr,
            Fe::GetVringBase,
            Fe::SetVringEnable,
            Fe::SetVringCall,
            Fe::SetVringKick,
        ]
        .iter()
        .any(|r| x.is(*r))
    };
    match m.kind {
        MutKind::RingIndex => {
            if let Some(x) = choose(msgs, m.at, ring) {
                let index = pick(&RING_INDICES, m.value);
                let fd_payload = x.is(Fe::SetVringCall) || x.is(Fe::SetVringKick);
                if let Some(b) = x.bytes_mut() {
                    if fd_payload {
                        // Bits 0-7 carry the index.
                        if let Some(low) = b.first_mut() {
                            *low = index.min(255) as u8;
                        }
                    } else {
                        put_u32(b, 0, index);
                    }
                }
                x.probe(&rule::RING_INDEX, true);
            }
        }
        MutKind::RingSize => {
            if let Some(x) = choose(msgs, m.at, |x| x.is(Fe::SetVringNum)) {
                if let Some(b) = x.bytes_mut() {
                    put_u32(b, 4, pick(&RING_SIZES, m.value));
                }
                x.probe(&rule::ROBUST_CRASH, false);
            }
        }
        MutKind::RingAddress => {
            if let Some(x) = choose(msgs, m.at, |x| x.is(Fe::SetVringAddr)) {
                // descriptor, used, available, log: u64 fields from byte 8.
                let field = 8 + 8 * (m.value % 4) as usize;
                if let Some(b) = x.bytes_mut() {
                    put_u64(b, field, pick(&ADDRESSES, m.value / 4));
                }
                x.probe(&rule::ROBUST_CRASH, false);
            }
        }
        MutKind::WrongSize => {
            if let Some(x) = msgs.get_mut(at) {
                let sizes = [0usize, 1, 4, 7, 9, 12, 16, 41];
                let natural = match &x.body {
                    Body::Bytes(b) => b.len(),
                    _ => 8,
                };
                let size = pick(&sizes, m.value);
                let size = if size == natural { natural + 1 } else { size };
                let mut b = match &x.body {
                    Body::Bytes(b) => b.clone(),
                    _ => vec![0; 8],
                };
                b.resize(size, 0);
                x.body = Body::Bytes(b);
                x.probe(&rule::HEADER_SIZE, true);
            }
        }
        MutKind::MissingFd => {
            if let Some(x) = choose(msgs, m.at, |x| !x.fds.is_empty()) {
                x.fds.clear();
                x.probe(&rule::FDS_COUNT, true);
            }
        }
        MutKind::ExtraFds => {
            if let Some(x) = msgs.get_mut(at) {
                // Never past what one message can carry (MAX_SEND_FDS): more
                // is refused by our own sendmsg, not by the back-end.
                let room = crate::vhost::conn::MAX_SEND_FDS.saturating_sub(x.fds.len());
                let n = (1 + (m.value % 9) as usize).min(room);
                x.fds.extend(std::iter::repeat_n(Fd::Event, n));
                x.probe(
                    if x.fds.len() > 8 {
                        &rule::FDS_MAX
                    } else {
                        &rule::FDS_COUNT
                    },
                    false,
                );
            }
        }
        MutKind::Unnegotiated => msgs.insert(at, unnegotiated(m.value)),
        MutKind::Reorder => {
            let to = (m.value % len) as usize;
            if at < msgs.len() && to < msgs.len() && at != to {
                let mut x = msgs.remove(at);
                x.probe(&rule::ROBUST_CRASH, false);
                msgs.insert(to, x);
            }
        }
        MutKind::Repeat => {
            if let Some(x) = msgs.get(at) {
                let mut again = x.clone();
                again.probe(&rule::ROBUST_CRASH, false);
                msgs.insert(at + 1, again);
            }
        }
        MutKind::ResetOwner => {
            let mut x = Msg::new(Fe::ResetOwner, &Payload::Empty, When::Always);
            x.probe(&rule::ROBUST_CRASH, false);
            msgs.insert(at, x);
        }
        MutKind::Truncate => {
            if let Some(x) = msgs.get_mut(at) {
                let total = 12
                    + match &x.body {
                        Body::Bytes(b) => b.len(),
                        _ => 8,
                    };
                x.cut = Some((m.value % total as u64) as usize);
                x.probe(&rule::HEADER_SIZE, true);
                msgs.truncate(at + 1);
            }
        }
        MutKind::Flags => {
            if let Some(x) = msgs.get_mut(at) {
                match m.value % 3 {
                    0 => {
                        x.flags = (x.flags & !VERSION_MASK) | pick(&[0u32, 2, 3], m.value / 3);
                        x.probe(&rule::HEADER_VERSION, false);
                    }
                    1 => {
                        x.flags |= 1 << (4 + (m.value / 3) % 28);
                        x.probe(&rule::HEADER_RESERVED, false);
                    }
                    _ => {
                        x.flags |= FLAG_REPLY;
                        x.probe(&rule::HEADER_REPLY_FLAG, false);
                    }
                }
            }
        }
        MutKind::UnknownRequest => {
            let past = FRONT_END.len() as u32 + 1;
            let mut x = Msg::new(Fe::GetFeatures, &Payload::Empty, When::Always);
            x.request = pick(&[0, past, 99, 1000, 0xffff, u32::MAX], m.value);
            x.probe(&rule::HEADER_KNOWN, true);
            msgs.insert(at, x);
        }
        MutKind::MemoryTable => memory_table(m.value, msgs),
        MutKind::FeaturesOutsideOffer => {
            let extra = 1u64 << pick(&[24u64, 41, 50, 63], m.value);
            let virtio = m.value & 1 == 0;
            for x in msgs.iter_mut() {
                match &mut x.body {
                    Body::Features { extra: e, .. } if virtio => {
                        *e |= extra;
                        x.probes.push(&rule::NEG_FEATURES_SUBSET);
                    }
                    Body::Protocol { extra: e, .. } if !virtio => {
                        // Bits past every defined protocol feature.
                        *e |= 1 << (40 + m.value % 20);
                        x.probes.push(&rule::NEG_PROTOCOL_SUBSET);
                    }
                    _ => {}
                }
            }
        }
        MutKind::EarlyClose => {
            msgs.truncate(at + 1);
            if let Some(x) = msgs.last_mut() {
                x.probe(&rule::ROBUST_CRASH, false);
            }
        }
    }
}

/// Memory tables no guest has: overlapping regions, more regions than a
/// table holds, a region of size 0, one larger than its memfd, one whose
/// offset lies past the memfd's end. Both the table and the single-region
/// form are changed, so whichever the back-end negotiates carries it.
fn memory_table(value: u64, msgs: &mut Vec<Msg>) {
    let r = region();
    let variant = value % 5;
    let (regions, fds, probes): (Vec<Region>, usize, &'static Rule) = match variant {
        0 => (
            vec![
                r,
                Region {
                    guest_address: GUEST_MEMORY / 2,
                    user_address: USER_BASE + GUEST_MEMORY / 2,
                    ..r
                },
            ],
            2,
            &rule::MEM_OVERLAP,
        ),
        1 => (
            (0..9u64)
                .map(|i| Region {
                    guest_address: i * GUEST_MEMORY,
                    user_address: USER_BASE + i * GUEST_MEMORY,
                    ..r
                })
                .collect(),
            9,
            &rule::MEM_MAX_REGIONS,
        ),
        2 => (vec![Region { size: 0, ..r }], 1, &rule::ROBUST_CRASH),
        3 => (vec![Region { size: 1 << 62, ..r }], 1, &rule::ROBUST_CRASH),
        _ => (
            vec![Region {
                mmap_offset: GUEST_MEMORY * 16,
                ..r
            }],
            1,
            &rule::ROBUST_CRASH,
        ),
    };
    let mut i = 0;
    while i < msgs.len() {
        let Some(x) = msgs.get_mut(i) else { break };
        if x.is(Fe::SetMemTable) {
            x.body = Body::Bytes(encode(&mem_table(regions.clone())));
            x.fds = vec![Fd::Memfd(GUEST_MEMORY); fds];
            // A back-end may hold more regions or skip empty ones: a
            // success ack is not taken as false here.
            x.probe(probes, false);
        } else if x.is(Fe::AddMemReg) {
            if let (0, Some(second)) = (variant, regions.get(1)) {
                // A second, overlapping region.
                let mut again = x.clone();
                again.body = Body::Bytes(encode(&single(*second)));
                again.probe(probes, false);
                msgs.insert(i + 1, again);
                i += 1;
            } else if let Some(first) = regions.first() {
                x.body = Body::Bytes(encode(&single(*first)));
                x.probe(probes, false);
            }
        }
        i += 1;
    }
}

/// A summary of an input for finding.json: the mutations by name and the
/// messages sent, by name.
pub fn summary(input: &Input) -> serde_json::Value {
    let msgs = build(input);
    serde_json::json!({
        "mutations": input.mutations.iter().map(|m| m.kind.name()).collect::<Vec<_>>(),
        "messages": msgs.iter().map(Msg::name).collect::<Vec<_>>(),
    })
}
