//! Structure-aware vhost-user conversations (feature `arbitrary`): an
//! [`arbitrary::Arbitrary`] [`Conversation`] is a sequence of messages and
//! connection events whose messages are drawn through the request tables
//! ([`super::request`]) and the payload codecs ([`super::payload`]): a
//! request of the channel's table with a header the spec allows and a
//! payload of its layout, valid (decoded and encoded again, so its padding
//! is canonical), then with some probability one [`Mutation`] of its
//! payload, header or file descriptors. Random bytes rarely get past the
//! header checks; these reach the session engine's per-request rules.
//!
//! A user's cargo-fuzz target (with `qconform-core = { features =
//! ["arbitrary"] }`):
//!
//! ```
//! use arbitrary::{Arbitrary, Unstructured};
//! use qconform_core::vhost_user::arbitrary::{Conversation, Step};
//! use qconform_core::vhost_user::session::{Profile, Session};
//!
//! // The body of `libfuzzer_sys::fuzz_target!(|data: &[u8]| { ... })`.
//! fn fuzz_one(data: &[u8]) -> arbitrary::Result<()> {
//!     let c = Conversation::arbitrary(&mut Unstructured::new(data))?;
//!     let mut s = Session::new("fuzz", Profile::default());
//!     c.feed(&mut s);
//!     // Every step's bytes are also what `Conversation::from_stream` reads.
//!     assert_eq!(Conversation::from_stream(&c.to_stream()).steps, c.steps);
//!     for f in &s.report().findings {
//!         assert!(qconform_core::rules::by_id(f.rule.id).is_some(), "{}", f.rule);
//!     }
//!     Ok(())
//! }
//! # fuzz_one(&[0x5a; 512]).unwrap();
//! ```

use super::payload::{self, PayloadKind, MAX_CONFIG_SIZE, MAX_MEM_TABLE_REGIONS};
use super::request::{self, Channel, Fds, Reply, RequestInfo};
use super::session::{Direction, Message, Session};
use super::wire::{Header, HEADER_SIZE, MAX_FDS, VRING_NOFD};
use arbitrary::{Arbitrary, Result, Unstructured};

/// Most steps of a drawn conversation.
pub const MAX_STEPS: usize = 32;
/// Most payload bytes of one step: the session's own cap
/// ([`crate::Limits::vhost_max_payload`]), which the stream encoding
/// also cuts at.
pub const MAX_PAYLOAD: usize = 4096;

/// One step of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A message on one channel.
    Message {
        /// The socket it travels on.
        channel: Channel,
        /// Which side sends it.
        dir: Direction,
        /// Its header (`size` is the payload's length).
        header: Header,
        /// Its payload bytes (at most [`MAX_PAYLOAD`]).
        payload: Vec<u8>,
        /// File descriptors sent with it (at most 255).
        fds: u8,
    },
    /// The connection closes.
    Close {
        /// The side that closed it.
        by: Direction,
        /// Whether the close was the expected end of the conversation.
        expected: bool,
    },
    /// A reply awaited did not come.
    Timeout,
}

/// What was done to a valid message after drawing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The payload cut to this many bytes.
    Truncate(usize),
    /// This many bytes appended to the payload.
    Extend(usize),
    /// One payload bit flipped: (byte, bit).
    FlipBit(usize, u8),
    /// These header flag bits toggled (version, reply, need-reply or a
    /// reserved bit).
    Flags(u32),
    /// The file descriptor count changed to this.
    Fds(u8),
    /// A request id past the channel's table.
    UnknownRequest(u32),
}

/// A conversation: its steps, and the mutations applied to them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conversation {
    /// The steps in order.
    pub steps: Vec<Step>,
    /// (step index, mutation) for each message that was mutated; the
    /// others are valid for their request's layout.
    pub mutations: Vec<(usize, Mutation)>,
}

/// The payload layout of a message of `info`: the request's own, or its
/// reply's (an acknowledgement is a u64).
pub fn layout(info: &RequestInfo, reply: bool) -> PayloadKind {
    if !reply {
        return info.payload;
    }
    match info.reply {
        Reply::Always(k) | Reply::IfFeature(_, k) => k,
        Reply::None => PayloadKind::U64,
    }
}

