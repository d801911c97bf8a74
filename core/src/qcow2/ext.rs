//! Header extensions (spec sections "Header extensions", "String header
//! extensions", "Feature name table", "Bitmaps extension", "Full disk
//! encryption header pointer").

use super::header::{Header, AUTOCLEAR_BITMAPS};
use super::{MAX_BITMAPS, MAX_BITMAP_DIRECTORY_BYTES};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{general, qcow2 as rule};
use serde::Serialize;
use std::borrow::Cow;

/// End of the header extension area (spec "Header extensions").
pub const EXT_END: u32 = 0x0000_0000;
/// Backing file format name extension.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Feature name table extension.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Bitmaps extension.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Full disk encryption header pointer extension.
pub const EXT_FDE: u32 = 0x0537_be77;
/// External data file name extension.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The header extension header (spec "Header extensions"): big endian,
/// offsets from the extension's first byte; its data follows at byte
/// [`field::DATA`], padded to a multiple of 8.
pub mod field {
    crate::field::field_table! { Big;
        /// Header extension type (bytes 0-3).
        TYPE: u32 = "type" @ 0,
        /// Length of the header extension data (bytes 4-7), before padding.
        LENGTH: u32 = "length" @ 4,
    }
    /// Offset of the extension data from the extension's first byte.
    pub const DATA: usize = LENGTH.end();
}

/// The bitmaps extension's data (spec "Bitmaps extension"): big endian,
/// offsets from the first byte of the data.
pub mod bitmaps_field {
    crate::field::field_table! { Big;
        /// nb_bitmaps (bytes 0-3).
        NB_BITMAPS: u32 = "nb_bitmaps" @ 0,
        /// Reserved, must be zero (bytes 4-7).
        RESERVED: u32 = "reserved" @ 4,
        /// bitmap_directory_size (bytes 8-15).
        BITMAP_DIRECTORY_SIZE: u64 = "bitmap_directory_size" @ 8,
        /// bitmap_directory_offset (bytes 16-23).
        BITMAP_DIRECTORY_OFFSET: u64 = "bitmap_directory_offset" @ 16,
    }
    /// Length of the extension data.
    pub const LEN: usize = BITMAP_DIRECTORY_OFFSET.end();
}

/// The full disk encryption header pointer's data (spec "Full disk
/// encryption header pointer"): big endian, offsets from the data.
pub mod fde_field {
    crate::field::field_table! { Big;
        /// Offset of the encryption header (bytes 0-7).
        OFFSET: u64 = "offset" @ 0,
        /// Length of the encryption header (bytes 8-15).
        LENGTH: u64 = "length" @ 8,
    }
    /// Length of the extension data.
    pub const LEN: usize = LENGTH.end();
}

/// One entry of the feature name table.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// The feature's bit number.
    pub bit: u8,
    /// The feature's name (up to 46 bytes, NUL padded in the file).
    pub name: String,
}

/// The bitmaps extension.
#[derive(Debug, Clone, Serialize)]
pub struct BitmapsExt {
    /// nb_bitmaps (bytes 0-3): bitmaps in the directory; checked against [`super::MAX_BITMAPS`].
    pub nb_bitmaps: u32,
    /// bitmap_directory_size (bytes 8-15), in bytes; checked against [`super::MAX_BITMAP_DIRECTORY_BYTES`].
    pub bitmap_directory_size: u64,
    /// bitmap_directory_offset (bytes 16-23), in bytes; checked to be cluster aligned.
    pub bitmap_directory_offset: u64,
}

/// The full disk encryption header pointer.
#[derive(Debug, Clone, Serialize)]
pub struct FdePointer {
    /// Byte offset of the LUKS header (must be cluster aligned).
    pub offset: u64,
    /// Length of the LUKS header, in bytes.
    pub length: u64,
}

/// An extension of a type this implementation does not know; kept so a
/// report can show it.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownExt {
    /// The extension type.
    pub ext_type: u32,
    /// Byte offset of the extension's data in the file.
    pub offset: u64,
    /// Bytes of data (the header's length field, before padding to 8).
    pub length: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
