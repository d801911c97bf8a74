//! Repair of Parallels images as `qemu-img check -r leaks|all` repairs them
//! (spec "Header" in_use, "BAT"), following the spec where qemu-img's
//! check is wrong (corpus/peers/qemu-img/FINDINGS.md):
//!
//! - leaks (both modes): the file is cut after the last used cluster —
//!   counting the Format Extension's clusters as used, which qemu-img does
//!   not (it ignores ext_off and cuts them off);
//! - all: BAT entries naming a cluster past the end of the file, or before
//!   the data area (which qemu-img reads as guest data without a word), are
//!   cleared (the guest cluster reads as zeros); a BAT entry naming a
//!   cluster another entry already uses gets a copy of that cluster at the
//!   end of the data area, so both guest clusters keep reading the same
//!   bytes but no longer share them; a data_off past the end of the file
//!   is moved back to the first cluster after the BAT, as qemu-img does;
//! - in_use is set to 0 (closed) in both modes: qemu-img opens the image
//!   read-write to repair it and closes it cleanly.
//!
//! Nothing here writes: the caller applies the [`Plan`].

use super::header::{self, Header, HEADER_SIZE};
use super::SECTOR;
use crate::hash::FastSet;
use crate::limits::Limits;
use crate::repair::{header_and_check, refuse_unrepairable, Mode, Patch, Plan};
use crate::report::Report;
use crate::rules::{parallels as rule, Rule};
use crate::source::ReadAt;

/// What `-r all` repairs.
const ALL: &[&Rule] = &[
    &rule::BAT_INSIDE_FILE,
    &rule::BAT_BELOW_DATA,
    &rule::BAT_UNIQUE,
    &rule::LEAK,
    &rule::IN_USE_OPEN,
];

/// The repair of a Parallels image under `mode`.
pub fn plan(src: &dyn ReadAt, filename: &str, limits: &Limits, mode: Mode) -> crate::Result<Plan> {
    let (h, report) = header_and_check(
        filename,
        "parallels",
        limits,
        |r| header::parse(src, r),
        || super::check(src, filename, limits),
    )?;
    let mut plan = Plan::default();
    match mode {
        Mode::Leaks => {
            // The leak finding is located at the end of the last used cluster.
            let end = report
                .findings
                .iter()
                .find(|f| std::ptr::eq(f.rule, &rule::LEAK))
                .and_then(|f| f.offset());
            if let Some(end) = end {
                plan.set_len = Some(end);
                plan.fixed
                    .push(format!("{} leaked bytes cut off", src.size() - end));
            }
        }
        Mode::All => {
            // A data offset past the end of the file is moved back to the
            // first cluster after the BAT, as qemu-img does; others stay.
            let data_off = (h.data_offset() > src.size()).then(|| first_data_offset(&h));
            let mut repairable = ALL.to_vec();
            if data_off.is_some() {
                repairable.push(&rule::DATA_OFF);
            }
            refuse_unrepairable(&report, mode, &repairable)?;
            let bat_end = HEADER_SIZE + 4 * h.nb_bat_entries as u64;
            // A cluster of the Format Extension used twice is not a BAT fault.
            if let Some(f) = report.findings.iter().find(|f| {
                std::ptr::eq(f.rule, &rule::BAT_UNIQUE)
                    && !f
                        .offset()
                        .is_some_and(|o| (HEADER_SIZE..bat_end).contains(&o))
            }) {
                return Err(crate::Error::rule(
                    f.rule,
                    f.offset(),
                    format!("{filename}: -r all does not repair this ({})", f.detail),
                ));
            }
            let mut h = h.clone();
            if let Some(off) = data_off {
                let sectors = (off / SECTOR) as u32;
                plan.write(
                    header::field::DATA_OFF.pos(),
                    sectors.to_le_bytes().to_vec(),
                );
                plan.fixed.push(format!(
                    "data_off moved back into the file ({sectors} sectors)"
                ));
                h.data_off = sectors;
            }
            fix_bat(src, &h, filename, limits, &mut plan)?;
        }
    }
    // qemu-img opens the image read-write to repair it and closes it
    // cleanly, in either mode.
    if h.in_use != 0 {
        let f = header::field::IN_USE;
        plan.write(f.pos(), vec![0; 4]);
        plan.fixed.push("in_use set to 0 (closed)".into());
    }
    Ok(plan.sorted())
}

/// The first offset the data area can start at: the end of the BAT,
/// rounded up to a cluster (the extension magic) or a sector.
fn first_data_offset(h: &Header) -> u64 {
    let bat_end = HEADER_SIZE + 4 * h.nb_bat_entries as u64;
    if h.ext_magic {
        bat_end.next_multiple_of(h.cluster_size().max(SECTOR))
    } else {
        bat_end.next_multiple_of(SECTOR)
    }
}

