//! The Format Extension cluster and its dirty bitmaps (spec sections
//! "Format Extension" and "Dirty bitmaps feature").

use super::header::Header;
use super::SECTOR;
use crate::report::Report;
use crate::rules::parallels as rule;
use crate::source::{le_u32 as le32, le_u64 as le64, ReadAt};
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
    let cs = h.cluster_size();
    let at = h.ext_off.checked_mul(SECTOR)?;
    if !src.contains(at, cs) {
        report.add(
            &rule::EXT_PLACEMENT,
            Some(56),
            format!("the Format Extension cluster at {at:#x} lies past the end of the file"),
        );
        return None;
    }
    // At most one cluster (tracks <= INT32_MAX/513 sectors), inside the file.
    let mut c = vec![0u8; cs as usize];
    src.read_exact_at(&mut c, at).ok()?;
    if le64(&c, 0) != EXT_MAGIC {
        report.add(
            &rule::EXT_MAGIC,
            Some(at),
            format!("Format Extension magic is {:#018x}", le64(&c, 0)),
        );
        return None;
    }
    let sum = Md5::digest(c.get(24..).unwrap_or(&[]));
    if c.get(8..24) != Some(&sum[..]) {
        report.add(
            &rule::EXT_CHECKSUM,
            Some(at + 8),
            "the MD5 checksum of the Format Extension cluster does not match",
        );
    }
    let mut ext = Extension {
        clusters: vec![at],
        ..Extension::default()
    };
    let mut pos = 24usize;
    let mut ended = false;
    while pos + 24 <= c.len() {
        let magic = le64(&c, pos);
        let flags = le64(&c, pos + 8);
        let size = le32(&c, pos + 16) as usize;
        if magic == FEATURE_END {
            ended = true;
            break;
        }
        let data_at = pos + 24;
        let Some(data) = c.get(data_at..data_at + size) else {
            report.add(
                &rule::EXT_FEATURES,
                Some(at + pos as u64),
                format!("feature {magic:#018x} of {size} bytes runs past the extension cluster"),
            );
            return Some(ext);
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
                    format!(
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
    Some(ext)
}

fn dirty_bitmap(
    src: &dyn ReadAt,
    h: &Header,
    data: &[u8],
    at: u64,
    report: &mut Report,
    owned: &mut Vec<u64>,
) -> Option<DirtyBitmap> {
    let size = le64(data, 0);
    let id = data
        .get(8..24)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .unwrap_or_default();
    let granularity = le32(data, 24);
    let l1_size = le32(data, 28) as usize;
    let l1: Vec<u64> = (0..l1_size)
        .map_while(|i| data.get(32 + 8 * i..40 + 8 * i).map(|s| le64(s, 0)))
        .collect();
    if l1.len() != l1_size {
        report.add(
            &rule::EXT_FEATURES,
            Some(at),
            format!("dirty bitmap L1 of {l1_size} entries does not fit its feature data"),
        );
        return None;
    }
    if size != h.disk_size() / SECTOR {
        report.add(
            &rule::BITMAP_SIZE,
            Some(at),
            format!(
                "bitmap of {size} sectors for a disk of {}",
                h.disk_size() / SECTOR
            ),
        );
    }
    if granularity == 0 || !granularity.is_power_of_two() {
        report.add(
            &rule::BITMAP_GRANULARITY,
            Some(at + 24),
            format!("granularity {granularity} is not a power of two"),
        );
        return None;
    }
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
                        Some(at + 32 + 8 * i as u64),
                        format!("bitmap L1 entry {i} points past the end of the file ({byte:#x})"),
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
    Some(DirtyBitmap {
        size,
        id,
        granularity,
        l1,
        dirty,
    })
}
