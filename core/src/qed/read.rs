//! The QED reader (spec sections "Unallocated L2 tables and data clusters",
//! "Zero data clusters", "Logical offset translation"): one layer of a
//! [`VirtualDisk`](crate::qcow2::read::VirtualDisk), whose unallocated
//! clusters the backing file below answers.

use super::check::read_table;
use super::header::{self, Header, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, ZERO_CLUSTER};
use crate::limits::Limits;
use crate::qcow2::read::{ReadError, Status};
use crate::report::Report;
use crate::source::ReadAt;

/// QEMU reads a backing file name into a PATH_MAX buffer and refuses longer ones.
pub const MAX_BACKING_NAME: u32 = 4095;

pub struct QedLayer {
    src: Box<dyn ReadAt>,
    h: Header,
    l1: Vec<u64>,
    /// The last L2 table read: (offset, entries).
    l2: Option<(u64, Vec<u64>)>,
}

/// The backing file an image names: (name, format if the image fixes it).
pub type BackingName = (String, Option<String>);

impl QedLayer {
    pub fn open(src: Box<dyn ReadAt>) -> Result<(QedLayer, Option<BackingName>), ReadError> {
        let mut r = Report::new("read", "qed", &Limits::default());
        let h = header::parse(src.as_ref(), &mut r).ok_or_else(|| {
            ReadError::Invalid(r.findings.first().map_or("unreadable".into(), |f| {
                format!("[{}] {}", f.rule.id, f.detail)
            }))
        })?;
        let backing = if h.features & F_BACKING_FILE != 0 {
            if h.backing_filename_size > MAX_BACKING_NAME {
                return Err(ReadError::Invalid(format!(
                    "backing file name of {} bytes (at most {MAX_BACKING_NAME})",
                    h.backing_filename_size
                )));
            }
            let mut name = vec![0u8; h.backing_filename_size as usize];
            src.read_exact_at(&mut name, h.backing_filename_offset as u64)?;
            let format = (h.features & F_BACKING_FORMAT_NO_PROBE != 0).then(|| "raw".to_string());
            Some((String::from_utf8_lossy(&name).into_owned(), format))
        } else {
            None
        };
        let l1 = read_table(src.as_ref(), &h, h.l1_table_offset);
        Ok((
            QedLayer {
                src,
                h,
                l1,
                l2: None,
            },
            backing,
        ))
    }

    pub fn size(&self) -> u64 {
        self.h.image_size
    }

    /// Status at `guest` and the bytes from there it covers: to the end of
    /// the cluster, of an unallocated L2 table's range, or (past the L1
    /// entries the file holds) of the disk.
    pub(crate) fn status(&mut self, guest: u64) -> Result<(Status, u64), ReadError> {
        let cs = self.h.cs();
        let per_l2 = self.h.table_entries();
        let k = guest / cs;
        let cluster_left = cs - guest % cs;
        let Some(&l2) = self.l1.get((k / per_l2) as usize) else {
            return Ok((Status::Unallocated { host: None }, u64::MAX));
        };
        if l2 == 0 {
            let span = per_l2 * cs;
            return Ok((Status::Unallocated { host: None }, span - guest % span));
        }
        if self.l2.as_ref().is_none_or(|(at, _)| *at != l2) {
            if l2 % cs != 0 {
                return Err(ReadError::Invalid(format!(
                    "L2 table offset {l2:#x} is not cluster aligned"
                )));
            }
            self.l2 = Some((l2, read_table(self.src.as_ref(), &self.h, l2)));
        }
        let entry = self
            .l2
            .as_ref()
            .and_then(|(_, t)| t.get((k % per_l2) as usize).copied())
            .unwrap_or(0);
        Ok(match entry {
            0 => (Status::Unallocated { host: None }, cluster_left),
            ZERO_CLUSTER => (Status::Zero { host: None }, cluster_left),
            // QEMU refuses an unaligned data offset (qed_check_cluster_offset).
            off if off % cs != 0 => {
                return Err(ReadError::Invalid(format!(
                    "guest offset {guest:#x}: data cluster offset {off:#x} is not cluster aligned"
                )))
            }
            off => (
                Status::Data {
                    host: off + guest % cs,
                },
                cluster_left,
            ),
        })
    }

    /// Data bytes at `host`; past the end of the file they read as zeros.
    pub(crate) fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        Ok(self.src.read_zero_padded(buf, host)?)
    }
}
