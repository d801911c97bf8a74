//! Reference counts (spec section "Host cluster management"): the on-disk
//! refcount table and blocks, and the census of references the checker
//! rebuilds from every structure that owns a cluster.

use super::header::Header;
use crate::hash::FastMap;
use crate::report::Report;
use crate::rules::qcow2 as rule;
use crate::source::ReadAt;

/// Refcount table entry bits 9-63: offset of the refcount block (spec "Host cluster management").
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Refcount table entry bits 0-8: reserved, must be 0.
pub const REFT_RESERVED_MASK: u64 = 0x1ff;

/// Decodes refcount `index` of a refcount block (big-endian; sub-byte widths
/// start at the least significant bit, as the spec says).
pub fn decode(block: &[u8], index: u64, order: u32) -> u64 {
    let i = index as usize;
    let byte = |at: usize| block.get(at).copied().unwrap_or(0) as u64;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            (byte(i / per_byte) >> (bits * (i % per_byte))) & ((1 << bits) - 1)
        }
        3 => byte(i),
        _ => {
            let width = 1usize << (order - 3);
            let start = i * width;
            (0..width).fold(0u64, |acc, k| (acc << 8) | byte(start + k))
        }
    }
}

/// Why a refcount could not be looked up (QEMU reports these as check
/// errors): its block offset is unaligned or beyond any file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnalignedBlock {
    /// Index of the refcount table entry.
    pub table_index: u64,
    /// The refcount block offset that entry holds, in bytes.
    pub block_offset: u64,
}

/// The refcounts as the image stores them.
pub struct OnDisk<'a> {
    src: &'a dyn ReadAt,
    cluster_bits: u32,
    /// refcount_order: refcounts are 2^order bits wide.
    pub order: u32,
    /// The refcount table, as far as it lies inside the file: QEMU reads the
    /// part past the end as zeros (no refcount block), and so do we, without
    /// allocating it.
    pub table: Vec<u64>,
    /// Entries the header claims.
    pub table_entries: u64,
}

impl<'a> OnDisk<'a> {
    /// Loads the refcount table (already validated to be at most 8 MiB).
    pub fn load(src: &'a dyn ReadAt, h: &Header) -> crate::Result<Self> {
        let claimed = h.refcount_table_clusters as u64 * h.cluster_size() / 8;
        let table = crate::source::read_u64_table(src, h.refcount_table_offset, claimed);
        Ok(OnDisk {
            src,
            cluster_bits: h.cluster_bits,
            order: h.refcount_order,
            table,
            table_entries: claimed,
        })
    }

    /// Refcounts one refcount block holds.
    pub fn entries_per_block(&self) -> u64 {
        (8u64 << self.cluster_bits) >> self.order
    }

    /// Raw refcount table entry `t` (0 past the part inside the file).
    pub fn entry(&self, t: u64) -> u64 {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.table.get(t))
            .copied()
            .unwrap_or(0)
    }

    /// Offset of the refcount block for table index `t`, 0 when none; an
    /// unaligned offset makes every refcount of that block unreadable.
    pub fn block_offset(&self, t: u64) -> Result<u64, UnalignedBlock> {
        let off = self.entry(t) & REFT_OFFSET_MASK;
        // A block past the largest file offset (i64::MAX) cannot be read at
        // all; QEMU reports every refcount in it as an I/O error.
        let unreachable = off
            .checked_add(1 << self.cluster_bits)
            .is_none_or(|end| end > i64::MAX as u64);
        if off & ((1 << self.cluster_bits) - 1) != 0 || (off != 0 && unreachable) {
            return Err(UnalignedBlock {
                table_index: t,
                block_offset: off,
            });
        }
        Ok(off)
    }

    /// Looks up one refcount by reading just the bytes that hold it.
    pub fn get(&self, cluster: u64) -> Result<u64, UnalignedBlock> {
        let epb = self.entries_per_block();
        let t = cluster / epb;
        if t >= self.table_entries {
            return Ok(0);
        }
        let block = self.block_offset(t)?;
        if block == 0 {
            return Ok(0);
        }
        let index = cluster % epb;
        let bit = index << self.order;
        let width = (1u64 << self.order).div_ceil(8);
        let mut buf = [0u8; 8];
        let slot = &mut buf[..width as usize];
        // Past the end of the file a block reads as zeros, as in QEMU.
        if self
            .src
            .read_zero_padded(slot, block.saturating_add(bit / 8))
            .is_err()
        {
            return Ok(0);
        }
        let index_in_slot = if self.order < 3 {
            (bit % 8) >> self.order
        } else {
            0
        };
        Ok(decode(slot, index_in_slot, self.order))
    }

    /// Reads refcount block `t` into `buf` (one cluster), zero-padded.
    pub fn read_block(&self, block_offset: u64, buf: &mut [u8]) {
        if self.src.read_zero_padded(buf, block_offset).is_err() {
            buf.fill(0);
        }
    }
}

