//! The reference checker: rebuilds the reference count of every host
//! cluster from every structure that owns one and compares it with the
//! refcounts on disk, then checks the COPIED flags, as `qemu-img check`
//! does, and the spec rules qemu-img does not look at.
//!
//! Counting follows QEMU's `qcow2_check_refcounts` closely so that the
//! corruption and leak counts can be compared with qemu-img's: one count per
//! cluster whose refcount differs, one per bad entry, per reference.
//! Where an L2 table is reachable several times (shared with snapshots), it
//! is read once and its findings and references are multiplied.

use super::bitmap::{self, table_entry_problem};
use super::ext::{self, Extensions};
use super::header::{self, Header};
use super::l2_scan;
use super::mapping::*;
use super::refcount::{owner, Census, OnDisk};
use super::snapshot::{self, SnapshotTable};
use crate::hash::{FastMap, FastSet};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{general, qcow2 as rule};
use crate::source::ReadAt;

/// Everything `qconform info` shows: the parsed metadata, without the
/// consistency check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// The parsed header (spec "Header").
    pub header: Header,
    /// The backing file name (not NUL terminated in the file).
    pub backing_file: Option<String>,
    /// The header extensions (spec "Header extensions").
    pub extensions: Extensions,
    /// The internal snapshots (spec "Snapshots").
    pub snapshots: SnapshotTable,
    /// The persistent dirty bitmaps of the bitmaps extension (spec "Bitmaps").
    pub bitmaps: Vec<bitmap::Bitmap>,
}

/// Parses the metadata for `qconform info`; the error names the rule and offset that stopped it.
pub fn info(src: &dyn ReadAt, filename: &str, limits: &Limits) -> crate::Result<Info> {
    let mut report = Report::new(filename, "qcow2", limits);
    let parsed = header::parse(src, &mut report);
    let Some(parsed) = parsed else {
        return Err(report.into_error());
    };
    let Some(extensions) = ext::parse(&parsed.header, &parsed.cluster0, limits, &mut report) else {
        return Err(report.into_error());
    };
    let Some(snapshots) = snapshot::read(src, &parsed.header, &mut report) else {
        return Err(report.into_error());
    };
    if !tables_fit(
        src,
        &parsed.header,
        &extensions,
        &snapshots,
        limits,
        &mut report,
    ) {
        return Err(report.into_error());
    }
    let bitmaps = match &extensions.bitmaps {
        Some(b) => bitmap::read_directory(src, &parsed.header, b, &mut report).unwrap_or_default(),
        None => Vec::new(),
    };
    let backing_file = parsed.backing_name();
    Ok(Info {
        header: parsed.header,
        backing_file,
        extensions,
        snapshots,
        bitmaps,
    })
}

/// Checks a qcow2 image. Never writes; never panics; memory is bounded by
/// the file length divided by the cluster size plus the caps of `limits`.
pub fn check(src: &dyn ReadAt, filename: &str, limits: &Limits) -> Report {
    check_counting(src, filename, limits).0
}

/// The check and the references it counted to every host cluster (the
/// census the refcounts are compared with), for the repair, which rebuilds
/// refcounts from them. `None` when the check stopped before counting.
pub fn check_counting(
    src: &dyn ReadAt,
    filename: &str,
    limits: &Limits,
) -> (Report, Option<Census>) {
    let mut report = Report::for_image(filename, "qcow2", limits);
    let Some(parsed) = header::parse(src, &mut report) else {
        return (report, None);
    };
    let h = &parsed.header;
    let Some(exts) = ext::parse(h, &parsed.cluster0, limits, &mut report) else {
        return (report, None);
    };
    let Some(snaps) = snapshot::read(src, h, &mut report) else {
        return (report, None);
    };
    if !tables_fit(src, h, &exts, &snaps, limits, &mut report) {
        return (report, None);
    }
    let ondisk = match OnDisk::load(src, h) {
        Ok(o) => o,
        Err(e) => {
            report.add(
                &general::IO_ERROR,
                Some(h.refcount_table_offset),
                e.to_string(),
            );
            return (report, None);
        }
    };
    let mut checker = Checker {
        src,
        h,
        limits,
        census: Census::new(h, src.size()),
        ones_at: Vec::new(),
        ones_words: Vec::new(),
        epb_shift: ondisk.entries_per_block().trailing_zeros(),
        ones_limit: 0,
        ondisk,
        visits: Vec::new(),
        visit_index: FastMap::default(),
        entries_visited: 0,
        overlap_reported: FastSet::default(),
        stats: Stats::default(),
        report: &mut report,
    };
    let counted = checker.run(&exts, &snaps);
    let census = checker.census;
    (report, counted.then_some(census))
}

/// Whether every table held in memory whole (the refcount table, as far as
/// it lies in the file; the snapshot table; the bitmap directory) is within
/// `Limits::max_table_bytes`; records a `limits.table-bytes` error if not.
fn tables_fit(
    src: &dyn ReadAt,
    h: &Header,
    exts: &Extensions,
    snaps: &SnapshotTable,
    limits: &Limits,
    report: &mut Report,
) -> bool {
    let reftable_entries = h.refcount_table_clusters as u64 * h.cluster_size() / 8;
    let reftable =
        crate::source::entries_in_file(src, h.refcount_table_offset, reftable_entries, 8) * 8;
    let (dir_offset, dir) = exts.bitmaps.as_ref().map_or((0, 0), |b| {
        (b.bitmap_directory_offset, b.bitmap_directory_size)
    });
    let tables = [
        ("refcount table", h.refcount_table_offset, reftable),
        ("snapshot table", h.snapshots_offset, snaps.size),
        ("bitmap directory", dir_offset, dir),
    ];
    for (what, offset, bytes) in tables {
        if bytes > limits.max_table_bytes {
            report.add_with(&general::TABLE_LIMIT, Some(offset), 1, || {
                format!(
                    "the {what} ({bytes} bytes) exceeds Limits::max_table_bytes ({})",
                    limits.max_table_bytes
                )
            });
            return false;
        }
    }
    true
}

#[derive(Default)]
struct Stats {
    allocated: u64,
    fragmented: u64,
    compressed: u64,
}

/// One L2 table and how often it is reachable.
struct L2Visit {
    offset: u64,
    /// References from the active L1 table.
    active: u64,
    /// References from snapshot L1 tables.
    inactive: u64,
    /// Guest offset mapped by its first reference (for the data file rule).
    guest_base: u64,
}

/// One non-empty L2 entry under judgement.
struct L2Entry {
    entry: u64,
    /// The subcluster bitmap (0 without extended L2 entries).
    bitmap: u64,
    /// Guest offset the entry maps (through its first reference).
    guest: u64,
    /// Byte offset of the entry in the file.
    at: u64,
    /// References to its table: findings count this many times.
    times: u64,
    /// References from the active L1: the statistics count this many.
    active: u64,
}

