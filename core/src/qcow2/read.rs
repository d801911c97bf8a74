//! The qcow2 layer of a [`VirtualDisk`](crate::disk::VirtualDisk) (spec
//! sections "Cluster mapping", "Extended L2 Entries", "Snapshots"): every
//! cluster kind, external data files, an internal snapshot's view.
//!
//! The L1 table is read a page at a time, never as a whole; a status answers
//! a whole run of L2 entries of one kind (or every cluster up to the next
//! allocated L1 entry), so the map of a sparse disk takes steps in
//! proportion to what the file holds. Decompression never produces more
//! than one cluster. Encrypted images are refused: their clusters are
//! ciphertext.

use super::ext::{self, Extensions};
use super::header::{self, Header};
use super::mapping::*;
use super::snapshot;
use crate::disk::table::{Endian, Table};
use crate::disk::{
    Backing, BackingRef, Layer, NamedFile, OpenOptions, Opened, ReadError, Resolver, Role, Status,
};
use crate::hash::FastMap;
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{policy as prule, qcow2 as rule};
use crate::source::ReadAt;
use std::io::Read;

/// L2 tables kept per layer (each one cluster).
const L2_CACHE: usize = 16;

struct Qcow2Layer {
    src: Box<dyn ReadAt>,
    data_file: Option<Box<dyn ReadAt>>,
    /// The data file the image needs but that was not opened (`--backing ignore`).
    data_file_unopened: Option<String>,
    h: Header,
    l1: Table,
    size: u64,
    l2_cache: FastMap<u64, Vec<u8>>,
    l2_order: Vec<u64>,
    /// The last decompressed cluster: (L2 entry, bytes).
    cluster_cache: Option<(u64, Vec<u8>)>,
    /// QEMU's "metadata preallocation" heuristic: far more refcounted
    /// clusters than the file really occupies. Then, as in QEMU, the map asks
    /// the file which data clusters are holes.
    metadata_prealloc: bool,
    /// Raw external data file (autoclear bit 1).
    raw_data: bool,
}

impl Qcow2Layer {
    fn l2_table(&mut self, l2_offset: u64) -> Result<&[u8], ReadError> {
        if !self.l2_cache.contains_key(&l2_offset) {
            if self.l2_order.len() >= L2_CACHE {
                let old = self.l2_order.remove(0);
                self.l2_cache.remove(&old);
            }
            // Only the part of the table inside the file (to a whole entry):
            // entries past it read as zero (l2_entry), so a table of 2 MiB
            // clusters in a small file costs what the file holds.
            let cs = self.h.cluster_size();
            let held = self.src.size().saturating_sub(l2_offset).min(cs);
            let mut t = vec![0u8; held.next_multiple_of(16).min(cs) as usize];
            self.src.read_zero_padded(&mut t, l2_offset)?;
            self.l2_cache.insert(l2_offset, t);
            self.l2_order.push(l2_offset);
        }
        Ok(self
            .l2_cache
            .get(&l2_offset)
            .map(Vec::as_slice)
            .unwrap_or(&[]))
    }

    /// An unallocated range: the layer below decides, with a raw external
    /// data file too. QEMU 10.0.2 reads such a range as zeros and maps it
    /// not present whatever the data file holds there (`qemu-img convert`
    /// and `map` of a data_file_raw image with unallocated L2 entries, as
    /// structured_image writes them; `qemu-img create` never makes one, it
    /// preallocates the metadata of a raw data file).
    fn unallocated(&self, _guest: u64) -> Status {
        Status::Unallocated { host: None }
    }

    /// The run of clusters after an empty L1 entry: up to the next L1
    /// entry that names an L2 table (or the end of the disk).
    fn empty_l1_run(&mut self, guest: u64, l1_index: u64) -> Result<(Status, u64), ReadError> {
        let span = self.h.l2_entries() << self.h.cluster_bits;
        let next = self
            .l1
            .next_nonzero(self.src.as_ref(), l1_index + 1, u64::MAX)?;
        let end = next.saturating_mul(span);
        Ok((self.unallocated(guest), end.saturating_sub(guest).max(1)))
    }