/// Clears the BAT entries outside the data area or the file, moves every
/// second user of a cluster to a copy of it past the last used cluster, and
/// sets the file's length to the end of the last used cluster.
fn fix_bat(
    src: &dyn ReadAt,
    h: &Header,
    filename: &str,
    limits: &Limits,
    plan: &mut Plan,
) -> crate::Result<()> {
    let cs = h.cluster_size();
    let file_len = src.size();
    let data_off = h.data_offset();
    let bat_end = HEADER_SIZE + 4 * h.nb_bat_entries as u64;
    let mut used: FastSet<u64> = FastSet::default();
    let mut end = data_off.min(file_len).max(bat_end.min(file_len));
    let mut entries = Vec::new();
    header::for_each_bat_entry(src, h, |i, e| entries.push((i, e)));
    // The extension's clusters are used (spec), whatever comes first.
    let mut scratch = Report::new(filename, "parallels", limits);
    if h.ext_off != 0 {
        if let Some(x) = super::ext::parse(src, h, &mut scratch) {
            for &off in &x.clusters {
                used.insert(off);
                end = end.max(off + cs);
            }
        }
    }
    let (mut cleared, mut copies) = (0u64, Vec::new());
    for &(i, e) in &entries {
        let off = h.bat_offset(e);
        let at = HEADER_SIZE + 4 * i;
        if off < data_off || off.saturating_add(cs) > file_len {
            plan.write(at, vec![0; 4]);
            cleared += 1;
        } else if !used.insert(off) {
            copies.push((at, off));
        } else {
            end = end.max(off + cs);
        }
    }
    // Copies go one after another from the first cluster boundary (counted
    // from the data offset) past everything used.
    let mut next = data_off + (end.saturating_sub(data_off)).div_ceil(cs) * cs;
    let unit = if h.ext_magic { cs } else { SECTOR };
    for &(at, from) in &copies {
        let Ok(entry) = u32::try_from(next / unit) else {
            return Err(crate::Error::rule(
                &rule::BAT_UNIQUE,
                Some(at),
                format!("{filename}: no room for a copy of the cluster at {from:#x} a BAT entry can name"),
            ));
        };
        plan.writes.push((next, Patch::Copy { from, len: cs }));
        plan.write(at, entry.to_le_bytes().to_vec());
        next += cs;
        end = next;
    }
    if cleared > 0 {
        plan.fixed.push(format!(
            "{cleared} BAT entries outside the data area or the file cleared"
        ));
    }
    if !copies.is_empty() {
        plan.fixed.push(format!(
            "{} BAT entries sharing a cluster given a copy of their own",
            copies.len()
        ));
    }
    if end != file_len {
        if end < file_len {
            plan.fixed
                .push(format!("{} leaked bytes cut off", file_len - end));
        }
        plan.set_len = Some(end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallels::mutate::{apply, Mutation};

    fn repaired(m: Mutation, mode: Mode) -> (Report, Report) {
        use crate::parallels::write::{write, Description};
        let mut d = Description::new(1 << 20, 4096, true);
        for k in [0u64, 3, 7] {
            d.clusters.insert(k, vec![k as u8 + 1; 4096]);
        }
        let mut img = write(&d).unwrap_or_default();
        assert!(apply(m, &mut img).is_some(), "{m:?} does not apply");
        let before = crate::parallels::check(&img.as_slice(), "t", &Limits::default());
        let plan = plan(&img.as_slice(), "t", &Limits::default(), mode)
            .unwrap_or_else(|e| panic!("{m:?}: {e}"));
        let orig = img.clone();
        for (at, p) in &plan.writes {
            let at = *at as usize;
            let bytes = match p {
                Patch::Bytes(b) => b.clone(),
                Patch::Copy { from, len } => orig[*from as usize..(*from + *len) as usize].to_vec(),
            };
            if img.len() < at + bytes.len() {
                img.resize(at + bytes.len(), 0);
            }
            img[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        if let Some(n) = plan.set_len {
            img.resize(n as usize, 0);
        }
        (
            before,
            crate::parallels::check(&img.as_slice(), "t", &Limits::default()),
        )
    }

    #[test]
    fn every_fault_qemu_img_repairs_rechecks_clean() {
        for (m, mode) in [
            (Mutation::Leak, Mode::Leaks),
            (Mutation::Leak, Mode::All),
            (Mutation::BatDuplicate { nth: 1 }, Mode::All),
            (Mutation::BatPastEof { nth: 0 }, Mode::All),
            (Mutation::InUseOpen, Mode::All),
            (Mutation::DataOffPastEof, Mode::All),
        ] {
            let (before, after) = repaired(m, mode);
            assert!(before.exit_code(false) != 0, "{m:?}");
            assert_eq!(
                after.exit_code(false),
                0,
                "{m:?} {mode:?}: {:?}",
                after.findings
            );
        }
    }
}
