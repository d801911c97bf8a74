//! The snapshot table (spec section "Snapshots").

use super::header::Header;
use super::{MAX_L1_BYTES, MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_BYTES};
use crate::report::Report;
use crate::rules::qcow2 as rule;
use crate::source::{be_u16, be_u32, be_u64, ReadAt};
use serde::Serialize;

/// Fixed part of a snapshot table entry.
const ENTRY_FIXED: u64 = 40;

#[derive(Debug, Clone, Serialize)]
/// One snapshot table entry (spec "Snapshots"), as read from the file.
pub struct Snapshot {
    /// Offset of this entry in the file.
    pub entry_offset: u64,
    /// Byte offset of the snapshot's L1 table (entry bytes 0-7); checked to be cluster aligned.
    pub l1_table_offset: u64,
    /// Entries of the snapshot's L1 table (entry bytes 8-11); checked against the L1 size limit.
    pub l1_size: u32,
    /// The unique id string (entry bytes 12-13 give its length); checked to be unique.
    pub id: String,
    /// The name (entry bytes 14-15 give its length).
    pub name: String,
    /// Time the snapshot was taken, seconds (entry bytes 16-19).
    pub date_sec: u32,
    /// Subsecond part of the time, nanoseconds (entry bytes 20-23).
    pub date_nsec: u32,
    /// Guest run time when taken, nanoseconds (entry bytes 24-31).
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state, bytes (entry bytes 32-35); 0: no VM state.
    pub vm_state_size: u64,
    /// Bytes of extra data (entry bytes 36-39); checked against the limit and, for v3, at least 16.
    pub extra_data_size: u32,
    /// Virtual disk size when the snapshot was taken (extra data bytes 8-15;
    /// the image's size when absent).
    pub disk_size: u64,
    /// Instruction count (extra data bytes 16-23); None when absent or -1.
    pub icount: Option<u64>,
}

/// The snapshot table and the number of bytes it occupies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotTable {
    /// The entries, in file order.
    pub snapshots: Vec<Snapshot>,
    /// Bytes the table occupies in the file (its entries, each padded to a multiple of 8).
    pub size: u64,
}

