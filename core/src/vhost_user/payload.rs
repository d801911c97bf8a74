//! Typed payloads (spec section "Payload") with their exact sizes.
//!
//! Every layout is a type implementing [`Codec`]: the size the message
//! defines, how it decodes and how it encodes, side by side, all numbers in
//! the machine's native byte order (spec: "All numbers are in the machine
//! native byte order"). `payloads!` lists the layouts once and makes the
//! [`PayloadKind`] the request table names, the [`Payload`] enum and the
//! dispatch between them.
//!
//! Decoding takes the bytes actually received and checks them against the
//! size the message type defines before reading a field; nothing is sized by
//! a count in the payload.

use super::wire::{VRING_INDEX_MASK, VRING_NOFD};
use serde::Serialize;

/// At most 8 regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
pub const MAX_MEM_TABLE_REGIONS: u32 = 8;
/// Largest config space access we decode (QEMU, libvhost-user and DPDK use 256).
pub const MAX_CONFIG_SIZE: u32 = 256;
/// `struct vhost_iotlb_msg` is 26 bytes of fields; QEMU sends its C size, 32.
pub const IOTLB_SIZE: usize = 32;
/// The packed size of `struct vhost_iotlb_msg` (26 bytes), accepted too.
pub const IOTLB_FIELDS_SIZE: usize = 26;
/// Size of the GET_SHMEM_CONFIG reply: u32 nregions, u32 padding, 256 u64 sizes (2056 bytes).
pub const SHMEM_CONFIG_SIZE: usize = 8 + 256 * 8;

/// Why a payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The message type defines `expected` bytes; `got` arrived.
    Size {
        /// Bytes the message type defines for this payload.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A count or size field is beyond what the spec allows.
    TooLarge {
        /// The field ("nregions", "config size").
        what: &'static str,
        /// The value the payload carries.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::Size { expected, got } => {
                write!(f, "payload is {got} bytes, the message defines {expected}")
            }
            PayloadError::TooLarge { what, value, max } => {
                write!(f, "{what} is {value}, at most {max} allowed")
            }
        }
    }
}

/// Reads native-order fields from a payload whose size was checked.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// XEN_MMAP negotiated: region descriptors are 40 bytes, not 32.
    xen: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        let end = self.at.checked_add(n);
        let b = end.and_then(|e| self.bytes.get(self.at..e));
        // Sizes are checked before decoding; a short read stays an error.
        let b = b.ok_or(PayloadError::Size {
            expected: self.at.saturating_add(n),
            got: self.bytes.len(),
        })?;
        self.at += n;
        Ok(b)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// Reads a u8.
    pub fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a native-order u16.
    pub fn u16(&mut self) -> Result<u16, PayloadError> {
        self.array().map(u16::from_ne_bytes)
    }
    /// Reads a native-order u32.
    pub fn u32(&mut self) -> Result<u32, PayloadError> {
        self.array().map(u32::from_ne_bytes)
    }
    /// Reads a native-order u64.
    pub fn u64(&mut self) -> Result<u64, PayloadError> {
        self.array().map(u64::from_ne_bytes)
    }
    /// Skips padding.
    pub fn skip(&mut self, n: usize) -> Result<(), PayloadError> {
        self.take(n).map(|_| ())
    }
    /// Everything left.
    pub fn rest(&mut self) -> Vec<u8> {
        let r = self.bytes.get(self.at..).unwrap_or(&[]).to_vec();
        self.at = self.bytes.len();
        r
    }
}

/// Writes native-order fields.
#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// Appends a u8.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// Appends a native-order u16.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    /// Appends a native-order u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    /// Appends a native-order u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Zero padding up to `len` bytes in all.
    pub fn pad_to(&mut self, len: usize) {
        self.0.resize(len.max(self.0.len()), 0);
    }
}

/// One payload layout: its size, its decoding and its encoding.
pub trait Codec: Sized {
    /// The size the layout defines, given its first bytes (which hold the
    /// count or size of variable layouts); `None`: any size. An error when
    /// a count is beyond what the spec allows.
    fn size(bytes: &[u8], xen: bool) -> Result<Option<usize>, PayloadError>;
    /// Reads the layout from a payload whose size was checked.
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError>;
    /// Appends the layout's bytes, padding included.
    fn encode(&self, w: &mut Writer);
}

