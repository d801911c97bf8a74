//! Split virtqueues (virtio 1.2 §2.7) from the driver's side: a layout of
//! the three parts at aligned guest addresses, descriptor chains posted to
//! the available ring, and used-ring entries read back.
//!
//! Everything the device writes (the used ring) is untrusted: an id that
//! names no chain we posted, a length past the chain's writable buffers, or
//! a used index that moves by more than what is outstanding is a
//! [`UsedFault`], never a panic, and one poll reads at most `size` entries
//! whatever the index claims.
//!
//! [`device`] is the other side (a device popping chains off the available
//! ring), for tests and for fake back-ends that break one rule on purpose.

use std::collections::BTreeMap;

/// Guest memory addressed by guest physical address. The vhost-user probe
/// implements it over the memfd it shares with the back-end (pread/pwrite
/// reach the same pages the back-end maps), tests over a byte vector.
pub trait GuestMemory {
    /// Fills `buf` from guest address `gpa`.
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes `data` at guest address `gpa`.
    fn write_at(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;
}

/// An access outside guest memory, or an I/O error of the memory's backing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryError {
    /// Where the access started.
    pub gpa: u64,
    /// How many bytes it wanted.
    pub len: usize,
    /// Why it failed.
    pub why: String,
}

impl std::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes at guest address {:#x}: {}",
            self.len, self.gpa, self.why
        )
    }
}

/// Guest memory held in a vector, starting at guest address `base`.
#[derive(Debug, Clone)]
pub struct VecMemory {
    /// Guest address of `bytes[0]`.
    pub base: u64,
    /// The memory.
    pub bytes: Vec<u8>,
}

impl VecMemory {
    /// `len` zero bytes at guest address `base`.
    pub fn new(base: u64, len: usize) -> VecMemory {
        VecMemory {
            base,
            bytes: vec![0; len],
        }
    }

    fn range(&self, gpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let start = gpa
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok());
        match start.and_then(|s| Some(s..s.checked_add(len)?)) {
            Some(r) if r.end <= self.bytes.len() => Ok(r),
            _ => Err(MemoryError {
                gpa,
                len,
                why: "outside guest memory".into(),
            }),
        }
    }
}

impl GuestMemory for VecMemory {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write_at(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

/// "VIRTQ_DESC_F_NEXT: This marks a buffer as continuing via the next field." (§2.7.5)
pub const DESC_F_NEXT: u16 = 1;
/// "VIRTQ_DESC_F_WRITE: This marks a buffer as device write-only (otherwise device read-only)." (§2.7.5)
pub const DESC_F_WRITE: u16 = 2;
/// "VIRTQ_DESC_F_INDIRECT: This means the buffer contains a list of buffer descriptors." (§2.7.5.3)
pub const DESC_F_INDIRECT: u16 = 4;
/// Available-ring flag asking the device not to interrupt (§2.7.6).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// "The maximum Queue Size value is 32768." (§2.7)
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Bytes of one descriptor (§2.7.5: le64 addr, le32 len, le16 flags, le16 next).
pub const DESC_SIZE: u64 = 16;

/// One descriptor-table entry (§2.7.5), little-endian in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer.
    pub len: u32,
    /// DESC_F_* bits.
    pub flags: u16,
    /// The next descriptor of the chain, if DESC_F_NEXT.
    pub next: u16,
}

impl Descriptor {
    /// The 16 bytes of the entry.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// The entry of 16 bytes.
    pub fn decode(b: &[u8; 16]) -> Descriptor {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = *b;
        Descriptor {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }
}

/// Where the three parts of one split virtqueue lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Queue size (a power of 2, at most [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// Descriptor table: 16 × size bytes, 16-aligned.
    pub desc: u64,
    /// Available ring: flags, idx, ring\[size\], used_event; 2-aligned.
    pub avail: u64,
    /// Used ring: flags, idx, ring\[size\] of (id, len), avail_event; 4-aligned.
    pub used: u64,
}

/// Why a layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// "Queue Size value is always a power of 2" (§2.7), and at most 32768.
    BadSize(u32),
    /// The layout would run past the end of the address space.
    Overflow,
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::BadSize(s) => write!(f, "queue size {s} is not a power of 2 up to 32768"),
            LayoutError::Overflow => write!(f, "the ring does not fit below 2^64"),
        }
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

