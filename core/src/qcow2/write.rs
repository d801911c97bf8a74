//! The writer: builds a spec-valid qcow2 image from a logical description
//! (spec sections "Header", "Header extensions", "Host cluster management",
//! "Cluster mapping", "Extended L2 Entries", "Snapshots", "Bitmaps").
//!
//! Layout: header cluster, active L1, then L2 tables and data in guest
//! order, compressed clusters, snapshot L1 copies, the snapshot table, the
//! bitmap directory, tables and data, and last the refcount table and blocks
//! (sized to cover themselves). Refcounts are computed from the references,
//! and COPIED is set exactly where the refcount is 1.

use super::ext::{bitmaps_field, field as ext_field};
use super::header::{field as f, *};
use super::mapping::{L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use crate::field::{push, put_be64, write as put_field, Endian::Big};
use std::collections::BTreeMap;

/// What one guest cluster holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterData {
    /// A standard data cluster (exactly one cluster of bytes).
    Data(Vec<u8>),
    /// Reads as zero (the zero flag, or all "reads as zero" subcluster bits).
    Zero,
    /// Stored compressed (exactly one cluster of bytes before compression).
    Compressed(Vec<u8>),
    /// Extended L2 only: per-subcluster allocation and zero bits, with the
    /// cluster's bytes (only allocated subclusters are read from them).
    Subclusters {
        /// Bits 0-31 of the extended L2 entry's bitmap: subcluster i is allocated.
        alloc: u32,
        /// Bits 32-63: subcluster i reads as zero.
        zero: u32,
        /// The cluster's bytes (exactly one cluster).
        data: Vec<u8>,
    },
}

/// A persistent dirty bitmap: which guest bytes are dirty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapDesc {
    /// The bitmap's name (bitmap directory entry).
    pub name: String,
    /// granularity_bits: each bit covers 2^granularity_bits guest bytes.
    pub granularity_bits: u8,
    /// Dirty (start, length) byte ranges of the guest.
    pub dirty: Vec<(u64, u64)>,
}

/// The logical description of an image.
#[derive(Debug, Clone)]
pub struct Description {
    /// Guest size in bytes.
    pub size: u64,
    /// Header version: 2 or 3.
    pub version: u32,
    /// cluster_bits: clusters of 2^cluster_bits bytes.
    pub cluster_bits: u32,
    /// refcount_order: refcounts of 2^refcount_order bits (v3 only; 4 in v2).
    pub refcount_order: u32,
    /// Extended L2 entries with subclusters (incompatible bit 4).
    pub extended_l2: bool,
    /// 0 deflate, 1 zstd.
    pub compression_type: u8,
    /// Guest cluster index -> contents; absent clusters are unallocated.
    pub clusters: BTreeMap<u64, ClusterData>,
    /// Internal snapshots, each taken of the final state (all clusters shared).
    pub snapshots: Vec<String>,
    /// Persistent dirty bitmaps (the bitmaps extension).
    pub bitmaps: Vec<BitmapDesc>,
    /// Backing file name and format.
    pub backing: Option<(String, Option<String>)>,
    /// External data file name and whether it is raw (data_file_raw).
    pub data_file: Option<(String, bool)>,
    /// Set the lazy refcounts compatible bit (bit 0).
    pub lazy_refcounts: bool,
}