/// `Checker::ones_at` for a block that is absent, or has no refcount of 1.
const ONES_NONE: u32 = u32::MAX - 1;
/// `Checker::ones_at` for a block whose offset is unaligned or unreachable
/// (QEMU cannot read it).
const ONES_UNREADABLE: u32 = u32::MAX;

/// Stop: a limit was hit and the check cannot be completed.
struct Abort;

struct Checker<'a, 'r> {
    src: &'a dyn ReadAt,
    h: &'a Header,
    limits: &'a Limits,
    census: Census,
    ondisk: OnDisk<'a>,
    /// Per refcount table entry (of those covering the file): where the
    /// bits of its block start in `ones_words` (one bit per refcount, set
    /// where it is exactly 1), or ONES_NONE / ONES_UNREADABLE. Lets the
    /// COPIED checks run without re-reading refcount blocks; blocks that
    /// are absent, in a hole or all zero cost no bits. One contiguous
    /// vector keeps the hot lookup to two loads.
    ones_at: Vec<u32>,
    ones_words: Vec<u64>,
    /// log2 of the refcounts per block (a power of two), for the hot path.
    epb_shift: u32,
    /// Clusters below this have their bits loaded (where their block is);
    /// the last block's bits stop here.
    ones_limit: u64,
    visits: Vec<L2Visit>,
    visit_index: FastMap<u64, usize>,
    entries_visited: u64,
    overlap_reported: FastSet<u64>,
    stats: Stats,
    report: &'r mut Report,
}

impl Checker<'_, '_> {
    /// Runs the whole check; false when it stopped before every reference
    /// was counted.
    fn run(&mut self, exts: &Extensions, snaps: &SnapshotTable) -> bool {
        let h = self.h;
        let cs = h.cluster_size();
        if self.load_refcount_is_one().is_err() {
            return false;
        }
        self.census
            .reference(self.report, 0, cs, 1, owner::HEADER, "header cluster");

        // Active L1 table and the L2 tables it reaches.
        let l1_bytes = h.l1_size as u64 * 8;
        self.census.reference(
            self.report,
            h.l1_table_offset,
            l1_bytes,
            1,
            owner::L1,
            "active L1 table",
        );
        if self.walk_l1(h.l1_table_offset, h.l1_size, 1, true).is_err() {
            return false;
        }

        // Snapshot L1 tables: identical tables are walked once, multiplied.
        if h.has_data_file() && !snaps.snapshots.is_empty() {
            self.report.add_with(
                &rule::DATA_FILE_SNAPSHOTS,
                Some(h.snapshots_offset),
                1,
                || {
                    format!(
                        "{} internal snapshots in an image with an external data file",
                        snaps.snapshots.len()
                    )
                },
            );
        }
        // Grouped by sorting, not hashing: 24 bytes per run of snapshots
        // naming one table (65,536 of them are valid), walked in the order
        // the table first names each. Runs of entries with one table (the
        // zero entries of a table past the end of the file) are one item
        // before the sort.
        let mut keys: Vec<((u64, u32), u32, u64)> = Vec::new();
        for (i, s) in snaps.snapshots.iter().enumerate() {
            if !snapshot::l1_usable(h, s, self.report) {
                continue;
            }
            let key = (s.l1_table_offset, s.l1_size);
            match keys.last_mut() {
                Some(last) if last.0 == key => last.2 += 1,
                _ => keys.push((key, i as u32, 1)),
            }
        }
        keys.sort_unstable();
        // (first index, key, times)
        let mut groups: Vec<(u32, (u64, u32), u64)> = Vec::new();
        for (key, i, times) in keys {
            match groups.last_mut() {
                Some(g) if g.1 == key => g.2 += times,
                _ => groups.push((i, key, times)),
            }
        }
        groups.sort_unstable_by_key(|g| g.0);
        for (_, (offset, size), times) in groups {
            self.census.reference(
                self.report,
                offset,
                size as u64 * 8,
                times,
                owner::L1,
                "snapshot L1 table",
            );
            if self.walk_l1(offset, size, times, false).is_err() {
                return false;
            }
        }
        if self.visit_l2_tables().is_err() {
            return false;
        }

        self.census.reference(
            self.report,
            h.snapshots_offset,
            snaps.size,
            1,
            owner::SNAPSHOT_TABLE,
            "snapshot table",
        );
        self.census.reference(
            self.report,
            h.refcount_table_offset,
            h.refcount_table_clusters as u64 * cs,
            1,
            owner::REFCOUNT,
            "refcount table",
        );
        if let Some(fde) = &exts.fde {
            self.census.reference(
                self.report,
                fde.offset,
                fde.length,
                1,
                owner::HEADER,
                "encryption header",
            );
        }
        if let Some(b) = &exts.bitmaps {
            if self.count_bitmaps(b).is_err() {
                return false;
            }
        }
        self.check_refblocks();
        if self.compare_refcounts().is_err() {
            return false;
        }

        let r = self.report.image_stats();
        r.total_clusters = Some(h.size.div_ceil(cs));
        r.allocated_clusters = Some(self.stats.allocated);
        r.fragmented_clusters = Some(self.stats.fragmented);
        r.compressed_clusters = Some(self.stats.compressed);
        true
    }

    fn budget(&mut self, entries: u64) -> Result<(), Abort> {
        self.entries_visited += entries;
        if self.entries_visited > self.limits.max_entries_visited {
            self.report.add_with(&general::WORK_LIMIT, None, 1, || {
                format!(
                    "more than {} table entries to visit; the check stops here",
                    self.limits.max_entries_visited
                )
            });
            return Err(Abort);
        }
        Ok(())
    }

    /// Whether the on-disk refcount of `cluster` is exactly 1 (what the
    /// COPIED flag must say), or None where QEMU cannot look it up either.
    #[inline(always)]
    fn refcount_is_one(&self, cluster: u64) -> Option<bool> {
        // entries_per_block is a power of two: shift and mask, no division.
        let t = cluster >> self.epb_shift;
        let loaded = if cluster < self.ones_limit {
            self.ones_at.get(t as usize).copied()
        } else {
            None
        };
        match loaded {
            Some(at) if at < ONES_NONE => {
                let i = cluster & ((1u64 << self.epb_shift) - 1);
                let word = self.ones_words.get(at as usize + (i / 64) as usize);
                Some(word.is_some_and(|w| w >> (i % 64) & 1 == 1))
            }
            Some(ONES_NONE) => Some(false),
            Some(_) => None,
            // Past the blocks covering the file: read the one refcount.
            None => self.ondisk.get(cluster).ok().map(|rc| rc == 1),
        }
    }

    /// Whether refcount block `off` has bytes to read: it starts inside the
    /// file and not in a hole of a whole cluster (a block in a hole reads
    /// as zeros and is never read).
    fn refblock_in_file(&self, off: u64) -> bool {
        let cs = self.h.cluster_size();
        if off >= self.src.size() {
            return false;
        }
        !matches!(self.src.extent(off), Some((true, len)) if len >= cs)
    }

