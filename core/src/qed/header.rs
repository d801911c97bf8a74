//! The QED header (spec section "Header").

use crate::report::Report;
use crate::rules::qed as rule;
use crate::source::ReadAt;
use field as f;
use serde::Serialize;

/// magic (spec "Header", bytes 0-3): "QED\0".
pub const MAGIC: [u8; 4] = *b"QED\0";
/// The header's field table (spec "Header"): little endian, offsets from
/// byte 0 of the file; the parser, the writer and the mutators go through it.
pub mod field {
    crate::field::field_table! { Little;
        /// cluster_size (bytes 4-7).
        CLUSTER_SIZE: u32 = "cluster_size" @ 4,
        /// table_size (bytes 8-11).
        TABLE_SIZE: u32 = "table_size" @ 8,
        /// header_size (bytes 12-15).
        HEADER_SIZE: u32 = "header_size" @ 12,
        /// features (bytes 16-23).
        FEATURES: u64 = "features" @ 16,
        /// compat_features (bytes 24-31).
        COMPAT_FEATURES: u64 = "compat_features" @ 24,
        /// autoclear_features (bytes 32-39).
        AUTOCLEAR_FEATURES: u64 = "autoclear_features" @ 32,
        /// l1_table_offset (bytes 40-47).
        L1_TABLE_OFFSET: u64 = "l1_table_offset" @ 40,
        /// image_size (bytes 48-55).
        IMAGE_SIZE: u64 = "image_size" @ 48,
        /// backing_filename_offset (bytes 56-59).
        BACKING_FILENAME_OFFSET: u32 = "backing_filename_offset" @ 56,
        /// backing_filename_size (bytes 60-63).
        BACKING_FILENAME_SIZE: u32 = "backing_filename_size" @ 60,
    }
}
/// Bytes of the header fields read (through backing_filename_size, bytes 0-63).
pub const HEADER_FIELDS: usize = field::BACKING_FILENAME_SIZE.end();
/// QED_F_BACKING_FILE (features bit 0): the image has a backing file.
pub const F_BACKING_FILE: u64 = 0x01;
/// QED_F_NEED_CHECK (features bit 1): the image was not closed cleanly and needs a consistency check.
pub const F_NEED_CHECK: u64 = 0x02;
/// QED_F_BACKING_FORMAT_NO_PROBE (features bit 2): the backing file is raw, not probed.
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 0x04;
/// Every `features` bit the spec defines; [`parse`] refuses others.
pub const F_KNOWN: u64 = 0x07;
/// Data cluster offset 1: a zero cluster.
pub const ZERO_CLUSTER: u64 = 1;

#[derive(Debug, Clone, Serialize)]
/// The image header (spec "Header", little endian), as [`parse`] validates it.
pub struct Header {
    /// cluster_size (bytes 4-7), in bytes; validated: a power of 2 in [4 KiB, 64 MiB].
    pub cluster_size: u32,
    /// table_size (bytes 8-11): L1 and L2 table size in clusters; validated: a power of 2 in [1, 16].
    pub table_size: u32,
    /// header_size (bytes 12-15): header size in clusters; validated: non-zero, and header_size x cluster_size fits a u32.
    pub header_size: u32,
    /// features (bytes 16-23): [`F_KNOWN`] bits; validated: an unknown bit refuses the image.
    pub features: u64,
    /// compat_features (bytes 24-31): the spec defines none; not validated.
    pub compat_features: u64,
    /// autoclear_features (bytes 32-39): the spec defines none; not validated.
    pub autoclear_features: u64,
    /// l1_table_offset (bytes 40-47), in bytes; validated: cluster aligned and past the header.
    pub l1_table_offset: u64,
    /// image_size (bytes 48-55): virtual disk size in bytes; validated: a multiple of 512 the tables can address.
    pub image_size: u64,
    /// backing_filename_offset (bytes 56-59), in bytes; with QED_F_BACKING_FILE the name must lie inside the header.
    pub backing_filename_offset: u32,
    /// backing_filename_size (bytes 60-63), in bytes; validated with the offset.
    pub backing_filename_size: u32,
}

impl Header {
    /// cluster_size as a u64, in bytes.
    pub fn cs(&self) -> u64 {
        self.cluster_size as u64
    }
    /// Entries per table (TABLE_NOFFSETS).
    pub fn table_entries(&self) -> u64 {
        self.table_size as u64 * self.cs() / 8
    }
    /// Bytes of one L1 or L2 table: table_size x cluster_size.
    pub fn table_bytes(&self) -> u64 {
        self.table_size as u64 * self.cs()
    }
    /// Whether a table at `off` is cluster aligned, past the header and
    /// wholly inside the first `file_len` bytes (what QEMU's
    /// qed_check_table_offset accepts); the checker and the repair judge
    /// tables alike through it.
    pub fn table_fits(&self, off: u64, file_len: u64) -> bool {
        off.is_multiple_of(self.cs())
            && off >= self.header_bytes()
            && off
                .checked_add(self.table_bytes())
                .is_some_and(|e| e <= file_len)
    }
    /// Bytes of the header: header_size x cluster_size (where data may start).
    pub fn header_bytes(&self) -> u64 {
        self.header_size as u64 * self.cs()
    }
}