impl Description {
    /// A v3 image of `size` bytes with clusters of 2^cluster_bits bytes, 16-bit refcounts, nothing allocated.
    pub fn new(size: u64, cluster_bits: u32) -> Description {
        Description {
            size,
            version: 3,
            cluster_bits,
            refcount_order: 4,
            extended_l2: false,
            compression_type: 0,
            clusters: BTreeMap::new(),
            snapshots: Vec::new(),
            bitmaps: Vec::new(),
            backing: None,
            data_file: None,
            lazy_refcounts: false,
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The guest's bytes this description defines (unallocated and past the
    /// data: zeros; no backing file is read).
    pub fn guest_bytes(&self) -> Vec<u8> {
        let cs = self.cluster_size() as usize;
        let mut out = vec![0u8; self.size as usize];
        for (&k, c) in &self.clusters {
            let at = k as usize * cs;
            let Some(dst) = out.get_mut(at..(at + cs).min(self.size as usize)) else {
                continue;
            };
            let n = dst.len();
            match c {
                ClusterData::Data(d) | ClusterData::Compressed(d) => dst.copy_from_slice(&d[..n]),
                ClusterData::Zero => dst.fill(0),
                ClusterData::Subclusters { alloc, data, .. } => {
                    let sc = cs / 32;
                    for i in 0..32 {
                        let r = i * sc..((i + 1) * sc).min(n);
                        if r.start < n && alloc >> i & 1 == 1 {
                            dst[r.clone()].copy_from_slice(&data[r]);
                        }
                    }
                }
            }
        }
        out
    }
}

/// The written image, and its data file when the description has one.
pub struct Written {
    /// The image file's bytes.
    pub image: Vec<u8>,
    /// The external data file's bytes, when the description names one.
    pub data_file: Option<Vec<u8>>,
}

pub use crate::error::WriteError;

fn err<T>(s: impl Into<String>) -> Result<T, WriteError> {
    Err(WriteError(s.into()))
}

/// Deflate (raw, no zlib header) or zstd compression of one cluster.
///
/// Deflate at the fastest level: every level writes a stream any inflater
/// reads the same, and level 1 costs a fraction of the default level's
/// matching. Its compressor (about 300 KiB of hash tables, zeroed on
/// creation) is made once per thread and reset per cluster, not made again
/// for every cluster. Zstd is ruzstd's fastest level, the only one it has.
fn compress(kind: u8, data: &[u8]) -> Vec<u8> {
    match kind {
        1 => ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest),
        _ => {
            use flate2::{Compress, Compression, FlushCompress, Status};
            use std::cell::RefCell;
            thread_local! {
                static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
            }
            DEFLATE.with_borrow_mut(|z| {
                z.reset();
                // Stored blocks cost 5 bytes per 64 KiB, so the first call
                // almost always finishes; each further one has more room.
                let mut out = Vec::with_capacity(data.len() + 64);
                loop {
                    let rest = data.get(z.total_in() as usize..).unwrap_or(&[]);
                    match z.compress_vec(rest, &mut out, FlushCompress::Finish) {
                        Ok(Status::StreamEnd) => return out,
                        Ok(_) => out.reserve(out.capacity().max(64)),
                        // Only a misuse of the stream fails; none is made here.
                        Err(_) => return Vec::new(),
                    }
                }
            })
        }
    }
}

/// The host file being laid out: clusters are handed out in order, and
/// their bytes written straight into the image (one buffer, grown as
/// clusters are written, never a buffer per cluster copied at the end).
struct Layout {
    cs: u64,
    /// The image's bytes so far (clusters allocated but not yet written
    /// are past its end, zeros once the image is sized).
    image: Vec<u8>,
    next: u64,
    /// References per host cluster.
    refs: BTreeMap<u64, u64>,
}

impl Layout {
    fn alloc(&mut self, n: u64) -> u64 {
        let first = self.next;
        self.next += n;
        first
    }
    fn put(&mut self, offset: u64, bytes: &[u8]) {
        let (at, end) = (offset as usize, offset as usize + bytes.len());
        if self.image.len() < end {
            self.image.resize(end, 0);
        }
        self.image[at..end].copy_from_slice(bytes);
    }
    fn reference(&mut self, offset: u64, len: u64, times: u64) {
        if len == 0 {
            return;
        }
        for k in offset / self.cs..=(offset + len - 1) / self.cs {
            *self.refs.entry(k).or_insert(0) += times;
        }
    }
}

/// Refuses descriptions no valid image can have.
fn validate(d: &Description) -> Result<(), WriteError> {
    if !(9..=21).contains(&d.cluster_bits) {
        return err("cluster_bits must be 9..=21");
    }
    if d.refcount_order > 6 || (d.version == 2 && d.refcount_order != 4) {
        return err("refcount_order must be 0..=6 (4 for version 2)");
    }
    if d.extended_l2 && (d.version < 3 || d.cluster_bits < 14) {
        return err("extended L2 entries need version 3 and cluster_bits >= 14");
    }
    if d.compression_type == 1 && d.version < 3 {
        return err("zstd needs version 3");
    }
    let has_compressed = d
        .clusters
        .values()
        .any(|c| matches!(c, ClusterData::Compressed(_)));
    if d.data_file.is_some() && (has_compressed || !d.snapshots.is_empty() || d.version < 3) {
        return err(
            "an external data file forbids compressed clusters and snapshots, and needs version 3",
        );
    }
    if d.version < 3 && (!d.bitmaps.is_empty() || d.lazy_refcounts) {
        return err("bitmaps and lazy refcounts need version 3");
    }
    let cs = d.cluster_size();
    if d.clusters.keys().any(|&k| k * cs >= d.size) {
        return err("a cluster lies past the virtual size");
    }
    Ok(())
}

/// One image being written: the description, the host layout, and the
/// derived geometry every step shares.
struct Writer<'d> {
    d: &'d Description,
    lay: Layout,
    cs: u64,
    l2_entry_bytes: u64,
    l2_entries: u64,
    l1_size: u64,
    /// References each data cluster gets: the active state and every snapshot.
    shared: u64,
    data_file: Option<Vec<u8>>,
}

