//! The Parallels writer: a spec-valid expandable image from a logical
//! description (spec sections "Header", "BAT", "Data Area", "Format
//! Extension", "Dirty bitmaps feature").
//!
//! Layout: header and BAT, padded to a cluster (the data offset, cluster
//! aligned for both magics as the spec recommends); then the Format
//! Extension cluster and its bitmap data clusters when there is a bitmap;
//! then the data clusters in guest order. Every cluster past the data
//! offset is used: nothing leaks.

use super::ext::{
    bitmap_field, feature_field, field as ext_field, EXT_MAGIC, FEATURE_DIRTY_BITMAP,
};
use super::header::{field as f, HEADER_SIZE, IN_USE_CLOSED, MAGIC_V1, MAGIC_V2};
use super::SECTOR;
pub use crate::error::WriteError;
use crate::field::{put_le32, put_le64};
use std::collections::BTreeMap;

/// A dirty bitmap of the Format Extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapDesc {
    /// The bitmap's 16-byte id (UUID).
    pub id: [u8; 16],
    /// Sectors per bit (a power of two).
    pub granularity: u32,
    /// Dirty bits, by index (bit i covers granularity sectors from i * granularity).
    pub dirty_bits: Vec<u64>,
}

/// The logical description of a Parallels image.
#[derive(Debug, Clone)]
pub struct Description {
    /// Guest size in bytes (a multiple of 512).
    pub size: u64,
    /// Cluster size in bytes (a multiple of 512).
    pub cluster_size: u64,
    /// "WithouFreSpacExt" (BAT in clusters) rather than "WithoutFreeSpace" (BAT in sectors).
    pub ext_magic: bool,
    /// Guest cluster index -> its bytes (one cluster); absent: unallocated.
    pub clusters: BTreeMap<u64, Vec<u8>>,
    /// A dirty bitmap to store in a Format Extension cluster; None: no extension.
    pub bitmap: Option<BitmapDesc>,
}

impl Description {
    /// An image of `size` bytes and clusters of `cluster_size` bytes, with no cluster allocated and no bitmap.
    pub fn new(size: u64, cluster_size: u64, ext_magic: bool) -> Description {
        Description {
            size,
            cluster_size,
            ext_magic,
            clusters: BTreeMap::new(),
            bitmap: None,
        }
    }

    /// BAT entries covering the guest: size / cluster_size, rounded up.
    pub fn bat_entries(&self) -> u64 {
        self.size.div_ceil(self.cluster_size)
    }

    /// The guest's bytes (unallocated: zeros).
    pub fn guest_bytes(&self) -> Vec<u8> {
        let cs = self.cluster_size as usize;
        let mut out = vec![0u8; self.size as usize];
        for (&k, d) in &self.clusters {
            let at = k as usize * cs;
            if let Some(dst) = out.get_mut(at..(at + cs).min(self.size as usize)) {
                // A description's clusters are whole (write() refuses others);
                // a short one reads as zeros past its end here.
                let n = dst.len().min(d.len());
                dst[..n].copy_from_slice(&d[..n]);
            }
        }
        out
    }

    /// Dirty guest byte ranges the bitmap describes, merged, clipped to the disk.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let Some(b) = &self.bitmap else {
            return Vec::new();
        };
        let g = b.granularity as u64 * SECTOR;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut bits = b.dirty_bits.clone();
        bits.sort_unstable();
        bits.dedup();
        for i in bits {
            let start = i * g;
            if start >= self.size {
                continue;
            }
            let len = g.min(self.size - start);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        out
    }
}

