//! The format-neutral virtual disk: what a guest sees through an image and
//! the images below it.
//!
//! Each format implements [`Layer`] in its own folder (`qcow2/read.rs`,
//! `qed/read.rs`, `parallels/read.rs`, and [`raw`] here); this module stacks
//! the layers of a backing chain, answers reads and the allocation map
//! (merged as `qemu-img map --output=json` merges it, and streamed: the map
//! of any image is written as it is found, in steps of whole unallocated
//! runs), and opens the files names inside an image refer to only through a
//! [`Resolver`] — on the file system, [`policy::FsResolver`], which applies
//! the path policy.
//!
//! Reads refuse what the checker calls broken, as `qemu-img convert` does:
//! unless [`OpenOptions::verify`] is off (`--force`), every image of the
//! chain is checked first, and the first corruption or check error stops
//! the read with its rule and offset.

pub mod policy;
pub mod raw;
pub(crate) mod table;

pub use policy::{Backing, FsResolver, NamedFile, Role};

use crate::limits::Limits;
use crate::rules::{policy as prule, Rule};
use crate::source::ReadAt;
use crate::Severity;
use serde::Serialize;
use std::collections::HashSet;

/// QEMU's BDRV_MAX_LENGTH: no block device is larger.
pub const MAX_VIRTUAL_SIZE: u64 = (i64::MAX as u64) & !((1u64 << 30) - 1);

/// Why the virtual disk cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// A rule the image (or the path policy) breaks stops the read.
    Rule {
        rule: &'static Rule,
        /// Byte offset in the image of the structure concerned.
        offset: Option<u64>,
        detail: String,
    },
    /// Encrypted images are refused rather than returned as ciphertext.
    Encrypted,
    /// The named snapshot does not exist.
    NoSuchSnapshot(String),
    /// A backing or data file could not be opened.
    Open(String),
    /// A compressed cluster does not decompress to exactly one cluster.
    Decompress {
        guest_offset: u64,
        host_offset: u64,
        detail: String,
    },
    /// The byte source failed.
    Io(String),
}

impl ReadError {
    /// A read stopped by `rule`.
    #[cold]
    pub fn rule(rule: &'static Rule, offset: Option<u64>, detail: impl Into<String>) -> Self {
        ReadError::Rule {
            rule,
            offset,
            detail: detail.into(),
        }
    }

