//! The Parallels checker: QEMU's checks (in_use, data_off, clusters past the
//! end of the file, duplicates, leaked space) plus the spec's that QEMU
//! skips (BAT entries below the data offset, cluster alignment relative to
//! it, the Format Extension and its bitmaps), with the extension's clusters
//! counted as used, not leaked.

use super::ext::{self, Extension};
use super::header::{self, Header, HEADER_SIZE};
use super::SECTOR;
use crate::hash::FastMap;
use crate::limits::Limits;
use crate::report::{ImageStats, Report};
use crate::rules::parallels as rule;
use crate::source::ReadAt;

/// Parsed metadata for `qconform info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// The parsed header (spec "Header").
    pub header: Header,
    /// Cluster size in bytes: tracks x 512.
    pub cluster_size: u64,
    /// Byte offset of the data area (data_off in sectors, or for v1 with data_off 0 the end of the BAT).
    pub data_offset: u64,
    /// Non-zero BAT entries: guest clusters allocated.
    pub allocated_clusters: u64,
    /// The Format Extension, when ext_off is not 0 and it parses.
    pub extension: Option<Extension>,
}

/// Parses the header, BAT count and Format Extension for `qconform info`; the error names the rule that stopped the header parse.
pub fn info(src: &dyn ReadAt, filename: &str, limits: &Limits) -> crate::Result<Info> {
    let mut report = Report::new(filename, "parallels", limits);
    let Some(h) = header::parse(src, &mut report) else {
        return Err(report.into_error());
    };
    let extension = (h.ext_off != 0)
        .then(|| ext::parse_with(src, &h, &mut report, ext::Checksum::Skip))
        .flatten();
    Ok(Info {
        cluster_size: h.cluster_size(),
        data_offset: h.data_offset(),
        allocated_clusters: allocated_clusters(src, &h),
        extension,
        header: h,
    })
}

/// Non-zero BAT entries, counted without holding the BAT.
fn allocated_clusters(src: &dyn ReadAt, h: &Header) -> u64 {
    let mut n = 0u64;
    header::for_each_bat_entry(src, h, |_, _| n += 1);
    n
}

/// Who uses a cluster, kept as a number (a BAT index, or an extension
/// cluster counted down from u64::MAX) and named only when reported.
fn user_name(who: u64) -> String {
    match u64::MAX - who {
        0 => "the Format Extension cluster".to_string(),
        k if k < 1 << 32 => format!("dirty bitmap data cluster {k}"),
        _ => format!("BAT entry {who}"),
    }
}

/// The consistency check (`qconform check`): header, BAT entries, cluster overlaps and leaks, Format Extension; never panics.
pub fn check(src: &dyn ReadAt, filename: &str, limits: &Limits) -> Report {
    let mut report = Report::for_image(filename, "parallels", limits);
    let Some(h) = header::parse(src, &mut report) else {
        return report;
    };
    let cs = h.cluster_size();
    let file_len = src.size();
    let bat_end = HEADER_SIZE + 4 * h.nb_bat_entries as u64;
    let data_off = h.data_offset();
    // data_off: v2 non-zero and cluster aligned; never inside the BAT nor past the file.
    let min_data = if h.ext_magic {
        bat_end.next_multiple_of(cs)
    } else {
        bat_end.next_multiple_of(SECTOR)
    };
    if h.ext_magic && (h.data_off == 0 || data_off % cs != 0) {
        report.add_with(&rule::DATA_OFF, Some(48), 1, || {
            format!(
                "data_off {} sectors is not a non-zero multiple of the cluster size",
                h.data_off
            )
        });
    } else if data_off < min_data || data_off > file_len {
        report.add_with(&rule::DATA_OFF, Some(48), 1, || format!("data offset {data_off:#x} lies inside the BAT (ends {bat_end:#x}) or past the file ({file_len} bytes)"));
    }
    let allocated = allocated_clusters(src, &h);
    if h.flags & header::FLAG_EMPTY != 0 && allocated > 0 {
        // QEMU ignores the flag and reads the BAT; so does our reader.
        report.add_with(&rule::EMPTY_IMAGE, Some(52), 1, || {
            format!("the Empty Image flag is set, but the BAT allocates {allocated} clusters")
        });
    }
    // Every used cluster, by byte offset: who uses it (see `user_name`).
    let mut used: FastMap<u64, u64> = FastMap::default();
    let mut image_end = data_off.min(file_len).max(bat_end.min(file_len));
    let mut place =
        |report: &mut Report, who: u64, at: Option<u64>, off: u64, image_end: &mut u64| {
            // Named only on the (rare) paths that report.
            let what = || user_name(who);
            if off < data_off {
                report.add_with(&rule::BAT_BELOW_DATA, at, 1, || {
                    format!(
                        "{} at {off:#x} lies before the data area ({data_off:#x})",
                        what()
                    )
                });
                return;
            }
            if off.saturating_add(cs) > file_len {
                report.add_with(&rule::BAT_INSIDE_FILE, at, 1, || {
                    format!(
                        "{} at {off:#x} ends past the end of the file ({file_len} bytes)",
                        what()
                    )
                });
                return;
            }
            if !(off - data_off).is_multiple_of(cs) {
                report.add_with(&rule::BAT_ALIGNED, at, 1, || {
                    format!(
                        "{} at {off:#x} is not a whole number of clusters past the data offset",
                        what()
                    )
                });
            }
            if let Some(&first) = used.get(&off) {
                report.add_with(&rule::BAT_UNIQUE, at, 1, || {
                    format!(
                        "{} at {off:#x} is also used by {}",
                        what(),
                        user_name(first)
                    )
                });
                return;
            }
            used.insert(off, who);
            *image_end = (*image_end).max(off + cs);
        };
    header::for_each_bat_entry(src, &h, |i, e| {
        place(
            &mut report,
            i,
            Some(HEADER_SIZE + 4 * i),
            h.bat_offset(e),
            &mut image_end,
        );
    });
    if h.ext_off != 0 {
        let at = h.ext_off.saturating_mul(SECTOR);
        if let Some(x) = ext::parse(src, &h, &mut report) {
            for (k, &off) in x.clusters.iter().enumerate() {
                place(
                    &mut report,
                    u64::MAX - k as u64,
                    Some(if k == 0 { 56 } else { at }),
                    off,
                    &mut image_end,
                );
            }
        }
    }
    // Space past the last used cluster is leaked (counted in clusters, as qemu-img does).
    if file_len > image_end {
        let clusters = (file_len - image_end).div_ceil(cs);
        report.add_with(&rule::LEAK, Some(image_end), clusters, || {
            format!(
                "{} bytes past the last used cluster ({image_end:#x}) are leaked",
                file_len - image_end
            )
        });
    }
    *report.image_stats() = ImageStats {
        image_end_offset: Some(image_end),
        total_clusters: Some(h.nb_bat_entries as u64),
        allocated_clusters: Some(allocated),
        fragmented_clusters: Some(0),
        compressed_clusters: Some(0),
    };
    report
}
