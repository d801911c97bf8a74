//! Tables of fixed-width entries (L1, L2, BAT) read on demand, a page at a
//! time, never as a whole: a table's claimed size, or a file whose tables
//! lie in a hole of a sparse file, costs neither memory nor a read per
//! entry. Entries past the end of the file read as zero, as QEMU reads them.

use crate::source::ReadAt;

/// Bytes read per page of a table.
const PAGE_BYTES: u64 = 4096;

/// Byte order of a table's entries: the field module's, so one
/// implementation decodes every fixed-width number of every format.
pub(crate) use crate::field::Endian;

/// A table of `entries` entries of `width` bytes (4 or 8) at `offset`.
pub(crate) struct Table {
    offset: u64,
    entries: u64,
    width: u64,
    endian: Endian,
    /// The last page read: (page index, bytes).
    page: Option<(u64, Vec<u8>)>,
}

impl Table {
    pub(crate) fn new(offset: u64, entries: u64, width: u64, endian: Endian) -> Table {
        Table {
            offset,
            entries,
            width,
            endian,
            page: None,
        }
    }

    /// Entries the table claims.
    pub(crate) fn len(&self) -> u64 {
        self.entries
    }

    fn entries_per_page(&self) -> u64 {
        PAGE_BYTES / self.width
    }

    fn load(&mut self, src: &dyn ReadAt, page: u64) -> crate::Result<&[u8]> {
        if self.page.as_ref().is_none_or(|(p, _)| *p != page) {
            // The previous page's buffer is reused: one allocation per
            // table, not per page visited. A table smaller than a page (an
            // L1 table of a few entries) gets a buffer of its own size.
            let len = self.entries.saturating_mul(self.width).min(PAGE_BYTES) as usize;
            let mut buf = self.page.take().map_or_else(|| vec![0u8; len], |(_, b)| b);
            let at = self.offset.saturating_add(page.saturating_mul(PAGE_BYTES));
            src.read_zero_padded(&mut buf, at)?;
            self.page = Some((page, buf));
        }
        Ok(self.page.as_ref().map_or(&[][..], |(_, b)| b.as_slice()))
    }

    /// Entry `i`; 0 past the table's end or past the end of the file.
    pub(crate) fn get(&mut self, src: &dyn ReadAt, i: u64) -> crate::Result<u64> {
        if i >= self.entries {
            return Ok(0);
        }
        let (width, endian) = (self.width, self.endian);
        let per = self.entries_per_page();
        let page = self.load(src, i / per)?;
        let at = ((i % per) * width) as usize;
        Ok(decode(
            page.get(at..at + width as usize).unwrap_or(&[]),
            endian,
        ))
    }

    /// The first index in `from..limit` whose entry is not zero, or `limit`.
    /// Pages that lie in a hole of the file, or past its end, are skipped
    /// without reading them.
    pub(crate) fn next_nonzero(
        &mut self,
        src: &dyn ReadAt,
        from: u64,
        limit: u64,
    ) -> crate::Result<u64> {
        let limit = limit.min(self.entries);
        let per = self.entries_per_page();
        let mut i = from;
        while i < limit {
            let byte = self.offset.saturating_add(i.saturating_mul(self.width));
            if byte >= src.size() {
                return Ok(limit);
            }
            if let Some((true, hole_len)) = src.extent(byte) {
                // Skip the whole entries the hole covers (at least this one).
                let skip = (hole_len / self.width).max(1);
                i = i.saturating_add(skip);
                continue;
            }
            let page_end = ((i / per) + 1).saturating_mul(per).min(limit);
            while i < page_end {
                if self.get(src, i)? != 0 {
                    return Ok(i);
                }
                i += 1;
            }
        }
        Ok(limit)
    }
}

fn decode(b: &[u8], endian: Endian) -> u64 {
    match b.len() {
        4 => crate::field::read::<u32>(b, 0, endian) as u64,
        8 => crate::field::read::<u64>(b, 0, endian),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_past_the_file_read_as_zero_and_are_skipped() {
        let mut file = vec![0u8; 64];
        file[8..16].copy_from_slice(&7u64.to_be_bytes());
        let mut t = Table::new(0, 1 << 40, 8, Endian::Big);
        assert_eq!(t.get(&file, 1).ok(), Some(7));
        assert_eq!(t.get(&file, 1 << 39).ok(), Some(0));
        assert_eq!(t.next_nonzero(&file, 0, u64::MAX).ok(), Some(1));
        // Nothing non-zero after entry 1: the scan stops at the end of the
        // file, not after 2^40 entries.
        assert_eq!(t.next_nonzero(&file, 2, u64::MAX).ok(), Some(1 << 40));
        let mut bat = vec![0u8; 64];
        bat[40..44].copy_from_slice(&9u32.to_le_bytes());
        let mut p = Table::new(32, 100, 4, Endian::Little);
        assert_eq!(p.next_nonzero(&bat, 0, 100).ok(), Some(2));
        assert_eq!(p.get(&bat, 2).ok(), Some(9));
    }
}
