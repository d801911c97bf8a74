//! Parallels expandable images (docs/interop/parallels.rst): header, BAT,
//! Format Extension with its dirty bitmaps, the checker and the reader.

pub mod check;
pub mod ext;
pub mod header;
pub mod mutate;
pub mod read;
pub mod repair;
pub mod write;

pub use check::check;

/// Sectors are 512 bytes.
pub const SECTOR: u64 = 512;
