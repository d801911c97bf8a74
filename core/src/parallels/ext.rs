//! The Format Extension cluster and its dirty bitmaps (spec sections
//! "Format Extension" and "Dirty bitmaps feature").

use super::header::Header;
use super::SECTOR;
use crate::report::Report;
use crate::rules::parallels as rule;
use crate::source::ReadAt;
use md5::{Digest, Md5};
use serde::Serialize;

/// Magic of the Format Extension cluster (spec "Format Extension", bytes 0-7).
pub const EXT_MAGIC: u64 = 0xAB23_4CEF_23DC_EA87;
/// Feature magic that ends the feature list.
pub const FEATURE_END: u64 = 0;
/// Feature magic of the dirty bitmap feature (spec "Dirty bitmaps feature").
pub const FEATURE_DIRTY_BITMAP: u64 = 0x2038_5FAE_252C_B34A;
/// Feature flag bit 0 (NECESSARY): software that cannot load the feature must not change the file.
pub const FLAG_NECESSARY: u64 = 1;
/// Feature flag bit 1 (TRANSIT): an unknown feature with this flag is left as is.
pub const FLAG_TRANSIT: u64 = 2;

/// The Format Extension cluster's header (spec "Format Extension"): little
/// endian, offsets from the cluster's first byte; the features follow.
pub mod field {
    crate::field::field_table! { Little;
        /// Magic (bytes 0-7): [`super::EXT_MAGIC`].
        MAGIC: u64 = "magic" @ 0,
    }
    /// The MD5 checksum of the rest of the cluster (bytes 8-23).
    pub const CHECKSUM: std::ops::Range<usize> = 8..24;
    /// Offset of the first feature header.
    pub const FEATURES: usize = CHECKSUM.end;
}

/// A feature header of the Format Extension (spec "Format Extension"):
/// little endian, offsets from the feature's first byte; its data follows
/// at [`feature_field::DATA`], padded to a multiple of 8.
pub mod feature_field {
    crate::field::field_table! { Little;
        /// Feature magic (bytes 0-7); 0 ends the feature list.
        MAGIC: u64 = "magic" @ 0,
        /// Feature flags (bytes 8-15).
        FLAGS: u64 = "flags" @ 8,
        /// Bytes of feature data (bytes 16-19).
        DATA_SIZE: u32 = "data_size" @ 16,
        /// Reserved (bytes 20-23).
        RESERVED: u32 = "reserved" @ 20,
    }
    /// Offset of the feature data from the feature's first byte.
    pub const DATA: usize = RESERVED.end();
}

/// The dirty bitmap feature's data (spec "Dirty bitmaps feature"): little
/// endian, offsets from the first byte of the feature data.
pub mod bitmap_field {
    crate::field::field_table! { Little;
        /// Bitmap size in sectors (bytes 0-7).
        SIZE: u64 = "size" @ 0,
        /// Sectors per bit (bytes 24-27).
        GRANULARITY: u32 = "granularity" @ 24,
        /// Entries of the L1 table that follows (bytes 28-31).
        L1_SIZE: u32 = "l1_size" @ 28,
    }
    /// The bitmap's 16-byte id (bytes 8-23).
    pub const ID: std::ops::Range<usize> = 8..24;
    /// Offset of the L1 table (8-byte entries).
    pub const L1: usize = L1_SIZE.end();
}

/// Stores the MD5 checksum of an extension cluster `c` (its bytes past the
/// checksum), as the writer and the mutators that edit the cluster must.
pub(crate) fn seal(c: &mut [u8]) {
    if let Some(body) = c.get(field::CHECKSUM.end..) {
        let sum = Md5::digest(body);
        if let Some(dst) = c.get_mut(field::CHECKSUM) {
            dst.copy_from_slice(&sum);
        }
    }
}

/// A dirty bitmap of the Format Extension.
#[derive(Debug, Clone, Serialize)]
pub struct DirtyBitmap {
    /// Bitmap size in sectors (should equal the disk size).
    pub size: u64,
    /// The bitmap's 16-byte id, as hex.
    pub id: String,
    /// Sectors per bit.
    pub granularity: u32,
    /// L1 entries: 0 all clean, 1 all dirty, else a data cluster (in sectors).
    pub l1: Vec<u64>,
    /// Dirty byte ranges of the guest, (start, length).
    pub dirty: Vec<(u64, u64)>,
}

