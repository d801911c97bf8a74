//! Format detection by magic, for `check` without `-f`.

use crate::source::ReadAt;

/// Formats qconform knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Qed,
    Parallels,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Qed => "qed",
            Format::Parallels => "parallels",
        }
    }
    pub fn from_name(s: &str) -> Option<Format> {
        match s {
            "qcow2" => Some(Format::Qcow2),
            "qed" => Some(Format::Qed),
            "parallels" => Some(Format::Parallels),
            _ => None,
        }
    }
}

/// Detects the format from the first bytes of the source.
pub fn detect(src: &dyn ReadAt) -> Option<Format> {
    let mut head = [0u8; 16];
    src.read_zero_padded(&mut head, 0).ok()?;
    if head[..4] == crate::qcow2::MAGIC {
        Some(Format::Qcow2)
    } else if &head[..4] == b"QED\0" {
        Some(Format::Qed)
    } else if &head == b"WithoutFreeSpace" || &head == b"WithouFreSpacExt" {
        Some(Format::Parallels)
    } else {
        None
    }
}