impl Layout {
    /// The three parts one after the other from `base`, each at the
    /// alignment §2.7 gives it (descriptor table 16, available ring 2, used
    /// ring 4).
    pub fn new(base: u64, size: u32) -> Result<Layout, LayoutError> {
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE as u32 {
            return Err(LayoutError::BadSize(size));
        }
        let n = size as u64;
        let desc = align_up(base, 16).ok_or(LayoutError::Overflow)?;
        let avail = desc
            .checked_add(DESC_SIZE * n)
            .ok_or(LayoutError::Overflow)?;
        let used = avail
            .checked_add(6 + 2 * n)
            .and_then(|e| align_up(e, 4))
            .ok_or(LayoutError::Overflow)?;
        let layout = Layout {
            size: size as u16,
            desc,
            avail,
            used,
        };
        layout.end().ok_or(LayoutError::Overflow)?;
        Ok(layout)
    }

    /// The first guest address past the used ring.
    pub fn end(&self) -> Option<u64> {
        self.used.checked_add(6 + 8 * self.size as u64)
    }

    /// Guest address of descriptor `i` (taken modulo the size).
    pub fn desc_at(&self, i: u16) -> u64 {
        self.desc + DESC_SIZE * (i % self.size) as u64
    }

    /// Guest address of available-ring slot `slot` (modulo the size).
    pub fn avail_slot(&self, slot: u16) -> u64 {
        self.avail + 4 + 2 * (slot % self.size) as u64
    }

    /// Guest address of used-ring element `slot` (modulo the size).
    pub fn used_slot(&self, slot: u16) -> u64 {
        self.used + 4 + 8 * (slot % self.size) as u64
    }

    /// Guest address of the avail ring's `used_event` (VIRTIO_F_EVENT_IDX).
    pub fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * self.size as u64
    }

    /// Guest address of the used ring's `avail_event` (VIRTIO_F_EVENT_IDX).
    pub fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * self.size as u64
    }
}

/// One buffer of a chain, as the driver offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device write-only (else device read-only).
    pub writable: bool,
}

/// A chain we posted and the device has not returned yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Ring descriptors it holds (the head first).
    pub descriptors: Vec<u16>,
    /// The buffers, in order.
    pub buffers: Vec<Buffer>,
}

impl Chain {
    /// Total bytes of the device-writable buffers: the most a used length
    /// may say was written.
    pub fn writable(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.writable)
            .map(|b| b.len as u64)
            .sum()
    }
}

/// A chain the device returned, with the length it says it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index (the used element's id).
    pub head: u16,
    /// The used element's len.
    pub len: u32,
    /// What we had posted under that head.
    pub chain: Chain,
}

/// Something the device wrote into the used ring that the spec forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsedFault {
    /// used.idx moved by more than the chains outstanding: "idx field
    /// indicates where the device would put the next descriptor entry in
    /// the ring" (§2.7.8), so it can only count chains it was given.
    IndexJump {
        /// The used index we had read up to.
        from: u16,
        /// The used index the device wrote.
        to: u16,
        /// Chains outstanding before this poll.
        outstanding: usize,
    },
    /// A used element whose id is not the head of an outstanding chain:
    /// "id indicates the head entry of the descriptor chain describing the
    /// buffer" (§2.7.8).
    NotPosted {
        /// Used index of the element.
        at: u16,
        /// The id it holds.
        id: u32,
        /// The len it holds.
        len: u32,
    },
    /// A used length past the chain's device-writable bytes: "len ... the
    /// total of bytes written into the buffer" (§2.7.8).
    LenPastBuffer {
        /// The chain's head.
        head: u16,
        /// The len the device wrote.
        len: u32,
        /// The chain's writable bytes.
        writable: u64,
    },
}

