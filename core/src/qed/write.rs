//! The QED writer: a spec-valid image from a logical description (spec
//! sections "Header", "Tables", "Zero data clusters").
//!
//! Layout, as QEMU lays out a new image: one header cluster (the backing
//! file name right after the 64 header bytes), the L1 table, then for each
//! L1 entry in use its L2 table followed by that table's data clusters in
//! guest order. Every cluster is referenced exactly once; nothing leaks.

use super::header::{
    field as f, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_FIELDS, MAGIC,
    ZERO_CLUSTER,
};
pub use crate::error::WriteError;
use crate::field::put_le64;
use std::collections::BTreeMap;

/// What one guest cluster holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    /// A data cluster (exactly one cluster of bytes).
    Data(Vec<u8>),
    /// A zero cluster (data offset 1): reads as zeros, hides the backing file.
    Zero,
}

/// The logical description of a QED image.
#[derive(Debug, Clone)]
pub struct Description {
    /// Guest size in bytes (a multiple of 512).
    pub size: u64,
    /// Cluster size in bytes (a power of 2 in [4 KiB, 64 MiB]).
    pub cluster_size: u32,
    /// L1 and L2 table size in clusters (a power of 2 in [1, 16]).
    pub table_size: u32,
    /// Guest cluster index -> contents; absent clusters are unallocated.
    pub clusters: BTreeMap<u64, Cluster>,
    /// Backing file name, and whether it is raw (BACKING_FORMAT_NO_PROBE).
    pub backing: Option<(String, bool)>,
    /// Set QED_F_NEED_CHECK (a dirty image).
    pub need_check: bool,
}

impl Description {
    /// An image of `size` bytes with the given cluster and table sizes, no cluster allocated, no backing file.
    pub fn new(size: u64, cluster_size: u32, table_size: u32) -> Description {
        Description {
            size,
            cluster_size,
            table_size,
            clusters: BTreeMap::new(),
            backing: None,
            need_check: false,
        }
    }

    /// The guest's bytes (unallocated: zeros; no backing file is read).
    pub fn guest_bytes(&self) -> Vec<u8> {
        let cs = self.cluster_size as usize;
        let mut out = vec![0u8; self.size as usize];
        for (&k, c) in &self.clusters {
            let at = k as usize * cs;
            if let (Some(dst), Cluster::Data(d)) =
                (out.get_mut(at..(at + cs).min(self.size as usize)), c)
            {
                // A description's clusters are whole (write() refuses others);
                // a short one reads as zeros past its end here.
                let n = dst.len().min(d.len());
                dst[..n].copy_from_slice(&d[..n]);
            }
        }
        out
    }
}

/// Serializes `d` as a QED image (header, backing name, L1, L2 tables, data clusters); an error when `d` is inconsistent.
pub fn write(d: &Description) -> Result<Vec<u8>, WriteError> {
    validate(d)?;
    let cs = d.cluster_size as u64;
    let per_table = d.table_size as u64 * cs / 8;
    let table_bytes = d.table_size as u64 * cs;
    let mut img = header(d)?;
    let l1_at = img.len();
    img.resize(l1_at + table_bytes as usize, 0);
    // L2 tables and data, one L1 entry at a time, in guest order.
    let mut by_table: BTreeMap<u64, Vec<(u64, &Cluster)>> = BTreeMap::new();
    for (&k, c) in &d.clusters {
        by_table.entry(k / per_table).or_default().push((k, c));
    }
    for (i, entries) in by_table {
        let l2_at = img.len() as u64;
        put_le64(&mut img, l1_at + 8 * i as usize, l2_at);
        img.resize(img.len() + table_bytes as usize, 0);
        for (k, c) in entries {
            let entry_at = (l2_at + 8 * (k % per_table)) as usize;
            let value = match c {
                Cluster::Zero => ZERO_CLUSTER,
                Cluster::Data(bytes) => {
                    if bytes.len() as u64 != cs {
                        return err(format!(
                            "cluster {k}: {} bytes, not one cluster",
                            bytes.len()
                        ));
                    }
                    let at = img.len() as u64;
                    img.extend_from_slice(bytes);
                    at
                }
            };
            put_le64(&mut img, entry_at, value);
        }
    }
    Ok(img)
}