/// Serializes `d` as a Parallels image (header, BAT, extension, data clusters); an error when `d` is inconsistent (sizes not multiples of 512, a cluster of the wrong length).
pub fn write(d: &Description) -> Result<Vec<u8>, WriteError> {
    let nb_bat = validate(d)?;
    let mut img = header(d, nb_bat);
    if let Some(b) = &d.bitmap {
        extension(d, b, &mut img)?;
    }
    let cs = d.cluster_size;
    for (&k, bytes) in &d.clusters {
        if bytes.len() as u64 != cs {
            return err(format!(
                "cluster {k}: {} bytes, not one cluster",
                bytes.len()
            ));
        }
        // A BAT entry names a cluster in clusters (ext magic) or sectors.
        let at = img.len() as u64;
        let v = if d.ext_magic { at / cs } else { at / SECTOR } as u32;
        put_le32(&mut img, (HEADER_SIZE + 4 * k) as usize, v);
        img.extend_from_slice(bytes);
    }
    Ok(img)
}

fn err<T>(s: impl Into<String>) -> Result<T, WriteError> {
    Err(WriteError(s.into()))
}

/// Refuses descriptions no image QEMU opens can have; the BAT entries.
fn validate(d: &Description) -> Result<u64, WriteError> {
    let cs = d.cluster_size;
    if cs == 0 || !cs.is_multiple_of(SECTOR) || cs / SECTOR > super::header::MAX_TRACKS as u64 {
        return err(format!(
            "cluster size {cs} is not a positive multiple of 512"
        ));
    }
    if !d.size.is_multiple_of(SECTOR) || (!d.ext_magic && d.size / SECTOR > u32::MAX as u64) {
        return err(format!("size {} does not fit this magic", d.size));
    }
    let nb_bat = d.bat_entries();
    if nb_bat > super::header::MAX_BAT_ENTRIES as u64 {
        return err(format!("{nb_bat} BAT entries"));
    }
    if let Some((&k, _)) = d.clusters.range(nb_bat..).next() {
        return err(format!("cluster {k} lies past the end of the disk"));
    }
    Ok(nb_bat)
}

/// The header and an empty BAT, padded to the data offset (a cluster).
fn header(d: &Description, nb_bat: u64) -> Vec<u8> {
    let cs = d.cluster_size;
    let data_off = (HEADER_SIZE + 4 * nb_bat).next_multiple_of(cs);
    let mut img = vec![0u8; data_off as usize];
    img[f::MAGIC].copy_from_slice(if d.ext_magic { MAGIC_V2 } else { MAGIC_V1 });
    f::VERSION.put(&mut img, 2);
    f::HEADS.put(&mut img, 16); // heads and cylinders: geometry hints only
    let cylinders = (d.size / SECTOR / 16 / (cs / SECTOR)).max(1) as u32;
    f::CYLINDERS.put(&mut img, cylinders);
    f::TRACKS.put(&mut img, (cs / SECTOR) as u32);
    f::NB_BAT_ENTRIES.put(&mut img, nb_bat as u32);
    f::NB_SECTORS.put(&mut img, d.size / SECTOR);
    f::IN_USE.put(&mut img, IN_USE_CLOSED);
    f::DATA_OFF.put(&mut img, (data_off / SECTOR) as u32);
    img
}

