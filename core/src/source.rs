//! Positional reads over a file or a byte slice.
//!
//! Checkers never hold a whole image in memory: they read the structure they
//! need, where the image says it is, after checking that it lies inside the
//! source.

use crate::error::{Error, Result};

/// A read-only, random-access byte source of known length.
pub trait ReadAt {
    /// Length of the source in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; fails if any of it lies past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Fills `buf` from `offset`; bytes past the end of the source read as
    /// zeros. This is what QEMU's block layer does for a table that runs past
    /// the end of the file, so the checker sees what QEMU sees.
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.size();
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        if !head.is_empty() {
            self.read_exact_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Whether `offset` lies in a hole of a sparse source, and how far that
    /// hole (or data extent) goes; None when the source cannot tell. The
    /// allocation map uses it as QEMU does: data over a hole reads as zero.
    fn extent(&self, _offset: u64) -> Option<(bool, u64)> {
        None
    }

    /// Bytes the source really occupies (st_blocks), for a sparse file.
    fn allocated_size(&self) -> Option<u64> {
        None
    }

    /// True when `len` bytes at `offset` lie entirely inside the source.
    fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size())
    }
}

fn bounds(offset: u64, len: usize, size: u64) -> Result<std::ops::Range<usize>> {
    // Reading nothing succeeds anywhere (a table whose in-file part is empty).
    if len == 0 {
        return Ok(0..0);
    }
    let end = offset.checked_add(len as u64).filter(|&e| e <= size);
    match end {
        Some(end) => Ok(offset as usize..end as usize),
        None => Err(Error::OutOfBounds {
            offset,
            len: len as u64,
            source_len: size,
        }),
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let range = bounds(offset, buf.len(), self.size())?;
        // `bounds` proved the range lies inside the slice.
        buf.copy_from_slice(&self[range]);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn extent(&self, offset: u64) -> Option<(bool, u64)> {
        (**self).extent(offset)
    }
    fn allocated_size(&self) -> Option<u64> {
        (**self).allocated_size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn extent(&self, offset: u64) -> Option<(bool, u64)> {
        (**self).extent(offset)
    }
    fn allocated_size(&self) -> Option<u64> {
        (**self).allocated_size()
    }
}

/// What kind of file a path names, for refusing everything but regular
/// files before any read (a FIFO blocks a reader forever, a device can be
/// endless, a directory is no image).
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Opens `path` read-only if, and only if, it is a regular file (after
/// symlinks). The type is checked with stat before the open (stat never
/// blocks, opening a FIFO does) and again on the open descriptor, which is
/// opened non-blocking so that a file swapped for a FIFO in between cannot
/// block either.
pub fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = |m: &std::fs::Metadata| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is a {}, not a regular file", file_kind(m)),
        )
    };
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// A regular file opened read-only; its length is taken once, at open.
/// It can tell its holes from its data (SEEK_HOLE/SEEK_DATA), so tables
/// that lie in a hole are never read byte by byte and the allocation map
/// reports what QEMU's file driver reports.
pub struct FileSource {
    file: std::fs::File,
    size: u64,
    /// Whether holes are reported (off for golden files: a checkout is not sparse).
    holes: bool,
}

impl FileSource {
    /// Opens a regular file (anything else is refused before any read).
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Self::open_with(path, true)
    }

    /// Like [`FileSource::open`]; `holes` says whether file holes count (as
    /// QEMU's file driver counts them) or every byte is taken as written.
    pub fn open_with(path: &std::path::Path, holes: bool) -> std::io::Result<Self> {
        let file = open_regular(path)?;
        let size = file.metadata()?.len();
        Ok(FileSource { file, size, holes })
    }
}

