//! Repair of QED images as `qemu-img check -r leaks|all` repairs them (QEMU
//! treats both modes alike): table entries naming an invalid offset
//! (unaligned, inside the header, past the end of the file; spec "Table
//! Entries" and "Consistency checking") are cleared, so the cluster reads
//! from the backing file or as zeros, and QED_F_NEED_CHECK is cleared once
//! no corruption is left (spec "Consistency checking": a checked image is
//! marked clean).
//!
//! What qemu-img leaves, so do we: a cluster referenced twice stays so (a
//! corruption), and leaked clusters stay in the file — QED has no
//! refcounts, only truncating the file could drop them, and qemu-img does
//! not truncate. Nothing here writes: the caller applies the [`Plan`].

use super::header::{self, Header, F_NEED_CHECK, ZERO_CLUSTER};
use crate::hash::FastSet;
use crate::limits::Limits;
use crate::repair::{header_and_check, Mode, Plan};
use crate::report::Severity;
use crate::rules::qed as rule;
use crate::source::{entries_in_file, for_each_entry, le_u64, ReadAt};

/// The repair of a QED image (`mode` changes nothing: QEMU's QED check
/// takes one "fix" flag for both).
pub fn plan(src: &dyn ReadAt, filename: &str, limits: &Limits, _mode: Mode) -> crate::Result<Plan> {
    let (h, report) = header_and_check(
        filename,
        "qed",
        limits,
        |r| header::parse(src, r),
        || super::check(src, filename, limits),
    )?;
    let mut plan = Plan::default();
    let cleared = clear_invalid_entries(src, &h, &mut plan);
    if cleared > 0 {
        plan.fixed.push(format!(
            "{cleared} table entries naming an invalid offset cleared"
        ));
    }
    // The corruptions the clearing does not fix: the L1 table's own offset
    // (QEMU cannot open the image) and clusters in use twice.
    let left = report.findings.iter().any(|f| {
        f.severity == Severity::Corruption
            && !std::ptr::eq(f.rule, &rule::CLUSTER_OFFSET)
            && !(std::ptr::eq(f.rule, &rule::TABLE_OFFSET) && f.offset() != Some(40))
    });
    if !left && h.features & F_NEED_CHECK != 0 {
        let f = header::field::FEATURES;
        let mut b = [0u8; header::field::FEATURES.end()];
        f.put(&mut b, h.features & !F_NEED_CHECK);
        plan.write(
            f.pos(),
            b.get(f.pos() as usize..).unwrap_or_default().to_vec(),
        );
        plan.fixed.push("NEED_CHECK cleared".into());
    }
    Ok(plan.sorted())
}

/// Clears each L1 entry naming an L2 table that does not fit in the file,
/// and each L2 entry naming an invalid data cluster, as the checker judges
/// them; returns how many. An L2 table reached twice is walked once (QEMU
/// skips a table already in use).
fn clear_invalid_entries(src: &dyn ReadAt, h: &Header, plan: &mut Plan) -> u64 {
    let cs = h.cs();
    let file_len = src.size();
    let table_ok = |off: u64| h.table_fits(off, file_len);
    let data_ok = |d: u64| d.is_multiple_of(cs) && d >= h.header_bytes() && d < file_len;
    let mut cleared = 0u64;
    let mut l2_tables = Vec::new();
    for_each_nonzero(src, h, h.l1_table_offset, |i, l2| l2_tables.push((i, l2)));
    let mut walked: FastSet<u64> = FastSet::default();
    for (i, l2) in l2_tables {
        if !table_ok(l2) {
            plan.write(h.l1_table_offset + 8 * i, vec![0; 8]);
            cleared += 1;
            continue;
        }
        if !walked.insert(l2) {
            continue;
        }
        for_each_nonzero(src, h, l2, |j, d| {
            if d != ZERO_CLUSTER && !data_ok(d) {
                plan.write(l2 + 8 * j, vec![0; 8]);
                cleared += 1;
            }
        });
    }
    cleared
}

/// Calls `f(index, entry)` for each non-zero entry of the table at
/// `offset`, as far as the file holds it.
fn for_each_nonzero(src: &dyn ReadAt, h: &Header, offset: u64, mut f: impl FnMut(u64, u64)) {
    let n = entries_in_file(src, offset, h.table_entries(), 8);
    for_each_entry(src, offset, n, 8, |i, raw| {
        let e = le_u64(raw, 0);
        if e != 0 {
            f(i, e);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qed::mutate::{apply, Mutation};
    use crate::report::Report;

    fn repaired(m: Mutation) -> (Report, Report) {
        use crate::qed::write::{write, Cluster, Description};
        let mut d = Description::new(1 << 20, 4096, 1);
        for k in [0u64, 3, 7] {
            d.clusters.insert(k, Cluster::Data(vec![k as u8 + 1; 4096]));
        }
        let mut img = write(&d).unwrap_or_default();
        assert!(apply(m, &mut img).is_some(), "{m:?} does not apply");
        let before = crate::qed::check(&img.as_slice(), "t", &Limits::default());
        let plan = plan(&img.as_slice(), "t", &Limits::default(), Mode::All)
            .unwrap_or_else(|e| panic!("{m:?}: {e}"));
        for (at, p) in &plan.writes {
            let crate::repair::Patch::Bytes(b) = p else {
                panic!("bytes only")
            };
            img[*at as usize..*at as usize + b.len()].copy_from_slice(b);
        }
        (
            before,
            crate::qed::check(&img.as_slice(), "t", &Limits::default()),
        )
    }

    #[test]
    fn need_check_is_cleared_and_invalid_offsets_dropped() {
        let (before, after) = repaired(Mutation::NeedCheck);
        assert!(before.has(&rule::NEED_CHECK));
        assert!(!after.has(&rule::NEED_CHECK) && after.exit_code(false) == 0);
        for m in [
            Mutation::DataPastEof { nth: 0 },
            Mutation::MisalignData { nth: 1 },
        ] {
            let (before, after) = repaired(m);
            assert!(before.has(&rule::CLUSTER_OFFSET), "{m:?}");
            // The cluster the entry named before stays in the file: a leak.
            assert!(
                !after.has(&rule::CLUSTER_OFFSET),
                "{m:?}: {:?}",
                after.findings
            );
        }
    }
}
