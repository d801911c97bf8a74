//! Reference counts (spec section "Host cluster management"): the on-disk
//! refcount table and blocks, and the census of references the checker
//! rebuilds from every structure that owns a cluster.

use super::header::Header;
use crate::report::Report;
use crate::rules::qcow2 as rule;
use crate::source::ReadAt;
use std::collections::HashMap;

pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
pub const REFT_RESERVED_MASK: u64 = 0x1ff;

/// Decodes refcount `index` of a refcount block (big-endian; sub-byte widths
/// start at the least significant bit, as the spec says).
pub fn decode(block: &[u8], index: u64, order: u32) -> u64 {
    let i = index as usize;
    let byte = |at: usize| block.get(at).copied().unwrap_or(0) as u64;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            (byte(i / per_byte) >> (bits * (i % per_byte))) & ((1 << bits) - 1)
        }
        3 => byte(i),
        _ => {
            let width = 1usize << (order - 3);
            let start = i * width;
            (0..width).fold(0u64, |acc, k| (acc << 8) | byte(start + k))
        }
    }
}

/// Why a refcount could not be looked up (QEMU reports these as check
/// errors): its block offset is unaligned or beyond any file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnalignedBlock {
    pub table_index: u64,
    pub block_offset: u64,
}

/// The refcounts as the image stores them.
pub struct OnDisk<'a> {
    src: &'a dyn ReadAt,
    cluster_bits: u32,
    pub order: u32,
    /// The refcount table, as far as it lies inside the file: QEMU reads the
    /// part past the end as zeros (no refcount block), and so do we, without
    /// allocating it.
    pub table: Vec<u64>,
    /// Entries the header claims.
    pub table_entries: u64,
}

impl<'a> OnDisk<'a> {
    /// Loads the refcount table (already validated to be at most 8 MiB).
    pub fn load(src: &'a dyn ReadAt, h: &Header) -> crate::Result<Self> {
        let claimed = h.refcount_table_clusters as u64 * h.cluster_size() / 8;
        let table = crate::source::read_u64_table(src, h.refcount_table_offset, claimed);
        Ok(OnDisk {
            src,
            cluster_bits: h.cluster_bits,
            order: h.refcount_order,
            table,
            table_entries: claimed,
        })
    }

    /// Refcounts one refcount block holds.
    pub fn entries_per_block(&self) -> u64 {
        (8u64 << self.cluster_bits) >> self.order
    }

    /// Raw refcount table entry `t` (0 past the part inside the file).
    pub fn entry(&self, t: u64) -> u64 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.table.get(t))
            .copied()
            .unwrap_or(0)
    }

    /// Offset of the refcount block for table index `t`, 0 when none; an
    /// unaligned offset makes every refcount of that block unreadable.
    pub fn block_offset(&self, t: u64) -> Result<u64, UnalignedBlock> {
        let off = self.entry(t) & REFT_OFFSET_MASK;
        // A block past the largest file offset (i64::MAX) cannot be read at
        // all; QEMU reports every refcount in it as an I/O error.
        let unreachable = off
            .checked_add(1 << self.cluster_bits)
            .is_none_or(|end| end > i64::MAX as u64);
        if off & ((1 << self.cluster_bits) - 1) != 0 || (off != 0 && unreachable) {
            return Err(UnalignedBlock {
                table_index: t,
                block_offset: off,
            });
        }
        Ok(off)
    }

    /// Looks up one refcount by reading just the bytes that hold it.
    pub fn get(&self, cluster: u64) -> Result<u64, UnalignedBlock> {
        let epb = self.entries_per_block();
        let t = cluster / epb;
        if t >= self.table_entries {
            return Ok(0);
        }
        let block = self.block_offset(t)?;
        if block == 0 {
            return Ok(0);
        }
        let index = cluster % epb;
        let bit = index << self.order;
        let width = ((1u64 << self.order) + 7) / 8;
        let mut buf = [0u8; 8];
        let slot = &mut buf[..width as usize];
        // Past the end of the file a block reads as zeros, as in QEMU.
        if self
            .src
            .read_zero_padded(slot, block.saturating_add(bit / 8))
            .is_err()
        {
            return Ok(0);
        }
        let index_in_slot = if self.order < 3 {
            (bit % 8) >> self.order
        } else {
            0
        };
        Ok(decode(slot, index_in_slot, self.order))
    }

    /// Reads refcount block `t` into `buf` (one cluster), zero-padded.
    pub fn read_block(&self, block_offset: u64, buf: &mut [u8]) {
        if self.src.read_zero_padded(buf, block_offset).is_err() {
            buf.fill(0);
        }
    }
}

/// Kinds of structure that own clusters, as bits, to detect one cluster
/// owned by two different kinds.
pub mod owner {
    pub const HEADER: u8 = 1 << 0;
    pub const L1: u8 = 1 << 1;
    pub const L2: u8 = 1 << 2;
    pub const REFCOUNT: u8 = 1 << 3;
    pub const SNAPSHOT_TABLE: u8 = 1 << 4;
    pub const BITMAP: u8 = 1 << 5;
    pub const DATA: u8 = 1 << 6;
    pub const COMPRESSED: u8 = 1 << 7;