/// A valid payload of `kind`: drawn bytes with its count fields brought in
/// range, decoded and encoded again (canonical padding). Falls back to the
/// drawn bytes when they do not decode (there is no such layout today).
fn valid_payload(u: &mut Unstructured, kind: PayloadKind) -> Result<Vec<u8>> {
    let mut b = vec![0u8; 12];
    u.fill_buffer(&mut b)?;
    let set = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    match kind {
        PayloadKind::MemTable => {
            let n = u.int_in_range(0..=MAX_MEM_TABLE_REGIONS)?;
            set(&mut b, 0, n);
        }
        PayloadKind::Config => {
            let n = u.int_in_range(0..=MAX_CONFIG_SIZE)?;
            set(&mut b, 4, n);
        }
        _ => {}
    }
    let n = payload::expected_size(kind, &b, false)
        .unwrap_or(b.len())
        .min(MAX_PAYLOAD);
    let at = b.len().min(n);
    b.resize(n, 0);
    u.fill_buffer(&mut b[at..])?;
    Ok(match payload::decode(kind, &b, false) {
        Ok(p) => payload::encode(&p),
        Err(_) => b,
    })
}

/// The file descriptors a valid message of `info` carries.
fn valid_fds(u: &mut Unstructured, info: &RequestInfo, reply: bool, bytes: &[u8]) -> Result<u8> {
    if reply {
        return Ok(if info.reply_fds > 0 && u.arbitrary()? {
            info.reply_fds.min(MAX_FDS) as u8
        } else {
            0
        });
    }
    Ok(match info.fds {
        Fds::None | Fds::NoneOrOne => 0,
        Fds::One => 1,
        Fds::OneUnlessNofd => {
            let v = bytes
                .first_chunk::<8>()
                .map_or(0, |b| u64::from_ne_bytes(*b));
            u8::from(v & VRING_NOFD == 0)
        }
        Fds::PerRegion => bytes
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_ne_bytes(*b).min(MAX_FDS as u32) as u8),
        Fds::OneIfFeature(_) => u.arbitrary::<bool>()? as u8,
    })
}

/// One mutation of a drawn message, applied in place.
fn mutate(
    u: &mut Unstructured,
    channel: Channel,
    header: &mut Header,
    payload: &mut Vec<u8>,
    fds: &mut u8,
) -> Result<Mutation> {
    let m = match u.int_in_range(0..=5)? {
        0 => {
            let n = u.int_in_range(0..=payload.len().saturating_sub(1))?;
            payload.truncate(n);
            Mutation::Truncate(n)
        }
        1 => {
            let n = u
                .int_in_range(1..=16)?
                .min(MAX_PAYLOAD - payload.len().min(MAX_PAYLOAD));
            payload.resize(payload.len() + n, 0);
            Mutation::Extend(n)
        }
        2 if !payload.is_empty() => {
            let at = u.choose_index(payload.len())?;
            let bit = u.int_in_range(0..=7)?;
            payload[at] ^= 1 << bit;
            Mutation::FlipBit(at, bit)
        }
        3 => {
            let bit = u.int_in_range(0..=31)?;
            header.flags ^= 1 << bit;
            Mutation::Flags(1 << bit)
        }
        4 => {
            let n = u.int_in_range(0..=MAX_FDS as u8 + 1)?;
            *fds = n;
            Mutation::Fds(n)
        }
        _ => {
            let past = request::table(channel).len() as u32;
            let id = past + u.int_in_range(0..=64)?;
            header.request = id;
            Mutation::UnknownRequest(id)
        }
    };
    header.size = payload.len() as u32;
    Ok(m)
}

/// One drawn message; the mutation when one was applied.
fn message(u: &mut Unstructured) -> Result<(Step, Option<Mutation>)> {
    let channel = if u.ratio(1, 8)? {
        Channel::Backend
    } else {
        Channel::Main
    };
    let info = u.choose(request::table(channel))?;
    let reply = u.ratio(1, 3)?;
    // Requests travel from the channel's requester; replies back.
    let dir = match (channel, reply) {
        (Channel::Main, false) | (Channel::Backend, true) => Direction::FrontToBack,
        _ => Direction::BackToFront,
    };
    let mut payload = valid_payload(u, layout(info, reply))?;
    let mut fds = valid_fds(u, info, reply, &payload)?;
    let size = payload.len() as u32;
    let mut header = if reply {
        Header::reply(info.id, size)
    } else {
        Header::request(info.id, size, u.arbitrary()?)
    };
    // An input that ran out draws no mutation (every draw would be its
    // smallest value, and a ratio's smallest is "yes").
    let mutation = if !u.is_empty() && u.ratio(1, 4)? {
        Some(mutate(u, channel, &mut header, &mut payload, &mut fds)?)
    } else {
        None
    };
    let step = Step::Message {
        channel,
        dir,
        header,
        payload,
        fds,
    };
    Ok((step, mutation))
}

impl<'a> Arbitrary<'a> for Conversation {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut c = Conversation::default();
        let n = u.int_in_range(0..=MAX_STEPS)?;
        for i in 0..n {
            if u.is_empty() {
                break;
            }
            let step = match u.int_in_range(0..=15)? {
                0 => Step::Close {
                    by: if u.arbitrary()? {
                        Direction::BackToFront
                    } else {
                        Direction::FrontToBack
                    },
                    expected: u.arbitrary()?,
                },
                1 => Step::Timeout,
                _ => {
                    let (step, m) = message(u)?;
                    if let Some(m) = m {
                        c.mutations.push((i, m));
                    }
                    step
                }
            };
            c.steps.push(step);
        }
        Ok(c)
    }
}

