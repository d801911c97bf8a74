//! The Parallels reader: one layer of a
//! [`VirtualDisk`](crate::qcow2::read::VirtualDisk). Allocated clusters are
//! read where the BAT says; unallocated ones read as zeros (Parallels images
//! have no backing files).

use super::header::{self, Header};
use crate::limits::Limits;
use crate::qcow2::read::{ReadError, Status};
use crate::report::Report;
use crate::source::ReadAt;

pub struct ParallelsLayer {
    src: Box<dyn ReadAt>,
    h: Header,
    /// The BAT entries the file holds (never more than the file's bytes / 4).
    bat: Vec<u32>,
}

impl ParallelsLayer {
    pub fn open(src: Box<dyn ReadAt>) -> Result<ParallelsLayer, ReadError> {
        let mut r = Report::new("read", "parallels", &Limits::default());
        let h = header::parse(src.as_ref(), &mut r).ok_or_else(|| {
            ReadError::Invalid(r.findings.first().map_or("unreadable".into(), |f| {
                format!("[{}] {}", f.rule.id, f.detail)
            }))
        })?;
        let bat = header::read_bat(src.as_ref(), &h);
        Ok(ParallelsLayer { src, h, bat })
    }

    pub fn size(&self) -> u64 {
        self.h.disk_size()
    }

    /// Status at `guest`: one cluster, or past the BAT the rest of the disk.
    pub(crate) fn status(&self, guest: u64) -> (Status, u64) {
        let cs = self.h.cluster_size();
        let cluster_left = cs - guest % cs;
        match self.bat.get((guest / cs) as usize) {
            None => (Status::Unallocated { host: None }, u64::MAX),
            Some(0) => (Status::Unallocated { host: None }, cluster_left),
            Some(&e) => (
                Status::Data {
                    host: self.h.bat_offset(e).saturating_add(guest % cs),
                },
                cluster_left,
            ),
        }
    }

    /// Data bytes at `host`; past the end of the file they read as zeros.
    pub(crate) fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        Ok(self.src.read_zero_padded(buf, host)?)
    }
}
