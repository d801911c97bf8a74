//! The message header (spec section "Header"): request, flags and size, each
//! a u32 in the machine's native byte order.

use serde::Serialize;

/// Size of the header in bytes: three u32.
pub const HEADER_SIZE: usize = 12;
/// Bits 0-1: the protocol version, currently 1.
pub const VERSION_MASK: u32 = 0x3;
/// The protocol version in bits 0-1 of every message.
pub const VERSION: u32 = 0x1;
/// Bit 2: set on every reply from the back-end.
pub const FLAG_REPLY: u32 = 0x4;
/// Bit 3: the sender asks for a reply (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Bits the spec defines; all others are reserved.
pub const KNOWN_FLAGS: u32 = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;
/// At most 8 file descriptors travel with one message.
pub const MAX_FDS: usize = 8;
/// Vring fd payloads: bits 0-7 are the ring index, bit 8 says "no fd".
pub const VRING_INDEX_MASK: u64 = 0xff;
/// Bit 8 of a vring fd payload: no file descriptor is passed.
pub const VRING_NOFD: u64 = 0x100;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Header {
    /// The request id (the message type of its channel).
    pub request: u32,
    /// Version and flag bits (see [`VERSION_MASK`], [`FLAG_REPLY`], [`FLAG_NEED_REPLY`]).
    pub flags: u32,
    /// Size of the payload that follows, in bytes (untrusted: bounded by [`Limits::vhost_max_payload`](crate::Limits::vhost_max_payload) when read).
    pub size: u32,
}

impl Header {
    /// Decodes the three native-order u32; no field is validated here.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Header {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.request.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    /// A request from the front-end (or back-end, on its channel).
    pub fn request(request: u32, size: u32, need_reply: bool) -> Header {
        Header {
            request,
            flags: VERSION | if need_reply { FLAG_NEED_REPLY } else { 0 },
            size,
        }
    }

    /// A reply to `request`.
    pub fn reply(request: u32, size: u32) -> Header {
        Header {
            request,
            flags: VERSION | FLAG_REPLY,
            size,
        }
    }

    /// The protocol version (flags bits 0-1).
    pub fn version(&self) -> u32 {
        self.flags & VERSION_MASK
    }
    /// Whether the reply flag (bit 2) is set.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }
    /// Whether the need-reply flag (bit 3) is set.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_native_order() {
        let h = Header::request(24, 72, true);
        assert_eq!(Header::parse(&h.encode()), h);
        assert_eq!(h.flags, 0x9);
        assert_eq!(Header::reply(1, 8).flags, 0x5);
        // GET_FEATURES as QEMU sends it on x86: 01000000 01000000 00000000.
        #[cfg(target_endian = "little")]
        assert_eq!(
            Header::request(1, 0, false).encode(),
            [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