/// A u32 at `at` of a payload not yet decoded (a count that sizes it).
fn peek_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

/// A layout of fixed size whose fields are all numbers, read and written
/// in the order given.
macro_rules! fixed {
    ($(#[$doc:meta])* $Name:ident = $size:expr; $( $(#[$fdoc:meta])* $field:ident: $ty:ident ),* $(; pad $pad:expr)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct $Name {
            $( $(#[$fdoc])* pub $field: $ty, )*
        }
        impl Codec for $Name {
            fn size(_: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
                Ok(Some($size))
            }
            fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
                Ok($Name { $( $field: r.$ty()?, )* })
            }
            fn encode(&self, w: &mut Writer) {
                $( w.$ty(self.$field); )*
                $( w.pad_to($pad); )?
            }
        }
    };
}

fixed!(
    /// A u64 (features, acks, vring fd payloads, status).
    U64 = 8;
    /// The number (feature bits, ack status, vring index and NOFD bit, device status).
    value: u64
);
fixed!(
    /// Vring state description.
    VringState = 8;
    /// The vring index.
    index: u32,
    /// Ring size in descriptors (SET_VRING_NUM) or the next available index (SET/GET_VRING_BASE); not validated here.
    num: u32
);
fixed!(
    /// Vring address description.
    VringAddr = 40;
    /// The vring index.
    index: u32,
    /// Flags; bit 0 asks for used-ring logging.
    flags: u32,
    /// User address of the descriptor table (front-end's address space).
    descriptor: u64,
    /// User address of the used ring.
    used: u64,
    /// User address of the available ring.
    available: u64,
    /// Guest address of the used-ring log (with flag bit 0).
    log: u64
);
fixed!(
    /// Log description.
    Log = 16;
    /// Size of the log area in bytes.
    size: u64,
    /// Offset of the log in the passed fd's mmap, in bytes.
    offset: u64
);
fixed!(
    /// Vring area description.
    VringArea = 24;
    /// Bits 0-7: the vring index; bit 8: no fd (the area is unmapped).
    index_flags: u64,
    /// Size of the area in bytes.
    size: u64,
    /// Offset of the area in the passed fd, in bytes.
    offset: u64
);
fixed!(
    /// Device state transfer parameters.
    DeviceState = 8;
    /// Transfer direction: 0 save (back-end to front-end), 1 load.
    direction: u32,
    /// Migration phase: 0 stopped.
    phase: u32
);
fixed!(
    /// Inflight description: 20 bytes of fields, padded to 24.
    Inflight = 24;
    /// Size of the inflight shared memory area, in bytes.
    mmap_size: u64,
    /// Offset of the area in the passed fd, in bytes.
    mmap_offset: u64,
    /// Number of virtqueues the area covers.
    num_queues: u16,
    /// Size of each virtqueue, in descriptors.
    queue_size: u16;
    pad 24
);

/// IOTLB message (`struct vhost_iotlb_msg`): QEMU sends its C size with tail
/// padding (32); the packed 26-byte form is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Iotlb {
    /// I/O virtual address of the mapping.
    pub iova: u64,
    /// Size of the mapping in bytes.
    pub size: u64,
    /// User address the IOVA maps to (front-end's address space).
    pub user_address: u64,
    /// Access permissions (1 read, 2 write, 3 read-write); not validated when decoded.
    pub permissions: u8,
    /// Message type (1 miss, 2 update, 3 invalidate, 4 access fail); not validated when decoded.
    pub iotlb_type: u8,
}
impl Codec for Iotlb {
    fn size(bytes: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
        Ok(Some(if bytes.len() == IOTLB_FIELDS_SIZE {
            IOTLB_FIELDS_SIZE
        } else {
            IOTLB_SIZE
        }))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        Ok(Iotlb {
            iova: r.u64()?,
            size: r.u64()?,
            user_address: r.u64()?,
            permissions: r.u8()?,
            iotlb_type: r.u8()?,
        })
    }
    fn encode(&self, w: &mut Writer) {
        w.u64(self.iova);
        w.u64(self.size);
        w.u64(self.user_address);
        w.u8(self.permissions);
        w.u8(self.iotlb_type);
        w.pad_to(IOTLB_SIZE);
    }
}

