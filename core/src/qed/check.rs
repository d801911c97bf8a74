//! The QED checker, as QEMU's qed_check counts (spec: each cluster
//! referenced once, offsets inside the file and aligned, tables fit before
//! EOF; leaks), and the reader.

use super::header::{self, Header, ZERO_CLUSTER};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{general, qed as rule};
use crate::source::{entries_in_file, ReadAt};

fn read_table(src: &dyn ReadAt, h: &Header, offset: u64) -> Vec<u64> {
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

/// A QED virtual disk (without its backing file: unallocated reads as zeros).
pub struct Disk<'a> {
    src: &'a dyn ReadAt,
    h: Header,
    l1: Vec<u64>,
}

impl<'a> Disk<'a> {
    pub fn open(src: &'a dyn ReadAt) -> Result<Disk<'a>, String> {
        let mut r = Report::new("read", "qed", &Limits::default());
        let h = header::parse(src, &mut r).ok_or_else(|| {
            r.findings.first().map_or("unreadable".into(), |f| {
                format!("[{}] {}", f.rule.id, f.detail)
            })
        })?;
        let l1 = read_table(src, &h, h.l1_table_offset);
        Ok(Disk { src, h, l1 })
    }

    pub fn size(&self) -> u64 {
        self.h.image_size
    }

    /// The data entry of guest cluster `k` (0 unallocated, 1 zero, else offset).
    fn entry(&self, k: u64) -> u64 {
        let n = self.h.table_entries();
        let l2 = self.l1.get((k / n) as usize).copied().unwrap_or(0);
        if l2 == 0 {
            return 0;
        }
        let at = l2 + 8 * (k % n);
        let mut b = [0u8; 8];
        if self.src.read_zero_padded(&mut b, at).is_err() {
            return 0;
        }
        u64::from_le_bytes(b)
    }

    /// The map as qemu-img prints it: data clusters with offsets, zero
    /// clusters present and zero, unallocated ones not present. Walks the L1
    /// table (bounded by the file); past its last L2 table, one unallocated run.
    pub fn map(&self) -> Vec<crate::qcow2::read::MapEntry> {
        use crate::qcow2::read::MapEntry;
        let cs = self.h.cs();
        let size = self.size();
        let mut out: Vec<MapEntry> = Vec::new();
        let mut push = |e: MapEntry| crate::qcow2::read::push_merged(&mut out, e);
        let per_l2 = self.h.table_entries();
        let mut pos = 0u64;
        for (i, &l2) in self.l1.iter().enumerate() {
            let table_start = i as u64 * per_l2 * cs;
            if table_start >= size {
                break;
            }
            if l2 == 0 {
                continue; // filled in below as an unallocated gap
            }
            if pos < table_start {
                push(MapEntry {
                    start: pos,
                    length: table_start - pos,
                    depth: 0,
                    present: false,
                    zero: true,
                    data: false,
                    compressed: false,
                    offset: None,
                });
                pos = table_start;
            }
            let table = read_table(self.src, &self.h, l2);
            for k in 0..per_l2 {
                if pos >= size {
                    break;
                }
                let len = cs.min(size - pos);
                let e = table.get(k as usize).copied().unwrap_or(0);
                let (present, zero, data, offset) = match e {
                    0 => (false, true, false, None),
                    ZERO_CLUSTER => (true, true, false, None),
                    off => (true, false, true, Some(off)),
                };
                push(MapEntry {
                    start: pos,
                    length: len,
                    depth: 0,
                    present,
                    zero,
                    data,
                    compressed: false,
                    offset,
                });
                pos += len;
            }
        }
        if pos < size {
            push(MapEntry {
                start: pos,
                length: size - pos,
                depth: 0,
                present: false,
                zero: true,
                data: false,
                compressed: false,
                offset: None,
            });
        }
        out
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let cs = self.h.cs();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((cs - pos % cs) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.entry(pos / cs) {
                e if e > ZERO_CLUSTER && pos < self.size() => self
                    .src
                    .read_zero_padded(out, e + pos % cs)
                    .map_err(|e| e.to_string())?,
                _ => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}
