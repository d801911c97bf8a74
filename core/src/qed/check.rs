//! The QED checker, as QEMU's qed_check counts (spec: each cluster
//! referenced once, offsets inside the file and aligned, tables fit before
//! EOF; leaks), and the reader.

use super::header::{self, Header, ZERO_CLUSTER};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{general, qed as rule};
use crate::source::{entries_in_file, ReadAt};

/// Calls `f(index, entry)` for each non-zero entry of the table at
/// `offset`, as far as the file holds it, without holding the table.
fn for_each_table_entry(src: &dyn ReadAt, h: &Header, offset: u64, mut f: impl FnMut(u64, u64)) {
    let n = entries_in_file(src, offset, h.table_entries(), 8);
    crate::source::for_each_entry(src, offset, n, 8, |i, raw| {
        let e = crate::source::le_u64(raw, 0);
        if e != 0 {
            f(i, e);
        }
    });
}

/// The clusters in use, as a set: memory follows the clusters referenced,
/// not the length of a (sparse) file.
struct Used {
    set: crate::hash::FastSet<u64>,
    nclusters: u64,
}

impl Used {
    /// Marks `n` clusters from byte `off` (those inside the file); false if
    /// any was already in use (then none is marked).
    fn mark(&mut self, cs: u64, off: u64, n: u64) -> bool {
        let first = off / cs;
        let range = first..first.saturating_add(n).min(self.nclusters);
        if range.clone().any(|k| self.set.contains(&k)) {
            return false;
        }
        self.set.extend(range);
        true
    }
}

/// The consistency check (`qconform check`): header, L1 and L2 tables, cluster overlaps and leaks; never panics.
pub fn check(src: &dyn ReadAt, filename: &str, limits: &Limits) -> Report {
    let mut report = Report::for_image(filename, "qed", limits);
    let Some(h) = header::parse(src, &mut report) else {
        return report;
    };
    let cs = h.cs();
    // Clusters end at the last whole cluster of the file: bytes past it
    // are "extra information after the last cluster" (qed_spec.rst, file
    // layout), not a cluster an offset may name or a leak (as QEMU rounds
    // the file size down).
    let file_len = src.size() / cs * cs;
    let nclusters = file_len / cs;
    let mut used = Used {
        set: crate::hash::FastSet::default(),
        nclusters,
    };
    // The header clusters are all in use; a huge header_size in a sparse
    // file is counted, not enumerated.
    let header_clusters = (h.header_size as u64).min(nclusters);
    let mut mark = |off: u64, n: u64| -> bool {
        if off / cs < header_clusters {
            return false;
        }
        used.mark(cs, off, n)
    };
    let table_ok = |off: u64| h.table_fits(off, file_len);
    if !table_ok(h.l1_table_offset) {
        report.add_with(&rule::TABLE_OFFSET, Some(40), 1, || {
            format!(
                "the L1 table at {:#x} does not fit in the file",
                h.l1_table_offset
            )
        });
    }
    mark(h.l1_table_offset, h.table_size as u64);
    let mut visited = 0u64;
    let mut allocated = 0u64;
    let mut l2_tables: Vec<(u64, u64)> = Vec::new();
    for_each_table_entry(src, &h, h.l1_table_offset, |i, l2| l2_tables.push((i, l2)));
    for (i, l2) in l2_tables {
        let at = Some(h.l1_table_offset + 8 * i);
        if !table_ok(l2) {
            report.add_with(&rule::TABLE_OFFSET, at, 1, || format!("L1 entry {i}: L2 table offset {l2:#x} is invalid (unaligned, in the header, or past the file)"));
            continue;
        }
        if !mark(l2, h.table_size as u64) {
            report.add_with(&rule::REFERENCED_ONCE, at, 1, || {
                format!("L1 entry {i}: L2 table at {l2:#x} is already in use")
            });
            continue;
        }
        visited += h.table_entries();
        if visited > limits.max_entries_visited {
            report.add(
                &general::WORK_LIMIT,
                None,
                "too many table entries".to_string(),
            );
            return report;
        }
        for_each_table_entry(src, &h, l2, |j, d| {
            if d == ZERO_CLUSTER {
                return;
            }
            // QEMU counts every entry with an offset as allocated, valid or not.
            allocated += 1;
            let at = Some(l2 + 8 * j);
            if d % cs != 0 || d < h.header_bytes() || d >= file_len {
                report.add_with(&rule::CLUSTER_OFFSET, at, 1, || {
                    format!("L2 entry {j} of table {i}: data offset {d:#x} is invalid")
                });
                return;
            }
            if !mark(d, 1) {
                report.add_with(&rule::REFERENCED_ONCE, at, 1, || {
                    format!("L2 entry {j} of table {i}: data cluster {d:#x} is already in use")
                });
            }
        });
    }
    // Leaks: the clusters past the header not in use, counted, and the
    // first of them found by walking up from the header (at most one step
    // per used cluster).
    let leaked = nclusters - header_clusters - used.set.len() as u64;
    if leaked > 0 {
        let first = (header_clusters..nclusters)
            .find(|k| !used.set.contains(k))
            .unwrap_or(header_clusters);
        report.add_with(&rule::LEAK, Some(first * cs), leaked, || {
            format!(
                "{leaked} clusters are allocated but unreferenced (first at {:#x})",
                first * cs
            )
        });
    }
    let stats = report.image_stats();
    stats.image_end_offset = Some(nclusters * cs);
    stats.total_clusters = Some(h.image_size.div_ceil(cs));
    stats.allocated_clusters = Some(allocated);
    report
}
