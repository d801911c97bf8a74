//! Format detection by magic, for `check` without `-f`: thin wrappers over
//! the format registry ([`crate::formats`]).

use crate::formats;
use crate::source::ReadAt;

/// Formats qconform knows; each has one entry in [`formats::FORMATS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Qed,
    Parallels,
}

impl Format {
    pub fn name(self) -> &'static str {
        formats::of(self).map_or("unknown", |f| f.name())
    }
    pub fn from_name(s: &str) -> Option<Format> {
        formats::by_name(s).map(|f| f.format())
    }
}

/// Detects the format from the first bytes of the source.
pub fn detect(src: &dyn ReadAt) -> Option<Format> {
    formats::probe(src).map(|f| f.format())
}