impl ReadAt for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        bounds(offset, buf.len(), self.size)?;
        self.file.read_exact_at(buf, offset).map_err(|e| Error::Io {
            offset,
            message: e.to_string(),
        })
    }
    fn allocated_size(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file
            .metadata()
            .ok()
            .filter(|_| self.holes)
            .map(|m| m.blocks() * 512)
    }
    fn extent(&self, offset: u64) -> Option<(bool, u64)> {
        use rustix::fs::{seek, SeekFrom};
        if offset >= self.size || !self.holes {
            return None;
        }
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) if d == offset => {
                let h = seek(&self.file, SeekFrom::Hole(offset)).ok()?;
                Some((false, h.saturating_sub(offset)))
            }
            Ok(d) => Some((true, d.saturating_sub(offset))),
            Err(e) if e == rustix::io::Errno::NXIO => Some((true, self.size - offset)),
            Err(_) => None,
        }
    }
}

/// How many of `count` entries of `entry_size` bytes at `offset` start
/// inside the source: a table is only ever read (and allocated) that far, and
/// an entry cut by the end of the file reads with its missing bytes as zero,
/// as QEMU reads it.
pub fn entries_in_file(src: &dyn ReadAt, offset: u64, count: u64, entry_size: u64) -> u64 {
    src.size()
        .saturating_sub(offset)
        .div_ceil(entry_size)
        .min(count)
}

/// Reads `count` big-endian u64 entries at `offset`, only those that start
/// inside the source (see [`entries_in_file`]).
pub fn read_u64_table(src: &dyn ReadAt, offset: u64, count: u64) -> Vec<u64> {
    let n = entries_in_file(src, offset, count, 8);
    let mut raw = vec![0u8; (n * 8) as usize];
    if src.read_zero_padded(&mut raw, offset).is_err() {
        raw.fill(0);
    }
    raw.chunks_exact(8).map(|c| be_u64(c, 0)).collect()
}

/// Calls `f(index, bytes)` for each of `count` entries of `width` bytes at
/// `offset` (entries past the end of the file read as zero), 64 KiB at a
/// time; a chunk lying in a hole of the source is skipped (its entries are
/// all zero), so the cost follows the bytes the file holds.
pub fn for_each_entry(
    src: &dyn ReadAt,
    offset: u64,
    count: u64,
    width: u64,
    mut f: impl FnMut(u64, &[u8]),
) {
    const CHUNK: u64 = 64 << 10;
    let per_chunk = (CHUNK / width).max(1);
    let mut buf = vec![0u8; (per_chunk.min(count) * width) as usize];
    let mut i = 0u64;
    while i < count {
        let at = offset + i * width;
        if let Some((true, hole)) = src.extent(at) {
            // Whole entries inside the hole read as zero: skip them.
            let skip = hole / width;
            if skip > 0 {
                i = i.saturating_add(skip);
                continue;
            }
        }
        let n = per_chunk.min(count - i);
        let chunk = buf.get_mut(..(n * width) as usize).unwrap_or(&mut []);
        if src.read_zero_padded(chunk, at).is_err() {
            chunk.fill(0);
        }
        for (j, e) in chunk.chunks_exact(width as usize).enumerate() {
            f(i + j as u64, e);
        }
        i += n;
    }
}

// The byte-field helpers live once, in crate::field; these names stay for
// the modules that read table entries through them.
pub(crate) use crate::field::{be_u16, be_u32, be_u64, le_u64};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_are_bounds_checked() {
        let data = vec![1u8, 2, 3, 4];
        let mut buf = [0u8; 2];
        data.read_exact_at(&mut buf, 2).unwrap(); // ok: test
        assert_eq!(buf, [3, 4]);
        assert!(data.read_exact_at(&mut buf, 3).is_err());
        assert!(data.read_exact_at(&mut buf, u64::MAX).is_err());
        assert!(data.read_exact_at(&mut [], u64::MAX).is_ok());
    }

    #[test]
    fn zero_padded_read_fills_past_the_end_with_zeros() {
        let data = vec![9u8; 4];
        let mut buf = [7u8; 6];
        data.read_zero_padded(&mut buf, 2).unwrap(); // ok: test
        assert_eq!(buf, [9, 9, 0, 0, 0, 0]);
        data.read_zero_padded(&mut buf, u64::MAX).unwrap(); // ok: test
        assert_eq!(buf, [0; 6]);
    }
}
