//! The Parallels layer of a [`VirtualDisk`](crate::disk::VirtualDisk).
//! Allocated clusters are read where the BAT says; unallocated ones read as
//! zeros (Parallels images have no backing files). The BAT is read a page at
//! a time, never as a whole; a status answers a run of unallocated entries,
//! or of contiguous clusters, in one step.

use super::header::{self, Header, HEADER_SIZE};
use crate::disk::table::{Endian, Table};
use crate::disk::{Layer, OpenOptions, Opened, ReadError, Resolver, Status};
use crate::limits::Limits;
use crate::report::Report;
use crate::source::ReadAt;

struct ParallelsLayer {
    src: Box<dyn ReadAt>,
    h: Header,
    bat: Table,
}

/// Opens a Parallels image as a layer.
pub fn open_layer(
    src: Box<dyn ReadAt>,
    _resolver: &dyn Resolver,
    _opts: &OpenOptions<'_>,
    snapshot: Option<&str>,
) -> Result<Opened, ReadError> {
    crate::disk::no_snapshots("Parallels", snapshot)?;
    let mut r = Report::new("read", "parallels", &Limits::default());
    let h = header::parse(src.as_ref(), &mut r).ok_or_else(|| r.into_error())?;
    let bat = Table::new(HEADER_SIZE, h.nb_bat_entries as u64, 4, Endian::Little);
    Ok((Box::new(ParallelsLayer { src, h, bat }), None))
}

impl Layer for ParallelsLayer {
    fn size(&self) -> u64 {
        self.h.disk_size()
    }

    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        let cs = self.h.cluster_size();
        let k = guest / cs;
        let in_cluster = guest % cs;
        if k >= self.bat.len() {
            return Ok((Status::Unallocated { host: None }, u64::MAX));
        }
        let src = self.src.as_ref();
        let e = self.bat.get(src, k)?;
        if e == 0 {
            let next = self.bat.next_nonzero(src, k + 1, u64::MAX)?;
            let end = next.saturating_mul(cs);
            return Ok((
                Status::Unallocated { host: None },
                end.saturating_sub(guest),
            ));
        }
        let host = |e: u64| self.h.bat_offset(e as u32);
        let first = host(e);
        let mut n = 1u64;
        while k + n < self.bat.len() {
            let next = self.bat.get(src, k + n)?;
            if next == 0 || first.checked_add(n * cs) != Some(host(next)) {
                break;
            }
            n += 1;
        }
        Ok((
            Status::Data {
                host: first.saturating_add(in_cluster),
            },
            n * cs - in_cluster,
        ))
    }

    fn read_data(&mut self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.src.read_zero_padded(buf, host)
    }
}