/// Reads the snapshot table. Returns `None` (with an error finding) where
/// QEMU cannot read it either; entries past the end of the file read as
/// zeros, as QEMU's block layer returns them.
pub fn read(src: &dyn ReadAt, h: &Header, report: &mut Report) -> Option<SnapshotTable> {
    let mut table = SnapshotTable::default();
    let count = h.nb_snapshots;
    if count > MAX_SNAPSHOTS {
        report.add(
            &rule::SNAPSHOTS_LIMIT,
            Some(60),
            format_args!(
                "nb_snapshots {count} exceeds {MAX_SNAPSHOTS}; the snapshot table cannot be read"
            ),
        );
        return None;
    }
    // The spec (and QEMU) require an aligned offset even for an empty table.
    let start = h.snapshots_offset;
    if !start.is_multiple_of(h.cluster_size())
        || start
            .checked_add(count as u64 * ENTRY_FIXED)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        report.add(
            &rule::SNAPSHOTS_ALIGNED,
            Some(64),
            format_args!("snapshot table offset {start:#x} is invalid"),
        );
        return None;
    }
    if count == 0 {
        return Some(table);
    }
    let mut window = Window::new(src);
    let mut offset = start;
    // Where the entries past the end of the file begin, if they do.
    let mut tail_from = count as usize;
    for i in 0..count {
        offset = offset.next_multiple_of(8);
        let entry_offset = offset;
        if offset >= src.size() {
            // Every entry from here lies past the end of the file and reads
            // as zeros: 40 bytes, no extra data, empty id and name. They are
            // made in one step, not read one at a time (a 266-byte file
            // claiming 29,027 snapshots past its end cost 9 ms).
            let remaining = (count - i) as u64;
            tail_from = i as usize;
            let end = offset.saturating_add(remaining * ENTRY_FIXED);
            if end - start > MAX_SNAPSHOT_TABLE_BYTES {
                report.add(
                    &rule::SNAPSHOT_TABLE,
                    Some(start),
                    "the snapshot table exceeds QEMU's 64 MiB limit",
                );
                return None;
            }
            table.snapshots.extend((0..remaining).map(|k| Snapshot {
                entry_offset: offset + k * ENTRY_FIXED,
                l1_table_offset: 0,
                l1_size: 0,
                id: String::new(),
                name: String::new(),
                date_sec: 0,
                date_nsec: 0,
                vm_clock_nsec: 0,
                vm_state_size: 0,
                extra_data_size: 0,
                disk_size: h.size,
                icount: None,
            }));
            offset = end;
            break;
        }
        let mut fixed = [0u8; ENTRY_FIXED as usize];
        window.read(&mut fixed, offset, report)?;
        offset += ENTRY_FIXED;
        let id_size = be_u16(&fixed, 12) as u64;
        let name_size = be_u16(&fixed, 14) as u64;
        let extra_data_size = be_u32(&fixed, 36);
        if extra_data_size > MAX_SNAPSHOT_EXTRA_DATA {
            report.add(&rule::SNAPSHOT_EXTRA_SIZE, Some(entry_offset + 36), format_args!(
                "snapshot table entry {i} has {extra_data_size} bytes of extra data (QEMU's limit is {MAX_SNAPSHOT_EXTRA_DATA})"));
            return None;
        }
        let mut extra = [0u8; 24];
        let known = (extra_data_size as usize).min(extra.len());
        window.read(&mut extra[..known], offset, report)?;
        offset += extra_data_size as u64;
        // id and name are at most 64 KiB each (u16 sizes).
        let id = window.string(id_size, offset, report)?;
        offset += id_size;
        let name = window.string(name_size, offset, report)?;
        offset += name_size;
        if offset - start > MAX_SNAPSHOT_TABLE_BYTES {
            report.add(
                &rule::SNAPSHOT_TABLE,
                Some(start),
                "the snapshot table exceeds QEMU's 64 MiB limit",
            );
            return None;
        }
        let icount = if extra_data_size >= 24 {
            Some(be_u64(&extra, 16)).filter(|&v| v != u64::MAX)
        } else {
            None
        };
        table.snapshots.push(Snapshot {
            entry_offset,
            l1_table_offset: be_u64(&fixed, 0),
            l1_size: be_u32(&fixed, 8),
            id,
            name,
            date_sec: be_u32(&fixed, 16),
            date_nsec: be_u32(&fixed, 20),
            vm_clock_nsec: be_u64(&fixed, 24),
            vm_state_size: if extra_data_size >= 8 {
                be_u64(&extra, 0)
            } else {
                be_u32(&fixed, 32) as u64
            },
            extra_data_size,
            disk_size: if extra_data_size >= 16 {
                be_u64(&extra, 8)
            } else {
                h.size
            },
            icount,
        });
    }
    table.size = offset - start;
    let (read, tail) = table
        .snapshots
        .split_at(tail_from.min(table.snapshots.len()));
    // Duplicate ids found by sorting (id, index), not by a scan of the
    // earlier entries (65,536 snapshots would make that 2^31 string
    // comparisons) nor a hash set (twice the memory, and the ids are the
    // image's to choose): every entry of a run of equal ids but the first
    // in table order is a duplicate. One bit per entry remembers which.
    let mut dup = vec![0u64; read.len().div_ceil(64)];
    let empty_id: bool;
    {
        let mut order: Vec<(&str, u32)> = Vec::with_capacity(read.len());
        order.extend(
            read.iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), i as u32)),
        );
        order.sort_unstable();
        empty_id = order.first().is_some_and(|f| f.0.is_empty());
        for pair in order.windows(2) {
            if let [(a, _), (b, j)] = pair {
                if a == b {
                    if let Some(w) = dup.get_mut(*j as usize / 64) {
                        *w |= 1 << (*j % 64);
                    }
                }
            }
        }
    }
    for (i, s) in read.iter().enumerate() {
        if h.version >= 3 && s.extra_data_size < 16 {
            report.add(&rule::SNAPSHOT_EXTRA_V3, Some(s.entry_offset + 36), format_args!(
                "snapshot table entry {i} ({}) has {} bytes of extra data; version 3 needs at least 16", s.name, s.extra_data_size));
        }
        if dup.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1) {
            report.add(
                &rule::SNAPSHOT_ID_UNIQUE,
                Some(s.entry_offset),
                format_args!("snapshot ID {:?} is used twice", s.id),
            );
        }
    }
    // The zero entries past the end of the file, as one finding per rule
    // counted once per entry (the counters are qemu-img's either way).
    if let Some(first) = tail.first() {
        let n = tail.len() as u64;
        if h.version >= 3 {
            report.add_times(&rule::SNAPSHOT_EXTRA_V3, Some(first.entry_offset + 36), n, format_args!(
                "snapshot table entries {tail_from}-{} lie past the end of the file and read as zeros: no extra data; version 3 needs at least 16", count - 1));
        }
        // Their ids are all empty: every one but the first is a duplicate,
        // and the first too if an entry in the file has an empty id.
        let dups = n - 1 + empty_id as u64;
        let at = if empty_id {
            first
        } else {
            tail.get(1).unwrap_or(first)
        };
        if dups > 0 {
            report.add_times(
                &rule::SNAPSHOT_ID_UNIQUE,
                Some(at.entry_offset),
                dups,
                format_args!(
                    "snapshot ID \"\" (the entries past the end of the file) is used twice"
                ),
            );
        }
    }
    Some(table)
}

