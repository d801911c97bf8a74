//! Repair (spec "Host cluster management", "Cluster mapping"), as
//! `qemu-img check -r leaks|all` repairs:
//!
//! - leaks: every refcount above the references the check counted is
//!   lowered to them, in the refcount blocks where it is;
//! - all: the refcounts are rebuilt from the references (a new refcount
//!   table and blocks past the end of the file, as qemu-img's "Rebuilding
//!   refcount structure", which frees the old ones), then OFLAG_COPIED is
//!   made to say "refcount is 1" on every L1 and active L2 entry, and the
//!   dirty and corrupt bits are cleared.
//!
//! The references come from the check itself ([`check_counting`]'s census),
//! never from finding text. What qemu-img cannot repair either (references
//! past the end of the file or into metadata it does not own, misaligned
//! or reserved entries, compressed clusters with COPIED) is refused before
//! anything is written: the plan is empty and the error names the rule.
//!
//! Nothing here writes: the caller applies the [`Plan`] to a copy.

use super::check::check_counting;
use super::header::{self, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::mapping::{
    classify, l2_entry, ClusterKind, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED,
};
use super::refcount::{decode, owner, Census, OnDisk, REFT_OFFSET_MASK, REFT_RESERVED_MASK};
use super::snapshot;
use crate::hash::{FastMap, FastSet};
use crate::limits::Limits;
use crate::repair::{refuse_unrepairable, Mode, Plan};
use crate::report::{Report, Severity};
use crate::rules::{general, qcow2 as rule, Rule};
use crate::source::ReadAt;

/// One leaked cluster and the refcount it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leak {
    /// The host cluster index.
    pub cluster: u64,
    /// Its refcount on disk.
    pub refcount: u64,
    /// The references the check counted: the refcount it is lowered to.
    pub references: u64,
}

/// What `-r all` repairs besides the refcount family: the COPIED flags.
const COPIED: &[&Rule] = &[&rule::L1_COPIED, &rule::L2_COPIED];

/// Findings under these rules make `-r all` rebuild the refcounts.
const REFCOUNT_FAMILY: &[&Rule] = &[
    &rule::REFCOUNT_LEAK,
    &rule::REFCOUNT_TOO_LOW,
    &rule::REFBLOCK_IN_FILE,
    &rule::REFBLOCK_ALIGNED,
    &rule::REFTABLE_RESERVED,
    &rule::METADATA_OVERLAP,
];

/// The image after the check: header, the findings and the references.
struct Checked {
    h: Header,
    report: Report,
    census: Census,
}

/// Checks with every leak kept (a leak finding per cluster is what `-r
/// leaks` locates); refuses an image whose check could not complete, since
/// its references are not all known.
fn checked(src: &dyn ReadAt, filename: &str, limits: &Limits) -> crate::Result<Checked> {
    let mut h_report = Report::new(filename, "qcow2", limits);
    let Some(parsed) = header::parse(src, &mut h_report) else {
        return Err(h_report.into_error());
    };
    let h = parsed.header;
    let cap = (src.size() >> h.cluster_bits).saturating_mul(2).max(1024) as usize;
    let keep_all = Limits {
        max_findings_per_rule: cap,
        ..limits.clone()
    };
    let (report, census) = check_counting(src, filename, &keep_all);
    if report.check_errors > 0 {
        return Err(report.into_error());
    }
    let Some(census) = census else {
        return Err(report.into_error());
    };
    Ok(Checked { h, report, census })
}

