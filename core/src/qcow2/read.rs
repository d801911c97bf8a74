//! The virtual disk a qcow2 image presents (spec sections "Cluster mapping",
//! "Extended L2 Entries", "Snapshots"): reads and the allocation map, for
//! every cluster kind, through backing chains and external data files.
//!
//! Backing and data files are opened only through a [`Resolver`] the caller
//! provides (so the caller decides what a name may reach), with a depth
//! limit and cycle detection. Decompression never produces more than one
//! cluster. Encrypted images are refused: their clusters are ciphertext.

use super::ext::{self, Extensions};
use super::header::{self, Header};
use super::mapping::*;
use super::snapshot;
use crate::limits::Limits;
use crate::report::Report;
use crate::source::{read_u64_table, ReadAt};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;

/// Most backing files below an image.
pub const MAX_BACKING_DEPTH: usize = 16;
/// L2 tables kept per layer (each one cluster).
const L2_CACHE: usize = 16;

/// Why the virtual disk cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The image is not a valid qcow2 image (the first finding says why).
    Invalid(String),
    /// Encrypted images are refused rather than returned as ciphertext.
    Encrypted,
    /// The named snapshot does not exist.
    NoSuchSnapshot(String),
    /// A backing or data file could not be opened.
    Open(String),
    /// A backing chain deeper than MAX_BACKING_DEPTH, or a cycle.
    Chain(String),
    /// A compressed cluster does not decompress to exactly one cluster.
    Decompress {
        guest_offset: u64,
        host_offset: u64,
        detail: String,
    },
    /// The byte source failed.
    Io(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Invalid(s) => write!(f, "invalid image: {s}"),
            ReadError::Encrypted => write!(
                f,
                "the image is encrypted; qconform does not decrypt (refusing to return ciphertext)"
            ),
            ReadError::NoSuchSnapshot(s) => write!(f, "no snapshot named or with id {s:?}"),
            ReadError::Open(s) => write!(f, "{s}"),
            ReadError::Chain(s) => write!(f, "{s}"),
            ReadError::Decompress {
                guest_offset,
                host_offset,
                detail,
            } => {
                write!(f, "compressed cluster for guest offset {guest_offset:#x} at host offset {host_offset:#x}: {detail}")
            }
            ReadError::Io(s) => write!(f, "read error: {s}"),
        }
    }
}

impl From<crate::Error> for ReadError {
    fn from(e: crate::Error) -> Self {
        ReadError::Io(e.to_string())
    }
}

/// A file a backing or data file name refers to.
pub struct Resolved {
    pub source: Box<dyn ReadAt>,
    /// Identity for cycle detection (a canonical path, say).
    pub key: String,
    /// How names inside this file are resolved (its directory, say).
    pub resolver: Box<dyn Resolver>,
}

/// Opens the files an image names.
pub trait Resolver {
    fn open(&self, name: &str) -> Result<Resolved, String>;
}

/// A resolver that opens nothing (`--backing ignore`, or byte-slice inputs).
pub struct NoFiles;
impl Resolver for NoFiles {
    fn open(&self, name: &str) -> Result<Resolved, String> {
        Err(format!("{name}: opening other files is not allowed here"))
    }
}

/// Whether backing files are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Follow,
    /// Unallocated clusters read as zeros.
    Ignore,
}

/// What one range of the virtual disk is, as `qemu-img map --output=json`
/// says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Appends `e` to a map, merging it into the previous entry when QEMU would:
/// same depth and status, and contiguous host offsets (or neither has one).
/// Every format's map (qcow2, QED, Parallels) merges through this.
pub fn push_merged(out: &mut Vec<MapEntry>, e: MapEntry) {
    match out.last_mut() {
        Some(p)
            if (p.depth, p.present, p.zero, p.data, p.compressed)
                == (e.depth, e.present, e.zero, e.data, e.compressed)
                && match (p.offset, e.offset) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a + p.length == b,
                    _ => false,
                } =>
        {
            p.length += e.length
        }
        _ => out.push(e),
    }
}

/// What one layer says about a range starting at a guest offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Data at this host offset (in the image, or its data file).
    Data {
        host: u64,
    },
    /// Reads as zero; `host` when a cluster is preallocated there.
    Zero {
        host: Option<u64>,
    },
    Compressed,
    /// Not allocated here: the layer below decides (`host` as qemu reports
    /// it for an unallocated subcluster of an allocated cluster).
    Unallocated {
        host: Option<u64>,
    },
}

