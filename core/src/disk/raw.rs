//! A raw file as a layer (a raw backing file, or `-F raw`): all of it is
//! data at its own offsets.

use super::{Layer, ReadError, Status};
use crate::source::ReadAt;

/// A raw file. Its size is rounded up to whole 512-byte sectors, as
/// QEMU's raw driver rounds it; the tail past the end of the file reads as
/// zeros and maps as a hole.
pub struct RawLayer {
    src: Box<dyn ReadAt>,
}

impl RawLayer {
    /// A raw layer over `src`.
    pub fn new(src: Box<dyn ReadAt>) -> RawLayer {
        RawLayer { src }
    }
}

impl Layer for RawLayer {
    fn size(&self) -> u64 {
        self.src.size().saturating_add(511) & !511
    }
    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        let file = self.src.size();
        let end = if guest < file { file } else { self.size() };
        Ok((Status::Data { host: guest }, end.saturating_sub(guest)))
    }
    fn read_data(&mut self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.src.read_zero_padded(buf, host)
    }
    fn hole_source(&self) -> Option<&dyn ReadAt> {
        Some(self.src.as_ref())
    }
    fn is_raw(&self) -> bool {
        true
    }
}