/// The repair of a qcow2 image under `mode`.
pub fn plan(src: &dyn ReadAt, filename: &str, limits: &Limits, mode: Mode) -> crate::Result<Plan> {
    if mode == Mode::All {
        if let Some(plan) = snapshot_table(src, filename, limits)? {
            return Ok(plan);
        }
    }
    let c = checked(src, filename, limits)?;
    match mode {
        Mode::Leaks => {
            // As qemu-img: leaks are fixed, whatever else is left.
            if c.report
                .findings_omitted()
                .contains_key(rule::REFCOUNT_LEAK.id)
            {
                return Err(crate::Error::rule(
                    &general::WORK_LIMIT,
                    None,
                    format!(
                        "{filename}: {} leaked clusters, more than a repair keeps in memory",
                        c.report.count(rule::REFCOUNT_LEAK.id)
                    ),
                ));
            }
            let leaks = leaks(src, &c)?;
            let mut plan = Plan::default();
            for (at, bytes) in set_refcounts(src, &c.h, &leaks)? {
                plan.write(at, bytes);
            }
            if !leaks.is_empty() {
                plan.fixed.push(format!(
                    "{} leaked clusters: refcounts lowered to the references",
                    leaks.len()
                ));
            }
            // qemu-img -r leaks also fixes COPIED and the header bits when
            // that is safe: once the leaks are fixed nothing else is wrong,
            // so the references are the refcounts.
            let only_copied = !c.report.findings.iter().any(|f| {
                f.severity == Severity::Corruption
                    && !std::ptr::eq(f.rule, &rule::L1_COPIED)
                    && !std::ptr::eq(f.rule, &rule::L2_COPIED)
            });
            if only_copied {
                copied(src, &c.h, &|k| c.census.get(k), &mut plan)?;
                clear_header_bits(src, &c.h, &mut plan)?;
            }
            Ok(plan.sorted())
        }
        Mode::All => {
            refuse_unrepairable(&c.report, mode, &[REFCOUNT_FAMILY, COPIED].concat())?;
            all(src, &c)
        }
    }
}

/// `-r all` of an image whose snapshot table qemu-img rewrites (entries
/// with too much extra data or too little for version 3, too many
/// entries): the new table goes at the first cluster past the end of the
/// file and the header points at it; the image as that leaves it is then
/// checked and repaired as any other, the old table's clusters being
/// leaked there and the new one's unrefcounted, which the refcount rebuild
/// settles. `None` when the table needs no rewrite.
fn snapshot_table(
    src: &dyn ReadAt,
    filename: &str,
    limits: &Limits,
) -> crate::Result<Option<Plan>> {
    let mut h_report = Report::new(filename, "qcow2", limits);
    let Some(parsed) = header::parse(src, &mut h_report) else {
        return Ok(None);
    };
    let h = parsed.header;
    let Some(rw) = snapshot::rewrite(src, &h)? else {
        return Ok(None);
    };
    let at = src.size().next_multiple_of(h.cluster_size());
    let mut pointer = [0u8; header::field::SNAPSHOTS_OFFSET.end()];
    header::field::NB_SNAPSHOTS.put(&mut pointer, rw.count);
    header::field::SNAPSHOTS_OFFSET.put(&mut pointer, at);
    let from = header::field::NB_SNAPSHOTS.pos();
    let mut first = Plan::default();
    first.write(
        from,
        pointer.get(from as usize..).unwrap_or_default().to_vec(),
    );
    first.fixed.extend(rw.fixed);
    first.fixed.push(format!(
        "the snapshot table rewritten at {at:#x} ({} entries)",
        rw.count
    ));
    first.write(at, rw.table);
    let after = {
        let patched = first.overlay(src);
        let c = checked(&patched, filename, limits)?;
        refuse_unrepairable(&c.report, Mode::All, &[REFCOUNT_FAMILY, COPIED].concat())?;
        all(&patched, &c)?
    };
    Ok(Some(first.then(after)))
}

/// The leaks of the image, located by the check's leak findings (typed
/// offsets), with the refcount read from disk and the references from the
/// census.
fn leaks(src: &dyn ReadAt, c: &Checked) -> crate::Result<Vec<Leak>> {
    let ondisk = OnDisk::load(src, &c.h)?;
    let cs = c.h.cluster_size();
    let mut out = Vec::new();
    for f in c
        .report
        .findings
        .iter()
        .filter(|f| std::ptr::eq(f.rule, &rule::REFCOUNT_LEAK))
    {
        let Some(at) = f.offset() else { continue };
        let cluster = at / cs;
        let refcount = ondisk.get(cluster).map_err(|e| {
            crate::Error::rule(
                &rule::REFBLOCK_UNREADABLE,
                Some(e.block_offset),
                format!("the refcount of leaked cluster {cluster} cannot be read"),
            )
        })?;
        out.push(Leak {
            cluster,
            refcount,
            references: c.census.get(cluster),
        });
    }
    out.sort_by_key(|l| l.cluster);
    Ok(out)
}

