//! L1 and L2 entries (spec sections "Cluster mapping", "Extended L2 Entries").

use super::header::Header;

/// L1 entry bits 9-55: offset of the L2 table (spec "Cluster mapping").
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry bits 0-8 and 56-62: reserved, must be 0.
pub const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Standard L2 entry bits 9-55: host cluster offset.
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Standard L2 entry bits 1-8 and 56-61: reserved, must be 0.
pub const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Bit 63 of L1 and L2 entries (COPIED): refcount exactly 1.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// L2 entry bit 62: a compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Standard L2 entry bit 0: the cluster reads as zeros.
pub const OFLAG_ZERO: u64 = 1;
/// Subcluster bitmap: bits 0-31 allocated, 32-63 reads as zero.
pub const L2_BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
/// Compressed data is counted in 512-byte sectors.
pub const COMPRESSED_SECTOR: u64 = 512;

/// What an L2 entry describes (the spec's cases, as QEMU classifies them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// No host offset: reads from the backing file or as zeros.
    Unallocated,
    /// Zero flag, no host offset.
    ZeroPlain,
    /// Zero flag with a preallocated host cluster.
    ZeroAlloc,
    /// A standard data cluster.
    Normal,
    /// A compressed cluster.
    Compressed,
}

/// Classifies an L2 entry. With Extended L2 Entries bit 0 is unused (the
/// subcluster bitmap says what reads as zero). A host offset of 0 is
/// "unallocated" unless an external data file is used and bit 63 is set
/// (host cluster 0 of the data file).
pub fn classify(h: &Header, entry: u64) -> ClusterKind {
    if entry & OFLAG_COMPRESSED != 0 {
        ClusterKind::Compressed
    } else if entry & OFLAG_ZERO != 0 && !h.extended_l2() {
        if entry & L2E_OFFSET_MASK != 0 {
            ClusterKind::ZeroAlloc
        } else {
            ClusterKind::ZeroPlain
        }
    } else if entry & L2E_OFFSET_MASK == 0 {
        if h.has_data_file() && entry & OFLAG_COPIED != 0 {
            ClusterKind::Normal
        } else {
            ClusterKind::Unallocated
        }
    } else {
        ClusterKind::Normal
    }
}

/// Where a compressed cluster's data lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedRange {
    /// Host byte offset where the compressed data starts.
    pub offset: u64,
    /// Bytes from `offset` to the end of the last sector the descriptor names.
    pub len: u64,
}

/// Decodes a compressed cluster descriptor (x = 62 - (cluster_bits - 8)).
pub fn compressed_range(h: &Header, entry: u64) -> CompressedRange {
    let shift = 62 - (h.cluster_bits - 8);
    let offset = entry & ((1u64 << shift) - 1);
    let sectors_mask = (1u64 << (h.cluster_bits - 8)) - 1;
    let sectors = ((entry >> shift) & sectors_mask) + 1;
    CompressedRange {
        offset,
        len: sectors * COMPRESSED_SECTOR - (offset & (COMPRESSED_SECTOR - 1)),
    }
}

/// Bits of the compressed host offset above bit 55, which must be zero.
pub fn compressed_offset_high_bits(h: &Header, entry: u64) -> u64 {
    let shift = 62 - (h.cluster_bits - 8);
    entry & ((1u64 << shift) - 1) & !((1u64 << 56) - 1)
}

/// Reads entry `i` (and its subcluster bitmap with Extended L2 Entries) out
/// of an L2 table buffer of one cluster.
pub fn l2_entry(h: &Header, table: &[u8], i: usize) -> (u64, u64) {
    use crate::source::be_u64;
    if h.extended_l2() {
        (be_u64(table, i * 16), be_u64(table, i * 16 + 8))
    } else {
        (be_u64(table, i * 8), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cluster_bits: u32, incompat: u64) -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 8,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: incompat,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 0,
        }
    }

    #[test]
    fn compressed_descriptor_split_follows_the_spec_formula() {
        // 64 KiB clusters: x = 62 - 8 = 54 offset bits, 8 bits of extra sectors.
        let h = header(16, 0);
        let entry = OFLAG_COMPRESSED | (3u64 << 54) | 0x1_0200;
        let r = compressed_range(&h, entry);
        assert_eq!(r.offset, 0x1_0200);
        // 1 + 3 sectors starting at the sector of 0x10200 (which is sector aligned).
        assert_eq!(r.len, 4 * 512);
        let unaligned = compressed_range(&h, OFLAG_COMPRESSED | 0x1_0210);
        assert_eq!(unaligned.len, 512 - 0x10);
    }

    #[test]
    fn classification_matches_the_spec_cases() {
        let h = header(16, 0);
        assert_eq!(classify(&h, 0), ClusterKind::Unallocated);
        assert_eq!(classify(&h, OFLAG_ZERO), ClusterKind::ZeroPlain);
        assert_eq!(classify(&h, 0x10000 | OFLAG_ZERO), ClusterKind::ZeroAlloc);
        assert_eq!(classify(&h, 0x10000 | OFLAG_COPIED), ClusterKind::Normal);
        // Offset 0 with COPIED is host cluster 0 only with an external data file.
        assert_eq!(classify(&h, OFLAG_COPIED), ClusterKind::Unallocated);
        let df = header(16, super::super::header::INCOMPAT_DATA_FILE);
        assert_eq!(classify(&df, OFLAG_COPIED), ClusterKind::Normal);
        // With extended L2 entries bit 0 is not the zero flag.
        let ext = header(16, super::super::header::INCOMPAT_EXTL2);
        assert_eq!(classify(&ext, OFLAG_ZERO), ClusterKind::Unallocated);
    }
}