/// Kinds of structure that own clusters, as bits, to detect one cluster
/// owned by two different kinds.
pub mod owner {
    /// The header cluster.
    pub const HEADER: u8 = 1 << 0;
    /// An L1 table (active or a snapshot's).
    pub const L1: u8 = 1 << 1;
    /// An L2 table.
    pub const L2: u8 = 1 << 2;
    /// The refcount table or a refcount block.
    pub const REFCOUNT: u8 = 1 << 3;
    /// The snapshot table.
    pub const SNAPSHOT_TABLE: u8 = 1 << 4;
    /// Bitmap directory or bitmap table/data clusters.
    pub const BITMAP: u8 = 1 << 5;
    /// A standard data cluster.
    pub const DATA: u8 = 1 << 6;
    /// A cluster holding compressed data.
    pub const COMPRESSED: u8 = 1 << 7;

    /// The names of the owner kinds set in `bits`, for a finding.
    pub fn names(bits: u8) -> String {
        const NAMES: [&str; 8] = [
            "header",
            "L1 table",
            "L2 table",
            "refcount structure",
            "snapshot table",
            "bitmap",
            "data",
            "compressed data",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Clusters per census page (a power of two).
const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;
/// A page holds its clusters as a sorted list until this many are
/// referenced, then as two dense arrays (2 bytes per cluster): a dense page
/// costs at most 2 * PAGE / PROMOTE = 32 bytes per referenced cluster, so
/// references scattered over a huge sparse file cannot make it expensive.
const PROMOTE: usize = PAGE / 16;
/// A new page starts dense (skipping the sparse phase, which is slower)
/// while all dense pages together stay within this many clusters per
/// distinct referenced cluster: the same 32-bytes-per-reference bound as
/// [`PROMOTE`], applied to the whole census, so an image referencing its
/// clusters in order (every real image) never pays for sparse pages.
const DENSE_PER_REFERENCE: u64 = 16;

/// Pages of the flat region: the first FLAT_PAGES * PAGE clusters (32M,
/// a 1 TiB image of 64 KiB clusters) are two flat byte arrays, the fast
/// path of every real image. They are allocated zeroed (calloc), so the
/// operating system commits only the 4 KiB pages a reference touches:
/// resident memory still follows the clusters referenced, and the address
/// space reserved is this constant, never the file length.
const FLAT_PAGES: u64 = 8192;

/// One referenced cluster of a sparse page: (index in the page, count, owners).
type Slot = (u16, u8, u8);

enum Page {
    Sparse(Vec<Slot>),
    Dense(DensePage),
}

struct DensePage {
    counts: Box<[u8; PAGE]>,
    owners: Box<[u8; PAGE]>,
}

impl DensePage {
    fn new() -> Self {
        DensePage {
            counts: zeroed(),
            owners: zeroed(),
        }
    }
}

/// A zeroed page array, allocated zeroed (calloc: fresh memory is not
/// written twice) rather than built on the stack and copied.
fn zeroed() -> Box<[u8; PAGE]> {
    let b: Box<[u8]> = vec![0u8; PAGE].into_boxed_slice();
    b.try_into().unwrap_or_else(|_| Box::new([0; PAGE]))
}

/// A census page as the comparison reads it: counts and owners by index.
#[derive(Clone, Copy)]
pub enum PageRef<'a> {
    /// Nothing counted in this page.
    None,
    /// A few counted clusters of the page, as sparse slots.
    Sparse(&'a [Slot]),
    /// Counts and owners, PAGE of each (a dense page or part of the flat region).
    Dense(&'a [u8], &'a [u8]),
}

impl PageRef<'_> {
    /// (saturated count byte, owners) of index `i` of the page.
    #[inline]
    fn raw(self, i: usize) -> (u8, u8) {
        match self {
            PageRef::None => (0, 0),
            PageRef::Dense(c, o) => (
                c.get(i).copied().unwrap_or(0),
                o.get(i).copied().unwrap_or(0),
            ),
            PageRef::Sparse(v) => match v.binary_search_by_key(&(i as u16), |s| s.0) {
                Ok(at) => v.get(at).map_or((0, 0), |s| (s.1, s.2)),
                Err(_) => (0, 0),
            },
        }
    }
}

/// The rebuilt reference count of every host cluster the image references.
///
/// Memory follows the clusters actually referenced, never the file length:
/// the first FLAT_PAGES pages are flat arrays the OS commits page by page
/// as they are touched; past them, pages of `PAGE` clusters are created
/// when first touched, sparse (a sorted list) until enough of their
/// clusters are referenced to make two dense byte arrays cheaper. Counts
/// saturate at 255 in a byte; larger ones spill into a map.
pub struct Census {
    /// The flat region (see FLAT_PAGES): counts and owners of clusters
    /// `0..flat_len`, and which of its pages were touched.
    flat_counts: Vec<u8>,
    flat_owners: Vec<u8>,
    flat_touched: Vec<bool>,
    flat_len: u64,
    /// Pages past the flat region.
    pages: Vec<Page>,
    /// Page number -> index into `pages`.
    index: FastMap<u64, usize>,
    /// The last page looked up by `reference_cluster` (page number, index),
    /// so sequential references skip the hash lookup.
    last: (u64, usize),
    spill: FastMap<u64, u64>,
    /// Pages that are dense, and clusters with at least one reference.
    dense_pages: u64,
    distinct: u64,
    cluster_bits: u32,
    file_len: u64,
    refcount_max: u64,
    /// Clusters a reference may touch: those of the file plus one partly
    /// allocated cluster past its end.
    slots: u64,
    /// Clusters covered: those of the file, plus one partly allocated
    /// cluster past its end if something references it.
    pub nb_clusters: u64,
}

impl Census {
    /// An empty census for header `h` over a file of `file_len` bytes.
    pub fn new(h: &Header, file_len: u64) -> Self {
        let nb = file_len.div_ceil(h.cluster_size());
        let flat_pages = (nb + 1).div_ceil(PAGE as u64).min(FLAT_PAGES);
        let flat_len = flat_pages * PAGE as u64;
        Census {
            flat_counts: vec![0; flat_len as usize],
            flat_owners: vec![0; flat_len as usize],
            flat_touched: vec![false; flat_pages as usize],
            flat_len,
            pages: Vec::new(),
            index: FastMap::default(),
            last: (u64::MAX, 0),
            spill: FastMap::default(),
            dense_pages: 0,
            distinct: 0,
            cluster_bits: h.cluster_bits,
            file_len,
            refcount_max: if h.refcount_order >= 6 {
                u64::MAX
            } else {
                (1u64 << h.refcount_bits()) - 1
            },
            // One spare slot: a reference may end up to one cluster past EOF.
            slots: nb + 1,
            nb_clusters: nb,
        }
    }

    /// The page holding cluster `k`, for reading.
    #[inline]
    pub fn page(&self, k: u64) -> PageRef<'_> {
        let pn = k >> PAGE_BITS;
        if k < self.flat_len {
            if !self.flat_touched.get(pn as usize).copied().unwrap_or(false) {
                return PageRef::None;
            }
            let r = (pn << PAGE_BITS) as usize..((pn + 1) << PAGE_BITS) as usize;
            return match (self.flat_counts.get(r.clone()), self.flat_owners.get(r)) {
                (Some(c), Some(o)) => PageRef::Dense(c, o),
                _ => PageRef::None,
            };
        }
        let i = if self.last.0 == pn {
            Some(self.last.1)
        } else {
            self.index.get(&pn).copied()
        };
        match i.and_then(|i| self.pages.get(i)) {
            None => PageRef::None,
            Some(Page::Sparse(v)) => PageRef::Sparse(v),
            Some(Page::Dense(d)) => PageRef::Dense(&d.counts[..], &d.owners[..]),
        }
    }

    /// The count of cluster `k` given its page (from [`Census::page`]).
    #[inline]
    pub fn get_in(&self, page: PageRef<'_>, k: u64) -> (u64, u8) {
        let (c, o) = page.raw((k as usize) & (PAGE - 1));
        let c = if c < u8::MAX {
            c as u64
        } else {
            self.spill.get(&k).copied().unwrap_or(u8::MAX as u64)
        };
        (c, o)
    }

    /// References counted to cluster `k` (cluster index).
    pub fn get(&self, k: u64) -> u64 {
        self.get_in(self.page(k), k).0
    }

    /// Largest refcount the image's refcount width can hold.
    pub fn refcount_max(&self) -> u64 {
        self.refcount_max
    }

    /// The [`owner`] kinds that reference cluster `k`.
    pub fn owners(&self, k: u64) -> u8 {
        self.get_in(self.page(k), k).1
    }

    /// Calls `f(first, last)` for each touched page with the first and last
    /// cluster that may have been referenced in it (the whole page when it
    /// is dense), in no particular order.
    pub fn touched_ranges(&self, mut f: impl FnMut(u64, u64)) {
        for (pn, _) in self.flat_touched.iter().enumerate().filter(|(_, &t)| t) {
            let base = (pn as u64) << PAGE_BITS;
            f(base, base + PAGE as u64 - 1);
        }
        for (&pn, &i) in &self.index {
            let base = pn << PAGE_BITS;
            match self.pages.get(i) {
                Some(Page::Sparse(v)) => {
                    for s in v {
                        f(base + s.0 as u64, base + s.0 as u64);
                    }
                }
                Some(Page::Dense(_)) => f(base, base + PAGE as u64 - 1),
                None => {}
            }
        }
    }

    /// The dense arrays (counts, owners) of `page`, if it is dense: the
    /// comparison's fast path.
    #[inline]
    pub fn dense<'a>(&self, page: PageRef<'a>) -> Option<(&'a [u8], &'a [u8])> {
        match page {
            PageRef::Dense(c, o) => Some((c, o)),
            _ => None,
        }
    }

