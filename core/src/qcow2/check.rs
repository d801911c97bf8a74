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
    /// where it is exactly 1) and how many words it has, or ONES_NONE /
    /// ONES_UNREADABLE. Lets the COPIED checks run without re-reading
    /// refcount blocks; blocks that are absent, in a hole or all zero cost
    /// no bits, and a block cut by the end of the file only the words of
    /// the part inside it. One contiguous vector keeps the hot lookup to
    /// two loads.
    ones_at: Vec<(u32, u32)>,
    ones_words: Vec<u64>,
    /// log2 of the refcounts per block (a power of two), for the hot path.
    epb_shift: u32,
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
        let mut groups: Vec<((u64, u32), u64)> = Vec::new();
        let mut group_index: FastMap<(u64, u32), usize> = FastMap::default();
        for s in &snaps.snapshots {
            if !snapshot::l1_usable(h, s, self.report) {
                continue;
            }
            let key = (s.l1_table_offset, s.l1_size);
            // Runs of entries with one table (the zero entries of a table
            // past the end of the file) skip the lookup.
            if let Some(last) = groups.last_mut().filter(|g| g.0 == key) {
                last.1 += 1;
                continue;
            }
            match group_index.get(&key) {
                Some(&i) => groups[i].1 += 1,
                None => {
                    group_index.insert(key, groups.len());
                    groups.push((key, 1));
                }
            }
        }
        for ((offset, size), times) in groups {
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
        match self.ones_at.get(t as usize).copied() {
            Some((at, len)) if at < ONES_NONE => {
                let i = cluster & ((1u64 << self.epb_shift) - 1);
                // Past the block's words: the part past EOF, all zeros.
                let word = (i / 64 < len as u64)
                    .then(|| self.ones_words.get(at as usize + (i / 64) as usize))
                    .flatten();
                Some(word.is_some_and(|w| w >> (i % 64) & 1 == 1))
            }
            Some((ONES_NONE, _)) => Some(false),
            Some(_) => None,
            // Past the blocks covering the file: read the one refcount.
            None => self.ondisk.get(cluster).ok().map(|rc| rc == 1),
        }
    }

    /// Reads the first `want` bytes of refcount block `off` into `buf`,
    /// cut at the end of the file (rounded up to whole refcounts): what
    /// lies past it reads as zeros, so the buffer follows what the file
    /// holds, never the claimed cluster size. False when it holds only
    /// zeros (a block in a file hole is not read at all). Each block read
    /// counts its entries against `Limits::max_entries_visited`: a refcount
    /// table whose entries all name one block cannot make the check read
    /// that block a million times unbounded.
    fn read_refblock(&mut self, off: u64, want: u64, buf: &mut Vec<u8>) -> Result<bool, Abort> {
        buf.clear();
        let size = self.src.size();
        if off >= size {
            return Ok(false);
        }
        let width = ((1u64 << self.ondisk.order) / 8).max(1);
        let inside = (size - off).div_ceil(width).saturating_mul(width);
        let len = want.min(self.h.cluster_size()).min(inside);
        if let Some((true, hole)) = self.src.extent(off) {
            if hole >= len {
                return Ok(false);
            }
        }
        self.budget(self.ondisk.entries_per_block())?;
        buf.resize(len as usize, 0);
        self.ondisk.read_block(off, buf);
        Ok(!crate::field::is_zero(buf))
    }

    /// Refcounts a block buffer read by `read_refblock` holds.
    fn refcounts_in(&self, buf: &[u8]) -> u64 {
        (buf.len() as u64 * 8) >> self.ondisk.order
    }

    /// Loads one bit per refcount == 1 of every refcount block covering the
    /// file. Memory and time follow the refcount blocks that exist and hold
    /// non-zero refcounts, one block read at a time.
    fn load_refcount_is_one(&mut self) -> Result<(), Abort> {
        let nb = self.census.nb_clusters + 1;
        let epb = self.ondisk.entries_per_block();
        let blocks = nb
            .div_ceil(epb)
            .min(self.ondisk.table_entries)
            .min(self.ondisk.table.len() as u64);
        let mut ones_at = Vec::with_capacity(blocks as usize);
        let mut words: Vec<u64> = Vec::new();
        let mut buf = Vec::new();
        for t in 0..blocks {
            let at = match self.ondisk.block_offset(t) {
                Err(_) => (ONES_UNREADABLE, 0),
                Ok(0) => (ONES_NONE, 0),
                Ok(off) => {
                    if self.read_refblock(off, u64::MAX, &mut buf)? {
                        let start = words.len();
                        let held = self.refcounts_in(&buf).min(epb);
                        let per_block = held.div_ceil(64);
                        words.resize(start + per_block as usize, 0);
                        let bits = words.get_mut(start..).unwrap_or(&mut []);
                        let mut any = false;
                        for_each_refcount(&buf, self.ondisk.order, 0, held, |i, rc| {
                            if rc == 1 {
                                any = true;
                                if let Some(w) = bits.get_mut((i / 64) as usize) {
                                    *w |= 1 << (i % 64);
                                }
                            }
                        });
                        // (The budget bounds the words well below u32::MAX.)
                        match u32::try_from(start) {
                            Ok(at) if any && at < ONES_NONE => (at, per_block as u32),
                            _ => {
                                words.truncate(start);
                                (ONES_NONE, 0)
                            }
                        }
                    } else {
                        (ONES_NONE, 0)
                    }
                }
            };
            ones_at.push(at);
        }
        self.ones_at = ones_at;
        self.ones_words = words;
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

    /// Visits every distinct L2 table once.
    fn visit_l2_tables(&mut self) -> Result<(), Abort> {
        let h = self.h;
        let cs = h.cluster_size();
        // No table holds more of the file than the file.
        let most = cs.min(self.src.size().next_multiple_of(16));
        let mut table = vec![0u8; most as usize];
        let visits = std::mem::take(&mut self.visits);
        for v in &visits {
            self.budget(h.l2_entries())?;
            // QEMU reads a table past the end of the file as zeros, and a
            // zero entry says nothing: only the part inside the file (to a
            // whole entry) is read and walked.
            let held = self.src.size().saturating_sub(v.offset).min(cs);
            let held = held.next_multiple_of(16).min(most) as usize;
            let Some(part) = table.get_mut(..held) else {
                continue;
            };
            if self.src.read_zero_padded(part, v.offset).is_err() {
                part.fill(0);
            }
            self.visit_l2(part, v);
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
        let mut buf = Vec::new();
        let mut highest: Option<u64> = None;
        let mut mismatches: Vec<(u64, u64, u64, u8)> = Vec::new();
        for t in blocks {
            let first = t * epb;
            let count = epb.min(nb - first);
            let block = if t < self.ondisk.table_entries {
                self.ondisk.block_offset(t)
            } else {
                Ok(0)
            };
            let present = match block {
                Err(u) => {
                    self.report.add_with(&rule::REFBLOCK_UNREADABLE, Some(self.h.refcount_table_offset + t * 8), count, || format!(
                        "refcount block {} at {:#x} is unaligned or unreachable; refcounts of clusters {first}..{} cannot be read",
                        u.table_index, u.block_offset, first + count));
                    continue;
                }
                Ok(0) => false,
                // Only the refcounts of the clusters compared are read.
                Ok(off) => self.read_refblock(off, (count << order).div_ceil(8), &mut buf)?,
            };
            // The refcounts past the part of the block read (past EOF) are 0.
            let held = if present {
                first + self.refcounts_in(&buf).min(count)
            } else {
                first
            };
            let census = &self.census;
            mismatches.clear();
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
            {
                let pc = Census::page_clusters();
                let end = held;
                let mut k = first;
                while k < end {
                    // One census page at a time: a dense page is compared as
                    // slices, in the decoding loop.
                    let seg_end = end.min((k / pc + 1) * pc);
                    let page = census.page(k);
                    let base = k - k % pc;
                    match census.dense(page) {
                        Some((c, o)) => {
                            for_each_refcount(&buf, order, k - first, seg_end - k, |i, disk| {
                                let kk = first + i;
                                let j = (kk - base) as usize;
                                let (c, owners) = (
                                    c.get(j).copied().unwrap_or(0),
                                    o.get(j).copied().unwrap_or(0),
                                );
                                // The common case: a small count equal to the
                                // refcount, at most one owner kind.
                                if disk == c as u64
                                    && c < u8::MAX
                                    && owners & owners.wrapping_sub(1) == 0
                                {
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
                            })
                        }
                        None => {
                            for_each_refcount(&buf, order, k - first, seg_end - k, |i, disk| {
                                let kk = first + i;
                                let (refs, owners) = census.get_in(page, kk);
                                if disk > 0 || refs > 0 || owners > 0 {
                                    note(kk, disk, refs, owners);
                                }
                            })
                        }
                    }
                    k = seg_end;
                }
            }
            // Every refcount of the rest is 0: only referenced clusters matter.
            census.for_each_in(held, first + count, |k, refs, owners| {
                note(k, 0, refs, owners)
            });
            highest = highest.max(last_used);
            for &(k, disk, refs, owners) in &mismatches {
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
        }
        // QEMU starts from cluster 0, so the header cluster always counts.
        self.report.image_stats().image_end_offset = Some((highest.unwrap_or(0) + 1) * cs);
        Ok(())
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