/// The refcount block bytes that give each leak its references. Sub-byte
/// widths share bytes: each byte is read once and every refcount in it set.
fn set_refcounts(
    src: &dyn ReadAt,
    h: &Header,
    leaks: &[Leak],
) -> crate::Result<Vec<(u64, Vec<u8>)>> {
    let ondisk = OnDisk::load(src, h)?;
    let epb = ondisk.entries_per_block();
    let order = h.refcount_order;
    let bits = 1u64 << order;
    let mut bytes: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    for l in leaks {
        let block = ondisk.block_offset(l.cluster / epb).map_err(|e| {
            crate::Error::rule(
                &rule::REFBLOCK_UNREADABLE,
                Some(e.block_offset),
                format!(
                    "the refcount of leaked cluster {} cannot be written",
                    l.cluster
                ),
            )
        })?;
        let index = l.cluster % epb;
        let at = block + index * bits / 8;
        let width = bits.div_ceil(8) as usize;
        let mut cur = match bytes.get(&at) {
            Some(b) => b.clone(),
            None => {
                let mut b = vec![0u8; width];
                src.read_exact_at(&mut b, at)?;
                b
            }
        };
        // Re-read through the decoder: what the check saw must be what is
        // about to change.
        let within = if bits >= 8 { 0 } else { index % (8 / bits) };
        if decode(&cur, within, order) != l.refcount {
            return Err(crate::Error::rule(
                &rule::REFCOUNT_LEAK,
                Some(at),
                format!("cluster {}: refcount changed under the repair", l.cluster),
            ));
        }
        encode(&mut cur, within, order, l.references);
        bytes.insert(at, cur);
    }
    Ok(bytes.into_iter().collect())
}

/// Stores refcount `v` as entry `index` of `block` (2^order bits wide, big
/// endian from 8 bits up, least significant bits first below): the
/// inverse of [`decode`]. Out of range writes nothing.
fn encode(block: &mut [u8], index: u64, order: u32, v: u64) {
    let bits = 1u64 << order;
    if bits >= 8 {
        let width = (bits / 8) as usize;
        let at = index as usize * width;
        if let Some(slot) = block.get_mut(at..at + width) {
            slot.copy_from_slice(&v.to_be_bytes()[8 - width..]);
        }
    } else {
        let bit = index * bits;
        let shift = bit % 8;
        let mask = (((1u64 << bits) - 1) << shift) as u8;
        if let Some(b) = block.get_mut((bit / 8) as usize) {
            *b = (*b & !mask) | (((v << shift) as u8) & mask);
        }
    }
}

/// `-r all`: rebuild when a refcount is wrong, then COPIED and the header bits.
fn all(src: &dyn ReadAt, c: &Checked) -> crate::Result<Plan> {
    let h = &c.h;
    let mut plan = Plan::default();
    let rebuild = c
        .report
        .findings
        .iter()
        .any(|f| REFCOUNT_FAMILY.iter().any(|r| std::ptr::eq(*r, f.rule)))
        || h.incompatible_features & INCOMPAT_DIRTY != 0;
    let refs = references(src, c)?;
    let mut header_bytes = [0u8; header::field::INCOMPATIBLE_FEATURES.end()];
    src.read_zero_padded(&mut header_bytes, 0)?;
    if rebuild {
        let built = rebuild_refcounts(src, h, &c.census, &refs, &mut plan)?;
        header::field::REFCOUNT_TABLE_OFFSET.put(&mut header_bytes, built.0);
        header::field::REFCOUNT_TABLE_CLUSTERS.put(&mut header_bytes, built.1);
        let r = header::field::REFCOUNT_TABLE_OFFSET.pos() as usize;
        let end = header::field::REFCOUNT_TABLE_CLUSTERS.end();
        plan.write(
            r as u64,
            header_bytes.get(r..end).unwrap_or_default().to_vec(),
        );
    }
    let refcount = |k: u64| {
        if rebuild {
            refs.get(&k).copied().unwrap_or(0)
        } else {
            c.census.get(k)
        }
    };
    copied(src, h, &refcount, &mut plan)?;
    clear_header_bits(src, h, &mut plan)?;
    Ok(plan.sorted())
}