    /// The count of cluster `k` whose saturated count byte is 255.
    #[cold]
    pub fn spilled(&self, k: u64) -> u64 {
        self.spill.get(&k).copied().unwrap_or(u8::MAX as u64)
    }

    /// Calls `f(k, count, owners)` for every referenced cluster `k` in
    /// `first..end`, ascending. Looks at the touched pages only: a range of
    /// millions of clusters with nothing referenced costs nothing.
    pub fn for_each_in(&self, first: u64, end: u64, mut f: impl FnMut(u64, u64, u8)) {
        if end <= first {
            return;
        }
        let (p0, p1) = (first >> PAGE_BITS, (end - 1) >> PAGE_BITS);
        let flat_end = (p1 + 1).min(self.flat_touched.len() as u64);
        let flat = (p0..flat_end).filter(|&pn| self.flat_touched.get(pn as usize) == Some(&true));
        let paged: Vec<u64> = if p1 - p0 < self.index.len() as u64 {
            (p0..=p1).filter(|pn| self.index.contains_key(pn)).collect()
        } else {
            let mut v: Vec<u64> = self
                .index
                .keys()
                .copied()
                .filter(|pn| (p0..=p1).contains(pn))
                .collect();
            v.sort_unstable();
            v
        };
        // Flat pages come first: they are the lowest page numbers.
        for pn in flat.chain(paged) {
            let page = self.page(pn << PAGE_BITS);
            let base = pn << PAGE_BITS;
            let lo = first.max(base) - base;
            let hi = end.min(base + PAGE as u64) - base;
            match page {
                PageRef::None => {}
                PageRef::Dense(..) => {
                    for i in lo..hi {
                        let (c, o) = self.get_in(page, base + i);
                        if c > 0 || o > 0 {
                            f(base + i, c, o);
                        }
                    }
                }
                PageRef::Sparse(v) => {
                    for &(i, _, _) in v.iter().filter(|s| (lo..hi).contains(&(s.0 as u64))) {
                        let (c, o) = self.get_in(page, base + i as u64);
                        f(base + i as u64, c, o);
                    }
                }
            }
        }
    }