/// The Format Extension cluster with one dirty bitmap feature, appended to
/// `img` with the bitmap's data clusters, and ext_off pointing at it.
fn extension(d: &Description, b: &BitmapDesc, img: &mut Vec<u8>) -> Result<(), WriteError> {
    let cs = d.cluster_size;
    if !b.granularity.is_power_of_two() {
        return err(format!("granularity {} is not a power of 2", b.granularity));
    }
    let ext_at = img.len() as u64;
    img.resize(img.len() + cs as usize, 0);
    f::EXT_OFF.put(img, ext_at / SECTOR);
    let sectors = d.size / SECTOR;
    let total_bits = sectors.div_ceil(b.granularity as u64);
    let l1_size = total_bits.div_ceil(cs * 8);
    let feature_size = bitmap_field::L1 as u64 + 8 * l1_size;
    // The extension header, this feature, and the end-of-features header.
    let needed = (ext_field::FEATURES + 2 * feature_field::DATA) as u64 + feature_size;
    if needed > cs {
        return err("the bitmap's L1 table does not fit in the extension cluster");
    }
    let l1 = bitmap_l1(b, cs, total_bits, img)?;
    let e = ext_at as usize;
    ext_field::MAGIC.put_at(img, e, EXT_MAGIC);
    let feature = e + ext_field::FEATURES;
    feature_field::MAGIC.put_at(img, feature, FEATURE_DIRTY_BITMAP);
    feature_field::DATA_SIZE.put_at(img, feature, feature_size as u32);
    let data = feature + feature_field::DATA;
    bitmap_field::SIZE.put_at(img, data, sectors);
    let id = data + bitmap_field::ID.start..data + bitmap_field::ID.end;
    img[id].copy_from_slice(&b.id);
    bitmap_field::GRANULARITY.put_at(img, data, b.granularity);
    bitmap_field::L1_SIZE.put_at(img, data, l1_size as u32);
    for (i, v) in l1.iter().enumerate() {
        put_le64(img, data + bitmap_field::L1 + 8 * i, *v);
    }
    // The end-of-features entry is the zeros that follow; then the checksum.
    super::ext::seal(&mut img[e..e + cs as usize]);
    Ok(())
}

/// The bitmap's L1 table, one entry per cluster of bits: 0 clean, 1 all
/// dirty, else the sector of a data cluster of bits appended to `img`.
fn bitmap_l1(
    b: &BitmapDesc,
    cs: u64,
    total_bits: u64,
    img: &mut Vec<u8>,
) -> Result<Vec<u64>, WriteError> {
    let bits_per_cluster = cs * 8;
    let mut l1 = vec![0u64; total_bits.div_ceil(bits_per_cluster) as usize];
    let mut chunks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for &bit in &b.dirty_bits {
        if bit >= total_bits {
            return err(format!("dirty bit {bit} lies past the disk"));
        }
        let c = chunks
            .entry(bit / bits_per_cluster)
            .or_insert_with(|| vec![0u8; cs as usize]);
        let i = bit % bits_per_cluster;
        c[(i / 8) as usize] |= 1 << (i % 8);
    }
    for (i, bytes) in chunks {
        let bits_here = bits_per_cluster.min(total_bits - i * bits_per_cluster);
        let all = (0..bits_here).all(|k| bytes[(k / 8) as usize] >> (k % 8) & 1 == 1);
        l1[i as usize] = if all {
            1
        } else {
            let at = img.len() as u64;
            img.extend_from_slice(&bytes);
            at / SECTOR
        };
    }
    Ok(l1)
}

/// Valid, bounded descriptions for structure-aware fuzzing (see
/// [`crate::structured`]): both magics, 512 B to 16 KiB clusters, up to
/// 256 guest clusters (the last one partial), and with the extension magic
/// a dirty bitmap of any power-of-2 granularity.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Description {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        use crate::structured::{
            allocate, contents, guest_size, MAX_GUEST_BYTES, MAX_GUEST_CLUSTERS,
        };
        let cs = *u.choose(&[512u64, 1024, 4096, 16384])?;
        let ext_magic = u.arbitrary()?;
        let (size, n) = guest_size(u, cs, MAX_GUEST_CLUSTERS.min(MAX_GUEST_BYTES / cs))?;
        let mut d = Description::new(size, cs, ext_magic);
        d.clusters = allocate(u, n, |u| contents(u, cs as usize))?;
        if ext_magic && u.arbitrary()? {
            let granularity = 1u32 << u.int_in_range(0..=7)?;
            let total = (size / SECTOR).div_ceil(granularity as u64);
            let mut dirty_bits = Vec::new();
            for _ in 0..u.int_in_range(0..=24)? {
                dirty_bits.push(u.int_in_range(0..=total - 1)?);
            }
            d.bitmap = Some(BitmapDesc {
                id: u.arbitrary()?,
                granularity,
                dirty_bits,
            });
        }
        Ok(d)
    }
}