/// A memory region description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Region {
    /// Guest physical address of the region.
    pub guest_address: u64,
    /// Size of the region in bytes (untrusted: ranges are checked with [`Region::guest_end`]).
    pub size: u64,
    /// User address of the region in the front-end's address space.
    pub user_address: u64,
    /// Offset of the region in the passed fd's mmap, in bytes.
    pub mmap_offset: u64,
    /// Xen mmap flags (only with XEN_MMAP negotiated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xen_mmap_flags: Option<u32>,
    /// Xen domain id (only with XEN_MMAP negotiated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domid: Option<u32>,
}

impl Region {
    /// 32 bytes, 40 with XEN_MMAP.
    fn size(xen: bool) -> usize {
        if xen {
            40
        } else {
            32
        }
    }
    /// End of the guest range, None when it wraps.
    pub fn guest_end(&self) -> Option<u64> {
        self.guest_address.checked_add(self.size)
    }
    /// End of the user-address range, None when it wraps.
    pub fn user_end(&self) -> Option<u64> {
        self.user_address.checked_add(self.size)
    }
}

impl Codec for Region {
    fn size(_: &[u8], xen: bool) -> Result<Option<usize>, PayloadError> {
        Ok(Some(Region::size(xen)))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        let xen = r.xen;
        Ok(Region {
            guest_address: r.u64()?,
            size: r.u64()?,
            user_address: r.u64()?,
            mmap_offset: r.u64()?,
            xen_mmap_flags: if xen { Some(r.u32()?) } else { None },
            domid: if xen { Some(r.u32()?) } else { None },
        })
    }
    fn encode(&self, w: &mut Writer) {
        for v in [
            self.guest_address,
            self.size,
            self.user_address,
            self.mmap_offset,
        ] {
            w.u64(v);
        }
        if let (Some(f), Some(d)) = (self.xen_mmap_flags, self.domid) {
            w.u32(f);
            w.u32(d);
        }
    }
}

/// Multiple memory regions description: u32 nregions, u32 padding, then
/// nregions regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemTable {
    /// The regions, at most [`MAX_MEM_TABLE_REGIONS`] (checked before decoding).
    pub regions: Vec<Region>,
}
impl Codec for MemTable {
    fn size(bytes: &[u8], xen: bool) -> Result<Option<usize>, PayloadError> {
        let n = peek_u32(bytes, 0).ok_or(PayloadError::Size {
            expected: 8,
            got: bytes.len(),
        })?;
        if n > MAX_MEM_TABLE_REGIONS {
            return Err(PayloadError::TooLarge {
                what: "nregions",
                value: n as u64,
                max: MAX_MEM_TABLE_REGIONS as u64,
            });
        }
        Ok(Some(8 + Region::size(xen) * n as usize))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        let n = r.u32()?;
        r.skip(4)?;
        let regions = (0..n)
            .map(|_| Region::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(MemTable { regions })
    }
    fn encode(&self, w: &mut Writer) {
        w.u32(self.regions.len() as u32);
        w.u32(0);
        for r in &self.regions {
            r.encode(w);
        }
    }
}

/// Single memory region description: u64 padding, then one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SingleRegion {
    /// The region added or removed.
    pub region: Region,
}
impl Codec for SingleRegion {
    fn size(_: &[u8], xen: bool) -> Result<Option<usize>, PayloadError> {
        Ok(Some(8 + Region::size(xen)))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        r.skip(8)?;
        Ok(SingleRegion {
            region: Region::decode(r)?,
        })
    }
    fn encode(&self, w: &mut Writer) {
        w.u64(0);
        self.region.encode(w);
    }
}