    /// Extended L2 entries: the run of subclusters in one state.
    fn subcluster_run(
        &self,
        guest: u64,
        entry: u64,
        bitmap: u64,
        entry_offset: u64,
    ) -> Result<(Status, u64), ReadError> {
        let cs = self.h.cluster_size();
        let in_cluster = guest & (cs - 1);
        let host = entry & L2E_OFFSET_MASK;
        let sc = cs / 32;
        let first = (in_cluster / sc) as u32;
        let state = |i: u32| ((bitmap >> i) & 1, (bitmap >> (32 + i)) & 1);
        let s0 = state(first);
        if s0 == (1, 1) {
            // QEMU returns EIO for a subcluster both allocated and zero.
            return Err(ReadError::rule(
                &rule::SUBCLUSTER_ALLOC_ZERO,
                Some(entry_offset),
                format!(
                    "guest offset {guest:#x}: subcluster {first} is marked both allocated and zero"
                ),
            ));
        }
        let mut end = first + 1;
        while end < 32 && state(end) == s0 {
            end += 1;
        }
        let len = end as u64 * sc - in_cluster;
        let has_host = classify(&self.h, entry) != ClusterKind::Unallocated;
        let at = has_host.then_some(host + in_cluster);
        let st = match s0 {
            (1, _) => Status::Data {
                host: host + in_cluster,
            },
            (0, 1) => Status::Zero { host: at },
            _ => Status::Unallocated { host: at },
        };
        Ok((st, len))
    }

    /// The decompressed cluster containing `guest`.
    fn compressed_cluster(&mut self, guest: u64) -> Result<&[u8], ReadError> {
        let h = self.h.clone();
        let cs = h.cluster_size() as usize;
        let cluster_index = guest >> h.cluster_bits;
        let l1e = self
            .l1
            .get(self.src.as_ref(), cluster_index / h.l2_entries())?;
        let table = self.l2_table(l1e & L1E_OFFSET_MASK)?;
        let (entry, _) = l2_entry(&h, table, (cluster_index % h.l2_entries()) as usize);
        if self.cluster_cache.as_ref().is_none_or(|(e, _)| *e != entry) {
            let r = compressed_range(&h, entry);
            // Bounded by the descriptor: at most 2^(cluster_bits-8) sectors.
            let mut input = vec![0u8; r.len as usize];
            self.src.read_zero_padded(&mut input, r.offset)?;
            let out = decompress(h.compression_type, &input, cs).map_err(|detail| {
                ReadError::Decompress {
                    guest_offset: cluster_index << h.cluster_bits,
                    host_offset: r.offset,
                    detail,
                }
            })?;
            self.cluster_cache = Some((entry, out));
        }
        Ok(self
            .cluster_cache
            .as_ref()
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[]))
    }
}

/// Whether two consecutive L2 entries continue one run of the map: the
/// same kind, and for allocated kinds the next host cluster.
fn continues(h: &Header, first: u64, i: u64, entry: u64) -> bool {
    let kind = classify(h, first);
    if classify(h, entry) != kind {
        return false;
    }
    match kind {
        ClusterKind::Normal | ClusterKind::ZeroAlloc => {
            let next = (first & L2E_OFFSET_MASK).checked_add(i << h.cluster_bits);
            next == Some(entry & L2E_OFFSET_MASK)
        }
        ClusterKind::Unallocated | ClusterKind::ZeroPlain => true,
        ClusterKind::Compressed => false,
    }
}

