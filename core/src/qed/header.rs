//! The QED header (spec section "Header").

use crate::report::Report;
use crate::rules::qed as rule;
use crate::source::{le_u32 as le32, le_u64 as le64, ReadAt};
use serde::Serialize;

pub const MAGIC: [u8; 4] = *b"QED\0";
pub const HEADER_FIELDS: usize = 64;
pub const F_BACKING_FILE: u64 = 0x01;
pub const F_NEED_CHECK: u64 = 0x02;
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 0x04;
pub const F_KNOWN: u64 = 0x07;
/// Data cluster offset 1: a zero cluster.
pub const ZERO_CLUSTER: u64 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub cluster_size: u32,
    pub table_size: u32,
    pub header_size: u32,
    pub features: u64,
    pub compat_features: u64,
    pub autoclear_features: u64,
    pub l1_table_offset: u64,
    pub image_size: u64,
    pub backing_filename_offset: u32,
    pub backing_filename_size: u32,
}

impl Header {
    pub fn cs(&self) -> u64 {
        self.cluster_size as u64
    }
    /// Entries per table (TABLE_NOFFSETS).
    pub fn table_entries(&self) -> u64 {
        self.table_size as u64 * self.cs() / 8
    }
    pub fn table_bytes(&self) -> u64 {
        self.table_size as u64 * self.cs()
    }
    pub fn header_bytes(&self) -> u64 {
        self.header_size as u64 * self.cs()
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
    let h = Header {
        cluster_size: le32(&b, 4),
        table_size: le32(&b, 8),
        header_size: le32(&b, 12),
        features: le64(&b, 16),
        compat_features: le64(&b, 24),
        autoclear_features: le64(&b, 32),
        l1_table_offset: le64(&b, 40),
        image_size: le64(&b, 48),
        backing_filename_offset: le32(&b, 56),
        backing_filename_size: le32(&b, 60),
    };
    if !h.cluster_size.is_power_of_two() || !(1 << 12..=1 << 26).contains(&h.cluster_size) {
        report.add(
            &rule::CLUSTER_SIZE,
            Some(4),
            format!(
                "cluster_size {} is not a power of 2 in [4 KiB, 64 MiB]",
                h.cluster_size
            ),
        );
        return None;
    }
    if !h.table_size.is_power_of_two() || !(1..=16).contains(&h.table_size) {
        report.add(
            &rule::TABLE_SIZE,
            Some(8),
            format!("table_size {} is not a power of 2 in [1, 16]", h.table_size),
        );
        return None;
    }
    if h.header_size == 0 || h.header_size.checked_mul(h.cluster_size).is_none() {
        report.add(
            &rule::HEADER_SIZE,
            Some(12),
            format!("header_size {} clusters is invalid", h.header_size),
        );
        return None;
    }
    let unknown = h.features & !F_KNOWN;
    if unknown != 0 {
        report.add(
            &rule::FEATURES,
            Some(16),
            format!("unknown feature bits {unknown:#x}: the image must not be opened"),
        );
        return None;
    }
    let max = (h.table_entries() as u128).pow(2) * h.cs() as u128;
    if !h.image_size.is_multiple_of(512) || h.image_size as u128 > max {
        report.add(
            &rule::IMAGE_SIZE,
            Some(48),
            format!(
                "image_size {} is not a multiple of 512 or exceeds {max}",
                h.image_size
            ),
        );
        return None;
    }
    if !h.l1_table_offset.is_multiple_of(h.cs()) || h.l1_table_offset < h.header_bytes() {
        report.add(
            &rule::L1_OFFSET,
            Some(40),
            format!(
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
                Some(56),
                format!("the backing file name ends at {end:#x}, past the header clusters"),
            );
            return None;
        }
    }
    if h.features & F_NEED_CHECK != 0 {
        report.add(
            &rule::NEED_CHECK,
            Some(16),
            "NEED_CHECK is set: the image needs a consistency check before use",
        );
    }
    Some(h)
}
