//! Format detection by magic, for `check` without `-f`: thin wrappers over
//! the format registry ([`crate::formats`]).

use crate::formats;
use crate::source::ReadAt;

pub use crate::formats::Format;

/// Detects the format from the first bytes of the source.
pub fn detect(src: &dyn ReadAt) -> Option<Format> {
    formats::probe(src).map(|f| f.format())
}
