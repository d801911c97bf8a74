//! The header and the BAT (spec sections "Header" and "BAT").

use crate::report::Report;
use crate::rules::parallels as rule;
use crate::source::ReadAt;
use field as f;
use serde::Serialize;

/// The magic of images whose BAT entries count sectors (spec "Header", bytes 0-15).
pub const MAGIC_V1: &[u8; 16] = b"WithoutFreeSpace";
/// The magic of images whose BAT entries count clusters (spec "Header", bytes 0-15).
pub const MAGIC_V2: &[u8; 16] = b"WithouFreSpacExt";
/// The header's field table (spec "Header"): little endian, offsets from
/// byte 0 of the file (the magic is bytes 0-15); the parser, the writer and
/// the mutators go through it.
pub mod field {
    crate::field::field_table! { Little;
        /// version (bytes 16-19).
        VERSION: u32 = "version" @ 16,
        /// heads (bytes 20-23).
        HEADS: u32 = "heads" @ 20,
        /// cylinders (bytes 24-27).
        CYLINDERS: u32 = "cylinders" @ 24,
        /// tracks (bytes 28-31).
        TRACKS: u32 = "tracks" @ 28,
        /// nb_bat_entries (bytes 32-35).
        NB_BAT_ENTRIES: u32 = "nb_bat_entries" @ 32,
        /// nb_sectors (bytes 36-43).
        NB_SECTORS: u64 = "nb_sectors" @ 36,
        /// in_use (bytes 44-47).
        IN_USE: u32 = "in_use" @ 44,
        /// data_off (bytes 48-51).
        DATA_OFF: u32 = "data_off" @ 48,
        /// flags (bytes 52-55).
        FLAGS: u32 = "flags" @ 52,
        /// ext_off (bytes 56-63).
        EXT_OFF: u64 = "ext_off" @ 56,
    }
    /// Bytes of the magic (bytes 0-15).
    pub const MAGIC: std::ops::Range<usize> = 0..16;
}
/// Size of the header in bytes; the BAT follows.
pub const HEADER_SIZE: u64 = field::EXT_OFF.end() as u64;
/// in_use values the spec allows: opened read-write, closed, or 0 (old software).
pub const IN_USE_OPEN: u32 = 0x746F_6E59;
/// in_use when the image was closed properly.
pub const IN_USE_CLOSED: u32 = 0x312e_3276;
/// QEMU's caps: tracks <= INT32_MAX / 513, BAT entries <= INT32_MAX / 4.
pub const MAX_TRACKS: u32 = (i32::MAX / 513) as u32;
/// Most BAT entries QEMU opens.
pub const MAX_BAT_ENTRIES: u32 = (i32::MAX / 4) as u32;
/// The largest disk QEMU opens: BDRV_MAX_LENGTH, INT64_MAX aligned down to
/// BDRV_MAX_ALIGNMENT (1 GiB). qemu-img 10.0.2 opens nb_sectors up to
/// 0x3f_ffff_ffe0_0000 and refuses one more ("File too large").
pub const MAX_DISK_BYTES: u64 = 0x7fff_ffff_c000_0000;
/// flags bit 0: the image should be considered clear.
pub const FLAG_EMPTY: u32 = 1;

#[derive(Debug, Clone, Serialize)]
/// The image header (spec "Header", 64 bytes, little endian), as [`parse`] returns it.
pub struct Header {
    /// true for "WithouFreSpacExt" (BAT in clusters), false for "WithoutFreeSpace" (BAT in sectors).
    pub ext_magic: bool,
    /// version (bytes 16-19); `parse` refuses anything but 2.
    pub version: u32,
    /// heads (bytes 20-23): CHS geometry, informative only, not validated.
    pub heads: u32,
    /// cylinders (bytes 24-27): CHS geometry, informative only, not validated.
    pub cylinders: u32,
    /// tracks (bytes 28-31): sectors per cluster; `parse` refuses 0 and more than [`MAX_TRACKS`].
    pub tracks: u32,
    /// nb_bat_entries (bytes 32-35): BAT entries; `parse` refuses more than [`MAX_BAT_ENTRIES`] and a BAT too small for the disk.
    pub nb_bat_entries: u32,
    /// nb_sectors (bytes 36-43): virtual size in sectors (v1: low 32 bits only); `parse` refuses more than [`MAX_DISK_BYTES`].
    pub nb_sectors: u64,
    /// in_use (bytes 44-47): [`IN_USE_OPEN`], [`IN_USE_CLOSED`] or 0; other values are a finding.
    pub in_use: u32,
    /// data_off (bytes 48-51): offset of the data area in sectors (0: right after the BAT, v1 only).
    pub data_off: u32,
    /// flags (bytes 52-55): bit 0 is [`FLAG_EMPTY`]; other bits are a finding.
    pub flags: u32,
    /// ext_off (bytes 56-63): offset of the Format Extension cluster in sectors, 0 for none.
    pub ext_off: u64,
}