impl std::fmt::Display for UsedFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsedFault::IndexJump {
                from,
                to,
                outstanding,
            } => write!(
                f,
                "used.idx moved from {from} to {to} ({} entries) with {outstanding} chains outstanding",
                to.wrapping_sub(*from)
            ),
            UsedFault::NotPosted { at, id, len } => write!(
                f,
                "used element {at} names descriptor {id} (len {len}), which heads no chain we posted"
            ),
            UsedFault::LenPastBuffer {
                head,
                len,
                writable,
            } => write!(
                f,
                "used element for chain {head} says {len} bytes were written; its writable buffers hold {writable}"
            ),
        }
    }
}

/// What one poll of the used ring found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsedBatch {
    /// Chains returned, in used-ring order.
    pub completed: Vec<Completion>,
    /// What the device got wrong.
    pub faults: Vec<UsedFault>,
}

/// Why a chain cannot be posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// A chain has at least one buffer.
    Empty,
    /// Not enough free descriptors.
    Full,
    /// More buffers than the queue size: "A driver MUST NOT create a
    /// descriptor chain longer than the Queue Size of the device." (§2.7.5.3.1
    /// counts an indirect table's entries too)
    TooLong,
    /// Guest memory refused the write.
    Memory(MemoryError),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Empty => write!(f, "an empty chain"),
            PostError::Full => write!(f, "no free descriptors"),
            PostError::TooLong => write!(f, "a chain longer than the queue size"),
            PostError::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl From<MemoryError> for PostError {
    fn from(e: MemoryError) -> Self {
        PostError::Memory(e)
    }
}

