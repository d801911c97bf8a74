//! What `qconform info` shows of a QED image: the header fields, the feature
//! bits by name (spec "Feature bits"), the backing file, the L1 table.

use super::header::{self, Header, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK};
use super::read::MAX_BACKING_NAME;
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::qed as rule;
use crate::source::ReadAt;
use serde::Serialize;

/// The names of the `features` bits the spec defines.
pub const FEATURE_NAMES: &[(u64, &str)] = &[
    (F_BACKING_FILE, "backing_file"),
    (F_NEED_CHECK, "need_check"),
    (F_BACKING_FORMAT_NO_PROBE, "backing_format_no_probe"),
];

/// Parsed metadata of a QED image, without the consistency check.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The parsed header.
    pub header: Header,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Bytes of one L1 or L2 table (table_size clusters).
    pub table_bytes: u64,
    /// Entries of one table.
    pub table_entries: u64,
    /// The virtual disk size.
    pub image_size: u64,
    /// `features` bits by name (parsing refuses unknown ones).
    pub features: Vec<&'static str>,
    /// Bits of `compat_features` and `autoclear_features` (the spec defines none).
    pub compat_feature_bits: Vec<u8>,
    /// Bits set in `autoclear_features` (the spec defines none).
    pub autoclear_feature_bits: Vec<u8>,
    /// The backing file name (QED_F_BACKING_FILE), not NUL terminated in the file.
    pub backing_file: Option<String>,
    /// "raw" when QED_F_BACKING_FORMAT_NO_PROBE is set; otherwise the backing file is probed.
    pub backing_format: Option<&'static str>,
    /// Byte offset of the L1 table (validated: cluster aligned, past the header).
    pub l1_table_offset: u64,
    /// L1 entries the file holds (at most `table_entries`).
    pub l1_entries_in_file: u64,
    /// L1 entries naming an L2 table.
    pub l2_tables: u64,
    /// QED_F_NEED_CHECK: the image was not closed cleanly (dirty).
    pub need_check: bool,
}

fn bits(v: u64) -> Vec<u8> {
    (0..64u8).filter(|b| v >> b & 1 == 1).collect()
}

/// Parses the metadata for `qconform info`; the error names the rule and offset that stopped it.
pub fn info(src: &dyn ReadAt, filename: &str, limits: &Limits) -> crate::Result<Info> {
    let mut report = Report::new(filename, "qed", limits);
    let Some(h) = header::parse(src, &mut report) else {
        return Err(report.into_error());
    };
    let backing_file = if h.features & F_BACKING_FILE != 0 {
        if h.backing_filename_size > MAX_BACKING_NAME {
            report.add(
                &rule::BACKING_NAME,
                Some(60),
                format_args!(
                    "backing file name of {} bytes (QEMU reads at most {MAX_BACKING_NAME})",
                    h.backing_filename_size
                ),
            );
            return Err(report.into_error());
        }
        let mut name = vec![0u8; h.backing_filename_size as usize];
        if src
            .read_exact_at(&mut name, h.backing_filename_offset as u64)
            .is_err()
        {
            report.add(
                &rule::BACKING_NAME,
                Some(56),
                "the backing file name lies past the end of the file",
            );
            return Err(report.into_error());
        }
        Some(String::from_utf8_lossy(&name).into_owned())
    } else {
        None
    };
    // L2 tables named: counted as the table is walked, never held whole.
    let in_file = crate::source::entries_in_file(src, h.l1_table_offset, h.table_entries(), 8);
    let mut l2_tables = 0u64;
    crate::source::for_each_entry(src, h.l1_table_offset, in_file, 8, |_, raw| {
        l2_tables += (crate::source::le_u64(raw, 0) != 0) as u64;
    });
    Ok(Info {
        cluster_size: h.cs(),
        table_bytes: h.table_bytes(),
        table_entries: h.table_entries(),
        image_size: h.image_size,
        features: FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| h.features & bit != 0)
            .map(|&(_, name)| name)
            .collect(),
        compat_feature_bits: bits(h.compat_features),
        autoclear_feature_bits: bits(h.autoclear_features),
        backing_format: (backing_file.is_some() && h.features & F_BACKING_FORMAT_NO_PROBE != 0)
            .then_some("raw"),
        backing_file,
        l1_table_offset: h.l1_table_offset,
        l1_entries_in_file: crate::source::entries_in_file(
            src,
            h.l1_table_offset,
            h.table_entries(),
            8,
        ),
        l2_tables,
        need_check: h.features & F_NEED_CHECK != 0,
        header: h,
    })
}