impl Header {
    /// Cluster size in bytes: tracks x 512.
    pub fn cluster_size(&self) -> u64 {
        self.tracks as u64 * super::SECTOR
    }
    /// Virtual disk size in bytes (v1 uses only the low 32 bits of
    /// nb_sectors), never above [`MAX_DISK_BYTES`]: `parse` refuses a
    /// header claiming more, as QEMU does.
    pub fn disk_size(&self) -> u64 {
        self.claimed_disk_size().min(MAX_DISK_BYTES)
    }
    /// nb_sectors in bytes as the header claims it (saturating).
    fn claimed_disk_size(&self) -> u64 {
        let sectors = if self.ext_magic {
            self.nb_sectors
        } else {
            self.nb_sectors & 0xffff_ffff
        };
        sectors.saturating_mul(super::SECTOR)
    }
    /// Byte offset of the data area: data_off, or for v1 images with data_off
    /// 0 the end of the BAT rounded up to a sector.
    pub fn data_offset(&self) -> u64 {
        if self.data_off != 0 {
            self.data_off as u64 * super::SECTOR
        } else {
            (HEADER_SIZE + 4 * self.nb_bat_entries as u64).next_multiple_of(super::SECTOR)
        }
    }
    /// Byte offset a non-zero BAT entry names.
    pub fn bat_offset(&self, entry: u32) -> u64 {
        if self.ext_magic {
            (entry as u64).saturating_mul(self.cluster_size())
        } else {
            entry as u64 * super::SECTOR
        }
    }
}

/// The header fields of `b` (the first [`HEADER_SIZE`] bytes of the file)
/// as they are, before any validation; `ext_magic` is what the magic says.
pub fn decode(b: &[u8], ext_magic: bool) -> Header {
    Header {
        ext_magic,
        version: f::VERSION.get(b),
        heads: f::HEADS.get(b),
        cylinders: f::CYLINDERS.get(b),
        tracks: f::TRACKS.get(b),
        nb_bat_entries: f::NB_BAT_ENTRIES.get(b),
        nb_sectors: f::NB_SECTORS.get(b),
        in_use: f::IN_USE.get(b),
        data_off: f::DATA_OFF.get(b),
        flags: f::FLAGS.get(b),
        ext_off: f::EXT_OFF.get(b),
    }
}

/// Reads and validates the header; None (with an error finding) when the
/// image cannot be read at all.
pub fn parse(src: &dyn ReadAt, report: &mut Report) -> Option<Header> {
    let mut b = [0u8; HEADER_SIZE as usize];
    if src.read_exact_at(&mut b, 0).is_err() {
        report.add(
            &rule::MAGIC,
            Some(0),
            format_args!(
                "the file is {} bytes, shorter than a Parallels header",
                src.size()
            ),
        );
        return None;
    }
    let ext_magic = match &b[f::MAGIC] {
        m if m == MAGIC_V2 => true,
        m if m == MAGIC_V1 => false,
        _ => {
            report.add(
                &rule::MAGIC,
                Some(0),
                "not a Parallels image: the magic is neither WithoutFreeSpace nor WithouFreSpacExt",
            );
            return None;
        }
    };
    let h = decode(&b, ext_magic);
    limits(&h, report)?;
    findings(&h, report);
    Some(h)
}