struct Qcow2Layer {
    src: Box<dyn ReadAt>,
    data_file: Option<Box<dyn ReadAt>>,
    h: Header,
    l1: Vec<u64>,
    size: u64,
    l2_cache: HashMap<u64, Vec<u8>>,
    l2_order: Vec<u64>,
    /// The last decompressed cluster: (L2 entry, bytes).
    cluster_cache: Option<(u64, Vec<u8>)>,
    /// QEMU's "metadata preallocation" heuristic: far more refcounted
    /// clusters than the file really occupies. Then, as in QEMU, the map asks
    /// the file which data clusters are holes.
    metadata_prealloc: bool,
    /// Raw external data file (autoclear bit 1): unallocated clusters are the
    /// data file's bytes at the guest offset.
    raw_data: bool,
}

enum Layer {
    Qcow2(Box<Qcow2Layer>),
    Qed(Box<crate::qed::read::QedLayer>),
    Parallels(Box<crate::parallels::read::ParallelsLayer>),
    /// A raw backing file: all of it is data at its own offsets.
    Raw(Box<dyn ReadAt>),
}

impl Layer {
    fn size(&self) -> u64 {
        match self {
            Layer::Qcow2(q) => q.size,
            Layer::Qed(q) => q.size(),
            Layer::Parallels(p) => p.size(),
            Layer::Raw(r) => r.size(),
        }
    }
}

impl Qcow2Layer {
    fn l2_table(&mut self, l2_offset: u64) -> Result<&[u8], ReadError> {
        if !self.l2_cache.contains_key(&l2_offset) {
            if self.l2_order.len() >= L2_CACHE {
                let old = self.l2_order.remove(0);
                self.l2_cache.remove(&old);
            }
            let mut t = vec![0u8; self.h.cluster_size() as usize];
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

    /// Status at `guest` and how many bytes from there it covers (at most to
    /// the end of the cluster or subcluster run).
    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        let h = self.h.clone();
        let cs = h.cluster_size();
        let in_cluster = guest & (cs - 1);
        let cluster_left = cs - in_cluster;
        let cluster_index = guest >> h.cluster_bits;
        let l1_index = cluster_index / h.l2_entries();
        let l2_index = cluster_index % h.l2_entries();
        let l1e = self.l1.get(l1_index as usize).copied().unwrap_or(0);
        let l2_offset = l1e & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((self.unallocated(guest), cluster_left));
        }
        let table = self.l2_table(l2_offset)?;
        let (entry, bitmap) = l2_entry(&h, table, l2_index as usize);
        let host = entry & L2E_OFFSET_MASK;
        Ok(match classify(&h, entry) {
            ClusterKind::Compressed => (Status::Compressed, cluster_left),
            ClusterKind::ZeroPlain => (Status::Zero { host: None }, cluster_left),
            ClusterKind::ZeroAlloc => (
                Status::Zero {
                    host: Some(host + in_cluster),
                },
                cluster_left,
            ),
            ClusterKind::Unallocated if !h.extended_l2() => (self.unallocated(guest), cluster_left),
            kind => {
                if !h.extended_l2() {
                    (
                        Status::Data {
                            host: host + in_cluster,
                        },
                        cluster_left,
                    )
                } else {
                    // 32 subclusters: a run of subclusters in the same state.
                    let sc = cs / 32;
                    let first = (in_cluster / sc) as u32;
                    let state = |i: u32| ((bitmap >> i) & 1, (bitmap >> (32 + i)) & 1);
                    let s0 = state(first);
                    let mut end = first + 1;
                    while end < 32 && state(end) == s0 {
                        end += 1;
                    }
                    let len = end as u64 * sc - in_cluster;
                    let has_host = kind != ClusterKind::Unallocated;
                    let at = has_host.then_some(host + in_cluster);
                    let st = match s0 {
                        (1, _) => Status::Data {
                            host: host + in_cluster,
                        },
                        (0, 1) => Status::Zero { host: at },
                        _ => Status::Unallocated { host: at },
                    };
                    (st, len)
                }
            }
        })
    }

    /// An unallocated cluster: with a raw external data file, the data
    /// file's bytes at the guest offset; otherwise the layer below decides.
    fn unallocated(&self, guest: u64) -> Status {
        if self.raw_data {
            Status::Data { host: guest }
        } else {
            Status::Unallocated { host: None }
        }
    }

    fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let src: &dyn ReadAt = self.data_file.as_deref().unwrap_or(self.src.as_ref());
        // Past the end of the (data) file reads as zeros, as in QEMU.
        src.read_zero_padded(buf, host)?;
        Ok(())
    }

    /// The decompressed cluster containing `guest`.
    fn compressed_cluster(&mut self, guest: u64) -> Result<&[u8], ReadError> {
        let h = self.h.clone();
        let cs = h.cluster_size() as usize;
        let cluster_index = guest >> h.cluster_bits;
        let l1e = self
            .l1
            .get((cluster_index / h.l2_entries()) as usize)
            .copied()
            .unwrap_or(0);
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

/// A virtual disk: the image and the layers below it.
pub struct VirtualDisk {
    layers: Vec<Layer>,
}

/// How to open a virtual disk.
pub struct OpenOptions<'a> {
    pub backing: Backing,
    /// Read this internal snapshot (by id or name) instead of the active state.
    pub snapshot: Option<&'a str>,
    pub limits: Limits,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            backing: Backing::Follow,
            snapshot: None,
            limits: Limits::default(),
        }
    }
}

fn open_qcow2(
    src: Box<dyn ReadAt>,
    resolver: &dyn Resolver,
    snapshot: Option<&str>,
    limits: &Limits,
) -> Result<(Qcow2Layer, Option<(String, Option<String>)>), ReadError> {
    let mut report = Report::new("read", "qcow2", limits);
    let invalid = |r: &Report| {
        ReadError::Invalid(
            r.findings
                .iter()
                .find(|f| f.severity == crate::Severity::Error)
                .map_or_else(
                    || "unreadable".into(),
                    |f| format!("[{}] {}", f.rule.id, f.detail),
                ),
        )
    };
    let parsed = header::parse(src.as_ref(), &mut report).ok_or_else(|| invalid(&report))?;
    let exts: Extensions = ext::parse(&parsed.header, &parsed.cluster0, limits, &mut report)
        .ok_or_else(|| invalid(&report))?;
    let h = parsed.header;
    if h.crypt_method != 0 {
        return Err(ReadError::Encrypted);
    }
    let (l1_offset, l1_size, size) = match snapshot {
        None => (h.l1_table_offset, h.l1_size, h.size),
        Some(want) => {
            let table =
                snapshot::read(src.as_ref(), &h, &mut report).ok_or_else(|| invalid(&report))?;
            let s = table
                .snapshots
                .iter()
                .find(|s| s.id == want)
                .or_else(|| table.snapshots.iter().find(|s| s.name == want))
                .ok_or_else(|| ReadError::NoSuchSnapshot(want.to_string()))?;
            if s.l1_table_offset % h.cluster_size() != 0
                || s.l1_size as u64 * 8 > super::MAX_L1_BYTES
            {
                return Err(ReadError::Invalid(format!(
                    "snapshot {want}: invalid L1 table"
                )));
            }
            (s.l1_table_offset, s.l1_size, s.disk_size)
        }
    };
    let l1 = read_u64_table(src.as_ref(), l1_offset, l1_size as u64);
    let data_file = if h.has_data_file() {
        let name = exts.data_file.clone().ok_or_else(|| {
            ReadError::Open("external data file bit set, but no data file name extension".into())
        })?;
        Some(
            resolver
                .open(&name)
                .map_err(|e| ReadError::Open(format!("external data file {name}: {e}")))?
                .source,
        )
    } else {
        None
    };
    let backing = (h.backing_file_offset != 0).then(|| {
        let start = h.backing_file_offset as usize;
        let name = parsed
            .cluster0
            .get(start..start + h.backing_file_size as usize)
            .unwrap_or(&[]);
        (
            String::from_utf8_lossy(name).into_owned(),
            exts.backing_format.clone(),
        )
    });
    let raw_data =
        data_file.is_some() && h.autoclear_features & header::AUTOCLEAR_DATA_FILE_RAW != 0;
    let metadata_prealloc = detect_metadata_preallocation(src.as_ref(), &h);
    let layer = Qcow2Layer {
        src,
        data_file,
        h,
        l1,
        size,
        l2_cache: HashMap::new(),
        l2_order: Vec::new(),
        cluster_cache: None,
        metadata_prealloc,
        raw_data,
    };
    Ok((layer, backing))
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
    let mut buf = vec![0u8; h.cluster_size() as usize];
    let mut count = 0u64;
    let mut k = 0u64;
    // Bounded by the threshold (clusters the file really holds) and the file.
    while k < end && count < threshold {
        let t = k / epb;
        let first = t * epb;
        match ondisk.block_offset(t) {
            Ok(0) | Err(_) => {}
            Ok(off) => {
                ondisk.read_block(off, &mut buf);
                let last = (first + epb).min(end);
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

/// Opens one layer of a chain: `format` None is a raw file.
fn open_layer(
    src: Box<dyn ReadAt>,
    format: Option<crate::detect::Format>,
    resolver: &dyn Resolver,
    opts: &OpenOptions<'_>,
) -> Result<(Layer, Option<(String, Option<String>)>), ReadError> {
    use crate::detect::Format;
    Ok(match format {
        Some(Format::Qcow2) => {
            let (l, b) = open_qcow2(src, resolver, opts.snapshot, &opts.limits)?;
            (Layer::Qcow2(Box::new(l)), b)
        }
        Some(Format::Qed) => {
            let (l, b) = crate::qed::read::QedLayer::open(src)?;
            (Layer::Qed(Box::new(l)), b)
        }
        Some(Format::Parallels) => (
            Layer::Parallels(Box::new(crate::parallels::read::ParallelsLayer::open(src)?)),
            None,
        ),
        None => (Layer::Raw(src), None),
    })
}

impl VirtualDisk {
    /// Opens the image in `src`, its backing chain (if followed) and data file.
    pub fn open(
        src: Box<dyn ReadAt>,
        resolver: &dyn Resolver,
        opts: &OpenOptions<'_>,
    ) -> Result<VirtualDisk, ReadError> {
        use crate::detect::{detect, Format};
        // The top image must be one of ours; anything else is judged as qcow2
        // so that the error names the qcow2 magic rule.
        let format = detect(src.as_ref()).unwrap_or(Format::Qcow2);
        if format != Format::Qcow2 && opts.snapshot.is_some() {
            return Err(ReadError::Invalid(format!(
                "{} images have no internal snapshots",
                format.name()
            )));
        }
        let (top, mut backing) = open_layer(src, Some(format), resolver, opts)?;
        let mut layers = vec![top];
        let mut seen: Vec<String> = Vec::new();
        let mut current: Option<Box<dyn Resolver>> = None;
        while let (Some((name, format)), Backing::Follow) = (backing.take(), opts.backing) {
            if layers.len() > MAX_BACKING_DEPTH {
                return Err(ReadError::Chain(format!(
                    "backing chain deeper than {MAX_BACKING_DEPTH}"
                )));
            }
            let r: &dyn Resolver = current.as_deref().unwrap_or(resolver);
            let resolved = r
                .open(&name)
                .map_err(|e| ReadError::Open(format!("backing file {name}: {e}")))?;
            if seen.contains(&resolved.key) {
                return Err(ReadError::Chain(format!(
                    "backing chain loops back to {}",
                    resolved.key
                )));
            }
            seen.push(resolved.key.clone());
            // A named format is used as named; otherwise the file is probed,
            // and what is none of ours is raw (as QEMU probes).
            let format = match format.as_deref() {
                Some("raw") => None,
                Some(f) => Some(
                    [Format::Qcow2, Format::Qed, Format::Parallels]
                        .into_iter()
                        .find(|k| k.name() == f)
                        .ok_or_else(|| {
                            ReadError::Open(format!(
                                "backing file {name}: format {f} is not supported"
                            ))
                        })?,
                ),
                None => detect(resolved.source.as_ref()),
            };
            let below = OpenOptions {
                backing: opts.backing,
                snapshot: None,
                limits: opts.limits.clone(),
            };
            let (layer, next) =
                open_layer(resolved.source, format, resolved.resolver.as_ref(), &below)?;
            layers.push(layer);
            backing = next;
            current = Some(resolved.resolver);
        }
        Ok(VirtualDisk { layers })
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.layers.first().map_or(0, Layer::size)
    }

    /// Status of `guest` in layer `i`, and the length it covers (bounded by `max`).
    fn layer_status(&mut self, i: usize, guest: u64, max: u64) -> Result<(Status, u64), ReadError> {
        let Some(layer) = self.layers.get_mut(i) else {
            return Ok((Status::Zero { host: None }, max));
        };
        if guest >= layer.size() {
            // Past the end of a (shorter) backing file: zeros.
            return Ok((Status::Zero { host: None }, max));
        }
        let left = layer.size() - guest;
        let (st, len) = match layer {
            Layer::Qcow2(q) => q.status(guest)?,
            Layer::Qed(q) => q.status(guest)?,
            Layer::Parallels(p) => p.status(guest),
            Layer::Raw(_) => (Status::Data { host: guest }, left),
        };
        Ok((st, len.min(max).min(left)))
    }

    /// Fills `buf` with the virtual disk's bytes at `offset`; bytes past its
    /// end read as zeros.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let size = self.size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            let want = (buf.len() - done) as u64;
            if pos >= size {
                buf[done..].fill(0);
                break;
            }
            let mut layer = 0;
            // Each layer below only decides within the run the layer above left unallocated.
            let mut bound = want.min(size - pos);
            let (st, len) = loop {
                let (st, len) = self.layer_status(layer, pos, bound)?;
                match st {
                    Status::Unallocated { .. } if layer + 1 < self.layers.len() => {
                        layer += 1;
                        bound = len;
                    }
                    Status::Unallocated { .. } => break (Status::Zero { host: None }, len),
                    st => break (st, len),
                }
            };
            let len = len.max(1) as usize;
            let out = &mut buf[done..done + len];
            match st {
                Status::Zero { .. } | Status::Unallocated { .. } => out.fill(0),
                Status::Data { host } => match self.layers.get(layer) {
                    Some(Layer::Qcow2(q)) => q.read_data(host, out)?,
                    Some(Layer::Qed(q)) => q.read_data(host, out)?,
                    Some(Layer::Parallels(p)) => p.read_data(host, out)?,
                    Some(Layer::Raw(r)) => r.read_zero_padded(out, host)?,
                    None => out.fill(0),
                },
                Status::Compressed => {
                    if let Some(Layer::Qcow2(q)) = self.layers.get_mut(layer) {
                        let cs = q.h.cluster_size();
                        let at = (pos & (cs - 1)) as usize;
                        let cluster = q.compressed_cluster(pos)?;
                        let src = cluster.get(at..at + len).ok_or_else(|| {
                            ReadError::Io("compressed cluster shorter than expected".into())
                        })?;
                        out.copy_from_slice(src);
                    }
                }
            }
            done += len;
        }
        Ok(())
    }

    /// Where layer `i` keeps its data (its data file, the image, or a raw file).
    fn data_source(&self, i: usize) -> Option<&dyn ReadAt> {
        match self.layers.get(i)? {
            Layer::Qcow2(q) => Some(q.data_file.as_deref().unwrap_or(q.src.as_ref())),
            Layer::Raw(r) => Some(r.as_ref()),
            // QEMU's QED and Parallels drivers do not ask the file about holes.
            Layer::Qed(_) | Layer::Parallels(_) => None,
        }
    }

    /// The allocation map, merged like `qemu-img map --output=json`.
    pub fn map(&mut self) -> Result<Vec<MapEntry>, ReadError> {
        let size = self.size();
        let mut out: Vec<MapEntry> = Vec::new();
        let mut pos = 0u64;
        let bottom = self.layers.len() - 1;
        while pos < size {
            let mut layer = 0;
            let mut bound = size - pos;
            let (st, len) = loop {
                let (st, len) = self.layer_status(layer, pos, bound)?;
                match st {
                    // Past the end of a shorter backing file QEMU reports the
                    // upper layer's own "unallocated, reads as zero".
                    Status::Unallocated { .. }
                        if layer < bottom
                            && self.layers.get(layer + 1).is_some_and(|l| pos < l.size()) =>
                    {
                        layer += 1;
                        bound = len;
                    }
                    st => break (st, len),
                }
            };
            let mut len = len.max(1);
            // Data over a hole of a sparse file reads as zero: QEMU reports
            // such a range as data and zero (preallocated metadata, say).
            let mut hole = false;
            let recurse = match self.layers.get(layer) {
                Some(Layer::Qcow2(q)) => q.metadata_prealloc,
                Some(Layer::Raw(_)) => true,
                _ => false,
            };
            if let (Status::Data { host }, true) = (st, recurse) {
                if let Some((is_hole, ext_len)) =
                    self.data_source(layer).and_then(|s| s.extent(host))
                {
                    hole = is_hole;
                    len = len.min(ext_len.max(1));
                }
            }
            let raw = matches!(self.layers.get(layer), Some(Layer::Raw(_)));
            let (present, zero, data, compressed, offset) = match st {
                // A hole of a raw file is not data at all.
                Status::Data { host } if raw && hole => (true, true, false, false, Some(host)),
                Status::Data { host } => (true, hole, true, false, Some(host)),
                Status::Zero { host } => (true, true, false, false, host),
                Status::Compressed => (true, false, true, true, None),
                Status::Unallocated { host } => (false, true, false, false, host),
            };
            let e = MapEntry {
                start: pos,
                length: len,
                depth: layer as u32,
                present,
                zero,
                data,
                compressed,
                offset,
            };
            push_merged(&mut out, e);
            pos += len;
        }
        Ok(out)
    }
}
