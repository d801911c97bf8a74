//! Persistent dirty bitmaps (spec sections "Bitmaps", "Bitmap directory",
//! "Bitmap table").

use super::ext::BitmapsExt;
use super::header::Header;
use crate::report::Report;
use crate::rules::qcow2 as rule;
use crate::source::{be_u16, be_u32, be_u64, ReadAt};
use serde::Serialize;

/// Bitmap directory entry flags bit 0 (in_use): the bitmap was not saved consistently (spec "Bitmap directory").
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Flags bit 1 (auto): the bitmap tracks guest writes.
pub const FLAG_AUTO: u32 = 1 << 1;
/// Flags bit 2 (extra_data_compatible): unknown extra data may be ignored.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// QEMU treats bit 2 as reserved too (it never writes extra data).
pub const RESERVED_FLAGS: u32 = !(FLAG_IN_USE | FLAG_AUTO);
/// type 1: a dirty tracking bitmap, the only type the spec defines.
pub const TYPE_DIRTY_TRACKING: u8 = 1;
/// Smallest granularity_bits (512-byte granules).
pub const MIN_GRANULARITY_BITS: u8 = 9;
/// Largest granularity_bits (2 GiB granules).
pub const MAX_GRANULARITY_BITS: u8 = 31;
/// Longest bitmap name, in bytes.
pub const MAX_NAME_SIZE: u16 = 1023;
/// QEMU's limits on one bitmap: table entries and bytes of bitmap data.
pub const MAX_TABLE_SIZE: u32 = 0x800_0000;
/// Most bytes of bitmap data of one bitmap (QEMU's limit).
pub const MAX_PHYS_SIZE: u64 = 0x2000_0000;

/// Bitmap table entry bits 9-55: offset of the data cluster (spec "Bitmap table").
pub const TABLE_ENTRY_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bitmap table entry bits 1-8 and 56-63: reserved, must be 0.
pub const TABLE_ENTRY_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
/// Bitmap table entry bit 0 with offset 0: the cluster reads as all ones.
pub const TABLE_ENTRY_ALL_ONES: u64 = 1;

const ENTRY_FIXED: usize = 24;

#[derive(Debug, Clone, Serialize)]
/// One bitmap directory entry (spec "Bitmap directory"), as read from the file; fields are checked against the spec, with findings.
pub struct Bitmap {
    /// Byte offset of this entry in the file.
    pub entry_offset: u64,
    /// The bitmap's name (at most [`MAX_NAME_SIZE`] bytes, unique in the directory).
    pub name: String,
    /// Byte offset of the bitmap table (entry bytes 0-7).
    pub bitmap_table_offset: u64,
    /// Entries of the bitmap table (entry bytes 8-11); checked against the bitmap's size and [`MAX_TABLE_SIZE`].
    pub bitmap_table_size: u32,
    /// Flags (entry bytes 12-15): [`FLAG_IN_USE`], [`FLAG_AUTO`]; other bits are reserved.
    pub flags: u32,
    /// type (entry byte 16): must be [`TYPE_DIRTY_TRACKING`].
    pub bitmap_type: u8,
    /// granularity_bits (entry byte 17): each bit covers 2^granularity_bits guest bytes, in [9, 31].
    pub granularity_bits: u8,
    /// Bytes of extra data after the fixed fields (entry bytes 20-23).
    pub extra_data_size: u32,
}

impl Bitmap {
    /// Whether the in_use flag is set.
    pub fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }
    /// Whether the auto flag is set.
    pub fn auto(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }
}

