//! qcow2-rs: the image is read from memory through our own `Qcow2IoOps`
//! (the crate's IO-engine trait), its async calls driven by a plain
//! `block_on`: the memory IO never waits, so no runtime is needed.
//!
//! The header's backing file name is ignored (qcow2-rs's own setup helpers
//! would open it): unallocated clusters read as zeros, as ours with
//! `Backing::Ignore`. qcow2-rs never opens an external data file.

use crate::backing::BackingFile;
use crate::Bounds;
use qcow2_rs::dev::Qcow2DevParams;
use qcow2_rs::error::Qcow2Result;
use qcow2_rs::ops::Qcow2IoOps;
use std::path::Path;

/// The image's bytes as qcow2-rs's IO engine: reads as `pread` does (short
/// at the end of the file), writes refused (the device is read-only).
struct MemIo(Vec<u8>);

impl Qcow2IoOps for MemIo {
    async fn read_to(&self, offset: u64, buf: &mut [u8]) -> Qcow2Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let avail = self.0.get(start..).unwrap_or(&[]);
        let n = avail.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), avail.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }
    async fn write_from(&self, offset: u64, _buf: &[u8]) -> Qcow2Result<()> {
        Err(format!("write at {offset:#x} to a read-only image").into())
    }
    async fn fallocate(&self, offset: u64, _len: usize, _flags: u32) -> Qcow2Result<()> {
        Err(format!("fallocate at {offset:#x} on a read-only image").into())
    }
    async fn fsync(&self, _offset: u64, _len: usize, _flags: u32) -> Qcow2Result<()> {
        Ok(())
    }
}

/// The block size qcow2-rs is set up with (`bs_bits` 9): every read's
/// offset and length must be a multiple of it.
const BLOCK: usize = 512;

/// Reads the whole virtual disk of the qcow2 image `data`.
pub fn read(data: &[u8], bounds: &Bounds) -> Result<Vec<u8>, String> {
    crate::precheck(data, bounds)?;
    futures::executor::block_on(read_async(data.to_vec(), None, bounds))
}

/// Reads the whole virtual disk of the qcow2 image at `path`, no backing
/// image used.
pub fn read_path(path: &Path, bounds: &Bounds) -> Result<Vec<u8>, String> {
    read_path_with(path, None, bounds)
}

/// Reads the whole virtual disk of the qcow2 image at `path` over the
/// backing file `backing`: qcow2-rs's backing device is a qcow2 device of
/// the same IO type, so a raw backing file is refused (not supported).
pub fn read_path_with(
    path: &Path,
    backing: Option<&BackingFile>,
    bounds: &Bounds,
) -> Result<Vec<u8>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::precheck(&data, bounds)?;
    let base = match backing {
        None => None,
        Some(BackingFile::Qcow2(p)) => {
            let b = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            crate::precheck(&b, bounds)?;
            Some(b)
        }
        Some(BackingFile::Raw(p)) => {
            return Err(format!(
                "backing {}: qcow2-rs 0.1.6 opens only qcow2 backing files",
                p.display()
            ))
        }
    };
    futures::executor::block_on(read_async(data, base, bounds))
}

async fn read_async(
    data: Vec<u8>,
    backing: Option<Vec<u8>>,
    bounds: &Bounds,
) -> Result<Vec<u8>, String> {
    // Read-only, buffered, default caches: what `rqcow2` uses to read.
    let params = Qcow2DevParams::new(9, None, None, true, false);
    let (mut dev, _backing_name) =
        qcow2_rs::utils::qcow2_alloc_dev(Path::new("memory.qcow2"), MemIo(data), &params)
            .await
            .map_err(|e| format!("open: {e:?}"))?;
    if let Some(b) = backing {
        // As qcow2-rs's own setup helpers mark a backing device.
        let p = params.clone();
        p.mark_backing_dev(Some(true));
        let (bdev, _) = qcow2_rs::utils::qcow2_alloc_dev(Path::new("backing.qcow2"), MemIo(b), &p)
            .await
            .map_err(|e| format!("backing: {e:?}"))?;
        dev.set_backing_dev(Box::new(bdev));
    }
    dev.qcow2_prep_io()
        .await
        .map_err(|e| format!("open: {e:?}"))?;
    let size = dev.info.virtual_size();
    if size > bounds.max_virtual_size {
        return Err(format!("virtual size {size} is over the adapter's cap"));
    }
    let len = usize::try_from(size).map_err(|_| format!("virtual size {size} does not fit"))?;
    let mut out = vec![0u8; len];
    let chunk = 64 << 10;
    let mut at = 0usize;
    // A block-aligned scratch buffer for the last, partial block: a guest
    // reading a disk whose size is not a multiple of 512 reads it so.
    let mut scratch = Vec::new();
    while at < len {
        let want = (len - at).min(chunk);
        let rounded = want.div_ceil(BLOCK) * BLOCK;
        scratch.clear();
        scratch.resize(rounded, 0);
        let n = dev
            .read_at(&mut scratch, at as u64)
            .await
            .map_err(|e| format!("read at {at:#x}: {e:?}"))?;
        if n < want {
            return Err(format!("short read at {at:#x}: {n} of {want} bytes"));
        }
        let (Some(dst), Some(src)) = (out.get_mut(at..at + want), scratch.get(..want)) else {
            return Err("read buffer bounds".into());
        };
        dst.copy_from_slice(src);
        at += want;
    }
    Ok(out)
}