/// The header extensions found (spec "Header extensions"), each at most once.
pub struct Extensions {
    /// The backing file format name, if the extension is present.
    pub backing_format: Option<String>,
    /// The feature name table entries.
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps extension, if present.
    pub bitmaps: Option<BitmapsExt>,
    /// True when the bitmaps extension is present but autoclear bit 0 is
    /// clear: QEMU then ignores the bitmaps (their clusters become leaks).
    pub bitmaps_inconsistent: bool,
    /// The full disk encryption header pointer, if present.
    pub fde: Option<FdePointer>,
    /// The external data file name, if the extension is present (not yet validated by the path policy).
    pub data_file: Option<String>,
    /// Extensions of unknown type, kept to be reported.
    pub unknown: Vec<UnknownExt>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One extension of the area: its type, where it starts, its data.
struct Ext<'a> {
    ext_type: u32,
    /// File offset of the extension header.
    offset: u64,
    /// File offset of its data.
    data_start: u64,
    /// The length field (the data's length before padding).
    len: u32,
    data: Cow<'a, [u8]>,
}

/// Parses the extension area of `cluster0`. Returns `None` when an extension
/// makes the image unopenable (the finding is in the report).
pub fn parse(
    h: &Header,
    cluster0: &[u8],
    limits: &Limits,
    report: &mut Report,
) -> Option<Extensions> {
    let mut exts = Extensions::default();
    // A set: 262144 extensions must not cost a quadratic uniqueness check.
    // At most max_header_extensions types: no flooding to resist.
    let mut seen: crate::hash::FastSet<u32> = Default::default();
    walk(h, cluster0, limits, report, |e, report| {
        if !seen.insert(e.ext_type) {
            report.add_with(&rule::EXT_UNIQUE, Some(e.offset), 1, || {
                format!(
                    "header extension {:#010x} appears more than once",
                    e.ext_type
                )
            });
        }
        one(h, e, report, &mut exts)
    })?;
    requirements(h, &exts, report)?;
    Some(exts)
}

/// Walks the extension area from header_length to its end (spec "Header
/// extensions"): each extension's header inside the area, at most
/// `limits.max_header_extensions` of them, and the end marker; calls `f`
/// for each extension before the marker, stopping when `f` says the image
/// cannot be opened.
fn walk(
    h: &Header,
    cluster0: &[u8],
    limits: &Limits,
    report: &mut Report,
    mut f: impl FnMut(&Ext, &mut Report) -> Option<()>,
) -> Option<()> {
    let end = h.extensions_end();
    let mut offset = h.extensions_start();
    let mut parsed = 0usize;
    while offset < end {
        if parsed >= limits.max_header_extensions {
            report.add_with(&general::HEADER_EXT_LIMIT, Some(offset), 1, || {
                format!(
                    "more than {} header extensions",
                    limits.max_header_extensions
                )
            });
            return None;
        }
        let at = offset as usize;
        let ext_type = field::TYPE.get_at(cluster0, at);
        let len = field::LENGTH.get_at(cluster0, at);
        let data_start = offset + field::DATA as u64;
        if data_start > end || len as u64 > end - data_start {
            report.add_with(&rule::EXT_BOUNDS, Some(offset), 1, || format!(
                "header extension {ext_type:#010x} of {len} bytes runs past the end of the extension area at {end:#x}"));
            return None;
        }
        if ext_type == EXT_END {
            return Some(());
        }
        // `data_start + len <= end <= cluster size`; cluster0 holds only what
        // the file does, and the rest of the cluster reads as zeros.
        let range = data_start as usize..(data_start + len as u64) as usize;
        let data = match cluster0.get(range.clone()) {
            Some(d) => Cow::Borrowed(d),
            None => {
                let held = cluster0.get(range.start..).unwrap_or(&[]);
                let mut d = vec![0u8; range.len()];
                d.iter_mut().zip(held).for_each(|(to, from)| *to = *from);
                Cow::Owned(d)
            }
        };
        parsed += 1;
        let e = Ext {
            ext_type,
            offset,
            data_start,
            len,
            data,
        };
        f(&e, report)?;
        offset = data_start + (len as u64).next_multiple_of(8);
    }
    if h.extensions_start() < end {
        report.add(
            &rule::EXT_NO_END,
            Some(offset.min(end)),
            "the header extension area has no end marker",
        );
    }
    Some(())
}