/// The table's bytes read front to back through one buffer of at most
/// [`WINDOW`] bytes: one read of the file per window, not four per entry,
/// and nothing read (or allocated) past the end of the file, which reads
/// as zeros. 65,536 entries past EOF cost a zero fill each.
struct Window<'a> {
    src: &'a dyn ReadAt,
    /// File offset of `buf[0]`.
    at: u64,
    buf: Vec<u8>,
}

/// Bytes of the table held at once.
const WINDOW: u64 = 64 * 1024;

impl<'a> Window<'a> {
    fn new(src: &'a dyn ReadAt) -> Self {
        Window {
            src,
            at: 0,
            buf: Vec::new(),
        }
    }

    /// `out.len()` bytes at `offset`, zeros past the end of the file.
    fn read(&mut self, out: &mut [u8], offset: u64, report: &mut Report) -> Option<()> {
        let size = self.src.size();
        let len = out.len() as u64;
        if offset >= size {
            out.fill(0);
            return Some(());
        }
        let end = offset.saturating_add(len);
        if offset < self.at || end > self.at + self.buf.len() as u64 {
            if len > WINDOW {
                return io(self.src.read_zero_padded(out, offset), offset, report);
            }
            // Refill from `offset`: the entries are read in file order.
            let held = (size - offset).min(WINDOW) as usize;
            self.buf.resize(held.max(out.len()), 0);
            io(
                self.src.read_zero_padded(&mut self.buf, offset),
                offset,
                report,
            )?;
            self.at = offset;
        }
        let from = (offset - self.at) as usize;
        match self.buf.get(from..from + out.len()) {
            Some(b) => out.copy_from_slice(b),
            None => out.fill(0),
        }
        Some(())
    }