impl Layer for Qcow2Layer {
    fn size(&self) -> u64 {
        self.size
    }

    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        let h = self.h.clone();
        let cs = h.cluster_size();
        let in_cluster = guest & (cs - 1);
        let cluster_index = guest >> h.cluster_bits;
        let l1_index = cluster_index / h.l2_entries();
        let l2_index = cluster_index % h.l2_entries();
        if l1_index >= self.l1.len() {
            // Past the L1 table: nothing is allocated to the end of the disk.
            return Ok((self.unallocated(guest), u64::MAX));
        }
        let l1e = self.l1.get(self.src.as_ref(), l1_index)?;
        let l2_offset = l1e & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            return self.empty_l1_run(guest, l1_index);
        }
        let disk_left = self.size.saturating_sub(guest);
        let table = self.l2_table(l2_offset)?;
        let (entry, bitmap) = l2_entry(&h, table, l2_index as usize);
        let entry_offset = l2_offset + l2_index * h.l2_entry_bytes();
        if h.extended_l2() && classify(&h, entry) != ClusterKind::Compressed {
            if classify(&h, entry) == ClusterKind::Unallocated && bitmap == 0 && !self.raw_data {
                return Ok((Status::Unallocated { host: None }, cs - in_cluster));
            }
            return self.subcluster_run(guest, entry, bitmap, entry_offset);
        }
        // A run of entries of one kind within this L2 table: one step. The
        // scan stops at the end of the disk (a table of 2 MiB clusters has
        // 2^18 entries; a small disk uses a few).
        let last = h.l2_entries().min(l2_index + disk_left.div_ceil(cs));
        let mut n = 1u64;
        while l2_index + n < last {
            let (next, _) = l2_entry(&h, table, (l2_index + n) as usize);
            if !continues(&h, entry, n, next) {
                break;
            }
            n += 1;
        }
        let len = (n << h.cluster_bits) - in_cluster;
        let host = entry & L2E_OFFSET_MASK;
        Ok(match classify(&h, entry) {
            ClusterKind::Compressed => (Status::Compressed, cs - in_cluster),
            ClusterKind::ZeroPlain => (Status::Zero { host: None }, len),
            ClusterKind::ZeroAlloc => (
                Status::Zero {
                    host: Some(host + in_cluster),
                },
                len,
            ),
            ClusterKind::Unallocated => (self.unallocated(guest), len),
            ClusterKind::Normal => (
                Status::Data {
                    host: host + in_cluster,
                },
                len,
            ),
        })
    }

    fn read_data(&mut self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if let Some(name) = &self.data_file_unopened {
            return Err(ReadError::rule(
                &prule::NOT_OPENED,
                None,
                format!("guest data lies in the external data file {name:?}, which --backing ignore does not open"),
            ));
        }
        let src: &dyn ReadAt = self.data_file.as_deref().unwrap_or(self.src.as_ref());
        // Past the end of the (data) file reads as zeros, as in QEMU.
        src.read_zero_padded(buf, host)?;
        Ok(())
    }

    fn read_compressed(&mut self, guest: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let cs = self.h.cluster_size();
        let at = (guest & (cs - 1)) as usize;
        let cluster = self.compressed_cluster(guest)?;
        let src = cluster.get(at..at + buf.len()).ok_or_else(|| {
            ReadError::Unsupported("compressed cluster shorter than expected".into())
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn hole_source(&self) -> Option<&dyn ReadAt> {
        self.metadata_prealloc
            .then(|| self.data_file.as_deref().unwrap_or(self.src.as_ref()))
    }
}

/// Decompresses one cluster: exactly `cluster_size` bytes must come out
/// (trailing input is the rest of the last sector, as the spec allows).
pub fn decompress(
    compression_type: u8,
    input: &[u8],
    cluster_size: usize,
) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; cluster_size];
    match compression_type {
        0 => {
            // Raw deflate, no zlib header.
            let mut d = flate2::Decompress::new(false);
            let status = d
                .decompress(input, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| format!("deflate: {e}"))?;
            let produced = d.total_out() as usize;
            if produced != cluster_size {
                return Err(format!("deflate produced {produced} bytes of a {cluster_size}-byte cluster ({status:?})"));
            }
        }
        1 => {
            let mut src = input;
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
                .map_err(|e| format!("zstd: {e}"))?;
            dec.read_exact(&mut out).map_err(|e| {
                format!("zstd produced less than a {cluster_size}-byte cluster: {e}")
            })?;
        }
        t => return Err(format!("unknown compression type {t}")),
    }
    Ok(out)
}

/// The header, its extensions and the backing file name, or the first
/// error finding as a read error.
fn parse_metadata(
    src: &dyn ReadAt,
    limits: &Limits,
) -> Result<(header::Parsed, Extensions, Report), ReadError> {
    let mut report = Report::new("read", "qcow2", limits);
    let invalid = |r: &Report| match r
        .findings
        .iter()
        .find(|f| f.severity == crate::Severity::Error)
    {
        Some(f) => ReadError::rule(f.rule, f.offset(), f.detail.clone()),
        None => ReadError::rule(&rule::MAGIC, Some(0), "unreadable qcow2 header"),
    };
    let parsed = header::parse(src, &mut report).ok_or_else(|| invalid(&report))?;
    let exts = ext::parse(&parsed.header, &parsed.cluster0, limits, &mut report)
        .ok_or_else(|| invalid(&report))?;
    Ok((parsed, exts, report))
}

/// The backing file and data file names of a qcow2 image, where they lie.
pub fn named_files(src: &dyn ReadAt) -> Vec<NamedFile> {
    let Ok((parsed, exts, _)) = parse_metadata(src, &Limits::default()) else {
        return Vec::new();
    };
    let h = &parsed.header;
    let mut out = Vec::new();
    if let Some(name) = parsed.backing_name() {
        out.push(NamedFile {
            role: Role::BackingFile,
            name,
            offset: h.backing_file_offset,
        });
    }
    if let Some(name) = exts.data_file {
        out.push(NamedFile {
            role: Role::DataFile,
            name,
            offset: h.extensions_start(),
        });
    }
    out
}

