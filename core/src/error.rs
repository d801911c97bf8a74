//! The one error type of the crate. Findings about an image are not errors:
//! they go into a [`crate::Report`]. An `Error` means the byte source itself
//! could not be read.

use std::fmt;

/// Why a byte source could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused the read.
    Io { offset: u64, message: String },
    /// `len` bytes at `offset` do not lie inside a source of `source_len` bytes.
    OutOfBounds {
        offset: u64,
        len: u64,
        source_len: u64,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { offset, message } => write!(f, "read error at offset {offset:#x}: {message}"),
            Error::OutOfBounds { offset, len, source_len } => write!(
                f,
                "{len} bytes at offset {offset:#x} lie past the end of the file ({source_len} bytes)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Why a writer's description cannot be written (any format's writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError(pub String);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriteError {}