/// Device config space: u32 offset, u32 size, u32 flags, then `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Offset of the access in the device config space, in bytes.
    pub offset: u32,
    /// Bytes accessed, at most [`MAX_CONFIG_SIZE`] (checked before decoding).
    pub size: u32,
    /// 0 writable, 1 live migration.
    pub flags: u32,
    /// The config bytes (`size` of them).
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}
impl Codec for Config {
    fn size(bytes: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
        let size = peek_u32(bytes, 4).ok_or(PayloadError::Size {
            expected: 12,
            got: bytes.len(),
        })?;
        if size > MAX_CONFIG_SIZE {
            return Err(PayloadError::TooLarge {
                what: "config size",
                value: size as u64,
                max: MAX_CONFIG_SIZE as u64,
            });
        }
        Ok(Some(12 + size as usize))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        Ok(Config {
            offset: r.u32()?,
            size: r.u32()?,
            flags: r.u32()?,
            data: r.rest(),
        })
    }
    fn encode(&self, w: &mut Writer) {
        w.u32(self.offset);
        w.u32(self.size);
        w.u32(self.flags);
        w.bytes(&self.data);
    }
}

/// Bytes the engine does not look into, any size (crypto sessions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CryptoSession {
    /// The payload bytes, unparsed.
    #[serde(with = "hex_bytes")]
    pub raw: Vec<u8>,
}
impl Codec for CryptoSession {
    fn size(_: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
        Ok(None)
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        Ok(CryptoSession { raw: r.rest() })
    }
    fn encode(&self, w: &mut Writer) {
        w.bytes(&self.raw);
    }
}

/// VhostUserShared: a 16-byte UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedObject {
    /// The object's UUID (16 bytes).
    #[serde(with = "hex_bytes")]
    pub uuid: Vec<u8>,
}
impl Codec for SharedObject {
    fn size(_: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
        Ok(Some(16))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        Ok(SharedObject { uuid: r.rest() })
    }
    fn encode(&self, w: &mut Writer) {
        w.bytes(&self.uuid);
    }
}

/// MMAP request: u8 shmid, 7 bytes padding, then four u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShmemMap {
    /// Which shared memory region (VIRTIO Shared Memory Region id).
    pub shmid: u8,
    /// Offset in the passed fd, in bytes.
    pub fd_offset: u64,
    /// Offset in the shared memory region, in bytes.
    pub shm_offset: u64,
    /// Length of the mapping in bytes.
    pub len: u64,
    /// Mapping flags: 0 read-only, 1 read-write (spec "MMAP request").
    pub flags: u64,
}
impl Codec for ShmemMap {
    fn size(_: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
        Ok(Some(40))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        let shmid = r.u8()?;
        r.skip(7)?;
        Ok(ShmemMap {
            shmid,
            fd_offset: r.u64()?,
            shm_offset: r.u64()?,
            len: r.u64()?,
            flags: r.u64()?,
        })
    }
    fn encode(&self, w: &mut Writer) {
        w.u8(self.shmid);
        w.pad_to(8);
        for v in [self.fd_offset, self.shm_offset, self.len, self.flags] {
            w.u64(v);
        }
    }
}

/// Shared memory configuration: u32 nregions, u32 padding, 256 u64 sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShmemConfig {
    /// Number of shared memory regions the back-end uses (not validated against 256).
    pub nregions: u32,
    /// Size in bytes of each of the 256 region slots.
    pub sizes: Vec<u64>,
}
impl Codec for ShmemConfig {
    fn size(_: &[u8], _: bool) -> Result<Option<usize>, PayloadError> {
        Ok(Some(SHMEM_CONFIG_SIZE))
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, PayloadError> {
        let nregions = r.u32()?;
        r.skip(4)?;
        Ok(ShmemConfig {
            nregions,
            sizes: (0..256).map(|_| r.u64()).collect::<Result<_, _>>()?,
        })
    }
    fn encode(&self, w: &mut Writer) {
        w.u32(self.nregions);
        w.u32(0);
        for i in 0..256 {
            w.u64(self.sizes.get(i).copied().unwrap_or(0));
        }
    }
}

/// Lists every layout once: the kind the request table names, the
/// variant of [`Payload`], and the dispatch to its [`Codec`].
macro_rules! payloads {
    ($( $Kind:ident ),* $(,)?) => {
        /// The payload layouts of the spec.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub enum PayloadKind {
            /// No payload (size 0).
            Empty,
            $(
                #[doc = concat!("The [`", stringify!($Kind), "`] layout.")]
                $Kind,
            )*
        }

        /// A decoded payload.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Payload {
            /// No payload (size 0).
            Empty,
            $(
                #[doc = concat!("A decoded [`", stringify!($Kind), "`].")]
                $Kind($Kind),
            )*
        }