    /// The rule that stopped the read, if one did.
    pub fn rule_id(&self) -> Option<&'static str> {
        match self {
            ReadError::Rule { rule, .. } => Some(rule.id),
            _ => None,
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Rule {
                rule,
                offset,
                detail,
            } => {
                write!(f, "[{}]", rule.id)?;
                if let Some(o) = offset {
                    write!(f, " at offset {o:#x}")?;
                }
                write!(f, ": {detail} ({} §{})", rule.spec, rule.section)
            }
            ReadError::Encrypted => write!(
                f,
                "the image is encrypted; qconform does not decrypt (refusing to return ciphertext)"
            ),
            ReadError::NoSuchSnapshot(s) => write!(f, "no snapshot named or with id {s:?}"),
            ReadError::Open(s) => write!(f, "{s}"),
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
    fn open(&self, name: &str, role: Role) -> Result<Resolved, ReadError>;
}

/// A resolver that opens nothing (byte-slice inputs).
pub struct NoFiles;
impl Resolver for NoFiles {
    fn open(&self, name: &str, role: Role) -> Result<Resolved, ReadError> {
        Err(ReadError::rule(
            &prule::NOT_OPENED,
            None,
            format!(
                "{} {name:?}: opening other files is not allowed here",
                role.label()
            ),
        ))
    }
}

/// What one range of the virtual disk is, as `qemu-img map --output=json`
/// says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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

impl MapEntry {
    /// Whether `next` continues this entry as QEMU merges them: same depth
    /// and status, and contiguous host offsets (or neither has one).
    fn absorbs(&self, next: &MapEntry) -> bool {
        (
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed,
        ) == (
            next.depth,
            next.present,
            next.zero,
            next.data,
            next.compressed,
        ) && match (self.offset, next.offset) {
            (None, None) => true,
            (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
            _ => false,
        }
    }
}

/// Appends `e` to a map, merging it into the previous entry when QEMU would.
pub fn push_merged(out: &mut Vec<MapEntry>, e: MapEntry) {
    match out.last_mut() {
        Some(p) if p.absorbs(&e) => p.length += e.length,
        _ => out.push(e),
    }
}

/// What one layer says about a range starting at a guest offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Data at this host offset (in the image, or its data file).
    Data { host: u64 },
    /// Reads as zero; `host` when a cluster is preallocated there.
    Zero { host: Option<u64> },
    /// A compressed cluster: [`Layer::read_compressed`] reads it.
    Compressed,
    /// Not allocated here: the layer below decides (`host` as qemu reports
    /// it for an unallocated subcluster of an allocated cluster).
    Unallocated { host: Option<u64> },
}

/// One image of a chain, as the virtual disk sees it. Each format
/// implements it in its own folder.
pub trait Layer {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Status at `guest` (below [`Layer::size`]) and how many bytes from
    /// there share it (at least 1; the caller bounds it). Formats answer
    /// whole runs: a run of unallocated table entries, or the rest of the
    /// disk past the tables the file holds, is one step.
    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError>;
    /// Reads data at a host offset that [`Layer::status`] returned; past
    /// the end of the file it reads as zeros, as in QEMU.
    fn read_data(&mut self, host: u64, buf: &mut [u8]) -> Result<(), ReadError>;
    /// Reads from the compressed cluster holding `guest`.
    fn read_compressed(&mut self, guest: u64, _buf: &mut [u8]) -> Result<(), ReadError> {
        Err(ReadError::Io(format!(
            "guest offset {guest:#x}: this format has no compressed clusters"
        )))
    }
    /// The file whose holes the map reports as zero for data at host
    /// offsets (QEMU asks the file only for raw files and qcow2 images with
    /// preallocated metadata).
    fn hole_source(&self) -> Option<&dyn ReadAt> {
        None
    }
    /// A raw file: a hole is not data at all.
    fn is_raw(&self) -> bool {
        false
    }
}

/// The file an image names below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingRef {
    pub name: String,
    /// The format the image fixes (`raw` included), or None to probe.
    pub format: Option<String>,
}

/// How to open a virtual disk.
#[derive(Debug, Clone)]
pub struct OpenOptions<'a> {
    /// Whether backing and data files are opened (the resolver decides
    /// which names may be).
    pub backing: Backing,
    /// Read this internal snapshot (by id or name) instead of the active state.
    pub snapshot: Option<&'a str>,
    pub limits: Limits,
    /// Check every image of the chain first and refuse to read one the
    /// checker calls corrupt (`--force` turns it off: best effort).
    pub verify: bool,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            backing: Backing::default(),
            snapshot: None,
            limits: Limits::default(),
            verify: true,
        }
    }
}

/// A layer just opened, and what it names below it.
pub type Opened = (Box<dyn Layer>, Option<BackingRef>);

/// Opens one layer of a chain: `format` None is a raw file.
fn open_layer(
    src: Box<dyn ReadAt>,
    format: Option<crate::detect::Format>,
    resolver: &dyn Resolver,
    opts: &OpenOptions<'_>,
    snapshot: Option<&str>,
) -> Result<Opened, ReadError> {
    use crate::detect::Format;
    if opts.verify {
        if let Some(f) = format {
            verify(src.as_ref(), f, &opts.limits)?;
        }
    }
    let opened = match format {
        Some(Format::Qcow2) => crate::qcow2::read::open_layer(src, resolver, opts, snapshot)?,
        Some(Format::Qed) => crate::qed::read::open_layer(src)?,
        Some(Format::Parallels) => crate::parallels::read::open_layer(src)?,
        None => (Box::new(raw::RawLayer::new(src)) as Box<dyn Layer>, None),
    };
    let size = opened.0.size();
    if size > MAX_VIRTUAL_SIZE {
        return Err(ReadError::rule(
            &prule::VIRTUAL_SIZE,
            None,
            format!("virtual size {size} is larger than {MAX_VIRTUAL_SIZE} bytes"),
        ));
    }
    Ok(opened)
}