    /// An id or name string of `len` bytes. Only the part inside the file
    /// is allocated: past the end it reads as zeros, so a table past EOF
    /// whose entries claim 64 KiB names costs nothing.
    fn string(&mut self, len: u64, offset: u64, report: &mut Report) -> Option<String> {
        let buf = self.bytes(len, offset, report)?;
        Some(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

impl Window<'_> {
    /// The part inside the file of `len` bytes at `offset` (the rest reads
    /// as zeros and is not allocated).
    fn bytes(&mut self, len: u64, offset: u64, report: &mut Report) -> Option<Vec<u8>> {
        let inside = self.src.size().saturating_sub(offset).min(len);
        let mut buf = vec![0u8; inside as usize];
        if inside > 0 {
            self.read(&mut buf, offset, report)?;
        }
        Some(buf)
    }
}

fn io(r: crate::Result<()>, offset: u64, report: &mut Report) -> Option<()> {
    match r {
        Ok(()) => Some(()),
        Err(e) => {
            report.add(
                &crate::rules::general::IO_ERROR,
                Some(offset),
                format_args!("snapshot table: {e}"),
            );
            None
        }
    }
}

/// Whether a snapshot's L1 table can be walked; records why not.
pub fn l1_usable(h: &Header, s: &Snapshot, report: &mut Report) -> bool {
    if !s.l1_table_offset.is_multiple_of(h.cluster_size()) {
        report.add(
            &rule::SNAPSHOT_L1_ALIGNED,
            Some(s.entry_offset),
            format_args!(
                "snapshot {} ({}): L1 table offset {:#x} is not cluster aligned",
                s.id, s.name, s.l1_table_offset
            ),
        );
        return false;
    }
    if s.l1_size as u64 * 8 > MAX_L1_BYTES {
        report.add(
            &rule::SNAPSHOT_L1_SIZE,
            Some(s.entry_offset + 8),
            format_args!(
                "snapshot {} ({}): L1 table of {} entries exceeds 32 MiB",
                s.id, s.name, s.l1_size
            ),
        );
        return false;
    }
    true
}

/// The snapshot table as `qemu-img check -r all` rewrites it, when it does:
/// QEMU reads the table in repair mode (the extra data of an entry claiming
/// more than [`MAX_SNAPSHOT_EXTRA_DATA`] bytes cut to that limit, the
/// reading going on where the claimed size ends; the entries that would
/// take the table past 64 MiB dropped with all after them; nb_snapshots
/// above [`MAX_SNAPSHOTS`] cut to it), then writes every entry anew with at
/// least the 24 bytes of extra data it knows (version 3 needs 16), ids
/// and names as C strings (to their first NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The new table: entries padded to 8 bytes, to be written at a cluster
    /// boundary.
    pub table: Vec<u8>,
    /// Entries it holds (the header's new nb_snapshots).
    pub count: u32,
    /// What changed, one line per kind.
    pub fixed: Vec<String>,
}

/// One entry as the rewrite keeps it.
struct Kept {
    /// The fixed part as read: L1 offset and size, dates, 32-bit VM state.
    fixed: [u8; ENTRY_FIXED as usize],
    /// Extra data bytes kept (after the cut to QEMU's limit).
    extra_data_size: u32,
    vm_state_size: u64,
    disk_size: u64,
    icount: u64,
    /// Extra data past the 24 bytes QEMU knows: at most 1000 bytes.
    unknown: Vec<u8>,
    id: Vec<u8>,
    name: Vec<u8>,
}

impl Kept {
    /// An entry past the end of the file: zeros, no extra data.
    fn zero(h: &Header) -> Kept {
        Kept {
            fixed: [0; ENTRY_FIXED as usize],
            extra_data_size: 0,
            vm_state_size: 0,
            disk_size: h.size,
            icount: u64::MAX,
            unknown: Vec::new(),
            id: Vec::new(),
            name: Vec::new(),
        }
    }

    /// Appends the entry as QEMU's qcow2_write_snapshots writes it.
    fn put(&self, out: &mut Vec<u8>) {
        out.resize(out.len().next_multiple_of(8), 0);
        let mut e = self.fixed;
        e[12..14].copy_from_slice(&(self.id.len() as u16).to_be_bytes());
        e[14..16].copy_from_slice(&(self.name.len() as u16).to_be_bytes());
        // A VM state that does not fit 32 bits reads as none to older
        // readers, never as a truncated size.
        let small = u32::try_from(self.vm_state_size).unwrap_or(0);
        e[32..36].copy_from_slice(&small.to_be_bytes());
        let size = 24 + self.unknown.len() as u32;
        e[36..40].copy_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&e);
        out.extend_from_slice(&self.vm_state_size.to_be_bytes());
        out.extend_from_slice(&self.disk_size.to_be_bytes());
        out.extend_from_slice(&self.icount.to_be_bytes());
        out.extend_from_slice(&self.unknown);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.name);
    }
}

/// A C string: the bytes before the first NUL.
fn c_string(mut b: Vec<u8>) -> Vec<u8> {
    if let Some(n) = b.iter().position(|&c| c == 0) {
        b.truncate(n);
    }
    b
}