/// One extension, by type; `None` when it makes the image unopenable.
fn one(h: &Header, e: &Ext, report: &mut Report, exts: &mut Extensions) -> Option<()> {
    match e.ext_type {
        EXT_BACKING_FORMAT => {
            if h.backing_file_offset == 0 {
                report.add(
                    &rule::EXT_BACKING_FORMAT,
                    Some(e.offset),
                    "backing file format name without a backing file",
                );
            }
            exts.backing_format = Some(lossy(&e.data));
        }
        EXT_FEATURE_TABLE => feature_table(e, report, &mut exts.feature_names),
        EXT_BITMAPS => {
            if e.len as usize != bitmaps_field::LEN {
                let problem = format!(" is {} bytes, not {}", e.len, bitmaps_field::LEN);
                return bitmaps_layout(e, report, problem);
            }
            if h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
                // QEMU ignores the extension then; so does the check.
                report.add(&rule::EXT_BITMAPS_INCONSISTENT, Some(e.offset), "bitmaps extension present but autoclear bit 0 is clear: bitmaps are inconsistent and their clusters unowned");
                exts.bitmaps_inconsistent = true;
            } else {
                exts.bitmaps = Some(bitmaps(h, e, report)?);
            }
        }
        EXT_FDE => exts.fde = Some(fde(h, e, report)?),
        EXT_DATA_FILE => {
            if !h.has_data_file() {
                report.add(
                    &rule::EXT_DATA_FILE_NAME,
                    Some(e.offset),
                    "external data file name without the external data file bit",
                );
            }
            exts.data_file = Some(lossy(&e.data));
        }
        other => {
            let len = e.len;
            report.add_with(&rule::EXT_UNKNOWN, Some(e.offset), 1, || {
                format!("unknown header extension {other:#010x} of {len} bytes")
            });
            exts.unknown.push(UnknownExt {
                ext_type: other,
                offset: e.offset,
                length: len,
            });
        }
    }
    Some(())
}