/// Where the steps put the tables the header names.
struct Placed {
    l1_offset: u64,
    snapshots_offset: u64,
    bitmap_dir: Option<(u64, u64)>,
    reftable: (u64, u64),
}

/// Writes the image the description says.
pub fn write(d: &Description) -> Result<Written, WriteError> {
    validate(d)?;
    let cs = d.cluster_size();
    let l2_entry_bytes = if d.extended_l2 { 16 } else { 8 };
    let l2_entries = cs / l2_entry_bytes;
    let l1_size = d.size.div_ceil(l2_entries * cs);
    if l1_size * 8 > super::MAX_L1_BYTES {
        return err("virtual size needs an L1 table over 32 MiB");
    }
    let mut w = Writer {
        d,
        lay: Layout {
            cs,
            image: Vec::new(),
            next: 0,
            refs: BTreeMap::new(),
        },
        cs,
        l2_entry_bytes,
        l2_entries,
        l1_size,
        shared: 1 + d.snapshots.len() as u64,
        data_file: d.data_file.as_ref().map(|_| vec![0u8; d.size as usize]),
    };
    let header_cluster = w.lay.alloc(1);
    let l1_offset = w.lay.alloc((l1_size * 8).div_ceil(cs).max(1)) * cs;
    let l1 = w.clusters()?;
    w.active_l1(l1_offset, &l1);
    w.lay.reference(header_cluster * cs, cs, 1);
    let snapshots_offset = w.snapshots(&l1);
    let bitmap_dir = w.bitmaps()?;
    let reftable = w.refcounts()?;
    let placed = Placed {
        l1_offset,
        snapshots_offset,
        bitmap_dir,
        reftable,
    };
    let h = w.header(&placed)?;
    w.lay.put(header_cluster * cs, &h);
    let mut image = std::mem::take(&mut w.lay.image);
    image.resize((w.lay.next * cs) as usize, 0);
    Ok(Written {
        image,
        data_file: w.data_file,
    })
}