/// Reads the bitmap directory: exactly `nb_bitmaps` entries filling
/// `bitmap_directory_size` bytes, each obeying the directory rules. Returns
/// `None` (with an error finding) when QEMU could not load it either.
pub fn read_directory(
    src: &dyn ReadAt,
    h: &Header,
    ext: &BitmapsExt,
    report: &mut Report,
) -> Option<Vec<Bitmap>> {
    let dir_off = ext.bitmap_directory_offset;
    let size = ext.bitmap_directory_size;
    let broken = |report: &mut Report, detail: String| {
        report.add(&rule::BITMAP_DIRECTORY, Some(dir_off), detail);
        None
    };
    if size == 0 {
        return broken(report, "the bitmap directory size is zero".into());
    }
    // Size was validated against QEMU's 64 MiB directory limit; it must also
    // lie inside the file before anything is allocated for it.
    if !src.contains(dir_off, size) {
        return broken(
            report,
            format!(
                "the bitmap directory ({size} bytes at {dir_off:#x}) lies past the end of the file"
            ),
        );
    }
    let mut dir = vec![0u8; size as usize];
    if src.read_exact_at(&mut dir, dir_off).is_err() {
        return broken(report, "the bitmap directory cannot be read".into());
    }
    let mut bitmaps: Vec<Bitmap> = Vec::new();
    let mut pos = 0usize;
    while pos < dir.len() {
        let e = dir.get(pos..pos + ENTRY_FIXED);
        let Some(e) = e else {
            return broken(report, format!("directory entry at +{pos} is truncated"));
        };
        if bitmaps.len() as u64 >= ext.nb_bitmaps as u64 {
            return broken(
                report,
                format!(
                    "more bitmaps in the directory than nb_bitmaps {}",
                    ext.nb_bitmaps
                ),
            );
        }
        let b_table_off = be_u64(e, 0);
        let table_size = be_u32(e, 8);
        let flags = be_u32(e, 12);
        let bitmap_type = e[16];
        let granularity_bits = e[17];
        let name_size = be_u16(e, 18);
        let extra = be_u32(e, 20);
        let entry_len = (ENTRY_FIXED as u64 + extra as u64 + name_size as u64).next_multiple_of(8);
        let next = pos as u64 + entry_len;
        if next > dir.len() as u64 {
            return broken(
                report,
                format!("directory entry at +{pos} runs past the directory end"),
            );
        }
        let name_at = pos + ENTRY_FIXED + extra as usize;
        let name = String::from_utf8_lossy(
            dir.get(name_at..name_at + name_size as usize)
                .unwrap_or(&[]),
        )
        .into_owned();
        let entry_offset = dir_off + pos as u64;
        let cs = h.cluster_size();
        let problem = if extra != 0 {
            Some("has extra data, which QEMU does not support".to_string())
        } else if table_size == 0 || b_table_off == 0 || !b_table_off.is_multiple_of(cs) {
            Some(format!(
                "has an invalid bitmap table ({table_size} entries at {b_table_off:#x})"
            ))
        } else if table_size > MAX_TABLE_SIZE || table_size as u64 * cs > MAX_PHYS_SIZE {
            Some(format!(
                "has a bitmap table of {table_size} entries, over QEMU's limit"
            ))
        } else if !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&granularity_bits) {
            Some(format!(
                "has granularity_bits {granularity_bits}, outside 9..=31"
            ))
        } else if flags & RESERVED_FLAGS != 0 {
            Some(format!("has reserved flags {:#x}", flags & RESERVED_FLAGS))
        } else if name_size == 0 || name_size > MAX_NAME_SIZE {
            Some(format!("has a name of {name_size} bytes"))
        } else if bitmap_type != TYPE_DIRTY_TRACKING {
            Some(format!("has type {bitmap_type}, not 1 (dirty tracking)"))
        } else {
            None
        };
        if let Some(p) = problem {
            report.add(
                &rule::BITMAP_ENTRY,
                Some(entry_offset),
                format_args!("bitmap {name:?} {p}"),
            );
            return None;
        }
        // A consistent bitmap's table must cover the virtual disk.
        let covered = ((table_size as u128 * cs as u128) * 8) << granularity_bits;
        if flags & FLAG_IN_USE == 0 && (h.size as u128) > covered {
            report.add(&rule::BITMAP_TABLE_SIZE, Some(entry_offset + 8), format_args!(
                "bitmap {name:?}: {table_size} table entries cover {covered} bytes, less than the {}-byte disk", h.size));
            return None;
        }
        if bitmaps.iter().any(|b| b.name == name) {
            report.add(
                &rule::BITMAP_NAME_UNIQUE,
                Some(entry_offset),
                format_args!("bitmap name {name:?} is used twice"),
            );
        }
        if flags & FLAG_IN_USE != 0 {
            report.add(
                &rule::BITMAP_IN_USE,
                Some(entry_offset + 12),
                format_args!("bitmap {name:?} is in use (inconsistent)"),
            );
        }
        bitmaps.push(Bitmap {
            entry_offset,
            name,
            bitmap_table_offset: b_table_off,
            bitmap_table_size: table_size,
            flags,
            bitmap_type,
            granularity_bits,
            extra_data_size: extra,
        });
        pos = next as usize;
    }
    if bitmaps.len() as u64 != ext.nb_bitmaps as u64 {
        return broken(
            report,
            format!(
                "the directory holds {} bitmaps, nb_bitmaps says {}",
                bitmaps.len(),
                ext.nb_bitmaps
            ),
        );
    }
    Some(bitmaps)
}

/// Why a bitmap table entry is invalid, if it is.
pub fn table_entry_problem(entry: u64, cluster_size: u64) -> Option<&'static str> {
    if entry & TABLE_ENTRY_RESERVED_MASK != 0 {
        return Some("reserved bits are set");
    }
    let offset = entry & TABLE_ENTRY_OFFSET_MASK;
    if offset != 0 {
        if entry & TABLE_ENTRY_ALL_ONES != 0 {
            return Some("bit 0 (all ones) is set together with an offset");
        }
        if !offset.is_multiple_of(cluster_size) {
            return Some("the data offset is not cluster aligned");
        }
    }
    None
}