    pub fn names(bits: u8) -> String {
        const NAMES: [&str; 8] = [
            "header",
            "L1 table",
            "L2 table",
            "refcount structure",
            "snapshot table",
            "bitmap",
            "data",
            "compressed data",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// The rebuilt reference count of every host cluster of the file.
///
/// One byte per cluster of the file (saturating; larger counts spill into a
/// map) plus one byte of owner kinds: memory is proportional to
/// file length / cluster size, never to the virtual size.
pub struct Census {
    counts: Vec<u8>,
    spill: HashMap<u64, u64>,
    owners: Vec<u8>,
    cluster_bits: u32,
    file_len: u64,
    refcount_max: u64,
    /// Clusters covered: those of the file, plus one partly allocated
    /// cluster past its end if something references it.
    pub nb_clusters: u64,
}

impl Census {
    pub fn new(h: &Header, file_len: u64) -> Self {
        let nb = file_len.div_ceil(h.cluster_size());
        // One spare slot: a reference may end up to one cluster past EOF.
        let slots = nb as usize + 1;
        Census {
            counts: vec![0; slots],
            spill: HashMap::new(),
            owners: vec![0; slots],
            cluster_bits: h.cluster_bits,
            file_len,
            refcount_max: if h.refcount_order >= 6 {
                u64::MAX
            } else {
                (1u64 << h.refcount_bits()) - 1
            },
            nb_clusters: nb,
        }
    }

    pub fn get(&self, k: u64) -> u64 {
        match self.counts.get(k as usize) {
            Some(&c) if c < u8::MAX => c as u64,
            Some(_) => self.spill.get(&k).copied().unwrap_or(u8::MAX as u64),
            None => 0,
        }
    }

    /// Largest refcount the image's refcount width can hold.
    pub fn refcount_max(&self) -> u64 {
        self.refcount_max
    }

    pub fn owners(&self, k: u64) -> u8 {
        self.owners.get(k as usize).copied().unwrap_or(0)
    }

    /// Adds `times` references to cluster `k`; returns how many of them
    /// would overflow refcount_bits (those are not added).
    fn add(&mut self, k: u64, times: u64) -> u64 {
        let Some(slot) = self.counts.get_mut(k as usize) else {
            return 0;
        };
        let old = if *slot < u8::MAX {
            *slot as u64
        } else {
            self.spill.get(&k).copied().unwrap_or(u8::MAX as u64)
        };
        let room = self.refcount_max - old;
        let added = times.min(room);
        let new = old + added;
        if new < u8::MAX as u64 {
            *slot = new as u8;
        } else {
            *slot = u8::MAX;
            self.spill.insert(k, new);
        }
        times - added
    }

    /// Counts one reference to the cluster at `offset` (one cluster long).
    /// The common case of a check, kept branch-light: an aligned cluster
    /// inside the file whose count is small.
    #[inline]
    pub fn reference_cluster(&mut self, report: &mut Report, offset: u64, owner: u8, what: &str) {
        let cs = 1u64 << self.cluster_bits;
        let k = (offset >> self.cluster_bits) as usize;
        if offset & (cs - 1) == 0 && k + 1 < self.counts.len() {
            // `k + 1 < len` keeps the spare slot out: k lies inside the file.
            let c = self.counts[k];
            if c < u8::MAX - 1 && (c as u64) < self.refcount_max {
                self.counts[k] = c + 1;
                self.owners[k] |= owner;
                return;
            }
        }
        self.reference(report, offset, cs, 1, owner, what);
    }

    /// Counts `times` references to the byte range `offset..offset+len`, as
    /// QEMU's qcow2_inc_refcounts_imrt does: a range ending a cluster or
    /// more past the end of the file is a corruption and is not counted.
    pub fn reference(
        &mut self,
        report: &mut Report,
        offset: u64,
        len: u64,
        times: u64,
        owner: u8,
        what: &str,
    ) {
        if len == 0 || times == 0 {
            return;
        }
        let cs = 1u64 << self.cluster_bits;
        let end = offset as u128 + len as u128;
        if end >= self.file_len as u128 + cs as u128 {
            report.add_times(
                &rule::REFERENCE_PAST_EOF,
                Some(offset),
                times,
                format!(
                    "{what} at {offset:#x} ({len} bytes) lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            );
            return;
        }
        let first = offset >> self.cluster_bits;
        let last = ((end - 1) >> self.cluster_bits) as u64;
        for k in first..=last {
            let over = self.add(k, times);
            if over > 0 {
                report.add_times(
                    &rule::REFCOUNT_OVERFLOW,
                    Some(k << self.cluster_bits),
                    over,
                    format!(
                        "cluster {k} is referenced more often than refcount_max {} allows",
                        self.refcount_max
                    ),
                );
            }
            if let Some(o) = self.owners.get_mut(k as usize) {
                *o |= owner;
            }
            if k >= self.nb_clusters {
                self.nb_clusters = k + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_refcounts_start_at_the_least_significant_bit() {
        // order 0: one bit each; byte 0b0000_0101 -> clusters 0 and 2 have refcount 1.
        let block = [0b0000_0101u8, 0x80];
        assert_eq!(decode(&block, 0, 0), 1);
        assert_eq!(decode(&block, 1, 0), 0);
        assert_eq!(decode(&block, 2, 0), 1);
        assert_eq!(decode(&block, 15, 0), 1);
        // order 2: nibbles, low nibble first.
        assert_eq!(decode(&[0x3a], 0, 2), 0xa);
        assert_eq!(decode(&[0x3a], 1, 2), 0x3);
        // order 4: big-endian 16-bit.
        assert_eq!(decode(&[0x01, 0x02, 0x00, 0x07], 1, 4), 7);
        assert_eq!(decode(&[0x01, 0x02], 0, 4), 0x0102);
        // order 6: big-endian 64-bit.
        assert_eq!(decode(&u64::MAX.to_be_bytes(), 0, 6), u64::MAX);
        // Out of range reads as zero instead of panicking.
        assert_eq!(decode(&[1], 100, 6), 0);
    }
}