impl Writer<'_> {
    /// L2 tables and data, in guest order; returns the L1 entries (L2 offsets).
    fn clusters(&mut self) -> Result<Vec<u64>, WriteError> {
        let cs = self.cs;
        let mut l1 = vec![0u64; self.l1_size as usize];
        let mut l2s: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (&k, c) in &self.d.clusters {
            let l1i = (k / self.l2_entries) as usize;
            let l2i = (k % self.l2_entries) as usize;
            if l1[l1i] == 0 {
                let off = self.lay.alloc(1) * cs;
                l1[l1i] = off;
                l2s.insert(off, vec![0u8; cs as usize]);
            }
            let (entry, bitmap) = self.l2_entry(k, c)?;
            let t = l2s
                .get_mut(&l1[l1i])
                .ok_or_else(|| WriteError("internal: missing L2".into()))?;
            let at = l2i * self.l2_entry_bytes as usize;
            put_be64(t, at, entry);
            if self.d.extended_l2 {
                put_be64(t, at + 8, bitmap);
            }
        }
        for (&off, t) in &l2s {
            self.lay.put(off, t);
            self.lay.reference(off, cs, self.shared);
        }
        Ok(l1)
    }

    /// The L2 entry (and subcluster bitmap) of guest cluster `k`, with its
    /// data written where the entry says.
    fn l2_entry(&mut self, k: u64, c: &ClusterData) -> Result<(u64, u64), WriteError> {
        let (d, cs) = (self.d, self.cs);
        let (mut entry, bitmap) = match c {
            ClusterData::Data(bytes) | ClusterData::Subclusters { data: bytes, .. } => {
                self.data_entry(k, c, bytes)?
            }
            ClusterData::Zero => {
                if d.extended_l2 {
                    (0, 0xffff_ffff_u64 << 32)
                } else if d.version < 3 {
                    // Version 2 has no zero flag: a cluster of zeros.
                    let off = self.lay.alloc(1) * cs;
                    self.lay.reference(off, cs, self.shared);
                    (off, 0)
                } else {
                    (OFLAG_ZERO, 0)
                }
            }
            ClusterData::Compressed(bytes) => (self.compressed_entry(k, bytes)?, 0),
        };
        let has_data = match c {
            ClusterData::Data(_) => true,
            ClusterData::Subclusters { alloc, .. } => *alloc != 0,
            _ => false,
        };
        // A host cluster is referenced: in the image (offset != 0), or in the
        // data file, where offset 0 is legal and COPIED marks it allocated.
        let df = self.data_file.is_some();
        let host_counted = entry & L2E_OFFSET_MASK != 0 || (df && has_data);
        if host_counted && entry & OFLAG_COMPRESSED == 0 && (self.shared == 1 || df) {
            entry |= OFLAG_COPIED;
        }
        Ok((entry, bitmap))
    }

    /// A data cluster (or one with subclusters): in the data file at the
    /// guest offset, or in a new host cluster.
    fn data_entry(
        &mut self,
        k: u64,
        c: &ClusterData,
        bytes: &[u8],
    ) -> Result<(u64, u64), WriteError> {
        let cs = self.cs;
        if bytes.len() as u64 != cs {
            return err(format!("cluster {k}: data must be exactly one cluster"));
        }
        let bitmap = match c {
            ClusterData::Subclusters { alloc, zero, .. } => {
                if !self.d.extended_l2 || alloc & zero != 0 {
                    return err(format!(
                        "cluster {k}: subclusters need extended L2 and alloc & zero == 0"
                    ));
                }
                (*zero as u64) << 32 | *alloc as u64
            }
            _ if self.d.extended_l2 => 0xffff_ffff,
            _ => 0,
        };
        let guest = k * cs;
        if matches!(c, ClusterData::Subclusters { alloc: 0, .. }) {
            Ok((0, bitmap))
        } else if let Some(df) = self.data_file.as_mut() {
            let end = ((guest + cs) as usize).min(df.len());
            df[guest as usize..end].copy_from_slice(&bytes[..end - guest as usize]);
            Ok((guest, bitmap))
        } else {
            let off = self.lay.alloc(1) * cs;
            self.lay.put(off, bytes);
            self.lay.reference(off, cs, self.shared);
            Ok((off, bitmap))
        }
    }

    /// A compressed cluster's descriptor, its data placed in whole sectors.
    fn compressed_entry(&mut self, k: u64, bytes: &[u8]) -> Result<u64, WriteError> {
        let (d, cs) = (self.d, self.cs);
        if bytes.len() as u64 != cs {
            return err(format!("cluster {k}: data must be exactly one cluster"));
        }
        let z = compress(d.compression_type, bytes);
        let sectors = (z.len() as u64).div_ceil(512).max(1);
        if sectors - 1 > (1 << (d.cluster_bits - 8)) - 1 {
            return err(format!(
                "cluster {k}: compressed data larger than the descriptor can say"
            ));
        }
        let off = self.lay.alloc((sectors * 512).div_ceil(cs)) * cs;
        self.lay.put(off, &z);
        self.lay.reference(off, sectors * 512, self.shared);
        let shift = 62 - (d.cluster_bits - 8);
        Ok(OFLAG_COMPRESSED | (sectors - 1) << shift | off)
    }

    /// The active L1 table: COPIED where nothing else shares the L2 table.
    fn active_l1(&mut self, l1_offset: u64, l1: &[u64]) {
        let copied = if self.shared == 1 { OFLAG_COPIED } else { 0 };
        let mut bytes = Vec::with_capacity(l1.len() * 8);
        for &e in l1 {
            push(&mut bytes, Big, if e != 0 { e | copied } else { 0 });
        }
        self.lay.put(l1_offset, &bytes);
        self.lay.reference(l1_offset, (self.l1_size * 8).max(1), 1);
    }

    /// Snapshots: a copy of the L1 table each (without COPIED), and the
    /// table; returns the table's offset (0: none).
    fn snapshots(&mut self, l1: &[u64]) -> u64 {
        let (d, cs, l1_size) = (self.d, self.cs, self.l1_size);
        let mut table = Vec::new();
        for (i, name) in d.snapshots.iter().enumerate() {
            let off = self.lay.alloc((l1_size * 8).div_ceil(cs).max(1)) * cs;
            let mut plain = Vec::with_capacity(l1.len() * 8);
            for &e in l1 {
                push(&mut plain, Big, e);
            }
            self.lay.put(off, &plain);
            self.lay.reference(off, (l1_size * 8).max(1), 1);
            let id = (i + 1).to_string();
            let mut e = Vec::new();
            push(&mut e, Big, off);
            push(&mut e, Big, l1_size as u32);
            push(&mut e, Big, id.len() as u16);
            push(&mut e, Big, name.len() as u16);
            e.extend_from_slice(&[0u8; 16]); // date and vm clock
            push(&mut e, Big, 0u32); // vm_state_size
            push(&mut e, Big, 24u32); // extra data: vm state size, disk size, icount
            push(&mut e, Big, 0u64);
            push(&mut e, Big, d.size);
            push(&mut e, Big, u64::MAX);
            e.extend_from_slice(id.as_bytes());
            e.extend_from_slice(name.as_bytes());
            e.resize(e.len().next_multiple_of(8), 0);
            table.extend_from_slice(&e);
        }
        self.place_table(&table)
    }

    /// Allocates, writes and references a table of whole clusters; 0 when empty.
    fn place_table(&mut self, table: &[u8]) -> u64 {
        if table.is_empty() {
            return 0;
        }
        let off = self.lay.alloc((table.len() as u64).div_ceil(self.cs)) * self.cs;
        self.lay.put(off, table);
        self.lay.reference(off, table.len() as u64, 1);
        off
    }

    /// Bitmaps: their tables and data, and the directory (offset, length).
    fn bitmaps(&mut self) -> Result<Option<(u64, u64)>, WriteError> {
        let mut dir = Vec::new();
        for b in &self.d.bitmaps {
            if !(9..=31).contains(&b.granularity_bits) || b.name.is_empty() || b.name.len() > 1023 {
                return err(format!(
                    "bitmap {:?}: granularity 9..=31 and a name of 1..=1023 bytes",
                    b.name
                ));
            }
            let (t_off, table_size) = self.bitmap_table(b);
            let mut e = Vec::new();
            push(&mut e, Big, t_off);
            push(&mut e, Big, table_size as u32);
            push(&mut e, Big, super::bitmap::FLAG_AUTO);
            e.push(super::bitmap::TYPE_DIRTY_TRACKING);
            e.push(b.granularity_bits);
            push(&mut e, Big, b.name.len() as u16);
            push(&mut e, Big, 0u32);
            e.extend_from_slice(b.name.as_bytes());
            e.resize(e.len().next_multiple_of(8), 0);
            dir.extend_from_slice(&e);
        }
        let off = self.place_table(&dir);
        Ok((off != 0).then_some((off, dir.len() as u64)))
    }

    /// One bitmap's table: entry 0 (clean), 1 (all dirty) or a data cluster
    /// of bits. Returns (table offset, entries). Work follows the dirty
    /// ranges, not the number of bits.
    fn bitmap_table(&mut self, b: &BitmapDesc) -> (u64, u64) {
        let (cs, size) = (self.cs, self.d.size);
        let gran = 1u64 << b.granularity_bits;
        let bits_per_cluster = cs * 8;
        let granules = size.div_ceil(gran);
        let table_size = size.div_ceil(gran * bits_per_cluster).max(1);
        // Dirty granules: [s / gran, ceil((s + l) / gran)), merged and sorted.
        let mut dirty: Vec<(u64, u64)> = b
            .dirty
            .iter()
            .map(|&(s, l)| (s / gran, s.saturating_add(l).div_ceil(gran).min(granules)))
            .filter(|(a, e)| a < e)
            .collect();
        dirty.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, e) in dirty {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((a, e)),
            }
        }
        let mut table = Vec::new();
        for t in 0..table_size {
            let (first, end) = (
                t * bits_per_cluster,
                ((t + 1) * bits_per_cluster).min(granules),
            );
            let mut bits = vec![0u8; cs as usize];
            let mut set = 0u64;
            for &(a, e) in &merged {
                for g in a.max(first)..e.min(end) {
                    let bit = g - first;
                    bits[(bit / 8) as usize] |= 1 << (bit % 8);
                    set += 1;
                }
            }
            let entry = if set == 0 {
                0
            } else if set == end.saturating_sub(first) {
                1
            } else {
                let off = self.lay.alloc(1) * cs;
                self.lay.put(off, &bits);
                self.lay.reference(off, cs, 1);
                off
            };
            push(&mut table, Big, entry);
        }
        (self.place_table(&table), table_size)
    }

    /// Refcount table and blocks, sized to cover everything including
    /// themselves; returns (table offset, table clusters).
    fn refcounts(&mut self) -> Result<(u64, u64), WriteError> {
        let (cs, order) = (self.cs, self.d.refcount_order);
        let epb = (cs * 8) >> order;
        let data_clusters = self.lay.next;
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        loop {
            let total = data_clusters + blocks + table_clusters;
            let b = total.div_ceil(epb);
            let t = (b * 8).div_ceil(cs);
            if b <= blocks && t <= table_clusters {
                break;
            }
            blocks = blocks.max(b);
            table_clusters = table_clusters.max(t);
        }
        let table_off = self.lay.alloc(table_clusters) * cs;
        let blocks_first = self.lay.alloc(blocks);
        self.lay.reference(table_off, table_clusters * cs, 1);
        self.lay.reference(blocks_first * cs, blocks * cs, 1);
        let max = if order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << order)) - 1
        };
        // The blocks are the last clusters: their refcounts are stored
        // in place, only the referenced clusters visited (the map is sorted).
        let first = (blocks_first * cs) as usize;
        let end = first + (blocks * cs) as usize;
        self.lay.image.resize(end, 0);
        let block_bytes = &mut self.lay.image[first..end];
        for (&k, &rc) in &self.lay.refs {
            if rc > max {
                return err(format!(
                    "cluster {k} has {rc} references; refcount_bits {} holds at most {max}",
                    1 << order
                ));
            }
            let at = ((k / epb) * cs) as usize;
            if let Some(block) = block_bytes.get_mut(at..at + cs as usize) {
                put_refcount(block, k % epb, order, rc);
            }
        }
        let mut reftable = Vec::new();
        for b in 0..blocks {
            push(&mut reftable, Big, (blocks_first + b) * cs);
        }
        self.lay.put(table_off, &reftable);
        Ok((table_off, table_clusters))
    }

    /// Header, extensions and backing file name: the bytes of cluster 0.
    fn header(&self, p: &Placed) -> Result<Vec<u8>, WriteError> {
        let d = self.d;
        let v3 = d.version >= 3;
        let len = if v3 {
            KNOWN_HEADER_LENGTH
        } else {
            V2_HEADER_LENGTH
        };
        let mut h = vec![0u8; len as usize];
        h[0..4].copy_from_slice(&super::MAGIC);
        f::VERSION.put(&mut h, d.version);
        f::CLUSTER_BITS.put(&mut h, d.cluster_bits);
        f::SIZE.put(&mut h, d.size);
        f::L1_SIZE.put(&mut h, self.l1_size as u32);
        f::L1_TABLE_OFFSET.put(&mut h, p.l1_offset);
        f::REFCOUNT_TABLE_OFFSET.put(&mut h, p.reftable.0);
        f::REFCOUNT_TABLE_CLUSTERS.put(&mut h, p.reftable.1 as u32);
        f::NB_SNAPSHOTS.put(&mut h, d.snapshots.len() as u32);
        f::SNAPSHOTS_OFFSET.put(&mut h, p.snapshots_offset);
        if v3 {
            f::INCOMPATIBLE_FEATURES.put(&mut h, self.incompatible_features());
            let compat = if d.lazy_refcounts {
                COMPAT_LAZY_REFCOUNTS
            } else {
                0
            };
            f::COMPATIBLE_FEATURES.put(&mut h, compat);
            let mut autoclear = 0;
            if p.bitmap_dir.is_some() {
                autoclear |= AUTOCLEAR_BITMAPS;
            }
            if d.data_file.as_ref().is_some_and(|(_, raw)| *raw) {
                autoclear |= AUTOCLEAR_DATA_FILE_RAW;
            }
            f::AUTOCLEAR_FEATURES.put(&mut h, autoclear);
            f::REFCOUNT_ORDER.put(&mut h, d.refcount_order);
            f::HEADER_LENGTH.put(&mut h, len);
            f::COMPRESSION_TYPE.put(&mut h, d.compression_type);
        }
        self.extensions(&mut h, p);
        if let Some((name, _)) = &d.backing {
            if name.len() > 1023 {
                return err("backing file name over 1023 bytes");
            }
            let at = h.len() as u64;
            h.extend_from_slice(name.as_bytes());
            f::BACKING_FILE_OFFSET.put(&mut h, at);
            f::BACKING_FILE_SIZE.put(&mut h, name.len() as u32);
        }
        if h.len() as u64 > self.cs {
            return err("header, extensions and backing name do not fit in the first cluster");
        }
        Ok(h)
    }

    fn incompatible_features(&self) -> u64 {
        let d = self.d;
        let mut incompat = 0;
        if d.data_file.is_some() {
            incompat |= INCOMPAT_DATA_FILE;
        }
        if d.compression_type != 0 {
            incompat |= INCOMPAT_COMPRESSION;
        }
        if d.extended_l2 {
            incompat |= INCOMPAT_EXTL2;
        }
        incompat
    }

    /// The header extensions (backing format, data file, bitmaps) and the
    /// end-of-extensions marker.
    fn extensions(&self, h: &mut Vec<u8>, p: &Placed) {
        let d = self.d;
        let ext = |h: &mut Vec<u8>, kind: u32, data: &[u8]| {
            let at = h.len();
            h.resize(at + ext_field::DATA, 0);
            ext_field::TYPE.put_at(h, at, kind);
            ext_field::LENGTH.put_at(h, at, data.len() as u32);
            h.extend_from_slice(data);
            h.resize(h.len().next_multiple_of(8), 0);
        };
        if let Some((_, Some(fmt))) = &d.backing {
            ext(h, super::ext::EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        if let Some((name, _)) = &d.data_file {
            ext(h, super::ext::EXT_DATA_FILE, name.as_bytes());
        }
        if let Some((off, len)) = p.bitmap_dir {
            let mut b = vec![0u8; bitmaps_field::LEN];
            bitmaps_field::NB_BITMAPS.put(&mut b, d.bitmaps.len() as u32);
            bitmaps_field::BITMAP_DIRECTORY_SIZE.put(&mut b, len);
            bitmaps_field::BITMAP_DIRECTORY_OFFSET.put(&mut b, off);
            ext(h, super::ext::EXT_BITMAPS, &b);
        }
        h.extend_from_slice(&[0u8; 8]); // end of the extension area
    }
}

/// Stores refcount `index` of a refcount block of 2^order-bit entries (big
/// endian, sub-byte entries from the least significant bit, as spec "Host
/// cluster management" says); an entry past the block is not written.
pub(crate) fn put_refcount(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    let at = (index * bits / 8) as usize;
    match bits {
        64 => put_field(block, at, Big, value),
        32 => put_field(block, at, Big, value as u32),
        16 => put_field(block, at, Big, value as u16),
        8 => put_field(block, at, Big, value as u8),
        _ => {
            if let Some(byte) = block.get_mut(at) {
                let shift = index * bits % 8;
                let mask = (((1u64 << bits) - 1) << shift) as u8;
                *byte = (*byte & !mask) | (((value << shift) as u8) & mask);
            }
        }
    }
}

/// Valid, bounded descriptions for structure-aware fuzzing (see
/// [`crate::structured`]): clusters of 512 B to 16 KiB (extended L2 at
/// 16 KiB), both versions, every refcount width (blocks of at most 8,192
/// entries), every cluster kind,
/// snapshots, bitmaps, backing and data files, within what the writer and
/// the checker accept together.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Description {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        use crate::structured::{
            allocate, contents, guest_size, MAX_GUEST_BYTES, MAX_GUEST_CLUSTERS,
        };
        let cluster_bits = *u.choose(&[9u32, 10, 11, 12, 14])?;
        let cs = 1u64 << cluster_bits;
        let (size, n) = guest_size(u, cs, MAX_GUEST_CLUSTERS.min(MAX_GUEST_BYTES / cs))?;
        let mut d = Description::new(size, cluster_bits);
        d.version = if u.ratio(1, 4)? { 2 } else { 3 };
        let v3 = d.version == 3;
        d.extended_l2 = v3 && cluster_bits >= 14 && u.arbitrary()?;
        // Every refcount width, but refcount blocks of at most 8,192
        // entries (1-bit refcounts with clusters of at most 1 KiB, 16-bit
        // ones at 16 KiB): the checker walks a whole block per run, and a
        // block of 2^17 1-bit entries (16 KiB clusters) cost a fuzz target
        // ten times a run of any other shape while reaching the same code.
        let min_order = cluster_bits.saturating_sub(10);
        d.refcount_order = if v3 {
            u.int_in_range(min_order..=6)?
        } else {
            4
        };
        d.compression_type = if v3 { u.int_in_range(0..=1)? } else { 0 };
        let ext = d.extended_l2;
        d.clusters = allocate(u, n, |u| {
            let data = contents(u, cs as usize)?;
            Ok(match u.int_in_range(0..=3)? {
                0 => ClusterData::Data(data),
                1 => ClusterData::Zero,
                2 => ClusterData::Compressed(data),
                _ if ext => {
                    let alloc: u32 = u.arbitrary()?;
                    let zero = u.arbitrary::<u32>()? & !alloc;
                    ClusterData::Subclusters { alloc, zero, data }
                }
                _ => ClusterData::Data(data),
            })
        })?;
        if v3 && u.ratio(1, 4)? {
            // A data file: no compressed clusters, no snapshots; a raw one
            // cannot have a backing file.
            d.clusters
                .retain(|_, c| !matches!(c, ClusterData::Compressed(_)));
            d.data_file = Some(("img.data".into(), u.arbitrary()?));
        } else if d.refcount_order > 0 {
            // Snapshots share clusters: a 1-bit refcount cannot count them;
            // a 2-bit one counts the active state and two snapshots.
            let snaps = u.int_in_range(0..=2)?;
            d.snapshots = (0..snaps).map(|i| format!("snap{i}")).collect();
        }
        if u.ratio(1, 3)? && !d.data_file.as_ref().is_some_and(|(_, raw)| *raw) {
            let format = match u.int_in_range(0..=2)? {
                0 => None,
                1 => Some("qcow2".to_string()),
                _ => Some("raw".to_string()),
            };
            d.backing = Some(("base.img".into(), format));
        }
        if v3 {
            let bitmaps = u.int_in_range(0..=2)?;
            for i in 0..bitmaps {
                let granularity_bits = u.int_in_range(9..=20)?;
                let mut dirty = Vec::new();
                for _ in 0..u.int_in_range(0..=3)? {
                    let start = u.int_in_range(0..=size - 1)?;
                    dirty.push((start, u.int_in_range(1..=size - start)?));
                }
                d.bitmaps.push(BitmapDesc {
                    name: format!("b{i}"),
                    granularity_bits,
                    dirty,
                });
            }
            d.lazy_refcounts = u.arbitrary()?;
        }
        Ok(d)
    }
}