/// The feature name table (spec "Feature name table"): 48-byte entries of
/// type, bit number and NUL-padded name.
fn feature_table(e: &Ext, report: &mut Report, names: &mut Vec<FeatureName>) {
    let len = e.len;
    if !len.is_multiple_of(48) {
        report.add_with(&rule::EXT_FEATURE_TABLE, Some(e.offset), 1, || {
            format!("feature name table length {len} is not a multiple of 48")
        });
    }
    for (i, entry) in e.data.chunks_exact(48).enumerate() {
        let (kind, bit) = (entry[0], entry[1]);
        if kind > 2 || bit > 63 {
            report.add_with(
                &rule::EXT_FEATURE_TABLE,
                Some(e.data_start + 48 * i as u64),
                1,
                || format!("feature name entry with type {kind} bit {bit}"),
            );
        }
        let name = &entry[2..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        names.push(FeatureName {
            kind,
            bit,
            name: lossy(name),
        });
    }
}

/// A bitmaps extension QEMU refuses: the finding, and `None`.
fn bitmaps_layout(e: &Ext, report: &mut Report, problem: String) -> Option<()> {
    report.add_with(&rule::EXT_BITMAPS_LAYOUT, Some(e.offset), 1, || {
        format!("bitmaps extension{problem}")
    });
    None
}

/// The bitmaps extension's 24 bytes (spec "Bitmaps extension"), when
/// autoclear bit 0 says it is consistent.
fn bitmaps(h: &Header, e: &Ext, report: &mut Report) -> Option<BitmapsExt> {
    let data = &e.data[..];
    let b = BitmapsExt {
        nb_bitmaps: bitmaps_field::NB_BITMAPS.get(data),
        bitmap_directory_size: bitmaps_field::BITMAP_DIRECTORY_SIZE.get(data),
        bitmap_directory_offset: bitmaps_field::BITMAP_DIRECTORY_OFFSET.get(data),
    };
    let problem = if bitmaps_field::RESERVED.get(data) != 0 {
        Some("its reserved field is not zero".to_string())
    } else if b.nb_bitmaps == 0 || b.nb_bitmaps > MAX_BITMAPS {
        Some(format!("nb_bitmaps {} is outside 1..=65535", b.nb_bitmaps))
    } else if !b.bitmap_directory_offset.is_multiple_of(h.cluster_size()) {
        Some(format!(
            "bitmap directory offset {:#x} is not cluster aligned",
            b.bitmap_directory_offset
        ))
    } else if b.bitmap_directory_size > MAX_BITMAP_DIRECTORY_BYTES {
        Some(format!(
            "bitmap directory size {} exceeds QEMU's maximum",
            b.bitmap_directory_size
        ))
    } else {
        None
    };
    if let Some(p) = problem {
        bitmaps_layout(e, report, format!(": {p}"))?;
    }
    Some(b)
}

/// The full disk encryption header pointer (spec "Full disk encryption
/// header pointer"): only with LUKS, 16 bytes, cluster aligned.
fn fde(h: &Header, e: &Ext, report: &mut Report) -> Option<FdePointer> {
    if h.crypt_method != 2 {
        report.add(
            &rule::EXT_FDE_PRESENCE,
            Some(e.offset),
            "encryption header pointer without LUKS encryption",
        );
        return None;
    }
    let len = e.len;
    if len as usize != fde_field::LEN {
        report.add_with(&rule::EXT_FDE_LAYOUT, Some(e.offset), 1, || {
            format!(
                "encryption header pointer is {len} bytes, not {}",
                fde_field::LEN
            )
        });
        return None;
    }
    let p = FdePointer {
        offset: fde_field::OFFSET.get(&e.data),
        length: fde_field::LENGTH.get(&e.data),
    };
    if !p.offset.is_multiple_of(h.cluster_size()) {
        report.add_with(&rule::EXT_FDE_LAYOUT, Some(e.offset), 1, || {
            format!(
                "encryption header offset {:#x} is not cluster aligned",
                p.offset
            )
        });
        return None;
    }
    Some(p)
}

/// Extensions the header's fields require: the encryption header pointer
/// with LUKS, the bitmaps extension with autoclear bit 0.
fn requirements(h: &Header, exts: &Extensions, report: &mut Report) -> Option<()> {
    if h.crypt_method == 2 && exts.fde.is_none() {
        report.add(
            &rule::EXT_FDE_PRESENCE,
            Some(super::header::field::CRYPT_METHOD.pos()),
            "LUKS encryption without an encryption header pointer",
        );
        return None;
    }
    if h.has_data_file() && exts.data_file.is_none() {
        // Valid ("may be present"), but no reader can find the guest data
        // without being told: say so, so a clean check is not read as
        // "this image opens".
        report.add(
            &rule::DATA_FILE_UNNAMED,
            Some(super::header::field::INCOMPATIBLE_FEATURES.pos()),
            "external data file bit set without a data file name extension: the data file must be given by the user",
        );
    }
    if h.autoclear_features & AUTOCLEAR_BITMAPS != 0 && exts.bitmaps.is_none() {
        report.add(
            &rule::EXT_BITMAPS_AUTOCLEAR,
            Some(super::header::field::AUTOCLEAR_FEATURES.pos()),
            "autoclear bit 0 (bitmaps) is set without a bitmaps extension",
        );
    }
    Some(())
}