/// version, and the sizes QEMU refuses to open (tracks, BAT entries, the
/// disk size).
fn limits(h: &Header, report: &mut Report) -> Option<()> {
    if h.version != 2 {
        report.add(
            &rule::VERSION,
            Some(f::VERSION.pos()),
            format_args!("version {} (must be 2)", h.version),
        );
        return None;
    }
    if h.tracks == 0 || h.tracks > MAX_TRACKS {
        report.add(
            &rule::TRACKS,
            Some(f::TRACKS.pos()),
            format_args!("tracks (cluster size in sectors) is {}", h.tracks),
        );
        return None;
    }
    if h.nb_bat_entries > MAX_BAT_ENTRIES {
        report.add(
            &rule::BAT_SIZE,
            Some(f::NB_BAT_ENTRIES.pos()),
            format_args!(
                "{} BAT entries (QEMU's limit is {MAX_BAT_ENTRIES})",
                h.nb_bat_entries
            ),
        );
        return None;
    }
    if h.claimed_disk_size() > MAX_DISK_BYTES {
        report.add(
            &rule::DISK_SIZE_LIMIT,
            Some(f::NB_SECTORS.pos()),
            format_args!(
                "nb_sectors {:#x} ({} bytes) exceeds QEMU's largest disk ({MAX_DISK_BYTES} bytes)",
                h.nb_sectors,
                // The real product, not the saturated one.
                h.nb_sectors as u128 * super::SECTOR as u128
            ),
        );
        return None;
    }
    Some(())
}

/// What QEMU opens but the spec forbids or flags: high nb_sectors bits
/// with the old magic, a BAT short of the disk, unused flags, in_use.
fn findings(h: &Header, report: &mut Report) {
    if !h.ext_magic && h.nb_sectors >> 32 != 0 {
        report.add(
            &rule::NB_SECTORS_HIGH,
            Some(f::NB_SECTORS.pos()),
            format_args!(
                "nb_sectors {:#x} uses its high 32 bits in a WithoutFreeSpace image",
                h.nb_sectors
            ),
        );
    }
    if (h.nb_bat_entries as u64) * h.cluster_size() < h.disk_size() {
        // QEMU opens such images and reads the uncovered tail as zeros; so do we.
        report.add(
            &rule::BAT_COVERS_DISK,
            Some(f::NB_BAT_ENTRIES.pos()),
            format_args!(
                "{} BAT entries of {} bytes do not cover the {}-byte disk",
                h.nb_bat_entries,
                h.cluster_size(),
                h.disk_size()
            ),
        );
    }
    if h.flags & !FLAG_EMPTY != 0 {
        report.add(
            &rule::FLAGS_UNUSED,
            Some(f::FLAGS.pos()),
            format_args!(
                "flags {:#x}: bits 1-31 are unused and must be zero",
                h.flags
            ),
        );
    }
    match h.in_use {
        0 | IN_USE_CLOSED => {}
        IN_USE_OPEN => report.add(
            &rule::IN_USE_OPEN,
            Some(f::IN_USE.pos()),
            "in_use says the image is open read-write: it was not closed correctly",
        ),
        v => report.add(
            &rule::IN_USE_VALUE,
            Some(f::IN_USE.pos()),
            format_args!("in_use {v:#x} is none of 0, 0x746F6E59, 0x312e3276"),
        ),
    }
}

/// Calls `f(index, entry)` for every non-zero BAT entry, in order. The BAT
/// is read as far as it lies inside the file, in bounded chunks, and runs
/// of it lying in a file hole (all zero) are skipped without a read: a
/// 1 GiB BAT claimed over a hole costs neither memory nor reads.
pub fn for_each_bat_entry(src: &dyn ReadAt, h: &Header, mut f: impl FnMut(u64, u32)) {
    let n = crate::source::entries_in_file(src, HEADER_SIZE, h.nb_bat_entries as u64, 4);
    crate::source::for_each_entry(src, HEADER_SIZE, n, 4, |i, raw| {
        let e = crate::field::le_u32(raw, 0);
        if e != 0 {
            f(i, e);
        }
    });
}

/// Reads the BAT for the reader: entries up to the last non-zero one (the
/// rest read as 0, unallocated, which is what a shorter table means).
pub fn read_bat(src: &dyn ReadAt, h: &Header) -> Vec<u32> {
    let mut bat = Vec::new();
    for_each_bat_entry(src, h, |i, e| {
        if let Ok(i) = usize::try_from(i) {
            if bat.len() <= i {
                bat.resize(i + 1, 0);
            }
            if let Some(slot) = bat.get_mut(i) {
                *slot = e;
            }
        }
    });
    bat
}

/// About the bytes of metadata a check of the image reads, for a progress
/// bar's total: the header and the BAT (as much of it as the file holds).
pub fn metadata_size(src: &dyn ReadAt, h: &Header) -> u64 {
    (HEADER_SIZE + 4 * h.nb_bat_entries as u64).min(src.size())
}