fn err<T>(s: String) -> Result<T, WriteError> {
    Err(WriteError(s))
}

/// Refuses descriptions no image QEMU opens can have.
fn validate(d: &Description) -> Result<(), WriteError> {
    let cs = d.cluster_size as u64;
    if !d.cluster_size.is_power_of_two() || !(1 << 12..=1 << 26).contains(&d.cluster_size) {
        return err(format!(
            "cluster size {cs} is not a power of 2 in [4 KiB, 64 MiB]"
        ));
    }
    if !d.table_size.is_power_of_two() || d.table_size > 16 {
        return err(format!(
            "table size {} is not a power of 2 in [1, 16]",
            d.table_size
        ));
    }
    let per_table = d.table_size as u64 * cs / 8;
    if !d.size.is_multiple_of(512) || d.size as u128 > (per_table as u128).pow(2) * cs as u128 {
        return err(format!(
            "size {} is not a multiple of 512 or too large",
            d.size
        ));
    }
    let guest_clusters = d.size.div_ceil(cs);
    if let Some((&k, _)) = d.clusters.range(guest_clusters..).next() {
        return err(format!("cluster {k} lies past the end of the disk"));
    }
    Ok(())
}

/// The header cluster: the fields, the backing file name after them, the
/// L1 table right after the cluster.
fn header(d: &Description) -> Result<Vec<u8>, WriteError> {
    let cs = d.cluster_size as u64;
    let mut features = 0;
    let mut header = vec![0u8; cs as usize];
    header[..4].copy_from_slice(&MAGIC);
    f::CLUSTER_SIZE.put(&mut header, d.cluster_size);
    f::TABLE_SIZE.put(&mut header, d.table_size);
    f::HEADER_SIZE.put(&mut header, 1);
    if let Some((name, raw)) = &d.backing {
        let at = HEADER_FIELDS;
        let Some(dst) = header.get_mut(at..at + name.len()) else {
            return err("the backing file name does not fit in the header cluster".into());
        };
        dst.copy_from_slice(name.as_bytes());
        f::BACKING_FILENAME_OFFSET.put(&mut header, at as u32);
        f::BACKING_FILENAME_SIZE.put(&mut header, name.len() as u32);
        features |= F_BACKING_FILE | if *raw { F_BACKING_FORMAT_NO_PROBE } else { 0 };
    }
    if d.need_check {
        features |= F_NEED_CHECK;
    }
    f::FEATURES.put(&mut header, features);
    f::L1_TABLE_OFFSET.put(&mut header, cs);
    f::IMAGE_SIZE.put(&mut header, d.size);
    Ok(header)
}

/// Valid, bounded descriptions for structure-aware fuzzing (see
/// [`crate::structured`]): 4 or 8 KiB clusters, tables of 1-4 clusters, up
/// to 256 guest clusters (the last one partial), data and zero clusters, a
/// backing file or not; never NEED_CHECK (a clean image does not have it).
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Description {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        use crate::structured::{
            allocate, contents, guest_size, MAX_GUEST_BYTES, MAX_GUEST_CLUSTERS,
        };
        let cluster_size = *u.choose(&[4096u32, 8192])?;
        let table_size = *u.choose(&[1u32, 2, 4])?;
        let cs = cluster_size as u64;
        let (size, n) = guest_size(u, cs, MAX_GUEST_CLUSTERS.min(MAX_GUEST_BYTES / cs))?;
        let mut d = Description::new(size, cluster_size, table_size);
        d.clusters = allocate(u, n, |u| {
            Ok(if u.ratio(1, 4)? {
                Cluster::Zero
            } else {
                Cluster::Data(contents(u, cluster_size as usize)?)
            })
        })?;
        if u.arbitrary()? {
            d.backing = Some(("base.img".into(), u.arbitrary()?));
        }
        Ok(d)
    }
}