/// Checks one image and refuses it at the first corruption or check error,
/// as `qemu-img convert` refuses (with EIO) what it cannot trust.
fn verify(
    src: &dyn ReadAt,
    format: crate::detect::Format,
    limits: &Limits,
) -> Result<(), ReadError> {
    use crate::detect::Format;
    let report = match format {
        Format::Qcow2 => crate::qcow2::check(src, "image", limits),
        Format::Qed => crate::qed::check(src, "image", limits),
        Format::Parallels => crate::parallels::check(src, "image", limits),
    };
    match report
        .findings
        .iter()
        .find(|f| matches!(f.severity, Severity::Error | Severity::Corruption))
    {
        Some(f) => Err(ReadError::rule(
            f.rule,
            f.offset,
            format!(
                "{} (reads refuse a corrupt image; --force reads it anyway)",
                f.detail
            ),
        )),
        None => Ok(()),
    }
}

/// A virtual disk: the image and the layers below it.
pub struct VirtualDisk {
    layers: Vec<Box<dyn Layer>>,
    /// Steps one map may take (Limits::max_entries_visited).
    max_steps: u64,
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
            return Err(ReadError::Io(format!(
                "{} images have no internal snapshots",
                format.name()
            )));
        }
        let (top, mut backing) = open_layer(src, Some(format), resolver, opts, opts.snapshot)?;
        let mut layers = vec![top];
        let mut seen: HashSet<String> = HashSet::new();
        let mut current: Option<Box<dyn Resolver>> = None;
        let max_depth = opts.limits.max_backing_depth;
        while let Some(b) = backing.take() {
            if opts.backing == Backing::Ignore {
                break;
            }
            if layers.len() > max_depth {
                return Err(ReadError::rule(
                    &prule::BACKING_DEPTH,
                    None,
                    format!("backing chain deeper than {max_depth} (Limits::max_backing_depth)"),
                ));
            }
            let r: &dyn Resolver = current.as_deref().unwrap_or(resolver);
            let resolved = r.open(&b.name, Role::BackingFile)?;
            if !seen.insert(resolved.key.clone()) {
                return Err(ReadError::rule(
                    &prule::BACKING_CYCLE,
                    None,
                    format!("backing chain loops back to {}", resolved.key),
                ));
            }
            // A named format is used as named; otherwise the file is probed,
            // and what is none of ours is raw (as QEMU probes).
            let format = match b.format.as_deref() {
                Some("raw") => None,
                Some(f) => Some(Format::from_name(f).ok_or_else(|| {
                    ReadError::Open(format!(
                        "backing file {:?}: format {f} is not supported",
                        b.name
                    ))
                })?),
                None => detect(resolved.source.as_ref()),
            };
            let (layer, next) = open_layer(
                resolved.source,
                format,
                resolved.resolver.as_ref(),
                opts,
                None,
            )?;
            layers.push(layer);
            backing = next;
            current = Some(resolved.resolver);
        }
        Ok(VirtualDisk {
            layers,
            max_steps: opts.limits.max_entries_visited,
        })
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.size())
    }

    /// Images in the chain (1: no backing file).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Status of `guest` in layer `i`, and the length it covers (bounded by
    /// `max`, at least 1).
    fn layer_status(&mut self, i: usize, guest: u64, max: u64) -> Result<(Status, u64), ReadError> {
        let Some(layer) = self.layers.get_mut(i) else {
            return Ok((Status::Zero { host: None }, max));
        };
        let size = layer.size();
        if guest >= size {
            // Past the end of a (shorter) backing file: zeros.
            return Ok((Status::Zero { host: None }, max));
        }
        let (st, len) = layer.status(guest)?;
        Ok((st, len.min(max).min(size - guest).max(1)))
    }

    /// Fills `buf` with the virtual disk's bytes at `offset`; bytes past its
    /// end read as zeros.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let size = self.size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            let Some(out) = buf.get_mut(done..) else {
                break;
            };
            if pos >= size {
                out.fill(0);
                break;
            }
            let mut layer = 0;
            // Each layer below only decides within the run the layer above left unallocated.
            let mut bound = (out.len() as u64).min(size - pos);
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
            let len = (len as usize).min(out.len());
            let out = &mut out[..len];
            match (st, self.layers.get_mut(layer)) {
                (Status::Data { host }, Some(l)) => l.read_data(host, out)?,
                (Status::Compressed, Some(l)) => l.read_compressed(pos, out)?,
                _ => out.fill(0),
            }
            done += len;
        }
        Ok(())
    }

    /// The allocation map, merged like `qemu-img map --output=json`, handed
    /// to `sink` entry by entry as it is found (memory stays one entry).
    pub fn map_each(
        &mut self,
        mut sink: impl FnMut(&MapEntry) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let size = self.size();
        let mut pending: Option<MapEntry> = None;
        let mut pos = 0u64;
        let mut steps = 0u64;
        let bottom = self.layers.len().saturating_sub(1);
        while pos < size {
            steps += 1;
            if steps > self.max_steps {
                return Err(ReadError::rule(
                    &crate::rules::general::WORK_LIMIT,
                    None,
                    format!(
                        "the map took more than {} steps (Limits::max_entries_visited)",
                        self.max_steps
                    ),
                ));
            }
            let e = self.map_step(pos, size - pos, bottom)?;
            pos = pos.saturating_add(e.length);
            match pending.as_mut() {
                Some(p) if p.absorbs(&e) => p.length += e.length,
                _ => {
                    if let Some(p) = pending.replace(e) {
                        sink(&p)?;
                    }
                }
            }
        }
        match pending {
            Some(p) => sink(&p),
            None => Ok(()),
        }
    }

    /// The whole allocation map in memory (tests and golden files; `map`
    /// streams with [`VirtualDisk::map_each`]).
    pub fn map(&mut self) -> Result<Vec<MapEntry>, ReadError> {
        let mut out = Vec::new();
        self.map_each(|e| {
            out.push(e.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// One unmerged map entry at `pos`.
    fn map_step(&mut self, pos: u64, left: u64, bottom: usize) -> Result<MapEntry, ReadError> {
        let mut layer = 0;
        let mut bound = left;
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
        let l = self.layers.get(layer);
        if let (Status::Data { host }, Some(src)) = (st, l.and_then(|l| l.hole_source())) {
            if let Some((is_hole, ext_len)) = src.extent(host) {
                hole = is_hole;
                len = len.min(ext_len.max(1));
            } else if host >= src.size() {
                // Past the end of the file (a raw file's last partial
                // sector): QEMU's file driver answers "zero", like a hole.
                hole = true;
            }
        }
        let raw = l.is_some_and(|l| l.is_raw());
        let (present, zero, data, compressed, offset) = match st {
            // A hole of a raw file is not data at all.
            Status::Data { host } if raw && hole => (true, true, false, false, Some(host)),
            Status::Data { host } => (true, hole, true, false, Some(host)),
            Status::Zero { host } => (true, true, false, false, host),
            Status::Compressed => (true, false, true, true, None),
            Status::Unallocated { host } => (false, true, false, false, host),
        };
        Ok(MapEntry {
            start: pos,
            length: len,
            depth: layer as u32,
            present,
            zero,
            data,
            compressed,
            offset,
        })
    }
}

/// The names an image carries (backing file, external data file), read
/// from its header without opening them, for [`policy::audit`].
pub fn named_files(src: &dyn ReadAt) -> Vec<NamedFile> {
    use crate::detect::{detect, Format};
    match detect(src) {
        Some(Format::Qcow2) => crate::qcow2::read::named_files(src),
        Some(Format::Qed) => crate::qed::read::named_files(src),
        _ => Vec::new(),
    }
}