/// qemu-img marks a repaired image clean and consistent once no
/// corruption is left: the dirty and corrupt bits cleared (version 3).
fn clear_header_bits(src: &dyn ReadAt, h: &Header, plan: &mut Plan) -> crate::Result<()> {
    let bits = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;
    if h.version >= 3 && h.incompatible_features & bits != 0 {
        let f = header::field::INCOMPATIBLE_FEATURES;
        let mut b = [0u8; header::field::INCOMPATIBLE_FEATURES.end()];
        src.read_zero_padded(&mut b, 0)?;
        f.put(&mut b, h.incompatible_features & !bits);
        plan.write(
            f.pos(),
            b.get(f.pos() as usize..).unwrap_or_default().to_vec(),
        );
        plan.fixed.push("the dirty and corrupt bits cleared".into());
    }
    Ok(())
}

/// The references of every referenced cluster, without those of the old
/// refcount table and blocks (which a rebuild frees): the refcounts the
/// rebuilt structure holds. Refuses clusters owned by two kinds of
/// structure besides the refcounts, and counts the refcount width cannot
/// hold.
fn references(src: &dyn ReadAt, c: &Checked) -> crate::Result<FastMap<u64, u64>> {
    let h = &c.h;
    let cs = h.cluster_size();
    let census = &c.census;
    let nb = census.nb_clusters;
    // The old structure, counted as the check counted it.
    let mut old: FastMap<u64, u64> = FastMap::default();
    let table_bytes = h.refcount_table_clusters as u64 * cs;
    if table_bytes > 0
        && (h.refcount_table_offset as u128 + table_bytes as u128) < src.size() as u128 + cs as u128
    {
        let first = h.refcount_table_offset / cs;
        for k in first..(h.refcount_table_offset + table_bytes).div_ceil(cs) {
            *old.entry(k).or_default() += 1;
        }
    }
    let ondisk = OnDisk::load(src, h)?;
    for &e in &ondisk.table {
        let off = e & REFT_OFFSET_MASK;
        if e & REFT_RESERVED_MASK != 0 || !off.is_multiple_of(cs) || off == 0 || off / cs >= nb {
            continue;
        }
        *old.entry(off / cs).or_default() += 1;
    }
    let mut refs = FastMap::default();
    let mut bad: Option<crate::Error> = None;
    census.for_each_in(0, nb, |k, count, owners| {
        let own = old.get(&k).copied().unwrap_or(0);
        let others = owners & !owner::REFCOUNT;
        let n = count.saturating_sub(own);
        if bad.is_none()
            && (others.count_ones() > 1
                || (own > 0 && others != 0 && owners & owner::REFCOUNT == 0))
        {
            bad = Some(crate::Error::rule(
                &rule::METADATA_OVERLAP,
                Some(k * cs),
                format!(
                    "cluster {k} is owned by {}: -r all does not repair this",
                    owner::names(others)
                ),
            ));
        }
        if n > census.refcount_max() && bad.is_none() {
            bad = Some(crate::Error::rule(
                &rule::REFCOUNT_OVERFLOW,
                Some(k * cs),
                format!("cluster {k} has {n} references, more than its refcount can hold"),
            ));
        }
        if n > 0 {
            refs.insert(k, n);
        }
    });
    match bad {
        Some(e) => Err(e),
        None => Ok(refs),
    }
}