// Stream encoding tags (see `Conversation::to_stream`).
const TAG_BACK_TO_FRONT: u8 = 1;
const TAG_BACKEND: u8 = 2;
const TAG_EVENT: u8 = 0x80;
const TAG_TIMEOUT: u8 = 1;
const TAG_CLOSED_BY_BACKEND: u8 = 4;
const TAG_EXPECTED: u8 = 8;

impl Step {
    /// The message this step sends, as the session takes it.
    pub fn message(&self) -> Option<Message<'_>> {
        match self {
            Step::Message {
                channel,
                dir,
                header,
                payload,
                fds,
            } => Some(Message {
                channel: *channel,
                dir: *dir,
                header: *header,
                payload,
                fds: *fds as usize,
            }),
            _ => None,
        }
    }
}

impl Conversation {
    /// Feeds every step to `session` in order (a message with the payload
    /// as drawn, a timeout as a wait of one second), then ends the
    /// conversation.
    pub fn feed(&self, session: &mut Session) {
        for step in &self.steps {
            match step {
                Step::Message { .. } => {
                    if let Some(m) = step.message() {
                        session.on_message(m);
                    }
                }
                Step::Close { by, expected } => session.on_close(Some(*by), *expected),
                Step::Timeout => session.on_timeout(1000),
            }
        }
        session.on_close(None, false);
    }

    /// The byte stream the vhost_user_session fuzz target reads: per step
    /// a tag byte (bit 7 an event: bit 0 a timeout, else a close, bit 2 by
    /// the back-end, bit 3 expected; for a message bit 0 back-to-front,
    /// bit 1 the back-end channel), then for a message its fd count, its
    /// 12-byte header and its payload.
    pub fn to_stream(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for step in &self.steps {
            match step {
                Step::Message { .. } => {
                    let Some(m) = step.message() else { continue };
                    let mut tag = 0;
                    if m.dir == Direction::BackToFront {
                        tag |= TAG_BACK_TO_FRONT;
                    }
                    if m.channel == Channel::Backend {
                        tag |= TAG_BACKEND;
                    }
                    out.extend_from_slice(&[tag, m.fds as u8]);
                    out.extend_from_slice(&m.header.encode());
                    out.extend_from_slice(m.payload);
                }
                Step::Close { by, expected } => {
                    let mut tag = TAG_EVENT;
                    if *by == Direction::BackToFront {
                        tag |= TAG_CLOSED_BY_BACKEND;
                    }
                    if *expected {
                        tag |= TAG_EXPECTED;
                    }
                    out.extend_from_slice(&[tag, 0]);
                }
                Step::Timeout => out.extend_from_slice(&[TAG_EVENT | TAG_TIMEOUT, 0]),
            }
        }
        out
    }

    /// Reads a stream of [`Conversation::to_stream`]'s encoding (a
    /// message's payload is `header.size` bytes, at most [`MAX_PAYLOAD`],
    /// cut at the end of the input); an incomplete last step is dropped.
    /// The mutations are not in the stream: the result has none.
    pub fn from_stream(mut rest: &[u8]) -> Conversation {
        let mut steps = Vec::new();
        while let [tag, fds, tail @ ..] = rest {
            if tag & TAG_EVENT != 0 {
                steps.push(if tag & TAG_TIMEOUT != 0 {
                    Step::Timeout
                } else {
                    Step::Close {
                        by: if tag & TAG_CLOSED_BY_BACKEND != 0 {
                            Direction::BackToFront
                        } else {
                            Direction::FrontToBack
                        },
                        expected: tag & TAG_EXPECTED != 0,
                    }
                });
                rest = tail;
                continue;
            }
            let Some((head, tail)) = tail.split_first_chunk::<HEADER_SIZE>() else {
                break;
            };
            let header = Header::parse(head);
            let take = (header.size as usize).min(MAX_PAYLOAD).min(tail.len());
            let (payload, tail) = tail.split_at(take);
            steps.push(Step::Message {
                channel: if tag & TAG_BACKEND != 0 {
                    Channel::Backend
                } else {
                    Channel::Main
                },
                dir: if tag & TAG_BACK_TO_FRONT != 0 {
                    Direction::BackToFront
                } else {
                    Direction::FrontToBack
                },
                header,
                payload: payload.to_vec(),
                fds: *fds,
            });
            rest = tail;
        }
        Conversation {
            steps,
            mutations: Vec::new(),
        }
    }
}
