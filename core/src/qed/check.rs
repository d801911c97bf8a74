//! The QED checker, as QEMU's qed_check counts (spec: each cluster
//! referenced once, offsets inside the file and aligned, tables fit before
//! EOF; leaks), and the reader.

use super::header::{self, Header, ZERO_CLUSTER};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{general, qed as rule};
use crate::source::{entries_in_file, ReadAt};

/// A table's entries, as far as the file holds them (allocation bounded by
/// the file, not by the table size the header claims).
pub(crate) fn read_table(src: &dyn ReadAt, h: &Header, offset: u64) -> Vec<u64> {
    let n = entries_in_file(src, offset, h.table_entries(), 8);
    let mut raw = vec![0u8; (n * 8) as usize];
    if src.read_zero_padded(&mut raw, offset).is_err() {
        raw.fill(0);
    }
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

pub fn check(src: &dyn ReadAt, filename: &str, limits: &Limits) -> Report {
    let mut report = Report::new(filename, "qed", limits);
    let Some(h) = header::parse(src, &mut report) else {
        return report;
    };
    let cs = h.cs();
    let file_len = src.size();
    let nclusters = file_len.div_ceil(cs);
    let mut used = vec![false; nclusters as usize];
    let mut mark = |off: u64, n: u64| -> bool {
        let first = off / cs;
        let range = first..first.saturating_add(n).min(nclusters);
        if range.clone().any(|k| used[k as usize]) {
            return false;
        }
        range.for_each(|k| used[k as usize] = true);
        true
    };
    mark(0, h.header_size as u64);
    let table_ok = |off: u64| {
        off % cs == 0
            && off >= h.header_bytes()
            && off
                .checked_add(h.table_bytes())
                .is_some_and(|e| e <= file_len)
    };
    if !table_ok(h.l1_table_offset) {
        report.add(
            &rule::TABLE_OFFSET,
            Some(40),
            format!(
                "the L1 table at {:#x} does not fit in the file",
                h.l1_table_offset
            ),
        );
    }
    mark(h.l1_table_offset, h.table_size as u64);
    let mut visited = 0u64;
    let mut allocated = 0u64;
    for (i, &l2) in read_table(src, &h, h.l1_table_offset).iter().enumerate() {
        if l2 == 0 {
            continue;
        }
        let at = Some(h.l1_table_offset + 8 * i as u64);
        if !table_ok(l2) {
            report.add(&rule::TABLE_OFFSET, at, format!("L1 entry {i}: L2 table offset {l2:#x} is invalid (unaligned, in the header, or past the file)"));
            continue;
        }
        if !mark(l2, h.table_size as u64) {
            report.add(
                &rule::REFERENCED_ONCE,
                at,
                format!("L1 entry {i}: L2 table at {l2:#x} is already in use"),
            );
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
        for (j, &d) in read_table(src, &h, l2).iter().enumerate() {
            if d == 0 || d == ZERO_CLUSTER {
                continue;
            }
            // QEMU counts every entry with an offset as allocated, valid or not.
            allocated += 1;
            let at = Some(l2 + 8 * j as u64);
            if d % cs != 0 || d < h.header_bytes() || d >= file_len {
                report.add(
                    &rule::CLUSTER_OFFSET,
                    at,
                    format!("L2 entry {j} of table {i}: data offset {d:#x} is invalid"),
                );
                continue;
            }
            if !mark(d, 1) {
                report.add(
                    &rule::REFERENCED_ONCE,
                    at,
                    format!("L2 entry {j} of table {i}: data cluster {d:#x} is already in use"),
                );
                continue;
            }
        }
    }
    let leaked: Vec<u64> = (h.header_size as u64..nclusters)
        .filter(|&k| !used[k as usize])
        .collect();
    if let Some(&first) = leaked.first() {
        report.add_times(
            &rule::LEAK,
            Some(first * cs),
            leaked.len() as u64,
            format!(
                "{} clusters are allocated but unreferenced (first at {:#x})",
                leaked.len(),
                first * cs
            ),
        );
    }
    report.image_end_offset = Some(nclusters * cs);
    report.total_clusters = Some(h.image_size.div_ceil(cs));
    report.allocated_clusters = Some(allocated);
    report
}