/// The parsed extension: features, and the clusters it owns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extension {
    /// The dirty bitmaps the extension carries.
    pub bitmaps: Vec<DirtyBitmap>,
    /// Unknown features as (magic, flags).
    pub unknown: Vec<(u64, u64)>,
    /// Byte offsets of the clusters the extension owns (its own cluster and
    /// bitmap data clusters): referenced, not leaked.
    #[serde(skip)]
    pub clusters: Vec<u64>,
}

/// Reads the extension cluster at ext_off. Cluster placement (inside the
/// file, after the data offset, aligned, unique) is the checker's business;
/// here a cluster that cannot be read is a finding.
pub fn parse(src: &dyn ReadAt, h: &Header, report: &mut Report) -> Option<Extension> {
    parse_with(src, h, report, Checksum::Verify)
}

/// Whether [`parse_with`] verifies the extension cluster's MD5.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Verify it and report a mismatch (`check`).
    Verify,
    /// Skip it: `info` shows what the extension holds and `check` judges
    /// it; hashing the cluster (as large as the file allows) for both was a
    /// sixth of the Parallels target's time.
    Skip,
}

/// [`parse`], verifying the checksum or not.
pub fn parse_with(
    src: &dyn ReadAt,
    h: &Header,
    report: &mut Report,
    checksum: Checksum,
) -> Option<Extension> {
    let cs = h.cluster_size();
    let at = h.ext_off.checked_mul(SECTOR)?;
    if !src.contains(at, cs) {
        report.add(
            &rule::EXT_PLACEMENT,
            Some(super::header::field::EXT_OFF.pos()),
            format_args!("the Format Extension cluster at {at:#x} lies past the end of the file"),
        );
        return None;
    }
    // At most one cluster (tracks <= INT32_MAX/513 sectors), inside the file.
    let mut c = vec![0u8; cs as usize];
    src.read_exact_at(&mut c, at).ok()?;
    let magic = field::MAGIC.get(&c);
    if magic != EXT_MAGIC {
        report.add(
            &rule::EXT_MAGIC,
            Some(at),
            format_args!("Format Extension magic is {magic:#018x}"),
        );
        return None;
    }
    let sum = || Md5::digest(c.get(field::CHECKSUM.end..).unwrap_or(&[]));
    if checksum == Checksum::Verify && c.get(field::CHECKSUM) != Some(&sum()[..]) {
        report.add(
            &rule::EXT_CHECKSUM,
            Some(at + field::CHECKSUM.start as u64),
            "the MD5 checksum of the Format Extension cluster does not match",
        );
    }
    let mut ext = Extension {
        clusters: vec![at],
        ..Extension::default()
    };
    features(src, h, &c, at, report, &mut ext);
    Some(ext)
}

/// The feature list of extension cluster `c` (at file offset `at`): each
/// feature header inside the cluster, up to the End of features entry.
fn features(
    src: &dyn ReadAt,
    h: &Header,
    c: &[u8],
    at: u64,
    report: &mut Report,
    ext: &mut Extension,
) {
    let mut pos = field::FEATURES;
    let mut ended = false;
    while pos + feature_field::DATA <= c.len() {
        let magic = feature_field::MAGIC.get_at(c, pos);
        let flags = feature_field::FLAGS.get_at(c, pos);
        let size = feature_field::DATA_SIZE.get_at(c, pos) as usize;
        if magic == FEATURE_END {
            ended = true;
            break;
        }
        let data_at = pos + feature_field::DATA;
        let Some(data) = c.get(data_at..data_at + size) else {
            report.add(
                &rule::EXT_FEATURES,
                Some(at + pos as u64),
                format_args!(
                    "feature {magic:#018x} of {size} bytes runs past the extension cluster"
                ),
            );
            return;
        };
        match magic {
            FEATURE_DIRTY_BITMAP => {
                if let Some(b) =
                    dirty_bitmap(src, h, data, at + data_at as u64, report, &mut ext.clusters)
                {
                    ext.bitmaps.push(b);
                }
            }
            other => {
                report.add(
                    &rule::EXT_UNKNOWN_FEATURE,
                    Some(at + pos as u64),
                    format_args!(
                        "unknown feature {other:#018x} with flags {flags:#x}{}",
                        if flags & FLAG_NECESSARY != 0 {
                            " (NECESSARY: the image must not be changed)"
                        } else {
                            ""
                        }
                    ),
                );
                ext.unknown.push((other, flags));
            }
        }
        pos = (data_at + size).next_multiple_of(8);
    }
    if !ended {
        report.add(
            &rule::EXT_FEATURES,
            Some(at),
            "the feature list has no End of features entry",
        );
    }
}