/// The header fields of `b` (the first [`HEADER_FIELDS`] bytes of the
/// file) as they are, before any validation.
pub fn decode(b: &[u8]) -> Header {
    Header {
        cluster_size: f::CLUSTER_SIZE.get(b),
        table_size: f::TABLE_SIZE.get(b),
        header_size: f::HEADER_SIZE.get(b),
        features: f::FEATURES.get(b),
        compat_features: f::COMPAT_FEATURES.get(b),
        autoclear_features: f::AUTOCLEAR_FEATURES.get(b),
        l1_table_offset: f::L1_TABLE_OFFSET.get(b),
        image_size: f::IMAGE_SIZE.get(b),
        backing_filename_offset: f::BACKING_FILENAME_OFFSET.get(b),
        backing_filename_size: f::BACKING_FILENAME_SIZE.get(b),
    }
}

/// Reads and validates the header: what stops QEMU from opening the image
/// stops the check with an error finding.
pub fn parse(src: &dyn ReadAt, report: &mut Report) -> Option<Header> {
    let mut b = [0u8; HEADER_FIELDS];
    if src.read_exact_at(&mut b, 0).is_err() || b[..4] != MAGIC {
        report.add(
            &rule::MAGIC,
            Some(0),
            "not a QED image: the magic \"QED\\0\" is missing (or the header is truncated)",
        );
        return None;
    }
    let h = decode(&b);
    geometry(&h, report)?;
    layout(&h, report)?;
    Some(h)
}

/// cluster_size, table_size and header_size: the sizes every other field is
/// measured in.
fn geometry(h: &Header, report: &mut Report) -> Option<()> {
    if !h.cluster_size.is_power_of_two() || !(1 << 12..=1 << 26).contains(&h.cluster_size) {
        report.add(
            &rule::CLUSTER_SIZE,
            Some(f::CLUSTER_SIZE.pos()),
            format_args!(
                "cluster_size {} is not a power of 2 in [4 KiB, 64 MiB]",
                h.cluster_size
            ),
        );
        return None;
    }
    if !h.table_size.is_power_of_two() || !(1..=16).contains(&h.table_size) {
        report.add(
            &rule::TABLE_SIZE,
            Some(f::TABLE_SIZE.pos()),
            format_args!("table_size {} is not a power of 2 in [1, 16]", h.table_size),
        );
        return None;
    }
    if h.header_size == 0 || h.header_size.checked_mul(h.cluster_size).is_none() {
        report.add(
            &rule::HEADER_SIZE,
            Some(f::HEADER_SIZE.pos()),
            format_args!("header_size {} clusters is invalid", h.header_size),
        );
        return None;
    }
    Some(())
}

/// Features, image_size, the L1 table offset and the backing file name: what
/// QEMU refuses, and NEED_CHECK reported.
fn layout(h: &Header, report: &mut Report) -> Option<()> {
    let unknown = h.features & !F_KNOWN;
    if unknown != 0 {
        report.add(
            &rule::FEATURES,
            Some(f::FEATURES.pos()),
            format_args!("unknown feature bits {unknown:#x}: the image must not be opened"),
        );
        return None;
    }
    let max = (h.table_entries() as u128).pow(2) * h.cs() as u128;
    if !h.image_size.is_multiple_of(512) || h.image_size as u128 > max {
        report.add(
            &rule::IMAGE_SIZE,
            Some(f::IMAGE_SIZE.pos()),
            format_args!(
                "image_size {} is not a multiple of 512 or exceeds {max}",
                h.image_size
            ),
        );
        return None;
    }
    if !h.l1_table_offset.is_multiple_of(h.cs()) || h.l1_table_offset < h.header_bytes() {
        report.add(
            &rule::L1_OFFSET,
            Some(f::L1_TABLE_OFFSET.pos()),
            format_args!(
                "l1_table_offset {:#x} is not a cluster past the header",
                h.l1_table_offset
            ),
        );
        return None;
    }
    if h.features & F_BACKING_FILE != 0 {
        let end = h.backing_filename_offset as u64 + h.backing_filename_size as u64;
        if end > h.header_bytes() {
            report.add(
                &rule::BACKING_NAME,
                Some(f::BACKING_FILENAME_OFFSET.pos()),
                format_args!("the backing file name ends at {end:#x}, past the header clusters"),
            );
            return None;
        }
    }
    if h.features & F_NEED_CHECK != 0 {
        report.add(
            &rule::NEED_CHECK,
            Some(f::FEATURES.pos()),
            "NEED_CHECK is set: the image needs a consistency check before use",
        );
    }
    Some(())
}

/// About the bytes of metadata a check of the image reads, for a progress
/// bar's total: the header, the L1 table and the L2 tables it names inside
/// the file. Reads only the L1 table, and only the part of it the file holds.
pub fn metadata_size(src: &dyn ReadAt, h: &Header) -> u64 {
    let inside = src.size().saturating_sub(h.l1_table_offset) / 8;
    let mut l2 = 0u64;
    crate::source::for_each_entry(
        src,
        h.l1_table_offset,
        h.table_entries().min(inside),
        8,
        |_, e| {
            // A table past the end of the file is not read.
            let off = e.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64);
            l2 += (off != 0 && off < src.size()) as u64;
        },
    );
    let l1 = h
        .table_bytes()
        .min(src.size().saturating_sub(h.l1_table_offset));
    h.header_bytes()
        .min(src.size())
        .saturating_add(l1)
        .saturating_add(l2.saturating_mul(h.table_bytes()))
}