/// Writes a new refcount table and blocks from the first cluster past the
/// end of the file and of every reference, holding `refs` and a refcount
/// of 1 for their own clusters; returns (table offset, table clusters).
/// Only blocks holding a non-zero refcount are written (the others stay 0
/// in the table): memory follows the clusters referenced, never the
/// length a sparse file claims.
fn rebuild_refcounts(
    src: &dyn ReadAt,
    h: &Header,
    census: &Census,
    refs: &FastMap<u64, u64>,
    plan: &mut Plan,
) -> crate::Result<(u64, u32)> {
    let cs = h.cluster_size();
    let order = h.refcount_order;
    let epb = (cs * 8) >> order;
    let first = src.size().div_ceil(cs).max(census.nb_clusters);
    let referenced: std::collections::BTreeSet<u64> = refs.keys().map(|k| k / epb).collect();
    // The table and blocks lie at `first` and are refcounted themselves:
    // grow the table and the set of blocks until they cover their own
    // clusters (a few rounds: each adds at most a block or a table cluster).
    let mut table = 1u64;
    let mut blocks = referenced.clone();
    for _ in 0..64 {
        let end = first + table + blocks.len() as u64;
        let mut next = referenced.clone();
        next.extend(first / epb..=(end - 1) / epb);
        let highest = next.last().copied().unwrap_or(0);
        let t = ((highest + 1) * 8).div_ceil(cs);
        if (t, &next) == (table, &blocks) {
            break;
        }
        (table, blocks) = (t, next);
    }
    if table * cs > super::MAX_REFTABLE_BYTES || table > u32::MAX as u64 {
        return Err(crate::Error::rule(
            &general::TABLE_LIMIT,
            None,
            format!("a rebuilt refcount table of {table} clusters is larger than QEMU opens"),
        ));
    }
    let table_at = first;
    let blocks_at = first + table;
    let mut reftable = vec![0u8; (table * cs) as usize];
    for (i, &b) in blocks.iter().enumerate() {
        let at = (b * 8) as usize;
        if let Some(slot) = reftable.get_mut(at..at + 8) {
            slot.copy_from_slice(&((blocks_at + i as u64) * cs).to_be_bytes());
        }
    }
    plan.write(table_at * cs, reftable);
    let mut sorted: Vec<(u64, u64)> = refs.iter().map(|(&k, &n)| (k, n)).collect();
    sorted.extend((table_at..blocks_at + blocks.len() as u64).map(|k| (k, 1)));
    sorted.sort_unstable();
    let mut it = sorted.into_iter().peekable();
    for (i, &b) in blocks.iter().enumerate() {
        let mut block = vec![0u8; cs as usize];
        while let Some(&(k, n)) = it.peek() {
            if k >= (b + 1) * epb {
                break;
            }
            encode(&mut block, k.saturating_sub(b * epb), order, n);
            it.next();
        }
        plan.write((blocks_at + i as u64) * cs, block);
    }
    plan.fixed.push(format!(
        "refcounts rebuilt from the references: a new refcount table ({table} clusters) and {} blocks at {:#x}",
        blocks.len(),
        table_at * cs
    ));
    Ok((table_at * cs, table as u32))
}