    /// Loads one bit per refcount == 1 of every refcount block covering the
    /// file. Memory and time follow the refcount blocks that exist and hold
    /// non-zero refcounts. Blocks are read in batches (each block read
    /// counts its entries against `Limits::max_entries_visited`: a refcount
    /// table whose entries all name one block cannot make the check read
    /// that block a million times unbounded) and decoded on every core.
    fn load_refcount_is_one(&mut self) -> Result<(), Abort> {
        let nb = self.census.nb_clusters + 1;
        let epb = self.ondisk.entries_per_block();
        let blocks = nb
            .div_ceil(epb)
            .min(self.ondisk.table_entries)
            .min(self.ondisk.table.len() as u64);
        let order = self.ondisk.order;
        // Only the refcounts of clusters below `nb` are loaded: a 2 MiB
        // block of a small file is read and decoded for the part covering
        // the file, not a million entries (clusters past it fall back to
        // reading their one refcount, see `refcount_is_one`).
        let slot = refcounts_bytes(epb.min(nb), order, self.h.cluster_size());
        let batch = (REFBLOCK_BATCH_BYTES / slot).max(1) as u64;
        let mut ones_at = Vec::with_capacity(blocks as usize);
        let mut words: Vec<u64> = Vec::new();
        let mut buf = Vec::new();
        let mut t0 = 0;
        while t0 < blocks {
            let t1 = (t0 + batch).min(blocks);
            buf.resize((t1 - t0) as usize * slot, 0);
            // What each block of the batch is: read, absent or unreadable.
            let mut state = Vec::with_capacity((t1 - t0) as usize);
            for (t, slot) in (t0..t1).zip(buf.chunks_mut(slot)) {
                state.push(match self.ondisk.block_offset(t) {
                    Err(_) => ONES_UNREADABLE,
                    Ok(0) => ONES_NONE,
                    Ok(off) if !self.refblock_in_file(off) => ONES_NONE,
                    Ok(off) => {
                        self.budget(epb)?;
                        self.ondisk.read_block(off, slot);
                        0
                    }
                });
            }
            // The bits of each block read, None where it holds no 1.
            let bits: Vec<Option<Vec<u64>>> = map_in_order(state.len(), buf.len(), |i| {
                let (Some(block), Some(&st)) = (buf.get(i * slot..(i + 1) * slot), state.get(i))
                else {
                    return None;
                };
                if st != 0 || crate::field::is_zero(block) {
                    return None;
                }
                // Every block but the last covers `epb` clusters below `nb`.
                let count = epb.min(nb - (t0 + i as u64) * epb);
                let mut bits = vec![0u64; count.div_ceil(64) as usize];
                let mut any = false;
                for_each_refcount(block, order, 0, count, |i, rc| {
                    if rc == 1 {
                        any = true;
                        if let Some(w) = bits.get_mut((i / 64) as usize) {
                            *w |= 1 << (i % 64);
                        }
                    }
                });
                any.then_some(bits)
            });
            for (st, b) in state.into_iter().zip(bits) {
                let at = match b {
                    // (The budget bounds the words well below u32::MAX.)
                    Some(b) => match u32::try_from(words.len()) {
                        Ok(at) if at < ONES_NONE => {
                            words.extend_from_slice(&b);
                            at
                        }
                        _ => ONES_NONE,
                    },
                    None if st == ONES_UNREADABLE => ONES_UNREADABLE,
                    None => ONES_NONE,
                };
                ones_at.push(at);
            }
            t0 = t1;
        }
        self.ones_at = ones_at;
        self.ones_words = words;
        self.ones_limit = nb;
        Ok(())
    }