fn dirty_bitmap(
    src: &dyn ReadAt,
    h: &Header,
    data: &[u8],
    at: u64,
    report: &mut Report,
    owned: &mut Vec<u64>,
) -> Option<DirtyBitmap> {
    let size = bitmap_field::SIZE.get(data);
    let id = data
        .get(bitmap_field::ID)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .unwrap_or_default();
    let granularity = bitmap_field::GRANULARITY.get(data);
    let l1_size = bitmap_field::L1_SIZE.get(data) as usize;
    let l1: Vec<u64> = (0..l1_size)
        .map_while(|i| {
            let e = bitmap_field::L1 + 8 * i;
            data.get(e..e + 8).map(|s| crate::field::le_u64(s, 0))
        })
        .collect();
    if l1.len() != l1_size {
        report.add(
            &rule::EXT_FEATURES,
            Some(at),
            format_args!("dirty bitmap L1 of {l1_size} entries does not fit its feature data"),
        );
        return None;
    }
    if size != h.disk_size() / SECTOR {
        report.add(
            &rule::BITMAP_SIZE,
            Some(at),
            format_args!(
                "bitmap of {size} sectors for a disk of {}",
                h.disk_size() / SECTOR
            ),
        );
    }
    if granularity == 0 || !granularity.is_power_of_two() {
        report.add(
            &rule::BITMAP_GRANULARITY,
            Some(bitmap_field::GRANULARITY.at(at)),
            format_args!("granularity {granularity} is not a power of two"),
        );
        return None;
    }
    let mut b = DirtyBitmap {
        size,
        id,
        granularity,
        l1,
        dirty: Vec::new(),
    };
    b.dirty = dirty_ranges(src, h, &b, at, report, owned);
    Some(b)
}

/// The dirty guest byte ranges a bitmap's L1 table says (spec "Dirty
/// bitmaps feature"): entry 0 all clean, 1 all dirty, else the sector of a
/// data cluster of bits, which `owned` then records.
fn dirty_ranges(
    src: &dyn ReadAt,
    h: &Header,
    b: &DirtyBitmap,
    at: u64,
    report: &mut Report,
    owned: &mut Vec<u64>,
) -> Vec<(u64, u64)> {
    let (l1, size, granularity) = (&b.l1, b.size, b.granularity);
    let cs = h.cluster_size();
    let bits_per_cluster = cs * 8;
    let gran_bytes = granularity as u64 * SECTOR;
    let mut dirty: Vec<(u64, u64)> = Vec::new();
    // Dirty ranges are built from runs, never bit by bit over a claimed size:
    // an all-ones entry is one range, a data cluster is scanned byte by byte
    // (bounded by the cluster, which lies inside the file).
    let disk = h.disk_size();
    let mut push = |start: u64, len: u64| {
        if start >= disk || len == 0 {
            return;
        }
        let len = len.min(disk - start);
        match dirty.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => dirty.push((start, len)),
        }
    };
    let total_bits = size.div_ceil(granularity as u64);
    for (i, &e) in l1.iter().enumerate() {
        let first = i as u64 * bits_per_cluster;
        let n = bits_per_cluster.min(total_bits.saturating_sub(first));
        match e {
            0 => {}
            1 => push(
                first.saturating_mul(gran_bytes),
                n.saturating_mul(gran_bytes),
            ),
            off => {
                let byte = off.saturating_mul(SECTOR);
                if !src.contains(byte, cs) {
                    report.add(
                        &rule::BITMAP_L1_ENTRY,
                        Some(at + (bitmap_field::L1 + 8 * i) as u64),
                        format_args!(
                            "bitmap L1 entry {i} points past the end of the file ({byte:#x})"
                        ),
                    );
                    continue;
                }
                let mut c = vec![0u8; cs as usize];
                if src.read_exact_at(&mut c, byte).is_err() {
                    continue;
                }
                owned.push(byte);
                for (k, &x) in c.iter().enumerate().filter(|(_, &x)| x != 0) {
                    for bit in 0..8u64 {
                        let b = k as u64 * 8 + bit;
                        if b < n && x >> bit & 1 == 1 {
                            push((first + b).saturating_mul(gran_bytes), gran_bytes);
                        }
                    }
                }
            }
        }
    }
    dirty
}
