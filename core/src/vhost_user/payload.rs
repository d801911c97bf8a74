//! Typed payloads (spec section "Payload") with their exact sizes.
//!
//! Decoding takes the bytes actually received and checks them against the
//! size the message type defines before reading a field; nothing is sized by
//! a count in the payload.

use super::wire::{VRING_INDEX_MASK, VRING_NOFD};
use serde::Serialize;

/// The payload layouts of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PayloadKind {
    Empty,
    U64,
    VringState,
    VringAddr,
    /// u32 nregions, u32 padding, nregions x region (32 bytes, 40 with XEN_MMAP).
    MemTable,
    /// u64 padding + one region.
    SingleRegion,
    Log,
    Iotlb,
    /// u32 offset, u32 size, u32 flags, then `size` bytes.
    Config,
    CryptoSession,
    VringArea,
    Inflight,
    SharedObject,
    DeviceState,
    ShmemMap,
    ShmemConfig,
}

/// At most 8 regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
pub const MAX_MEM_TABLE_REGIONS: u32 = 8;
/// Largest config space access we decode (QEMU, libvhost-user and DPDK use 256).
pub const MAX_CONFIG_SIZE: u32 = 256;
/// `struct vhost_iotlb_msg` is 26 bytes of fields; QEMU sends its C size, 32.
pub const IOTLB_SIZE: usize = 32;
pub const IOTLB_FIELDS_SIZE: usize = 26;
pub const SHMEM_CONFIG_SIZE: usize = 8 + 256 * 8;

/// The size a payload of `kind` must have, given its first bytes (which
/// hold the region count or config size of variable payloads). `xen` is
/// whether XEN_MMAP was negotiated (longer region descriptors).
pub fn expected_size(kind: PayloadKind, bytes: &[u8], xen: bool) -> Option<usize> {
    let region = if xen { 40 } else { 32 };
    Some(match kind {
        PayloadKind::Empty => 0,
        PayloadKind::U64 | PayloadKind::VringState | PayloadKind::DeviceState => 8,
        PayloadKind::VringAddr => 40,
        PayloadKind::MemTable => 8 + region * (u32_at(bytes, 0)? as usize),
        PayloadKind::SingleRegion => 8 + region,
        PayloadKind::Log => 16,
        PayloadKind::Iotlb => IOTLB_SIZE,
        PayloadKind::Config => 12 + u32_at(bytes, 4)? as usize,
        PayloadKind::CryptoSession => return None,
        PayloadKind::VringArea => 24,
        PayloadKind::Inflight => 24,
        PayloadKind::SharedObject => 16,
        PayloadKind::ShmemMap => 40,
        PayloadKind::ShmemConfig => SHMEM_CONFIG_SIZE,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
}
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
}

/// A memory region description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Region {
    pub guest_address: u64,
    pub size: u64,
    pub user_address: u64,
    pub mmap_offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xen_mmap_flags: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domid: Option<u32>,
}

impl Region {
    fn decode(b: &[u8], at: usize, xen: bool) -> Option<Region> {
        Some(Region {
            guest_address: u64_at(b, at)?,
            size: u64_at(b, at + 8)?,
            user_address: u64_at(b, at + 16)?,
            mmap_offset: u64_at(b, at + 24)?,
            xen_mmap_flags: if xen { Some(u32_at(b, at + 32)?) } else { None },
            domid: if xen { Some(u32_at(b, at + 36)?) } else { None },
        })
    }
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.guest_address,
            self.size,
            self.user_address,
            self.mmap_offset,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        if let (Some(f), Some(d)) = (self.xen_mmap_flags, self.domid) {
            out.extend_from_slice(&f.to_ne_bytes());
            out.extend_from_slice(&d.to_ne_bytes());
        }
    }
    /// End of the guest range, None when it wraps.
    pub fn guest_end(&self) -> Option<u64> {
        self.guest_address.checked_add(self.size)
    }
    pub fn user_end(&self) -> Option<u64> {
        self.user_address.checked_add(self.size)
    }
}