    /// Walks one L1 table: counts its L2 tables and queues them for a visit.
    fn walk_l1(
        &mut self,
        l1_offset: u64,
        l1_size: u32,
        times: u64,
        active: bool,
    ) -> Result<(), Abort> {
        let h = self.h;
        let cs = h.cluster_size();
        // An empty table is never read, wherever it claims to lie (QEMU's
        // check_refcounts_l1 reads and references l1_size * 8 bytes).
        if l1_size == 0 {
            return Ok(());
        }
        if l1_offset
            .checked_add(l1_size as u64 * 8)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            // QEMU cannot read such a table at all and stops the check.
            self.report
                .add_with(&general::IO_ERROR, Some(l1_offset), 1, || {
                    format!(
                    "L1 table of {l1_size} entries at {l1_offset:#x} lies beyond any file offset"
                )
                });
            return Err(Abort);
        }
        // Only the part inside the file can hold non-zero entries.
        let inside = crate::source::entries_in_file(self.src, l1_offset, l1_size as u64, 8);
        self.budget(inside)?;
        let mut chunk = vec![0u8; (inside * 8).min(1 << 16) as usize];
        let mut i = 0u64;
        while i < inside {
            // Entries lying in a file hole are zero: skip them unread (65536
            // snapshot L1 tables of 32 MiB over a hole cost no reads).
            if let Some((true, hole)) = self.src.extent(l1_offset + i * 8) {
                if hole >= 8 {
                    i = i.saturating_add(hole / 8);
                    continue;
                }
            }
            let n = (inside - i).min(chunk.len() as u64 / 8);
            let buf = chunk.get_mut(..(n * 8) as usize).unwrap_or(&mut []);
            if self.src.read_zero_padded(buf, l1_offset + i * 8).is_err() {
                buf.fill(0);
            }
            for j in 0..n {
                let at = (j * 8) as usize;
                let e = crate::source::be_u64(buf, at);
                if e == 0 {
                    continue;
                }
                let index = i + j;
                let entry_offset = l1_offset + index * 8;
                if e & L1E_RESERVED_MASK != 0 {
                    self.report
                        .add_with(&rule::L1_RESERVED, Some(entry_offset), times, || {
                            format!("L1 entry {index} ({e:#018x}) has reserved bits set")
                        });
                }
                let l2 = e & L1E_OFFSET_MASK;
                self.census
                    .reference(self.report, l2, cs, times, owner::L2, "L2 table");
                if !l2.is_multiple_of(cs) {
                    self.report
                        .add_with(&rule::L1_L2_ALIGNED, Some(entry_offset), times, || {
                            format!(
                                "L1 entry {index}: L2 table offset {l2:#x} is not cluster aligned"
                            )
                        });
                }
                if active && l2 != 0 {
                    if let Some(one) = self.refcount_is_one(l2 / cs) {
                        if one != (e & OFLAG_COPIED != 0) {
                            let ondisk = &self.ondisk;
                            self.report
                                .add_with(&rule::L1_COPIED, Some(entry_offset), 1, || {
                                    format!(
                                "L1 entry {index}: COPIED is {} but the L2 table's refcount is {}",
                                if e & OFLAG_COPIED != 0 { "set" } else { "clear" },
                                ondisk.get(l2 / cs).unwrap_or(0))
                                });
                        }
                    }
                }
                let guest_base = index * (h.l2_entries() << h.cluster_bits);
                let v = match self.visit_index.get(&l2) {
                    Some(&v) => v,
                    None => {
                        self.visit_index.insert(l2, self.visits.len());
                        self.visits.push(L2Visit {
                            offset: l2,
                            active: 0,
                            inactive: 0,
                            guest_base,
                        });
                        self.visits.len() - 1
                    }
                };
                if let Some(v) = self.visits.get_mut(v) {
                    if active {
                        v.active += times
                    } else {
                        v.inactive += times
                    }
                }
            }
            i += n;
        }
        Ok(())
    }

    /// Visits every distinct L2 table once, in the order the L1 tables
    /// name them. Tables are read in batches of large reads (adjacent tables
    /// in one read) while the previous batch is scanned on every core
    /// ([`l2_scan`]); each table's result is then merged in order, and a
    /// table that is not entirely healthy is visited entry by entry, so the
    /// counts and findings are those of a visit of each table in turn.
    fn visit_l2_tables(&mut self) -> Result<(), Abort> {
        let h = self.h;
        let cs = h.cluster_size();
        let file_len = self.src.size();
        // No table holds more of the file than the file.
        let most = cs.min(file_len.next_multiple_of(16)) as usize;
        let visits = std::mem::take(&mut self.visits);
        // Two batches of about L2_BATCH_BYTES held: the one scanned, the
        // one read.
        let batch = (L2_BATCH_BYTES / most).clamp(1, 256);
        let fast_image = !h.has_data_file() && !h.extended_l2() && h.version >= 3;
        let cluster_limit = self.census.fast_limit();
        let src = self.src;
        let read = |group: &[L2Visit], buf: &mut Batch| buf.read(src, group, cs, most);
        let scan = |scanner: &l2_scan::Scanner,
                    group: &[L2Visit],
                    buf: &Batch|
         -> Vec<Option<l2_scan::Healthy>> {
            map_in_order(group.len(), buf.bytes.len(), |i| {
                let v = group.get(i)?;
                if !(fast_image && v.active == 1 && v.inactive == 0) {
                    return None;
                }
                scanner.scan(buf.table(i), v.guest_base)
            })
        };
        let groups: Vec<&[L2Visit]> = visits.chunks(batch).collect();
        let (mut cur, mut next) = (Batch::default(), Batch::default());
        if let Some(first) = groups.first() {
            read(first, &mut cur);
        }
        for (g, group) in groups.iter().enumerate() {
            // Read the next batch here (the byte source need not be
            // shareable between threads) while the pool scans this one.
            // The scanner borrows the refcount-is-one bits only while the
            // pool scans; the merge below needs the checker mutably.
            let scanner = l2_scan::Scanner {
                cluster_bits: h.cluster_bits,
                disk_size: h.size,
                cluster_limit,
                epb_shift: self.epb_shift,
                ones_at: &self.ones_at,
                ones_words: &self.ones_words,
                ones_none: ONES_NONE,
                ones_unreadable: ONES_UNREADABLE,
            };
            let mut scanned = Vec::new();
            if !parallel(group.len(), cur.bytes.len()) {
                scanned = scan(&scanner, group, &cur);
                if let Some(n) = groups.get(g + 1) {
                    read(n, &mut next);
                }
            } else {
                rayon::in_place_scope(|s| {
                    s.spawn(|_| scanned = scan(&scanner, group, &cur));
                    if let Some(n) = groups.get(g + 1) {
                        read(n, &mut next);
                    }
                });
            }
            for ((i, v), healthy) in group.iter().enumerate().zip(scanned) {
                self.budget(h.l2_entries())?;
                match healthy {
                    Some(t) => {
                        self.stats.allocated += t.allocated;
                        self.stats.fragmented += t.fragmented;
                        for (k, n) in t.runs {
                            self.census.reference_clusters(
                                self.report,
                                k,
                                n,
                                owner::DATA,
                                "data cluster",
                            );
                        }
                    }
                    None => self.visit_l2(cur.table(i), v),
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        Ok(())
    }

    /// Judges every entry of one L2 table (reached `v.active + v.inactive`
    /// times), counting the statistics and references of the active ones.
    fn visit_l2(&mut self, table: &[u8], v: &L2Visit) {
        let h = self.h;
        // The fast path handles the one case that dominates real images (a
        // healthy standard cluster reached once, from the active L1) with
        // the same checks in fewer branches; anything else falls through.
        let fast = v.active == 1
            && v.inactive == 0
            && !h.has_data_file()
            && !h.extended_l2()
            && h.version >= 3;
        let mut next_contiguous = 0u64;
        // Entries past `table` (past the end of the file) are zero.
        let held = (table.len() as u64 / h.l2_entry_bytes()).min(h.l2_entries());
        for i in 0..held {
            let (entry, bitmap) = l2_entry(h, table, i as usize);
            if entry == 0 && bitmap == 0 {
                continue;
            }
            let e = L2Entry {
                entry,
                bitmap,
                guest: v.guest_base + (i << h.cluster_bits),
                at: v.offset + i * h.l2_entry_bytes(),
                times: v.active + v.inactive,
                active: v.active,
            };
            if fast && self.healthy_standard(&e, &mut next_contiguous) {
                continue;
            }
            self.visit_entry(&e, &mut next_contiguous);
        }
    }

    /// The fast path of [`Checker::visit_l2`]: a standard, aligned cluster
    /// inside the disk. Returns false, having done nothing, for any other.
    #[inline]
    fn healthy_standard(&mut self, e: &L2Entry, next_contiguous: &mut u64) -> bool {
        let cs = self.h.cluster_size();
        let offset = e.entry & L2E_OFFSET_MASK;
        if e.entry & (OFLAG_COMPRESSED | L2E_STD_RESERVED_MASK) != 0
            || offset == 0
            || offset & (cs - 1) != 0
            || e.guest >= self.h.size
        {
            return false;
        }
        self.stats.allocated += 1;
        if *next_contiguous != 0 && offset != *next_contiguous {
            self.stats.fragmented += 1;
        }
        *next_contiguous = offset + cs;
        self.census
            .reference_cluster(self.report, offset, owner::DATA, "data cluster");
        if let Some(one) = self.refcount_is_one(offset >> self.h.cluster_bits) {
            if one != (e.entry & OFLAG_COPIED != 0) {
                self.copied_mismatch(e.at, e.entry, offset, 1);
            }
        }
        true
    }

    /// Every rule about one L2 entry: those of any kind, then its kind's.
    fn visit_entry(&mut self, e: &L2Entry, next_contiguous: &mut u64) {
        let h = self.h;
        let (entry, guest) = (e.entry, e.guest);
        let kind = classify(h, entry);
        if kind != ClusterKind::Compressed && entry & L2E_STD_RESERVED_MASK != 0 {
            self.report
                .add_with(&rule::L2_RESERVED, Some(e.at), e.times, || {
                    format!("L2 entry {entry:#018x} has reserved bits set")
                });
        }
        if guest >= h.size && kind != ClusterKind::Unallocated {
            self.report
                .add_with(&rule::L2_BEYOND_DISK, Some(e.at), e.times, || {
                    format!(
                        "guest offset {guest:#x} past the virtual size {} is mapped",
                        h.size
                    )
                });
        }
        match kind {
            ClusterKind::Compressed => self.visit_compressed(e),
            ClusterKind::ZeroAlloc | ClusterKind::Normal => {
                self.visit_allocated(e, next_contiguous)
            }
            ClusterKind::ZeroPlain => {
                if h.version < 3 {
                    self.report.add_times(
                        &rule::L2_ZERO_V2,
                        Some(e.at),
                        e.times,
                        "zero flag in a version 2 image",
                    );
                }
            }
            ClusterKind::Unallocated => self.visit_unallocated(e),
        }
    }

    /// A compressed cluster: flags and bitmap it must not have, the host
    /// range it references (the sectors it spans).
    fn visit_compressed(&mut self, e: &L2Entry) {
        let h = self.h;
        let entry = e.entry;
        if entry & OFLAG_COPIED != 0 {
            self.report
                .add_with(&rule::L2_COMPRESSED_COPIED, Some(e.at), e.times, || {
                    format!("compressed cluster entry {entry:#018x} has COPIED set")
                });
        }
        if h.has_data_file() {
            self.report.add_times(
                &rule::DATA_FILE_COMPRESSED,
                Some(e.at),
                e.times,
                "compressed cluster in an image with an external data file",
            );
            return;
        }
        if e.bitmap != 0 {
            let bitmap = e.bitmap;
            self.report
                .add_with(&rule::SUBCLUSTER_COMPRESSED, Some(e.at), e.times, || {
                    format!("compressed cluster with subcluster bitmap {bitmap:#018x}")
                });
            return;
        }
        if compressed_offset_high_bits(h, entry) != 0 {
            self.report.add_times(
                &rule::L2_COMPRESSED_OFFSET,
                Some(e.at),
                e.times,
                "compressed cluster offset has bits above 55 set",
            );
        }
        let r = compressed_range(h, entry);
        self.census.reference(
            self.report,
            r.offset,
            r.len,
            e.times,
            owner::COMPRESSED,
            "compressed cluster",
        );
        self.stats.allocated += e.active;
        self.stats.compressed += e.active;
        self.stats.fragmented += e.active;
    }

    /// A cluster with a host offset (data, or allocated and zero): its
    /// alignment and subclusters, the statistics, its reference (or, with a
    /// data file, the identity mapping) and the COPIED flag.
    fn visit_allocated(&mut self, e: &L2Entry, next_contiguous: &mut u64) {
        let h = self.h;
        let cs = h.cluster_size();
        let (entry, guest, times) = (e.entry, e.guest, e.times);
        let offset = entry & L2E_OFFSET_MASK;
        let both = (e.bitmap >> 32) & e.bitmap;
        if both != 0 {
            self.report
                .add_with(&rule::SUBCLUSTER_ALLOC_ZERO, Some(e.at), times, || {
                    format!(
                        "cluster at {offset:#x}: subclusters {both:#x} are both allocated and zero"
                    )
                });
        }
        if !offset.is_multiple_of(cs) {
            self.report
                .add_with(&rule::L2_ALIGNED, Some(e.at), times, || {
                    format!("data cluster offset {offset:#x} is not cluster aligned")
                });
        }
        if h.version < 3 && entry & OFLAG_ZERO != 0 {
            self.report.add_times(
                &rule::L2_ZERO_V2,
                Some(e.at),
                times,
                "zero flag in a version 2 image",
            );
        }
        if e.active > 0 {
            self.stats.allocated += e.active;
            if *next_contiguous != 0 && offset != *next_contiguous {
                self.stats.fragmented += e.active;
            }
            *next_contiguous = offset + cs;
        }
        let data_file = h.has_data_file();
        if data_file {
            if offset != guest {
                self.report
                    .add_with(&rule::DATA_FILE_OFFSET, Some(e.at), times, || {
                        format!("guest offset {guest:#x} maps to data file offset {offset:#x}")
                    });
            }
        } else if times == 1 {
            self.census
                .reference_cluster(self.report, offset, owner::DATA, "data cluster");
        } else {
            self.census
                .reference(self.report, offset, cs, times, owner::DATA, "data cluster");
        }
        if e.active > 0 {
            // With a data file every cluster has an implicit refcount of 1.
            let one = if data_file {
                Some(true)
            } else {
                self.refcount_is_one(offset / cs)
            };
            if one.is_some_and(|one| one != (entry & OFLAG_COPIED != 0)) {
                self.copied_mismatch(e.at, entry, offset, e.active);
            }
        }
    }

    /// A cluster without a host offset: no allocated subclusters, and
    /// COPIED only where an external data file makes offset 0 meaningful.
    fn visit_unallocated(&mut self, e: &L2Entry) {
        let alloc = e.bitmap & L2_BITMAP_ALL_ALLOC;
        if alloc != 0 {
            self.report
                .add_with(&rule::SUBCLUSTER_UNALLOCATED, Some(e.at), e.times, || {
                    format!("unallocated cluster with allocated subclusters {alloc:#x}")
                });
        }
        if e.entry & OFLAG_COPIED != 0 && !self.h.has_data_file() {
            self.report.add_times(
                &rule::L2_OFFSET_ZERO_COPIED,
                Some(e.at),
                e.times,
                "host offset 0 with COPIED set, but the image has no external data file",
            );
        }
    }

    #[cold]
    fn copied_mismatch(&mut self, entry_offset: u64, entry: u64, offset: u64, times: u64) {
        let state = if entry & OFLAG_COPIED != 0 {
            "set"
        } else {
            "clear"
        };
        // The refcount is read again only for a finding that is kept.
        let (h, ondisk) = (self.h, &self.ondisk);
        let rc = || {
            if h.has_data_file() {
                1
            } else {
                ondisk.get(offset / h.cluster_size()).unwrap_or(0)
            }
        };
        self.report
            .add_with(&rule::L2_COPIED, Some(entry_offset), times, || {
                format!(
                    "data cluster {offset:#x}: COPIED is {state} but its refcount is {}",
                    rc()
                )
            });
    }

    /// Counts the bitmap directory, tables and data clusters. Returns Err
    /// where QEMU's check fails too (a directory it cannot load).
    fn count_bitmaps(&mut self, b: &ext::BitmapsExt) -> Result<(), Abort> {
        let cs = self.h.cluster_size();
        self.census.reference(
            self.report,
            b.bitmap_directory_offset,
            b.bitmap_directory_size,
            1,
            owner::BITMAP,
            "bitmap directory",
        );
        let Some(list) = bitmap::read_directory(self.src, self.h, b, self.report) else {
            return Err(Abort);
        };
        for bm in &list {
            let table_bytes = bm.bitmap_table_size as u64 * 8;
            self.census.reference(
                self.report,
                bm.bitmap_table_offset,
                table_bytes,
                1,
                owner::BITMAP,
                "bitmap table",
            );
            self.budget(bm.bitmap_table_size as u64)?;
            // At most 8 MiB (QEMU's 512 MiB data limit / 512-byte clusters x 8), and only the part in the file.
            let entries = crate::source::read_u64_table(
                self.src,
                bm.bitmap_table_offset,
                bm.bitmap_table_size as u64,
            );
            for (i, &e) in entries.iter().enumerate() {
                let at = bm.bitmap_table_offset + i as u64 * 8;
                if let Some(p) = table_entry_problem(e, cs) {
                    self.report
                        .add_with(&rule::BITMAP_TABLE_ENTRY, Some(at), 1, || {
                            format!("bitmap {:?} table entry {i} ({e:#018x}): {p}", bm.name)
                        });
                    continue;
                }
                let off = e & bitmap::TABLE_ENTRY_OFFSET_MASK;
                if off != 0 {
                    self.census.reference(
                        self.report,
                        off,
                        cs,
                        1,
                        owner::BITMAP,
                        "bitmap data cluster",
                    );
                }
            }
        }
        Ok(())
    }

    /// Validates every refcount table entry and counts the refcount blocks.
    fn check_refblocks(&mut self) {
        let cs = self.h.cluster_size();
        for t in 0..self.ondisk.table.len() as u64 {
            let e = self.ondisk.entry(t);
            let at = Some(self.h.refcount_table_offset + t * 8);
            if e & super::refcount::REFT_RESERVED_MASK != 0 {
                self.report.add_with(&rule::REFTABLE_RESERVED, at, 1, || {
                    format!("refcount table entry {t} ({e:#018x}) has reserved bits set")
                });
                continue;
            }
            let off = e & super::refcount::REFT_OFFSET_MASK;
            if !off.is_multiple_of(cs) {
                self.report.add_with(&rule::REFBLOCK_ALIGNED, at, 1, || {
                    format!("refcount block {t} at {off:#x} is not cluster aligned")
                });
                continue;
            }
            if off / cs >= self.census.nb_clusters {
                self.report.add_with(&rule::REFBLOCK_IN_FILE, at, 1, || {
                    format!("refcount block {t} at {off:#x} lies outside the image")
                });
                continue;
            }
            if off != 0 {
                self.census
                    .reference(self.report, off, cs, 1, owner::REFCOUNT, "refcount block");
                let refs = self.census.get(off / cs);
                if refs != 1 {
                    self.overlap_reported.insert(off / cs);
                    self.report.add_with(&rule::METADATA_OVERLAP, at, 1, || {
                        format!(
                            "refcount block {t} at {off:#x} is referenced {refs} times ({})",
                            owner::names(self.census.owners(off / cs))
                        )
                    });
                }
            }
        }
    }

    /// Reports one cluster whose refcount differs from its references, or
    /// that two kinds of structure own.
    #[cold]
    fn report_mismatch(&mut self, k: u64, disk: u64, refs: u64, owners: u8) {
        let cs = self.h.cluster_size();
        // Named only for a finding that is kept.
        let who = || {
            if owners == 0 {
                String::new()
            } else {
                format!(" ({})", owner::names(owners))
            }
        };
        let at = Some(k * cs);
        if disk < refs {
            self.report.add_with(&rule::REFCOUNT_TOO_LOW, at, 1, || {
                format!("cluster {k} refcount={disk} reference={refs}{}", who())
            });
        } else if disk > refs {
            self.report.add_with(&rule::REFCOUNT_LEAK, at, 1, || {
                format!("cluster {k} refcount={disk} reference={refs}{}", who())
            });
        } else if !self.overlap_reported.contains(&k) && refs < self.census.refcount_max() {
            // (At refcount_max the extra references were already
            // reported as an overflow of this cluster.)
            // Counts agree, yet two kinds of structure own the cluster: qemu-img
            // does not see this when the refcount was raised to match.
            self.report.add_with(&rule::METADATA_OVERLAP, at, 1, || {
                format!("cluster {k} is owned by{} (refcount {disk})", who())
            });
        }
    }

    /// Compares the on-disk refcount of every cluster with the census, as
    /// QEMU does for every cluster of the file, but visiting only where one
    /// of the two can be non-zero: the ranges of refcount blocks that exist
    /// (and are not all zero) and the clusters the census touched. Every
    /// other cluster has refcount 0 and no reference, which QEMU does not
    /// count either, so the counts are the same.
    fn compare_refcounts(&mut self) -> Result<(), Abort> {
        let cs = self.h.cluster_size();
        let nb = self.census.nb_clusters;
        let epb = self.ondisk.entries_per_block();
        let order = self.ondisk.order;
        let nb_blocks = nb.div_ceil(epb);
        // The blocks to look at, ascending: named by the table, or covering
        // a referenced cluster.
        let mut blocks: Vec<u64> = (0..self.ondisk.table.len() as u64)
            .take_while(|&t| t < nb_blocks)
            .filter(|&t| self.ondisk.entry(t) & super::refcount::REFT_OFFSET_MASK != 0)
            .collect();
        self.census.touched_ranges(|lo, hi| {
            for t in lo / epb..=(hi / epb).min(nb_blocks.saturating_sub(1)) {
                if t < nb_blocks {
                    blocks.push(t);
                }
            }
        });
        blocks.sort_unstable();
        blocks.dedup();
        // As in load_refcount_is_one: only the refcounts of clusters below
        // `nb` are read.
        let slot = refcounts_bytes(epb.min(nb), order, cs);
        let batch = (REFBLOCK_BATCH_BYTES / slot).max(1);
        let mut buf = Vec::new();
        let mut highest: Option<u64> = None;
        for group in blocks.chunks(batch) {
            // Read the blocks of the batch here; compare them on every core;
            // then report in block order, as one block after another would.
            buf.resize(group.len() * slot, 0);
            let mut state = Vec::with_capacity(group.len());
            for (&t, slot) in group.iter().zip(buf.chunks_mut(slot)) {
                let block = if t < self.ondisk.table_entries {
                    self.ondisk.block_offset(t)
                } else {
                    Ok(0)
                };
                state.push(match block {
                    Err(u) => Block::Unreadable(u),
                    Ok(0) => Block::Absent,
                    Ok(off) if !self.refblock_in_file(off) => Block::Absent,
                    Ok(off) => {
                        self.ondisk.read_block(off, slot);
                        Block::Read
                    }
                });
            }
            let census = &self.census;
            let compared: Vec<Compared> = map_in_order(group.len(), buf.len(), |i| {
                let t = group.get(i).copied().unwrap_or(0);
                let block = buf.get(i * slot..(i + 1) * slot).unwrap_or(&[]);
                let first = t * epb;
                let count = epb.min(nb - first);
                let present =
                    matches!(state.get(i), Some(Block::Read)) && !crate::field::is_zero(block);
                compare_block(census, order, block, present, first, count)
            });
            for ((&t, st), c) in group.iter().zip(state).zip(compared) {
                let first = t * epb;
                let count = epb.min(nb - first);
                match st {
                    Block::Unreadable(u) => {
                        self.report.add_with(&rule::REFBLOCK_UNREADABLE, Some(self.h.refcount_table_offset + t * 8), count, || format!(
                            "refcount block {} at {:#x} is unaligned or unreachable; refcounts of clusters {first}..{} cannot be read",
                            u.table_index, u.block_offset, first + count));
                        continue;
                    }
                    Block::Read => self.budget(epb)?,
                    Block::Absent => {}
                }
                highest = highest.max(c.highest);
                for &(k, disk, refs, owners) in &c.mismatches {
                    self.report_mismatch(k, disk, refs, owners);
                }
            }
        }
        // QEMU starts from cluster 0, so the header cluster always counts.
        self.report.image_stats().image_end_offset = Some((highest.unwrap_or(0) + 1) * cs);
        Ok(())
    }
}

/// A refcount block of the comparison, as the table names it.
enum Block {
    /// Its offset is unaligned or unreachable: QEMU cannot read it.
    Unreadable(super::refcount::UnalignedBlock),
    /// None, past the end of the file or in a hole: every refcount is 0.
    Absent,
    /// Read into the batch buffer.
    Read,
}

/// What comparing one refcount block found.
struct Compared {
    /// The last cluster of the block with a refcount or a reference.
    highest: Option<u64>,
    /// (cluster, on-disk refcount, references, owners) of every cluster
    /// whose counts differ or that more than one kind of structure owns.
    mismatches: Vec<(u64, u64, u64, u8)>,
}

/// Compares the refcounts `first..first + count` of one block (all 0 when
/// not `present`) with the census. Reads only: blocks are compared in
/// parallel and reported in order.
fn compare_block(
    census: &Census,
    order: u32,
    buf: &[u8],
    present: bool,
    first: u64,
    count: u64,
) -> Compared {
    let mut highest: Option<u64> = None;
    let mut mismatches = Vec::new();
    let mut note = |k: u64, disk: u64, refs: u64, owners: u8| {
        if disk > 0 || refs > 0 {
            highest = Some(k);
        }
        if disk != refs || owners.count_ones() > 1 {
            mismatches.push((k, disk, refs, owners));
        }
    };
    // Clusters in a present block with matching counts and at most
    // one owner (nearly all of them) only move the image end.
    let mut last_used: Option<u64> = None;
    if present {
        let pc = Census::page_clusters();
        let end = first + count;
        let mut k = first;
        while k < end {
            // One census page at a time: a dense page is compared as
            // slices, in the decoding loop.
            let seg_end = end.min((k / pc + 1) * pc);
            let page = census.page(k);
            let base = k - k % pc;
            match census.dense(page) {
                // 16-bit refcounts (QEMU's default) against a dense page:
                // compared as three slices, branch-light.
                Some((c, o)) if order == 4 => {
                    let (lo, n) = ((k - base) as usize, (seg_end - k) as usize);
                    let at = (k - first) as usize * 2;
                    let disk = buf.get(at..at + 2 * n).unwrap_or(&[]);
                    let (c, o) = (
                        c.get(lo..lo + n).unwrap_or(&[]),
                        o.get(lo..lo + n).unwrap_or(&[]),
                    );
                    for (i, ((d, &c), &owners)) in disk.chunks_exact(2).zip(c).zip(o).enumerate() {
                        let d = u16::from_be_bytes(d.try_into().unwrap_or([0; 2])) as u64;
                        let common =
                            d == c as u64 && c < u8::MAX && owners & owners.wrapping_sub(1) == 0;
                        if common {
                            if d > 0 {
                                last_used = Some(k + i as u64);
                            }
                            continue;
                        }
                        let kk = k + i as u64;
                        let refs = if c < u8::MAX {
                            c as u64
                        } else {
                            census.spilled(kk)
                        };
                        note(kk, d, refs, owners);
                    }
                }
                Some((c, o)) => for_each_refcount(buf, order, k - first, seg_end - k, |i, disk| {
                    let kk = first + i;
                    let j = (kk - base) as usize;
                    let (c, owners) = (
                        c.get(j).copied().unwrap_or(0),
                        o.get(j).copied().unwrap_or(0),
                    );
                    // The common case: a small count equal to the
                    // refcount, at most one owner kind.
                    if disk == c as u64 && c < u8::MAX && owners & owners.wrapping_sub(1) == 0 {
                        if disk > 0 {
                            last_used = Some(kk);
                        }
                        return;
                    }
                    let refs = if c < u8::MAX {
                        c as u64
                    } else {
                        census.spilled(kk)
                    };
                    note(kk, disk, refs, owners);
                }),
                None => for_each_refcount(buf, order, k - first, seg_end - k, |i, disk| {
                    let kk = first + i;
                    let (refs, owners) = census.get_in(page, kk);
                    if disk > 0 || refs > 0 || owners > 0 {
                        note(kk, disk, refs, owners);
                    }
                }),
            }
            k = seg_end;
        }
    } else {
        // Every refcount of this range is 0: only referenced clusters matter.
        census.for_each_in(first, first + count, |k, refs, owners| {
            note(k, 0, refs, owners)
        });
    }
    Compared {
        highest: highest.max(last_used),
        mismatches,
    }
}

/// Batches of fewer items than this (tables or blocks), or of fewer bytes
/// than [`PARALLEL_MIN_BYTES`], are worked on this thread: handing them to
/// the pool costs more than it saves, and a fuzzer checks millions of such
/// small images.
const PARALLEL_MIN: usize = 4;
const PARALLEL_MIN_BYTES: usize = 128 << 10;

/// Whether a batch of `n` items holding `bytes` pays for the hand-off.
fn parallel(n: usize, bytes: usize) -> bool {
    n >= PARALLEL_MIN && bytes >= PARALLEL_MIN_BYTES
}

/// `f(0..n)` in order, on every core when `n` items of `bytes` in all pay
/// for the hand-off.
fn map_in_order<R: Send>(n: usize, bytes: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if !parallel(n, bytes) {
        (0..n).map(f).collect()
    } else {
        (0..n).into_par_iter().map(f).collect()
    }
}

/// Bytes holding the first `count` refcounts of a block of `order`, to a
/// whole 8 bytes (sub-byte widths) and at most the block.
fn refcounts_bytes(count: u64, order: u32, cs: u64) -> usize {
    let bits = count.saturating_mul(1 << order);
    (bits.div_ceil(8).next_multiple_of(8).min(cs) as usize).max(1)
}

/// Bytes of refcount blocks read per batch of the refcount passes.
const REFBLOCK_BATCH_BYTES: usize = 256 << 10;

/// Bytes of L2 tables read per batch of [`Checker::visit_l2_tables`].
const L2_BATCH_BYTES: usize = 256 << 10;

/// Bytes of the table at `offset` that lie inside a file of `file_len`
/// bytes, to a whole entry: QEMU reads a table past the end of the file as
/// zeros, and a zero entry says nothing, so only this part is walked.
fn table_bytes_held(file_len: u64, offset: u64, cs: u64, most: usize) -> usize {
    let held = file_len.saturating_sub(offset).min(cs);
    held.next_multiple_of(16).min(most as u64) as usize
}

/// One batch of L2 tables as read: each table's bytes inside the file (to
/// a whole entry, at most `most`), one after another. A table early in a
/// small file holds the rest of the file, one near its end a few bytes: a
/// slot of `most` bytes for every table zero-filled megabytes per check
/// of a fuzzer's 64 KiB input.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Where each table's bytes start in `bytes`, and one past the last.
    starts: Vec<usize>,
}

impl Batch {
    /// Table `i` of the batch (empty past its end).
    fn table(&self, i: usize) -> &[u8] {
        match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => self.bytes.get(a..b).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Reads the tables of `group`, with one read for each run of whole
    /// tables that follow one another in the file (the common layout),
    /// zero-padded past the end of the file; a table that cannot be read
    /// reads as zeros.
    fn read(&mut self, src: &dyn ReadAt, group: &[L2Visit], cs: u64, most: usize) {
        let file_len = src.size();
        self.starts.clear();
        self.starts.push(0);
        let mut total = 0;
        for v in group {
            total += table_bytes_held(file_len, v.offset, cs, most);
            self.starts.push(total);
        }
        self.bytes.clear();
        self.bytes.resize(total, 0);
        let whole = most as u64 == cs;
        let mut i = 0;
        while i < group.len() {
            let start = group.get(i).map_or(0, |v| v.offset);
            let len = |j: usize| {
                self.starts
                    .get(j + 1)
                    .zip(self.starts.get(j))
                    .map(|(b, a)| b - a)
            };
            let mut n = 1;
            while whole
                && len(i + n - 1) == Some(most)
                && len(i + n) == Some(most)
                && group
                    .get(i + n)
                    .is_some_and(|v| Some(v.offset) == start.checked_add(n as u64 * cs))
            {
                n += 1;
            }
            let (a, b) = match (self.starts.get(i), self.starts.get(i + n)) {
                (Some(&a), Some(&b)) => (a, b),
                _ => return,
            };
            let Some(part) = self.bytes.get_mut(a..b) else {
                return;
            };
            if src.read_zero_padded(part, start).is_err() {
                // One table at a time, so that one bad table zeroes only itself.
                for (j, v) in group.iter().enumerate().skip(i).take(n) {
                    let (Some(&ta), Some(&tb)) = (self.starts.get(j), self.starts.get(j + 1))
                    else {
                        continue;
                    };
                    if let Some(t) = self.bytes.get_mut(ta..tb) {
                        if src.read_zero_padded(t, v.offset).is_err() {
                            t.fill(0);
                        }
                    }
                }
            }
            i += n;
        }
    }
}

/// Calls `f(index, refcount)` for the refcounts `start..start + count` of
/// a block, decoding each width with its own loop (this is the hot path of
/// a check).
fn for_each_refcount(
    block: &[u8],
    order: u32,
    start: u64,
    count: u64,
    mut f: impl FnMut(u64, u64),
) {
    let n = count as usize;
    let from = |width: usize| block.get(start as usize * width..).unwrap_or(&[]);
    let at = |i: usize| start + i as u64;
    match order {
        4 => {
            for (i, c) in from(2).chunks_exact(2).take(n).enumerate() {
                f(at(i), crate::field::be_u16(c, 0) as u64);
            }
        }
        3 => {
            for (i, &b) in from(1).iter().take(n).enumerate() {
                f(at(i), b as u64);
            }
        }
        5 => {
            for (i, c) in from(4).chunks_exact(4).take(n).enumerate() {
                f(at(i), crate::field::be_u32(c, 0) as u64);
            }
        }
        6 => {
            for (i, c) in from(8).chunks_exact(8).take(n).enumerate() {
                f(at(i), crate::field::be_u64(c, 0));
            }
        }
        _ => {
            for i in start..start + count {
                f(i, super::refcount::decode(block, i, order));
            }
        }
    }
}

/// About the bytes of metadata a check of the image reads, for a progress
/// bar's total: cluster 0, the active L1 table and the L2 tables it names,
/// the refcount table and the blocks it names (snapshots' tables and the
/// bitmaps are not counted: a bar may end past it). Reads only the two
/// top-level tables, and only the part of them the file holds; tables
/// named past its end are not counted (the check does not read them).
pub fn metadata_size(src: &dyn ReadAt, h: &Header) -> u64 {
    let cs = h.cluster_size();
    let held = |offset: u64, len: u64| len.min(src.size().saturating_sub(offset));
    let l1_bytes = held(h.l1_table_offset, h.l1_size as u64 * 8);
    let reft_bytes = held(
        h.refcount_table_offset,
        h.refcount_table_clusters as u64 * cs,
    );
    let named = |offset: u64, count: u64, mask: u64| {
        let inside = src.size().saturating_sub(offset) / 8;
        let mut n = 0u64;
        crate::source::for_each_entry(src, offset, count.min(inside), 8, |_, e| {
            // A table past the end of the file is not read.
            let off = crate::source::be_u64(e, 0) & mask;
            n += (off != 0 && off < src.size()) as u64;
        });
        n
    };
    let l2 = named(
        h.l1_table_offset,
        h.l1_size as u64,
        super::mapping::L1E_OFFSET_MASK,
    );
    let blocks = named(
        h.refcount_table_offset,
        reft_bytes / 8,
        super::refcount::REFT_OFFSET_MASK,
    );
    // The check reads of each refcount block the refcounts of the file's
    // clusters only (`refcounts_bytes`).
    let epb = (8u64 << h.cluster_bits) >> h.refcount_order;
    let nb = src.size().div_ceil(cs) + 1;
    let block_bytes = refcounts_bytes(epb.min(nb), h.refcount_order, cs) as u64;
    cs.saturating_add(l1_bytes)
        .saturating_add(reft_bytes)
        .saturating_add(l2.saturating_mul(cs))
        .saturating_add(blocks.saturating_mul(block_bytes))
}
