//! Transcripts: a vhost-user conversation as JSON Lines. The first line
//! names the format and version; then one line per message (channel,
//! direction, request id and name, flags, size, raw payload in hex, the
//! decoded payload, and file descriptors as typed placeholders) or per event
//! (the connection closed, a deadline passed).

use super::payload;
use super::request::{self, Channel};
use super::session::{Direction, Message, Profile, Session};
use super::wire::Header;
use serde::{Deserialize, Serialize};

/// The `format` of a transcript's preamble line.
pub const FORMAT: &str = "qconform-vhost-user-transcript";
/// The transcript format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// A transcript line longer than this is refused (a 4 KiB payload in hex and
/// its decoded form fit many times over).
pub const MAX_LINE: usize = 256 * 1024;
/// Most lines read from one transcript.
pub const MAX_LINES: usize = 1_000_000;

/// A file descriptor as recorded: its kind and, for memory, its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdInfo {
    /// memfd, eventfd, socket, file, pipe, none (closed), unknown.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// For memory (memfd, file): its size in bytes, when known.
    pub size: Option<u64>,
}

/// The first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preamble {
    /// Must be [`FORMAT`].
    pub format: String,
    /// Must be [`VERSION`].
    pub version: u32,
    #[serde(default)]
    /// Free text: what the conversation is.
    pub description: String,
}

/// One message or event line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Message (or event) number in the conversation, in order.
    pub seq: u64,
    #[serde(default)]
    /// Time since the start of the conversation, in nanoseconds (0 when not recorded).
    pub t_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Set on an event line; the message fields are then absent.
    pub event: Option<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The socket the message travelled on.
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Which side sent it.
    pub dir: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The header's request field (a wire id, maybe unknown).
    pub request: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The request's spec name, when the id is known (informative: the id decides).
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The header's flags field.
    pub flags: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The header's size field, as claimed (the payload may be shorter).
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The payload bytes received, in hex.
    pub payload_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The payload decoded with the request's layout, for reading only (requests only; never read back).
    pub decoded: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// The file descriptors that travelled with it.
    pub fds: Vec<FdInfo>,
}

/// Connection events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The connection ended; `by` is the side that closed it, if known.
    Closed {
        #[serde(default)]
        /// The side that closed, when known.
        by: Option<Direction>,
        /// The close was provoked (invalid input on purpose).
        #[serde(default)]
        expected: bool,
    },
    /// A reply did not arrive within `waited_ms`.
    Timeout {
        /// How long the reply was waited for, in milliseconds.
        waited_ms: u64,
    },
}

/// Payload bytes as lowercase hex (the `hex` crate: one well-tested
/// codec instead of a hand-written one in each module).
pub fn to_hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Hex back to bytes; None on an odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

impl Entry {
    /// A message line, with its payload decoded where the request is known.
    pub fn message(
        seq: u64,
        t_ns: u64,
        channel: Channel,
        dir: Direction,
        header: Header,
        payload: &[u8],
        fds: Vec<FdInfo>,
    ) -> Entry {
        let requester = if channel == Channel::Main {
            Direction::FrontToBack
        } else {
            Direction::BackToFront
        };
        let info = request::lookup(channel, header.request);
        let decoded = info.and_then(|i| {
            // Requests decode with their request layout; reply bodies are left raw
            // (their layout depends on negotiation the line alone does not know).
            (dir == requester)
                .then(|| payload::decode(i.payload, payload, false).ok())
                .flatten()
        });
        Entry {
            seq,
            t_ns,
            event: None,
            channel: Some(channel),
            dir: Some(dir),
            request: Some(header.request),
            name: info.map(|i| i.name.to_string()),
            flags: Some(header.flags),
            size: Some(header.size),
            payload_hex: Some(to_hex(payload)),
            decoded: decoded.and_then(|d| serde_json::to_value(d).ok()),
            fds,
        }
    }

    /// An event line.
    pub fn event(seq: u64, t_ns: u64, event: Event) -> Entry {
        Entry {
            seq,
            t_ns,
            event: Some(event),
            channel: None,
            dir: None,
            request: None,
            name: None,
            flags: None,
            size: None,
            payload_hex: None,
            decoded: None,
            fds: Vec::new(),
        }
    }
}

/// Why a transcript cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptError {
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for TranscriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole transcript.
pub fn parse(text: &str) -> Result<(Preamble, Vec<Entry>), TranscriptError> {
    let err = |line: usize, message: String| TranscriptError { line, message };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines
        .next()
        .ok_or_else(|| err(1, "empty transcript".into()))?;
    let pre: Preamble = serde_json::from_str(first)
        .map_err(|e| err(1, format!("not a transcript preamble: {e}")))?;
    if pre.format != FORMAT || pre.version != VERSION {
        return Err(err(
            1,
            format!(
                "format {:?} version {}; expected {FORMAT:?} version {VERSION}",
                pre.format, pre.version
            ),
        ));
    }
    let mut entries = Vec::new();
    for (i, line) in lines {
        if entries.len() >= MAX_LINES {
            return Err(err(i + 1, format!("more than {MAX_LINES} lines")));
        }
        if line.len() > MAX_LINE {
            return Err(err(
                i + 1,
                format!("line of {} bytes (at most {MAX_LINE})", line.len()),
            ));
        }
        let e: Entry = serde_json::from_str(line).map_err(|e| err(i + 1, e.to_string()))?;
        if e.event.is_none()
            && (e.channel.is_none()
                || e.dir.is_none()
                || e.request.is_none()
                || e.flags.is_none()
                || e.size.is_none())
        {
            return Err(err(
                i + 1,
                "a message line needs channel, dir, request, flags and size".into(),
            ));
        }
        if e.payload_hex
            .as_deref()
            .is_some_and(|h| from_hex(h).is_none())
        {
            return Err(err(i + 1, "payload_hex is not hex".into()));
        }
        entries.push(e);
    }
    Ok((pre, entries))
}

/// Runs the rule engine over a parsed transcript.
pub fn check(name: &str, entries: &[Entry], profile: Profile) -> Session {
    let mut s = Session::new(name, profile);
    for e in entries {
        match &e.event {
            Some(Event::Closed { by, expected }) => s.on_close(*by, *expected),
            Some(Event::Timeout { waited_ms }) => s.on_timeout(*waited_ms),
            None => {
                let (Some(channel), Some(dir), Some(request), Some(flags), Some(size)) =
                    (e.channel, e.dir, e.request, e.flags, e.size)
                else {
                    continue;
                };
                let payload = e
                    .payload_hex
                    .as_deref()
                    .and_then(from_hex)
                    .unwrap_or_default();
                s.on_message(Message {
                    channel,
                    dir,
                    header: Header {
                        request,
                        flags,
                        size,
                    },
                    payload: &payload,
                    fds: e.fds.len(),
                });
            }
        }
    }
    s
}