fn read_u16(mem: &dyn GuestMemory, gpa: u64) -> Result<u16, MemoryError> {
    let mut b = [0u8; 2];
    mem.read_at(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(mem: &dyn GuestMemory, gpa: u64) -> Result<u32, MemoryError> {
    let mut b = [0u8; 4];
    mem.read_at(gpa, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// The driver's view of one split virtqueue.
#[derive(Debug, Clone)]
pub struct SplitRing {
    layout: Layout,
    /// Free descriptor indices (a stack).
    free: Vec<u16>,
    /// Outstanding chains by head.
    outstanding: BTreeMap<u16, Chain>,
    /// The next available index we publish.
    avail_idx: u16,
    /// The used index read up to.
    last_used: u16,
}

impl SplitRing {
    /// A ring at `layout`; call [`SplitRing::init`] before the device sees it.
    pub fn new(layout: Layout) -> SplitRing {
        SplitRing {
            layout,
            free: (0..layout.size).rev().collect(),
            outstanding: BTreeMap::new(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Where the ring lies.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Zeroes the three parts and writes the available ring's flags.
    pub fn init(&mut self, mem: &mut dyn GuestMemory, avail_flags: u16) -> Result<(), MemoryError> {
        let end = self.layout.end().unwrap_or(self.layout.used);
        // Layout::new bounds the whole ring to well under 1 MiB.
        let len = end.saturating_sub(self.layout.desc) as usize;
        mem.write_at(self.layout.desc, &vec![0; len])?;
        mem.write_at(self.layout.avail, &avail_flags.to_le_bytes())
    }

    /// The available index we publish next (the count of chains posted,
    /// modulo 2^16).
    pub fn avail_index(&self) -> u16 {
        self.avail_idx
    }

    /// The used index read up to.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Chains posted and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Writes descriptor `index` of the table as given (robustness probes
    /// build broken chains with it).
    pub fn write_descriptor(
        &self,
        mem: &mut dyn GuestMemory,
        index: u16,
        d: &Descriptor,
    ) -> Result<(), MemoryError> {
        mem.write_at(self.layout.desc_at(index), &d.encode())
    }

    /// Puts `head` into the next available slot and publishes the new
    /// available index: "The driver MUST perform a suitable memory barrier
    /// before the idx update" (§2.7.13.3.1) — two writes to shared memory,
    /// in this order, through the kernel.
    pub fn publish(&mut self, mem: &mut dyn GuestMemory, head: u16) -> Result<(), MemoryError> {
        mem.write_at(self.layout.avail_slot(self.avail_idx), &head.to_le_bytes())?;
        let next = self.avail_idx.wrapping_add(1);
        mem.write_at(self.layout.avail + 2, &next.to_le_bytes())?;
        self.avail_idx = next;
        Ok(())
    }

    /// Sets the available index as given, whatever was posted (the
    /// avail-index-jump probe).
    pub fn force_avail_index(
        &mut self,
        mem: &mut dyn GuestMemory,
        idx: u16,
    ) -> Result<(), MemoryError> {
        mem.write_at(self.layout.avail + 2, &idx.to_le_bytes())?;
        self.avail_idx = idx;
        Ok(())
    }

    /// Posts `buffers` as one chain of ring descriptors and publishes it;
    /// returns the head.
    pub fn post(
        &mut self,
        mem: &mut dyn GuestMemory,
        buffers: &[Buffer],
    ) -> Result<u16, PostError> {
        if buffers.is_empty() {
            return Err(PostError::Empty);
        }
        if buffers.len() > self.free.len() {
            return Err(PostError::Full);
        }
        let split = self.free.len() - buffers.len();
        let mut ids = self.free.split_off(split);
        ids.reverse();
        for (i, (b, &id)) in buffers.iter().zip(&ids).enumerate() {
            let next = ids.get(i + 1).copied();
            let d = Descriptor {
                addr: b.addr,
                len: b.len,
                flags: if b.writable { DESC_F_WRITE } else { 0 }
                    | if next.is_some() { DESC_F_NEXT } else { 0 },
                next: next.unwrap_or(0),
            };
            if let Err(e) = self.write_descriptor(mem, id, &d) {
                ids.reverse();
                self.free.extend(ids);
                return Err(e.into());
            }
        }
        self.finish_post(mem, ids, buffers)
    }

    /// Posts `buffers` as an indirect table (§2.7.5.3) written at `table`
    /// (16 bytes per buffer), behind one ring descriptor; returns the head.
    pub fn post_indirect(
        &mut self,
        mem: &mut dyn GuestMemory,
        table: u64,
        buffers: &[Buffer],
    ) -> Result<u16, PostError> {
        if buffers.is_empty() {
            return Err(PostError::Empty);
        }
        if buffers.len() > self.layout.size as usize {
            return Err(PostError::TooLong);
        }
        let n = buffers.len() as u16;
        for (i, b) in (0..n).zip(buffers) {
            let last = i + 1 == n;
            let d = Descriptor {
                addr: b.addr,
                len: b.len,
                flags: if b.writable { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { i + 1 },
            };
            let at = table
                .checked_add(DESC_SIZE * i as u64)
                .ok_or_else(|| MemoryError {
                    gpa: table,
                    len: 16,
                    why: "indirect table past 2^64".into(),
                })?;
            mem.write_at(at, &d.encode())?;
        }
        let head = self.free.pop().ok_or(PostError::Full)?;
        let d = Descriptor {
            addr: table,
            len: 16 * n as u32,
            flags: DESC_F_INDIRECT,
            next: 0,
        };
        if let Err(e) = self.write_descriptor(mem, head, &d) {
            self.free.push(head);
            return Err(e.into());
        }
        self.finish_post(mem, vec![head], buffers)
    }

    fn finish_post(
        &mut self,
        mem: &mut dyn GuestMemory,
        ids: Vec<u16>,
        buffers: &[Buffer],
    ) -> Result<u16, PostError> {
        let head = ids.first().copied().ok_or(PostError::Empty)?;
        if let Err(e) = self.publish(mem, head) {
            self.free.extend(ids.iter().rev());
            return Err(e.into());
        }
        self.outstanding.insert(
            head,
            Chain {
                descriptors: ids,
                buffers: buffers.to_vec(),
            },
        );
        Ok(head)
    }

    /// The used index as the device last wrote it.
    pub fn used_index(&self, mem: &dyn GuestMemory) -> Result<u16, MemoryError> {
        read_u16(mem, self.layout.used + 2)
    }

    /// Asks for an interrupt once the device has used entry `idx`
    /// (VIRTIO_F_EVENT_IDX, §2.7.10: the device notifies when used.idx
    /// passes used_event).
    pub fn set_used_event(&self, mem: &mut dyn GuestMemory, idx: u16) -> Result<(), MemoryError> {
        mem.write_at(self.layout.used_event(), &idx.to_le_bytes())
    }

    /// Reads the used entries the device added since the last poll: at
    /// most `size` of them, each checked against what we posted.
    pub fn poll_used(&mut self, mem: &dyn GuestMemory) -> Result<UsedBatch, MemoryError> {
        let to = self.used_index(mem)?;
        let from = self.last_used;
        let delta = to.wrapping_sub(from);
        let mut batch = UsedBatch::default();
        if delta as usize > self.outstanding.len() {
            batch.faults.push(UsedFault::IndexJump {
                from,
                to,
                outstanding: self.outstanding.len(),
            });
        }
        // Entries past `size` would overwrite ones not yet read: only the
        // last `size` can be meaningful, and reading more is unbounded work.
        let n = delta.min(self.layout.size);
        for k in 0..n {
            let at = from.wrapping_add(k);
            let slot = self.layout.used_slot(at);
            let id = read_u32(mem, slot)?;
            let len = read_u32(mem, slot + 4)?;
            let chain = u16::try_from(id)
                .ok()
                .and_then(|h| Some((h, self.outstanding.remove(&h)?)));
            match chain {
                Some((head, chain)) => {
                    if len as u64 > chain.writable() {
                        batch.faults.push(UsedFault::LenPastBuffer {
                            head,
                            len,
                            writable: chain.writable(),
                        });
                    }
                    self.free.extend(chain.descriptors.iter().rev());
                    batch.completed.push(Completion { head, len, chain });
                }
                None => batch.faults.push(UsedFault::NotPosted { at, id, len }),
            }
        }
        self.last_used = to;
        Ok(batch)
    }
}

/// The device's side of a split ring: pops chains off the available ring,
/// following indirect tables, with every index and length bounded. Used by
/// tests and fake back-ends; a real back-end is the subject, not this.
pub mod device {
    use super::*;

    /// Why a chain could not be walked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ChainError {
        /// Guest memory refused a read.
        Memory(MemoryError),
        /// More descriptors than the ring (or indirect table) holds: a loop.
        TooLong,
        /// An indirect descriptor inside an indirect table, or a table whose
        /// length is not a multiple of 16 (§2.7.5.3.1).
        BadIndirect,
    }

    impl From<MemoryError> for ChainError {
        fn from(e: MemoryError) -> Self {
            ChainError::Memory(e)
        }
    }

    /// The available index the driver published.
    pub fn avail_index(mem: &dyn GuestMemory, layout: &Layout) -> Result<u16, MemoryError> {
        read_u16(mem, layout.avail + 2)
    }

    /// The head in available slot `idx`.
    pub fn avail_head(
        mem: &dyn GuestMemory,
        layout: &Layout,
        idx: u16,
    ) -> Result<u16, MemoryError> {
        read_u16(mem, layout.avail_slot(idx))
    }

    fn desc(mem: &dyn GuestMemory, gpa: u64) -> Result<Descriptor, MemoryError> {
        let mut b = [0u8; 16];
        mem.read_at(gpa, &mut b)?;
        Ok(Descriptor::decode(&b))
    }

    /// The buffers of the chain headed by `head`, at most `size` ring
    /// descriptors (or table entries) long.
    pub fn walk(
        mem: &dyn GuestMemory,
        layout: &Layout,
        head: u16,
    ) -> Result<Vec<Buffer>, ChainError> {
        let mut out = Vec::new();
        let mut d = desc(mem, layout.desc_at(head))?;
        if d.flags & DESC_F_INDIRECT != 0 {
            if d.len % 16 != 0 || d.len == 0 {
                return Err(ChainError::BadIndirect);
            }
            let n = d.len / 16;
            if n > layout.size as u32 {
                return Err(ChainError::TooLong);
            }
            let table = d.addr;
            let mut i = 0u32;
            loop {
                let e = desc(mem, table.wrapping_add(16 * i as u64))?;
                if e.flags & DESC_F_INDIRECT != 0 {
                    return Err(ChainError::BadIndirect);
                }
                out.push(buffer(&e));
                if out.len() > n as usize {
                    return Err(ChainError::TooLong);
                }
                if e.flags & DESC_F_NEXT == 0 {
                    return Ok(out);
                }
                i = e.next as u32;
                if i >= n {
                    return Err(ChainError::TooLong);
                }
            }
        }
        loop {
            out.push(buffer(&d));
            if out.len() > layout.size as usize {
                return Err(ChainError::TooLong);
            }
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(out);
            }
            d = desc(mem, layout.desc_at(d.next))?;
        }
    }

    fn buffer(d: &Descriptor) -> Buffer {
        Buffer {
            addr: d.addr,
            len: d.len,
            writable: d.flags & DESC_F_WRITE != 0,
        }
    }

    /// Writes used element (`id`, `len`) at used index `idx` and publishes
    /// `idx + 1`.
    pub fn push_used(
        mem: &mut dyn GuestMemory,
        layout: &Layout,
        idx: u16,
        id: u32,
        len: u32,
    ) -> Result<(), MemoryError> {
        let slot = layout.used_slot(idx);
        mem.write_at(slot, &id.to_le_bytes())?;
        mem.write_at(slot + 4, &len.to_le_bytes())?;
        mem.write_at(layout.used + 2, &idx.wrapping_add(1).to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(size: u32) -> (VecMemory, SplitRing) {
        let mut mem = VecMemory::new(0x1000, 1 << 20);
        let layout = Layout::new(0x1001, size).unwrap();
        let mut r = SplitRing::new(layout);
        r.init(&mut mem, 0).unwrap();
        (mem, r)
    }

    #[test]
    fn layout_follows_the_alignments_of_2_7() {
        let l = Layout::new(0x1001, 256).unwrap();
        assert_eq!(l.desc, 0x1010);
        assert_eq!(l.avail, 0x1010 + 16 * 256);
        // 6 + 2 * 256 = 518 bytes of avail ring, then 4-aligned.
        assert_eq!(l.used, (l.avail + 518 + 3) & !3);
        assert_eq!(l.end(), Some(l.used + 6 + 8 * 256));
        assert_eq!(Layout::new(0, 100), Err(LayoutError::BadSize(100)));
        assert_eq!(Layout::new(0, 65536), Err(LayoutError::BadSize(65536)));
        assert_eq!(Layout::new(u64::MAX - 100, 8), Err(LayoutError::Overflow));
    }

    #[test]
    fn descriptor_encoding_is_little_endian() {
        let d = Descriptor {
            addr: 0x0102030405060708,
            len: 0x0a0b0c0d,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: 0x0102,
        };
        let b = d.encode();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[8], 0x0d);
        assert_eq!(&b[12..], &[3, 0, 2, 1]);
        assert_eq!(Descriptor::decode(&b), d);
    }

    #[test]
    fn a_posted_chain_is_what_the_device_walks() {
        let (mut mem, mut r) = ring(8);
        let bufs = [
            Buffer {
                addr: 0x80000,
                len: 16,
                writable: false,
            },
            Buffer {
                addr: 0x81000,
                len: 512,
                writable: true,
            },
            Buffer {
                addr: 0x82000,
                len: 1,
                writable: true,
            },
        ];
        let head = r.post(&mut mem, &bufs).unwrap();
        let l = r.layout();
        assert_eq!(device::avail_index(&mem, &l).unwrap(), 1);
        assert_eq!(device::avail_head(&mem, &l, 0).unwrap(), head);
        assert_eq!(device::walk(&mem, &l, head).unwrap(), bufs.to_vec());
        device::push_used(&mut mem, &l, 0, head as u32, 513).unwrap();
        let b = r.poll_used(&mem).unwrap();
        assert_eq!(b.faults, vec![]);
        assert_eq!(b.completed.len(), 1);
        assert_eq!((b.completed[0].head, b.completed[0].len), (head, 513));
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn an_indirect_chain_is_one_ring_descriptor() {
        let (mut mem, mut r) = ring(4);
        let bufs = [
            Buffer {
                addr: 0x80000,
                len: 16,
                writable: false,
            },
            Buffer {
                addr: 0x81000,
                len: 4096,
                writable: true,
            },
        ];
        let head = r.post_indirect(&mut mem, 0x90000, &bufs).unwrap();
        let l = r.layout();
        let mut raw = [0u8; 16];
        mem.read_at(l.desc_at(head), &mut raw).unwrap();
        let d = Descriptor::decode(&raw);
        assert_eq!((d.flags, d.len, d.addr), (DESC_F_INDIRECT, 32, 0x90000));
        assert_eq!(device::walk(&mem, &l, head).unwrap(), bufs.to_vec());
    }

    #[test]
    fn a_full_ring_refuses_more_chains() {
        let (mut mem, mut r) = ring(2);
        let b = Buffer {
            addr: 0x80000,
            len: 1,
            writable: true,
        };
        r.post(&mut mem, &[b, b]).unwrap();
        assert_eq!(r.post(&mut mem, &[b]), Err(PostError::Full));
        assert_eq!(r.post(&mut mem, &[]), Err(PostError::Empty));
    }

    #[test]
    fn used_faults_are_reported_not_trusted() {
        let (mut mem, mut r) = ring(8);
        let b = Buffer {
            addr: 0x80000,
            len: 8,
            writable: true,
        };
        let head = r.post(&mut mem, &[b]).unwrap();
        let l = r.layout();
        // An id never posted, then the real head with a length past it.
        device::push_used(&mut mem, &l, 0, 7, 0).unwrap();
        device::push_used(&mut mem, &l, 1, head as u32, 9).unwrap();
        let batch = r.poll_used(&mem).unwrap();
        assert_eq!(
            batch.faults,
            vec![
                UsedFault::IndexJump {
                    from: 0,
                    to: 2,
                    outstanding: 1
                },
                UsedFault::NotPosted {
                    at: 0,
                    id: 7,
                    len: 0
                },
                UsedFault::LenPastBuffer {
                    head,
                    len: 9,
                    writable: 8
                },
            ]
        );
        // An index jump of 60000 reads at most `size` entries.
        mem.write_at(l.used + 2, &60002u16.to_le_bytes()).unwrap();
        let batch = r.poll_used(&mem).unwrap();
        assert_eq!(batch.faults.len(), 1 + 8);
        assert_eq!(r.last_used(), 60002);
    }

    #[test]
    fn a_looping_chain_stops_the_walk() {
        let (mut mem, r) = ring(4);
        let l = r.layout();
        for i in 0..4u16 {
            let d = Descriptor {
                addr: 0x80000,
                len: 1,
                flags: DESC_F_NEXT,
                next: (i + 1) % 4,
            };
            r.write_descriptor(&mut mem, i, &d).unwrap();
        }
        assert_eq!(device::walk(&mem, &l, 0), Err(device::ChainError::TooLong));
    }

    #[test]
    fn memory_outside_the_vector_is_an_error() {
        let mut mem = VecMemory::new(0x1000, 16);
        assert!(mem.write_at(0xfff, &[0]).is_err());
        assert!(mem.write_at(0x1000 + 15, &[0, 0]).is_err());
        assert!(mem.read_at(u64::MAX, &mut [0]).is_err());
        assert!(mem.write_at(0x1000 + 15, &[0]).is_ok());
    }
}