    /// Clusters per page, for callers that walk pages.
    pub const fn page_clusters() -> u64 {
        PAGE as u64
    }

    /// The slot (count byte, owners) of cluster `k`, creating its page (and
    /// promoting a full sparse page to dense) as needed. None past the slots.
    fn slot_mut(&mut self, k: u64) -> Option<(&mut u8, &mut u8)> {
        if k >= self.slots {
            return None;
        }
        let pn = k >> PAGE_BITS;
        if k < self.flat_len {
            *self.flat_touched.get_mut(pn as usize)? = true;
            let c = self.flat_counts.get_mut(k as usize)?;
            let o = self.flat_owners.get_mut(k as usize)?;
            return Some((c, o));
        }
        let i = (k as usize) & (PAGE - 1);
        let at = if self.last.0 == pn {
            self.last.1
        } else {
            let at = match self.index.get(&pn) {
                Some(&at) => at,
                None => {
                    let dense = (self.dense_pages + 1) * PAGE as u64
                        <= DENSE_PER_REFERENCE * self.distinct + PAGE as u64;
                    self.pages.push(if dense {
                        self.dense_pages += 1;
                        Page::Dense(DensePage::new())
                    } else {
                        Page::Sparse(Vec::new())
                    });
                    self.index.insert(pn, self.pages.len() - 1);
                    self.pages.len() - 1
                }
            };
            self.last = (pn, at);
            at
        };
        let page = self.pages.get_mut(at)?;
        if let Page::Sparse(v) = page {
            if v.len() >= PROMOTE && v.binary_search_by_key(&(i as u16), |s| s.0).is_err() {
                self.dense_pages += 1;
                let mut d = DensePage::new();
                for &(j, c, o) in v.iter() {
                    if let (Some(dc), Some(downers)) =
                        (d.counts.get_mut(j as usize), d.owners.get_mut(j as usize))
                    {
                        *dc = c;
                        *downers = o;
                    }
                }
                *page = Page::Dense(d);
            }
        }
        match page {
            Page::Dense(d) => Some((d.counts.get_mut(i)?, d.owners.get_mut(i)?)),
            Page::Sparse(v) => {
                let pos = match v.binary_search_by_key(&(i as u16), |s| s.0) {
                    Ok(pos) => pos,
                    Err(pos) => {
                        v.insert(pos, (i as u16, 0, 0));
                        pos
                    }
                };
                let s = v.get_mut(pos)?;
                Some((&mut s.1, &mut s.2))
            }
        }
    }

