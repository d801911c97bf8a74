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

mod chain;
pub mod policy;
pub mod raw;
pub(crate) mod table;

pub use chain::{named_files, VirtualDisk};

pub use policy::{Backing, FsResolver, NamedFile, Role};

use crate::limits::Limits;
use crate::rules::policy as prule;
use crate::source::ReadAt;
use crate::Severity;
use serde::Serialize;
use std::collections::HashSet;

/// QEMU's BDRV_MAX_LENGTH: no block device is larger.
pub const MAX_VIRTUAL_SIZE: u64 = (i64::MAX as u64) & !((1u64 << 30) - 1);

/// Why the virtual disk cannot be read: the crate's one error type.
pub use crate::error::Error as ReadError;

/// A file a backing or data file name refers to.
pub struct Resolved {
    /// The opened file, read through [`ReadAt`].
    pub source: Box<dyn ReadAt>,
    /// Identity for cycle detection (a canonical path, say).
    pub key: String,
    /// How names inside this file are resolved (its directory, say).
    pub resolver: Box<dyn Resolver>,
}

/// Opens the files an image names.
pub trait Resolver {
    /// Opens `name`, as it appears in the image (backing or data file name field), for `role`; refuses names the resolver's policy does not allow.
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
    /// Guest offset of the range, in bytes.
    pub start: u64,
    /// Length of the range in bytes.
    pub length: u64,
    /// How many layers below the top image the status comes from (0: the top image).
    pub depth: u32,
    /// Whether some layer of the chain allocates the range (not past the bottom layer).
    pub present: bool,
    /// Whether the range reads as zeros.
    pub zero: bool,
    /// Whether the range holds data (allocated, not a zero cluster).
    pub data: bool,
    /// Whether the range is a compressed cluster.
    pub compressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Host offset of the data in the file of the layer at `depth`, when it has one.
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
    Data {
        /// Host offset in bytes of the data for the guest offset asked.
        host: u64,
    },
    /// Reads as zero; `host` when a cluster is preallocated there.
    Zero {
        /// Host offset in bytes of the preallocated cluster, if any.
        host: Option<u64>,
    },
    /// A compressed cluster: [`Layer::read_compressed`] reads it.
    Compressed,
    /// Not allocated here: the layer below decides (`host` as qemu reports
    /// it for an unallocated subcluster of an allocated cluster).
    Unallocated {
        /// Host offset in bytes qemu reports for the range, if any.
        host: Option<u64>,
    },
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
        Err(ReadError::Unsupported(format!(
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
    /// The file name exactly as the image stores it (not yet resolved or validated).
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
    /// Caps on table sizes, chain depth and findings for every image of the chain.
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

/// Refuses `snapshot` for a format that has no internal snapshots.
pub fn no_snapshots(format: &str, snapshot: Option<&str>) -> Result<(), ReadError> {
    match snapshot {
        Some(_) => Err(ReadError::Unsupported(format!(
            "{format} images have no internal snapshots"
        ))),
        None => Ok(()),
    }
}

/// A layer just opened, and what it names below it.
pub type Opened = (Box<dyn Layer>, Option<BackingRef>);