        fn size_of(kind: PayloadKind, bytes: &[u8], xen: bool) -> Result<Option<usize>, PayloadError> {
            match kind {
                PayloadKind::Empty => Ok(Some(0)),
                $( PayloadKind::$Kind => $Kind::size(bytes, xen), )*
            }
        }

        fn decode_as(kind: PayloadKind, r: &mut Reader<'_>) -> Result<Payload, PayloadError> {
            match kind {
                PayloadKind::Empty => Ok(Payload::Empty),
                $( PayloadKind::$Kind => $Kind::decode(r).map(Payload::$Kind), )*
            }
        }

        /// Encodes a payload in the layout `decode` reads.
        pub fn encode(p: &Payload) -> Vec<u8> {
            let mut w = Writer::default();
            match p {
                Payload::Empty => {}
                $( Payload::$Kind(v) => v.encode(&mut w), )*
            }
            w.0
        }
    };
}

payloads!(
    U64,
    VringState,
    VringAddr,
    MemTable,
    SingleRegion,
    Log,
    Iotlb,
    Config,
    CryptoSession,
    VringArea,
    Inflight,
    SharedObject,
    DeviceState,
    ShmemMap,
    ShmemConfig,
);

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}

/// The size a payload of `kind` must have, given its first bytes (which
/// hold the region count or config size of variable payloads). `xen` is
/// whether XEN_MMAP was negotiated (longer region descriptors).
pub fn expected_size(kind: PayloadKind, bytes: &[u8], xen: bool) -> Option<usize> {
    size_of(kind, bytes, xen).ok().flatten()
}

/// Decodes `bytes` as a payload of `kind`, checking its exact size first.
pub fn decode(kind: PayloadKind, bytes: &[u8], xen: bool) -> Result<Payload, PayloadError> {
    if let Some(expected) = size_of(kind, bytes, xen)? {
        if bytes.len() != expected {
            return Err(PayloadError::Size {
                expected,
                got: bytes.len(),
            });
        }
    }
    decode_as(kind, &mut Reader { bytes, at: 0, xen })
}

impl Payload {
    /// The ring a ring request names: the index of a vring state or
    /// address, or bits 0-7 of a vring fd payload.
    pub fn ring_index(&self) -> Option<u32> {
        match self {
            Payload::VringState(VringState { index, .. })
            | Payload::VringAddr(VringAddr { index, .. }) => Some(*index),
            Payload::U64(U64 { value }) => Some(vring_fd_index(*value).0),
            _ => None,
        }
    }
}