    /// Adds `times` references to cluster `k` owned by `owner`; returns how
    /// many of them would overflow refcount_bits (those are not added).
    fn add(&mut self, k: u64, times: u64, owner: u8) -> u64 {
        let refcount_max = self.refcount_max;
        let spilled = self.spill.get(&k).copied();
        let Some((slot, owners)) = self.slot_mut(k) else {
            return 0;
        };
        *owners |= owner;
        let first_reference = *slot == 0;
        let old = if *slot < u8::MAX {
            *slot as u64
        } else {
            spilled.unwrap_or(u8::MAX as u64)
        };
        let room = refcount_max - old;
        let added = times.min(room);
        let new = old + added;
        if new < u8::MAX as u64 {
            *slot = new as u8;
        } else {
            *slot = u8::MAX;
            self.spill.insert(k, new);
        }
        if first_reference && added > 0 {
            self.distinct += 1;
        }
        times - added
    }

    /// Counts one reference to the cluster at `offset` (one cluster long).
    /// The common case of a check, kept branch-light: an aligned cluster
    /// inside the file, in the page last touched, whose count is small.
    #[inline(always)]
    pub fn reference_cluster(&mut self, report: &mut Report, offset: u64, owner: u8, what: &str) {
        let cs = 1u64 << self.cluster_bits;
        let k = offset >> self.cluster_bits;
        // `k < nb_clusters` keeps the spare slot out: k lies inside the file.
        // The flat region first: no page to find; a first reference marks
        // its page touched (for the comparison).
        if offset & (cs - 1) == 0 && k < self.nb_clusters && k < self.flat_len {
            if let (Some(c), Some(o)) = (
                self.flat_counts.get_mut(k as usize),
                self.flat_owners.get_mut(k as usize),
            ) {
                if *c < u8::MAX - 1 && (*c as u64) < self.refcount_max {
                    if *c == 0 {
                        self.distinct += 1;
                        if let Some(t) = self.flat_touched.get_mut((k >> PAGE_BITS) as usize) {
                            *t = true;
                        }
                    }
                    *c += 1;
                    *o |= owner;
                    return;
                }
            }
        } else if offset & (cs - 1) == 0 && k < self.nb_clusters && self.last.0 == k >> PAGE_BITS {
            if let Some(Page::Dense(d)) = self.pages.get_mut(self.last.1) {
                let i = (k as usize) & (PAGE - 1);
                if let (Some(c), Some(o)) = (d.counts.get_mut(i), d.owners.get_mut(i)) {
                    if *c < u8::MAX - 1 && (*c as u64) < self.refcount_max {
                        self.distinct += (*c == 0) as u64;
                        *c += 1;
                        *o |= owner;
                        return;
                    }
                }
            }
        }
        self.reference(report, offset, cs, 1, owner, what);
    }

    /// Clusters below this take the fast path of [`Census::reference_cluster`]
    /// when aligned: inside the file and the flat region.
    pub fn fast_limit(&self) -> u64 {
        self.nb_clusters.min(self.flat_len)
    }

