//! The one error type of the crate. Findings about an image are not errors:
//! they go into a [`crate::Report`]. An `Error` means an operation stopped:
//! the byte source could not be read, or a read met a rule the image breaks
//! (then the error names the rule and the offset, as a finding does).

use std::fmt;

use crate::rules::Rule;

/// Why reading an image (or a file it names) stopped. Every variant that
/// concerns a place in a file carries its offset as a number; a rule the
/// input breaks carries the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused the read.
    Io {
        /// Byte offset of the read that failed.
        offset: u64,
        /// What the operating system said.
        message: String,
    },
    /// `len` bytes at `offset` do not lie inside a source of `source_len` bytes.
    OutOfBounds {
        /// Byte offset of the read.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Size of the source in bytes.
        source_len: u64,
    },
    /// A rule the image (or the path policy) breaks stops the read.
    Rule {
        /// The rule broken.
        rule: &'static Rule,
        /// Byte offset in the image of the structure concerned.
        offset: Option<u64>,
        /// What was seen.
        detail: String,
    },
    /// Encrypted images are refused rather than returned as ciphertext.
    Encrypted,
    /// The named snapshot does not exist.
    NoSuchSnapshot(String),
    /// A backing or data file could not be opened (the OS said why).
    Open(String),
    /// A compressed cluster does not decompress to exactly one cluster.
    Decompress {
        /// Guest offset of the cluster, in bytes.
        guest_offset: u64,
        /// Host offset of the compressed data in the image, in bytes.
        host_offset: u64,
        /// What the decompressor said (or the size it produced).
        detail: String,
    },
    /// Something this format or command does not do (a snapshot of a QED image).
    Unsupported(String),
}

/// Results of qconform-core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A read stopped by `rule`.
    #[cold]
    pub fn rule(rule: &'static Rule, offset: Option<u64>, detail: impl Into<String>) -> Self {
        Error::Rule {
            rule,
            offset,
            detail: detail.into(),
        }
    }

    /// The rule that stopped the read, if one did.
    pub fn rule_id(&self) -> Option<&'static str> {
        match self {
            Error::Rule { rule, .. } => Some(rule.id),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { offset, message } => write!(f, "read error at offset {offset:#x}: {message}"),
            Error::OutOfBounds { offset, len, source_len } => write!(
                f,
                "{len} bytes at offset {offset:#x} lie past the end of the file ({source_len} bytes)"
            ),
            Error::Rule { rule, offset, detail } => {
                write!(f, "[{}]", rule.id)?;
                if let Some(o) = offset {
                    write!(f, " at offset {o:#x}")?;
                }
                write!(f, ": {detail} ({} §{})", rule.spec, rule.section)
            }
            Error::Encrypted => write!(
                f,
                "the image is encrypted; qconform does not decrypt (refusing to return ciphertext)"
            ),
            Error::NoSuchSnapshot(s) => write!(f, "no snapshot named or with id {s:?}"),
            Error::Open(s) => write!(f, "{s}"),
            Error::Decompress {
                guest_offset,
                host_offset,
                detail,
            } => write!(
                f,
                "compressed cluster for guest offset {guest_offset:#x} at host offset {host_offset:#x}: {detail}"
            ),
            Error::Unsupported(s) => write!(f, "{s}"),
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