/// The rewrite `qemu-img check -r all` makes of the image's snapshot table,
/// or `None` when it leaves the table alone (nothing to drop, cut or
/// complete) or cannot read it either (an offset it refuses): the check's
/// own finding then stands. Memory follows the file: what lies past its
/// end reads as zeros without being allocated, and the table written is
/// bounded by [`MAX_SNAPSHOTS`] entries of at most 64 KiB + 1 KiB each that
/// the file holds.
pub fn rewrite(src: &dyn ReadAt, h: &Header) -> crate::Result<Option<Rewrite>> {
    let mut fixed = Vec::new();
    let mut count = h.nb_snapshots;
    if count > MAX_SNAPSHOTS {
        fixed.push(format!(
            "{} overhanging snapshots discarded (QEMU's limit is {MAX_SNAPSHOTS})",
            count - MAX_SNAPSHOTS
        ));
        count = MAX_SNAPSHOTS;
    }
    let start = h.snapshots_offset;
    if count == 0
        || !start.is_multiple_of(h.cluster_size())
        || start
            .checked_add(count as u64 * ENTRY_FIXED)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        return Ok(None);
    }
    let mut report = Report::new("", "qcow2", &crate::limits::Limits::default());
    let mut window = Window::new(src);
    let mut kept: Vec<Kept> = Vec::new();
    let mut cut = 0u32;
    let mut offset = start;
    // Bytes the entries take, without padding and with extra data cut, as
    // QEMU counts them against its 64 MiB limit.
    let mut table_length = 0u64;
    for i in 0..count {
        offset = offset.next_multiple_of(8);
        if offset >= src.size() {
            // The rest reads as zeros: 40 bytes each, made in one step.
            kept.extend((i..count).map(|_| Kept::zero(h)));
            break;
        }
        let mut e = [0u8; ENTRY_FIXED as usize];
        let Some(()) = window.read(&mut e, offset, &mut report) else {
            return Err(report.into_error());
        };
        offset += ENTRY_FIXED;
        let (id_size, name_size) = (be_u16(&e, 12) as u64, be_u16(&e, 14) as u64);
        let claimed = be_u32(&e, 36);
        let extra_data_size = claimed.min(MAX_SNAPSHOT_EXTRA_DATA);
        cut += (claimed > MAX_SNAPSHOT_EXTRA_DATA) as u32;
        let mut extra = [0u8; 24];
        let known = (extra_data_size as usize).min(extra.len());
        let mut unknown = vec![0u8; (extra_data_size as usize).saturating_sub(known)];
        let ok = window
            .read(&mut extra[..known], offset, &mut report)
            .and_then(|()| window.read(&mut unknown, offset + known as u64, &mut report));
        // The reading goes on where the claimed extra data ends.
        offset += claimed as u64;
        let id = ok.and_then(|()| window.bytes(id_size, offset, &mut report));
        offset += id_size;
        let name = id
            .as_ref()
            .and_then(|_| window.bytes(name_size, offset, &mut report));
        offset += name_size;
        let (Some(id), Some(name)) = (id, name) else {
            return Err(report.into_error());
        };
        table_length += ENTRY_FIXED + extra_data_size as u64 + id_size + name_size;
        if table_length > MAX_SNAPSHOT_TABLE_BYTES || offset - start > i32::MAX as u64 {
            fixed.push(format!(
                "{} overhanging snapshots discarded (the table would exceed 64 MiB)",
                count - i
            ));
            break;
        }
        kept.push(Kept {
            fixed: e,
            extra_data_size,
            vm_state_size: if extra_data_size >= 8 {
                be_u64(&extra, 0)
            } else {
                be_u32(&e, 32) as u64
            },
            disk_size: if extra_data_size >= 16 {
                be_u64(&extra, 8)
            } else {
                h.size
            },
            icount: if extra_data_size >= 24 {
                be_u64(&extra, 16)
            } else {
                u64::MAX
            },
            unknown,
            id: c_string(id),
            name: c_string(name),
        });
    }
    let incomplete = if h.version >= 3 {
        kept.iter().filter(|k| k.extra_data_size < 16).count()
    } else {
        0
    };
    if cut > 0 {
        fixed.push(format!(
            "the extra data of {cut} snapshot table entries cut to {MAX_SNAPSHOT_EXTRA_DATA} bytes"
        ));
    }
    if incomplete > 0 {
        fixed.push(format!(
            "{incomplete} snapshot table entries completed to the extra data version 3 needs"
        ));
    }
    if fixed.is_empty() {
        return Ok(None);
    }
    let mut table = Vec::new();
    for k in &kept {
        k.put(&mut table);
    }
    Ok(Some(Rewrite {
        table,
        count: kept.len() as u32,
        fixed,
    }))
}