/// A decoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    Empty,
    U64 {
        value: u64,
    },
    VringState {
        index: u32,
        num: u32,
    },
    VringAddr {
        index: u32,
        flags: u32,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    },
    MemTable {
        regions: Vec<Region>,
    },
    SingleRegion {
        region: Region,
    },
    Log {
        size: u64,
        offset: u64,
    },
    Iotlb {
        iova: u64,
        size: u64,
        user_address: u64,
        permissions: u8,
        iotlb_type: u8,
    },
    Config {
        offset: u32,
        size: u32,
        flags: u32,
        #[serde(with = "hex_bytes")]
        data: Vec<u8>,
    },
    CryptoSession {
        #[serde(with = "hex_bytes")]
        raw: Vec<u8>,
    },
    VringArea {
        index_flags: u64,
        size: u64,
        offset: u64,
    },
    Inflight {
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    },
    SharedObject {
        #[serde(with = "hex_bytes")]
        uuid: Vec<u8>,
    },
    DeviceState {
        direction: u32,
        phase: u32,
    },
    ShmemMap {
        shmid: u8,
        fd_offset: u64,
        shm_offset: u64,
        len: u64,
        flags: u64,
    },
    ShmemConfig {
        nregions: u32,
        sizes: Vec<u64>,
    },
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::super::transcript::to_hex(b))
    }
}