/// Opens a qcow2 image as a layer (the active state, or `snapshot`'s).
pub fn open_layer(
    src: Box<dyn ReadAt>,
    resolver: &dyn Resolver,
    opts: &OpenOptions<'_>,
    snapshot: Option<&str>,
) -> Result<Opened, ReadError> {
    let (parsed, exts, mut report) = parse_metadata(src.as_ref(), &opts.limits)?;
    let backing = parsed.backing_name().map(|name| BackingRef {
        name,
        format: exts.backing_format.clone(),
    });
    let h = parsed.header;
    if h.crypt_method != 0 {
        return Err(ReadError::Encrypted);
    }
    let (l1_offset, l1_size, size) = match snapshot {
        None => (h.l1_table_offset, h.l1_size, h.size),
        Some(want) => {
            let table = snapshot::read(src.as_ref(), &h, &mut report).ok_or_else(|| {
                ReadError::rule(
                    &rule::SNAPSHOT_TABLE,
                    Some(h.snapshots_offset),
                    "unreadable snapshot table",
                )
            })?;
            let s = table
                .snapshots
                .iter()
                .find(|s| s.id == want)
                .or_else(|| table.snapshots.iter().find(|s| s.name == want))
                .ok_or_else(|| ReadError::NoSuchSnapshot(want.to_string()))?;
            if s.l1_table_offset % h.cluster_size() != 0
                || s.l1_size as u64 * 8 > super::MAX_L1_BYTES
            {
                return Err(ReadError::rule(
                    &rule::SNAPSHOT_L1_ALIGNED,
                    Some(s.l1_table_offset),
                    format!("snapshot {want}: invalid L1 table"),
                ));
            }
            (s.l1_table_offset, s.l1_size, s.disk_size)
        }
    };
    let (data_file, data_file_unopened) = if h.has_data_file() {
        let name = exts.data_file.clone().ok_or_else(|| {
            ReadError::rule(
                &rule::DATA_FILE_UNNAMED,
                Some(super::header::field::INCOMPATIBLE_FEATURES.pos()),
                "external data file bit set, but no data file name extension names the data file",
            )
        })?;
        if opts.backing == Backing::Ignore {
            (None, Some(name))
        } else {
            (Some(resolver.open(&name, Role::DataFile)?.source), None)
        }
    } else {
        (None, None)
    };
    let raw_data = h.has_data_file() && h.autoclear_features & header::AUTOCLEAR_DATA_FILE_RAW != 0;
    let metadata_prealloc = detect_metadata_preallocation(src.as_ref(), &h);
    let layer = Qcow2Layer {
        src,
        data_file,
        data_file_unopened,
        l1: Table::new(l1_offset, l1_size as u64, 8, Endian::Big),
        h,
        size,
        l2_cache: FastMap::default(),
        l2_order: Vec::new(),
        cluster_cache: None,
        metadata_prealloc,
        raw_data,
    };
    Ok((Box::new(layer), backing))
}

/// QEMU's qcow2_detect_metadata_preallocation: the image counts as
/// preallocated when at least max(real * 10 / 9, real + 2) clusters have a
/// non-zero refcount, `real` being the clusters the file really occupies.
fn detect_metadata_preallocation(src: &dyn ReadAt, h: &Header) -> bool {
    let Some(allocated) = src.allocated_size() else {
        return false;
    };
    let real = allocated / h.cluster_size();
    let threshold = (real * 10 / 9).max(real + 2);
    let Ok(ondisk) = super::refcount::OnDisk::load(src, h) else {
        return false;
    };
    let end = src.size().div_ceil(h.cluster_size());
    let epb = ondisk.entries_per_block();
    // Sized per block by the refcounts of clusters inside the file, not by
    // the claimed cluster size.
    let mut buf = Vec::new();
    let mut count = 0u64;
    let mut k = 0u64;
    // Bounded by the threshold (clusters the file really holds) and the file.
    while k < end && count < threshold {
        let t = k / epb;
        let first = t * epb;
        match ondisk.block_offset(t) {
            Ok(0) | Err(_) => {}
            Ok(off) => {
                let last = (first + epb).min(end);
                let bytes = ((last - first) << h.refcount_order).div_ceil(8);
                buf.clear();
                buf.resize(bytes as usize, 0);
                ondisk.read_block(off, &mut buf);
                for i in k..last {
                    if count >= threshold {
                        break;
                    }
                    count +=
                        (super::refcount::decode(&buf, i - first, h.refcount_order) != 0) as u64;
                }
            }
        }
        k = first + epb;
    }
    count >= threshold
}
