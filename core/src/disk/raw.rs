//! A raw file as a layer (a raw backing file, or `-F raw`): all of it is
//! data at its own offsets.

use super::{Layer, ReadError, Status};
use crate::source::ReadAt;

/// A raw file.
pub struct RawLayer {
    src: Box<dyn ReadAt>,
}

impl RawLayer {
    pub fn new(src: Box<dyn ReadAt>) -> RawLayer {
        RawLayer { src }
    }
}

impl Layer for RawLayer {
    fn size(&self) -> u64 {
        self.src.size()
    }
    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        Ok((
            Status::Data { host: guest },
            self.src.size().saturating_sub(guest),
        ))
    }
    fn read_data(&mut self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        Ok(self.src.read_zero_padded(buf, host)?)
    }
    fn hole_source(&self) -> Option<&dyn ReadAt> {
        Some(self.src.as_ref())
    }
    fn is_raw(&self) -> bool {
        true
    }
}