/// Why a payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The message type defines `expected` bytes; `got` arrived.
    Size { expected: usize, got: usize },
    /// A count or size field is beyond what the spec allows.
    TooLarge {
        what: &'static str,
        value: u64,
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

/// Decodes `bytes` as a payload of `kind`, checking its exact size first.
pub fn decode(kind: PayloadKind, bytes: &[u8], xen: bool) -> Result<Payload, PayloadError> {
    let size_err = |expected: usize| PayloadError::Size {
        expected,
        got: bytes.len(),
    };
    if kind == PayloadKind::MemTable {
        let n = u32_at(bytes, 0).ok_or(size_err(8))?;
        if n > MAX_MEM_TABLE_REGIONS {
            return Err(PayloadError::TooLarge {
                what: "nregions",
                value: n as u64,
                max: MAX_MEM_TABLE_REGIONS as u64,
            });
        }
    }
    if kind == PayloadKind::Config {
        let size = u32_at(bytes, 4).ok_or(size_err(12))?;
        if size > MAX_CONFIG_SIZE {
            return Err(PayloadError::TooLarge {
                what: "config size",
                value: size as u64,
                max: MAX_CONFIG_SIZE as u64,
            });
        }
    }
    if kind == PayloadKind::Iotlb && bytes.len() == IOTLB_FIELDS_SIZE {
        // The packed 26-byte form: fields only, no tail padding.
    } else if let Some(expected) = expected_size(kind, bytes, xen) {
        if bytes.len() != expected {
            return Err(size_err(expected));
        }
    }
    // Sizes are checked; the accessors below cannot fail, but stay total.
    let e = || size_err(bytes.len());
    let u64f = |at| u64_at(bytes, at).ok_or_else(e);
    let u32f = |at| u32_at(bytes, at).ok_or_else(e);
    Ok(match kind {
        PayloadKind::Empty => Payload::Empty,
        PayloadKind::U64 => Payload::U64 { value: u64f(0)? },
        PayloadKind::VringState => Payload::VringState {
            index: u32f(0)?,
            num: u32f(4)?,
        },
        PayloadKind::VringAddr => Payload::VringAddr {
            index: u32f(0)?,
            flags: u32f(4)?,
            descriptor: u64f(8)?,
            used: u64f(16)?,
            available: u64f(24)?,
            log: u64f(32)?,
        },
        PayloadKind::MemTable => {
            let n = u32f(0)? as usize;
            let size = if xen { 40 } else { 32 };
            let regions = (0..n)
                .map(|i| Region::decode(bytes, 8 + i * size, xen).ok_or_else(e))
                .collect::<Result<_, _>>()?;
            Payload::MemTable { regions }
        }
        PayloadKind::SingleRegion => Payload::SingleRegion {
            region: Region::decode(bytes, 8, xen).ok_or_else(e)?,
        },
        PayloadKind::Log => Payload::Log {
            size: u64f(0)?,
            offset: u64f(8)?,
        },
        PayloadKind::Iotlb => Payload::Iotlb {
            iova: u64f(0)?,
            size: u64f(8)?,
            user_address: u64f(16)?,
            permissions: bytes.get(24).copied().ok_or_else(e)?,
            iotlb_type: bytes.get(25).copied().ok_or_else(e)?,
        },
        PayloadKind::Config => Payload::Config {
            offset: u32f(0)?,
            size: u32f(4)?,
            flags: u32f(8)?,
            data: bytes.get(12..).unwrap_or(&[]).to_vec(),
        },
        PayloadKind::CryptoSession => Payload::CryptoSession {
            raw: bytes.to_vec(),
        },
        PayloadKind::VringArea => Payload::VringArea {
            index_flags: u64f(0)?,
            size: u64f(8)?,
            offset: u64f(16)?,
        },
        PayloadKind::Inflight => Payload::Inflight {
            mmap_size: u64f(0)?,
            mmap_offset: u64f(8)?,
            num_queues: u16_at(bytes, 16).ok_or_else(e)?,
            queue_size: u16_at(bytes, 18).ok_or_else(e)?,
        },
        PayloadKind::SharedObject => Payload::SharedObject {
            uuid: bytes.to_vec(),
        },
        PayloadKind::DeviceState => Payload::DeviceState {
            direction: u32f(0)?,
            phase: u32f(4)?,
        },
        PayloadKind::ShmemMap => Payload::ShmemMap {
            shmid: bytes.first().copied().ok_or_else(e)?,
            fd_offset: u64f(8)?,
            shm_offset: u64f(16)?,
            len: u64f(24)?,
            flags: u64f(32)?,
        },
        PayloadKind::ShmemConfig => Payload::ShmemConfig {
            nregions: u32f(0)?,
            sizes: (0..256)
                .map(|i| u64f(8 + 8 * i))
                .collect::<Result<_, _>>()?,
        },
    })
}

/// Encodes a payload in the layout `decode` reads.
pub fn encode(p: &Payload) -> Vec<u8> {
    let mut out = Vec::new();
    let put64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_ne_bytes());
    match p {
        Payload::Empty => {}
        Payload::U64 { value } => put64(&mut out, *value),
        Payload::VringState { index, num } => {
            out.extend_from_slice(&index.to_ne_bytes());
            out.extend_from_slice(&num.to_ne_bytes());
        }
        Payload::VringAddr {
            index,
            flags,
            descriptor,
            used,
            available,
            log,
        } => {
            out.extend_from_slice(&index.to_ne_bytes());
            out.extend_from_slice(&flags.to_ne_bytes());
            for v in [*descriptor, *used, *available, *log] {
                put64(&mut out, v);
            }
        }
        Payload::MemTable { regions } => {
            out.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            for r in regions {
                r.encode(&mut out);
            }
        }
        Payload::SingleRegion { region } => {
            put64(&mut out, 0);
            region.encode(&mut out);
        }
        Payload::Log { size, offset } => {
            put64(&mut out, *size);
            put64(&mut out, *offset);
        }
        Payload::Iotlb {
            iova,
            size,
            user_address,
            permissions,
            iotlb_type,
        } => {
            for v in [*iova, *size, *user_address] {
                put64(&mut out, v);
            }
            out.push(*permissions);
            out.push(*iotlb_type);
            out.resize(IOTLB_SIZE, 0);
        }
        Payload::Config {
            offset,
            size,
            flags,
            data,
        } => {
            for v in [*offset, *size, *flags] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            out.extend_from_slice(data);
        }
        Payload::CryptoSession { raw } => out.extend_from_slice(raw),
        Payload::VringArea {
            index_flags,
            size,
            offset,
        } => {
            for v in [*index_flags, *size, *offset] {
                put64(&mut out, v);
            }
        }
        Payload::Inflight {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        } => {
            put64(&mut out, *mmap_size);
            put64(&mut out, *mmap_offset);
            out.extend_from_slice(&num_queues.to_ne_bytes());
            out.extend_from_slice(&queue_size.to_ne_bytes());
            out.resize(24, 0);
        }
        Payload::SharedObject { uuid } => out.extend_from_slice(uuid),
        Payload::DeviceState { direction, phase } => {
            out.extend_from_slice(&direction.to_ne_bytes());
            out.extend_from_slice(&phase.to_ne_bytes());
        }
        Payload::ShmemMap {
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags,
        } => {
            out.push(*shmid);
            out.resize(8, 0);
            for v in [*fd_offset, *shm_offset, *len, *flags] {
                put64(&mut out, v);
            }
        }
        Payload::ShmemConfig { nregions, sizes } => {
            out.extend_from_slice(&nregions.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            for i in 0..256 {
                put64(&mut out, sizes.get(i).copied().unwrap_or(0));
            }
        }
    }
    out
}

impl Payload {
    /// The ring a ring request names: the index of a vring state or
    /// address, or bits 0-7 of a vring fd payload.
    pub fn ring_index(&self) -> Option<u32> {
        match self {
            Payload::VringState { index, .. } | Payload::VringAddr { index, .. } => Some(*index),
            Payload::U64 { value } => Some(vring_fd_index(*value).0),
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
                Payload::U64 {
                    value: 0x1_7500_7e46,
                },
                8,
            ),
            (
                PayloadKind::VringState,
                Payload::VringState { index: 1, num: 256 },
                8,
            ),
            (
                PayloadKind::VringAddr,
                Payload::VringAddr {
                    index: 0,
                    flags: 0,
                    descriptor: 1,
                    used: 2,
                    available: 3,
                    log: 4,
                },
                40,
            ),
            (
                PayloadKind::MemTable,
                Payload::MemTable {
                    regions: vec![region, region],
                },
                8 + 64,
            ),
            (
                PayloadKind::SingleRegion,
                Payload::SingleRegion { region },
                40,
            ),
            (
                PayloadKind::Log,
                Payload::Log {
                    size: 4096,
                    offset: 0,
                },
                16,
            ),
            (
                PayloadKind::Iotlb,
                Payload::Iotlb {
                    iova: 1,
                    size: 2,
                    user_address: 3,
                    permissions: 3,
                    iotlb_type: 2,
                },
                32,
            ),
            (
                PayloadKind::Config,
                Payload::Config {
                    offset: 0,
                    size: 4,
                    flags: 0,
                    data: vec![1, 2, 3, 4],
                },
                16,
            ),
            (
                PayloadKind::VringArea,
                Payload::VringArea {
                    index_flags: 0x101,
                    size: 4096,
                    offset: 0,
                },
                24,
            ),
            (
                PayloadKind::Inflight,
                Payload::Inflight {
                    mmap_size: 4096,
                    mmap_offset: 0,
                    num_queues: 2,
                    queue_size: 128,
                },
                24,
            ),
            (
                PayloadKind::SharedObject,
                Payload::SharedObject { uuid: vec![7; 16] },
                16,
            ),
            (
                PayloadKind::DeviceState,
                Payload::DeviceState {
                    direction: 0,
                    phase: 0,
                },
                8,
            ),
            (
                PayloadKind::ShmemMap,
                Payload::ShmemMap {
                    shmid: 1,
                    fd_offset: 0,
                    shm_offset: 4096,
                    len: 8192,
                    flags: 1,
                },
                40,
            ),
            (
                PayloadKind::ShmemConfig,
                Payload::ShmemConfig {
                    nregions: 1,
                    sizes: {
                        let mut v = vec![0; 256];
                        v[0] = 1 << 20;
                        v
                    },
                },
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