    /// Counts one reference to each of the clusters `first..first + n`
    /// owned by `owner`, exactly as `n` calls of [`Census::reference_cluster`]
    /// in ascending order would (and with the same findings, in the same
    /// order): a run of a healthy L2 table, counted as one slice.
    pub fn reference_clusters(
        &mut self,
        report: &mut Report,
        first: u64,
        n: u64,
        owner: u8,
        what: &str,
    ) {
        let end = first.saturating_add(n);
        if n == 0 {
            return;
        }
        if end > self.nb_clusters || end > self.flat_len {
            for k in first..end {
                self.reference_cluster(report, k << self.cluster_bits, owner, what);
            }
            return;
        }
        // Counts below `below` take the fast path of reference_cluster.
        let below = self.refcount_max.min(u8::MAX as u64 - 1) as u8;
        for pn in first >> PAGE_BITS..=(end - 1) >> PAGE_BITS {
            if let Some(t) = self.flat_touched.get_mut(pn as usize) {
                *t = true;
            }
        }
        let mut k = first;
        while k < end {
            let (lo, hi) = (k as usize, end as usize);
            let (Some(counts), Some(owners)) = (
                self.flat_counts.get_mut(lo..hi),
                self.flat_owners.get_mut(lo..hi),
            ) else {
                return;
            };
            let mut done = 0u64;
            let mut firsts = 0u64;
            for (c, o) in counts.iter_mut().zip(owners.iter_mut()) {
                if *c >= below {
                    break;
                }
                firsts += (*c == 0) as u64;
                *c += 1;
                *o |= owner;
                done += 1;
            }
            self.distinct += firsts;
            k += done;
            if k < end {
                // A count at its limit: the general path (spill, overflow).
                self.reference(
                    report,
                    k << self.cluster_bits,
                    1 << self.cluster_bits,
                    1,
                    owner,
                    what,
                );
                k += 1;
            }
        }
    }

    /// Counts `times` references to the byte range `offset..offset+len`, as
    /// QEMU's qcow2_inc_refcounts_imrt does: a range ending a cluster or
    /// more past the end of the file is a corruption and is not counted.
    pub fn reference(
        &mut self,
        report: &mut Report,
        offset: u64,
        len: u64,
        times: u64,
        owner: u8,
        what: &str,
    ) {
        if len == 0 || times == 0 {
            return;
        }
        let cs = 1u64 << self.cluster_bits;
        let end = offset as u128 + len as u128;
        if end >= self.file_len as u128 + cs as u128 {
            report.add_with(&rule::REFERENCE_PAST_EOF, Some(offset), times, || {
                format!(
                    "{what} at {offset:#x} ({len} bytes) lies past the end of the file ({} bytes)",
                    self.file_len
                )
            });
            return;
        }
        let first = offset >> self.cluster_bits;
        let last = ((end - 1) >> self.cluster_bits) as u64;
        for k in first..=last {
            let over = self.add(k, times, owner);
            if over > 0 {
                report.add_with(
                    &rule::REFCOUNT_OVERFLOW,
                    Some(k << self.cluster_bits),
                    over,
                    || {
                        format!(
                            "cluster {k} is referenced more often than refcount_max {} allows",
                            self.refcount_max
                        )
                    },
                );
            }
            if k >= self.nb_clusters {
                self.nb_clusters = k + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_refcounts_start_at_the_least_significant_bit() {
        // order 0: one bit each; byte 0b0000_0101 -> clusters 0 and 2 have refcount 1.
        let block = [0b0000_0101u8, 0x80];
        assert_eq!(decode(&block, 0, 0), 1);
        assert_eq!(decode(&block, 1, 0), 0);
        assert_eq!(decode(&block, 2, 0), 1);
        assert_eq!(decode(&block, 15, 0), 1);
        // order 2: nibbles, low nibble first.
        assert_eq!(decode(&[0x3a], 0, 2), 0xa);
        assert_eq!(decode(&[0x3a], 1, 2), 0x3);
        // order 4: big-endian 16-bit.
        assert_eq!(decode(&[0x01, 0x02, 0x00, 0x07], 1, 4), 7);
        assert_eq!(decode(&[0x01, 0x02], 0, 4), 0x0102);
        // order 6: big-endian 64-bit.
        assert_eq!(decode(&u64::MAX.to_be_bytes(), 0, 6), u64::MAX);
        // Out of range reads as zero instead of panicking.
        assert_eq!(decode(&[1], 100, 6), 0);
    }
}
