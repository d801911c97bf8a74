//! The QED layer of a [`VirtualDisk`](crate::disk::VirtualDisk) (spec
//! sections "Unallocated L2 tables and data clusters", "Zero data
//! clusters", "Logical offset translation"), whose unallocated clusters the
//! backing file below answers. Tables are read a page at a time (a QED
//! table may claim 16 clusters of 64 MiB); a status answers a whole run of
//! entries of one kind.

use super::header::{self, Header, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, ZERO_CLUSTER};
use crate::disk::table::{Endian, Table};
use crate::disk::{
    BackingRef, Layer, NamedFile, OpenOptions, Opened, ReadError, Resolver, Role, Status,
};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::qed as rule;
use crate::source::ReadAt;

/// QEMU reads a backing file name into a PATH_MAX buffer and refuses longer ones.
pub const MAX_BACKING_NAME: u32 = 4095;

struct QedLayer {
    src: Box<dyn ReadAt>,
    h: Header,
    l1: Table,
    /// The L2 table in use: (offset, table).
    l2: Option<(u64, Table)>,
}

fn parse(src: &dyn ReadAt) -> Result<Header, ReadError> {
    let mut r = Report::new("read", "qed", &Limits::default());
    header::parse(src, &mut r).ok_or_else(|| r.into_error())
}

/// The backing file name a QED header names, bounded as QEMU bounds it.
fn backing_name(src: &dyn ReadAt, h: &Header) -> Result<Option<String>, ReadError> {
    if h.features & F_BACKING_FILE == 0 {
        return Ok(None);
    }
    if h.backing_filename_size > MAX_BACKING_NAME {
        return Err(ReadError::rule(
            &rule::BACKING_NAME,
            Some(h.backing_filename_offset as u64),
            format!(
                "backing file name of {} bytes (at most {MAX_BACKING_NAME})",
                h.backing_filename_size
            ),
        ));
    }
    let mut name = vec![0u8; h.backing_filename_size as usize];
    src.read_exact_at(&mut name, h.backing_filename_offset as u64)?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// The backing file name of a QED image, where it lies.
pub fn named_files(src: &dyn ReadAt) -> Vec<NamedFile> {
    let Ok(h) = parse(src) else {
        return Vec::new();
    };
    match backing_name(src, &h) {
        Ok(Some(name)) => vec![NamedFile {
            role: Role::BackingFile,
            name,
            offset: h.backing_filename_offset as u64,
        }],
        _ => Vec::new(),
    }
}

/// Opens a QED image as a layer.
pub fn open_layer(
    src: Box<dyn ReadAt>,
    _resolver: &dyn Resolver,
    _opts: &OpenOptions<'_>,
    snapshot: Option<&str>,
) -> Result<Opened, ReadError> {
    crate::disk::no_snapshots("QED", snapshot)?;
    let h = parse(src.as_ref())?;
    let format = (h.features & F_BACKING_FORMAT_NO_PROBE != 0).then(|| "raw".to_string());
    let backing = backing_name(src.as_ref(), &h)?.map(|name| BackingRef { name, format });
    let l1 = Table::new(h.l1_table_offset, h.table_entries(), 8, Endian::Little);
    let layer = QedLayer {
        src,
        h,
        l1,
        l2: None,
    };
    Ok((Box::new(layer), backing))
}

impl Layer for QedLayer {
    fn size(&self) -> u64 {
        self.h.image_size
    }

    fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        let cs = self.h.cs();
        let per_l2 = self.h.table_entries();
        let span = per_l2.saturating_mul(cs);
        let k = guest / cs;
        let l1_index = k / per_l2;
        if l1_index >= self.l1.len() {
            return Ok((Status::Unallocated { host: None }, u64::MAX));
        }
        let l2 = self.l1.get(self.src.as_ref(), l1_index)?;
        if l2 == 0 {
            // Every cluster up to the next L1 entry that names a table.
            let next = self
                .l1
                .next_nonzero(self.src.as_ref(), l1_index + 1, u64::MAX)?;
            let end = next.saturating_mul(span);
            return Ok((
                Status::Unallocated { host: None },
                end.saturating_sub(guest),
            ));
        }
        if l2 % cs != 0 {
            return Err(ReadError::rule(
                &rule::TABLE_OFFSET,
                Some(self.h.l1_table_offset + l1_index * 8),
                format!("L2 table offset {l2:#x} is not cluster aligned"),
            ));
        }
        if self.l2.as_ref().is_none_or(|(at, _)| *at != l2) {
            self.l2 = Some((l2, Table::new(l2, per_l2, 8, Endian::Little)));
        }
        let Some((_, table)) = self.l2.as_mut() else {
            return Ok((Status::Unallocated { host: None }, cs - guest % cs));
        };
        let i = k % per_l2;
        let src = self.src.as_ref();
        let entry = table.get(src, i)?;
        let kind = |e: u64| match e {
            0 => 0u8,
            ZERO_CLUSTER => 1,
            _ => 2,
        };
        if kind(entry) == 2 && entry % cs != 0 {
            // QEMU refuses an unaligned data offset (qed_check_cluster_offset).
            return Err(ReadError::rule(
                &rule::CLUSTER_OFFSET,
                Some(l2 + i * 8),
                format!("guest offset {guest:#x}: data cluster offset {entry:#x} is not cluster aligned"),
            ));
        }
        // A run of entries of one kind (data: contiguous clusters).
        let mut n = 1u64;
        while i + n < per_l2 {
            let next = table.get(src, i + n)?;
            let same = match kind(entry) {
                2 => entry.checked_add(n * cs) == Some(next),
                k => kind(next) == k,
            };
            if !same {
                break;
            }
            n += 1;
        }
        let len = n * cs - guest % cs;
        Ok(match entry {
            0 => (Status::Unallocated { host: None }, len),
            ZERO_CLUSTER => (Status::Zero { host: None }, len),
            off => (
                Status::Data {
                    host: off + guest % cs,
                },
                len,
            ),
        })
    }

    fn read_data(&mut self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.src.read_zero_padded(buf, host)
    }
}