/// Sets OFLAG_COPIED on every active L1 entry and standard L2 entry with a
/// host cluster exactly where its refcount (`refcount(cluster)`, after the
/// repair) is 1, as qemu-img's check_oflag_copied does.
fn copied(
    src: &dyn ReadAt,
    h: &Header,
    refcount: &dyn Fn(u64) -> u64,
    plan: &mut Plan,
) -> crate::Result<()> {
    let cs = h.cluster_size();
    let l1 = crate::source::read_u64_table(src, h.l1_table_offset, h.l1_size as u64);
    let mut seen: FastSet<u64> = FastSet::default();
    let mut table = vec![0u8; cs as usize];
    let (mut n_l1, mut n_l2) = (0u64, 0u64);
    for (i, &e) in l1.iter().enumerate() {
        let l2 = e & L1E_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        let want = refcount(l2 / cs) == 1;
        if want != (e & OFLAG_COPIED != 0) {
            plan.write(
                h.l1_table_offset + 8 * i as u64,
                (e ^ OFLAG_COPIED).to_be_bytes().to_vec(),
            );
            n_l1 += 1;
        }
        if !seen.insert(l2) {
            continue;
        }
        src.read_zero_padded(&mut table, l2)?;
        for j in 0..h.l2_entries() as usize {
            let (entry, _) = l2_entry(h, &table, j);
            let off = entry & L2E_OFFSET_MASK;
            if !matches!(
                classify(h, entry),
                ClusterKind::Normal | ClusterKind::ZeroAlloc
            ) {
                continue;
            }
            // With a data file every cluster has an implicit refcount of 1.
            let want = h.has_data_file() || refcount(off / cs) == 1;
            if want != (entry & OFLAG_COPIED != 0) {
                let at = l2 + j as u64 * h.l2_entry_bytes();
                plan.write(at, (entry ^ OFLAG_COPIED).to_be_bytes().to_vec());
                n_l2 += 1;
            }
        }
    }
    if n_l1 + n_l2 > 0 {
        plan.fixed.push(format!(
            "OFLAG_COPIED made to match the refcounts in {n_l1} L1 and {n_l2} L2 entries"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::check::check;

    fn apply(img: &mut Vec<u8>, plan: &Plan) {
        for (at, p) in &plan.writes {
            let crate::repair::Patch::Bytes(b) = p else {
                panic!("qcow2 repairs write bytes only")
            };
            let at = *at as usize;
            if img.len() < at + b.len() {
                img.resize(at + b.len(), 0);
            }
            img[at..at + b.len()].copy_from_slice(b);
        }
    }

    #[test]
    fn a_rebuild_writes_only_the_blocks_that_hold_refcounts() {
        // 512-byte clusters and 64-bit refcounts: 64 per block. A file of
        // 4096 clusters whose references are all below cluster 16 (the
        // rest a hole) gets two blocks: one for them, one for the new
        // structure at the end, not 64.
        let mut d = crate::qcow2::write::Description::new(1 << 20, 9);
        d.refcount_order = 6;
        d.clusters
            .insert(0, crate::qcow2::write::ClusterData::Data(vec![7; 512]));
        let Ok(w) = crate::qcow2::write::write(&d) else {
            panic!("the writer failed")
        };
        let mut img = w.image;
        assert!(crate::qcow2::mutate::apply(
            crate::qcow2::mutate::Mutation::RefcountZero { nth: 0 },
            &mut img
        )
        .is_some());
        img.resize(4096 * 512, 0);
        let p = plan(&img.as_slice(), "t", &Limits::default(), Mode::All)
            .unwrap_or_else(|e| panic!("{e}"));
        let big: Vec<_> = p
            .writes
            .iter()
            .filter(|(at, _)| *at >= 4096 * 512)
            .collect();
        // The table and two blocks.
        assert_eq!(big.len(), 3, "{:?}", p.fixed);
        apply(&mut img, &p);
        let after = check(&img.as_slice(), "t", &Limits::default());
        assert_eq!(after.exit_code(false), 0, "{:?}", after.findings);
    }

    /// A writer image with three snapshots, its header and table.
    fn with_snapshots() -> (Vec<u8>, Header, super::snapshot::SnapshotTable) {
        let mut d = crate::qcow2::write::Description::new(1 << 20, 12);
        d.clusters
            .insert(0, crate::qcow2::write::ClusterData::Data(vec![7; 4096]));
        d.snapshots = vec!["first".into(), "second".into(), "third".into()];
        let Ok(w) = crate::qcow2::write::write(&d) else {
            panic!("the writer failed")
        };
        let img = w.image;
        let mut r = Report::new("t", "qcow2", &Limits::default());
        let Some(p) = header::parse(&img.as_slice(), &mut r) else {
            panic!("{:?}", r.findings)
        };
        let Some(t) = super::snapshot::read(&img.as_slice(), &p.header, &mut r) else {
            panic!("{:?}", r.findings)
        };
        (img, p.header, t)
    }

    #[test]
    fn a_clean_snapshot_table_is_not_rewritten() {
        let (img, h, _) = with_snapshots();
        assert_eq!(super::snapshot::rewrite(&img.as_slice(), &h), Ok(None));
    }

    #[test]
    fn snapshot_entries_cut_short_or_too_long_are_rewritten_and_recheck_clean() {
        // The last entry (nothing follows it to shift) either claims 8
        // bytes of extra data (version 3 needs 16; its id and name moved up
        // to follow them) or 4,000 (QEMU keeps 1,024, and reads the id and
        // name past the claim: zeros past the end of the table).
        for (extra, want_extra, want_name) in [(8u32, 24u32, "third"), (4000, 1024, "")] {
            let (mut img, _, t) = with_snapshots();
            let s = &t.snapshots[2];
            let e = s.entry_offset as usize;
            img[e + 36..e + 40].copy_from_slice(&extra.to_be_bytes());
            if extra < s.extra_data_size {
                let tail = e + 40 + s.extra_data_size as usize;
                let n = s.id.len() + s.name.len();
                img.copy_within(tail..tail + n, e + 40 + extra as usize);
            }
            let before = check(&img.as_slice(), "t", &Limits::default());
            assert!(before.exit_code(false) != 0, "{:?}", before.findings);
            let p = plan(&img.as_slice(), "t", &Limits::default(), Mode::All)
                .unwrap_or_else(|e| panic!("{extra}: {e}"));
            assert!(
                p.fixed
                    .iter()
                    .any(|f| f.contains("snapshot table rewritten")),
                "{:?}",
                p.fixed
            );
            apply(&mut img, &p);
            let after = check(&img.as_slice(), "t", &Limits::default());
            assert_eq!(after.exit_code(false), 0, "{extra}: {:?}", after.findings);
            let mut r = Report::new("t", "qcow2", &Limits::default());
            let Some(parsed) = header::parse(&img.as_slice(), &mut r) else {
                panic!("{:?}", r.findings)
            };
            let Some(now) = super::snapshot::read(&img.as_slice(), &parsed.header, &mut r) else {
                panic!("{:?}", r.findings)
            };
            // Every entry kept its L1 table; the first two their names and
            // the 24 bytes of extra data QEMU writes.
            assert_eq!(now.snapshots.len(), 3);
            for (a, b) in now.snapshots.iter().zip(&t.snapshots) {
                assert_eq!(a.l1_table_offset, b.l1_table_offset);
                assert_eq!(a.l1_size, b.l1_size);
            }
            assert_eq!(now.snapshots[0].name, "first");
            assert_eq!(now.snapshots[1].name, "second");
            assert_eq!(now.snapshots[2].name, want_name, "{extra}");
            assert_eq!(now.snapshots[2].extra_data_size, want_extra, "{extra}");
        }
    }

    #[test]
    fn a_count_of_four_billion_snapshots_rewrites_the_first_65536_from_zeros() {
        // A one-cluster table in a small file claiming u32::MAX entries:
        // the rewrite stops at QEMU's limit and makes the entries past the
        // end of the file from zeros, without reading or allocating by the
        // claim.
        let (img, mut h, _) = with_snapshots();
        h.nb_snapshots = u32::MAX;
        let Ok(Some(rw)) = super::snapshot::rewrite(&img.as_slice(), &h) else {
            panic!("no rewrite")
        };
        assert_eq!(rw.count, super::super::MAX_SNAPSHOTS);
        assert!(
            rw.table.len() as u64 <= 65536 * (64 + 8 + 16),
            "{}",
            rw.table.len()
        );
        assert!(
            rw.fixed.iter().any(|f| f.contains("overhanging")),
            "{:?}",
            rw.fixed
        );
    }

    #[test]
    fn encode_is_the_inverse_of_decode_at_every_width() {
        for order in 0..=6 {
            let mut block = vec![0u8; 64];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            for i in 0..8u64 {
                encode(&mut block, i, order, (i * 7 + 3) & max);
            }
            for i in 0..8u64 {
                assert_eq!(
                    decode(&block, i, order),
                    (i * 7 + 3) & max,
                    "order {order} entry {i}"
                );
            }
        }
    }

    #[test]
    fn every_refcount_width_is_repaired_by_both_modes_and_rechecks_clean() {
        use crate::qcow2::mutate::{apply as mutate, Mutation};
        for order in 0..=6 {
            for mode in [Mode::Leaks, Mode::All] {
                let mut d = crate::qcow2::write::Description::new(1 << 20, 16);
                d.refcount_order = order;
                d.clusters
                    .insert(0, crate::qcow2::write::ClusterData::Data(vec![7; 65536]));
                let Ok(w) = crate::qcow2::write::write(&d) else {
                    panic!("order {order}: the writer failed");
                };
                let mut img = w.image;
                let m = if order == 0 {
                    Mutation::RefcountZero { nth: 0 }
                } else {
                    Mutation::RefcountUp { nth: 0 }
                };
                assert!(mutate(m, &mut img).is_some());
                let before = check(&img.as_slice(), "t", &Limits::default());
                assert!(
                    before.exit_code(false) != 0,
                    "order {order}: {:?}",
                    before.findings
                );
                let plan = plan(&img.as_slice(), "t", &Limits::default(), mode)
                    .unwrap_or_else(|e| panic!("order {order} {mode:?}: {e}"));
                apply(&mut img, &plan);
                let after = check(&img.as_slice(), "t", &Limits::default());
                // A refcount 1 bit wide cannot be raised: order 0 gets a
                // refcount of 0 instead, a corruption -r leaks leaves alone.
                let want = if mode == Mode::Leaks && order == 0 {
                    2
                } else {
                    0
                };
                assert_eq!(
                    after.exit_code(false),
                    want,
                    "order {order} {mode:?}: {:?}",
                    after.findings
                );
            }
        }
    }
}