/// The ring index of a vring fd payload (u64: bits 0-7) and its NOFD bit.
pub fn vring_fd_index(value: u64) -> (u32, bool) {
    ((value & VRING_INDEX_MASK) as u32, value & VRING_NOFD != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_payload_round_trips_at_its_exact_size() {
        let region = Region {
            guest_address: 0,
            size: 1 << 20,
            user_address: 0x7f00_0000_0000,
            mmap_offset: 0,
            xen_mmap_flags: None,
            domid: None,
        };
        let samples = [
            (PayloadKind::Empty, Payload::Empty, 0),
            (
                PayloadKind::U64,
                Payload::U64(U64 {
                    value: 0x1_7500_7e46,
                }),
                8,
            ),
            (
                PayloadKind::VringState,
                Payload::VringState(VringState { index: 1, num: 256 }),
                8,
            ),
            (
                PayloadKind::VringAddr,
                Payload::VringAddr(VringAddr {
                    index: 0,
                    flags: 0,
                    descriptor: 1,
                    used: 2,
                    available: 3,
                    log: 4,
                }),
                40,
            ),
            (
                PayloadKind::MemTable,
                Payload::MemTable(MemTable {
                    regions: vec![region, region],
                }),
                8 + 64,
            ),
            (
                PayloadKind::SingleRegion,
                Payload::SingleRegion(SingleRegion { region }),
                40,
            ),
            (
                PayloadKind::Log,
                Payload::Log(Log {
                    size: 4096,
                    offset: 0,
                }),
                16,
            ),
            (
                PayloadKind::Iotlb,
                Payload::Iotlb(Iotlb {
                    iova: 1,
                    size: 2,
                    user_address: 3,
                    permissions: 3,
                    iotlb_type: 2,
                }),
                32,
            ),
            (
                PayloadKind::Config,
                Payload::Config(Config {
                    offset: 0,
                    size: 4,
                    flags: 0,
                    data: vec![1, 2, 3, 4],
                }),
                16,
            ),
            (
                PayloadKind::VringArea,
                Payload::VringArea(VringArea {
                    index_flags: 0x101,
                    size: 4096,
                    offset: 0,
                }),
                24,
            ),
            (
                PayloadKind::Inflight,
                Payload::Inflight(Inflight {
                    mmap_size: 4096,
                    mmap_offset: 0,
                    num_queues: 2,
                    queue_size: 128,
                }),
                24,
            ),
            (
                PayloadKind::SharedObject,
                Payload::SharedObject(SharedObject { uuid: vec![7; 16] }),
                16,
            ),
            (
                PayloadKind::DeviceState,
                Payload::DeviceState(DeviceState {
                    direction: 0,
                    phase: 0,
                }),
                8,
            ),
            (
                PayloadKind::ShmemMap,
                Payload::ShmemMap(ShmemMap {
                    shmid: 1,
                    fd_offset: 0,
                    shm_offset: 4096,
                    len: 8192,
                    flags: 1,
                }),
                40,
            ),
            (
                PayloadKind::ShmemConfig,
                Payload::ShmemConfig(ShmemConfig {
                    nregions: 1,
                    sizes: {
                        let mut v = vec![0; 256];
                        v[0] = 1 << 20;
                        v
                    },
                }),
                2056,
            ),
        ];
        for (kind, p, size) in samples {
            let bytes = encode(&p);
            assert_eq!(bytes.len(), size, "{kind:?}");
            assert_eq!(decode(kind, &bytes, false), Ok(p), "{kind:?}");
            // One byte more or less is a size error, never a panic.
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(
                matches!(decode(kind, &longer, false), Err(PayloadError::Size { .. })),
                "{kind:?} accepted a longer payload"
            );
            if !bytes.is_empty() {
                assert!(
                    decode(kind, &bytes[..bytes.len() - 1], false).is_err(),
                    "{kind:?} accepted a shorter payload"
                );
            }
        }
    }

    #[test]
    fn numbers_are_in_native_byte_order() {
        // SET_VRING_NUM {ring 1, 256}, as a host of either byte order sends it.
        let mut want = 1u32.to_ne_bytes().to_vec();
        want.extend_from_slice(&256u32.to_ne_bytes());
        let p = Payload::VringState(VringState { index: 1, num: 256 });
        assert_eq!(encode(&p), want);
        assert_eq!(decode(PayloadKind::VringState, &want, false), Ok(p));
        // The packed 26-byte IOTLB form decodes like the padded one.
        let iotlb = Payload::Iotlb(Iotlb {
            iova: 1,
            size: 2,
            user_address: 3,
            permissions: 3,
            iotlb_type: 2,
        });
        let padded = encode(&iotlb);
        assert_eq!(
            decode(PayloadKind::Iotlb, &padded[..IOTLB_FIELDS_SIZE], false),
            Ok(iotlb)
        );
    }

    #[test]
    fn counts_in_the_payload_are_bounded_before_use() {
        let mut table = Vec::new();
        table.extend_from_slice(&u32::MAX.to_ne_bytes());
        table.extend_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(
            decode(PayloadKind::MemTable, &table, false),
            Err(PayloadError::TooLarge { .. })
        ));
        let mut cfg = vec![0u8; 12];
        cfg[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            decode(PayloadKind::Config, &cfg, false),
            Err(PayloadError::TooLarge { .. })
        ));
        assert!(decode(PayloadKind::MemTable, &[1, 2], false).is_err());
    }
}
