//! imago (sync build): the image is written to a temporary file and opened
//! through imago's own `File` storage, as a user of the crate opens one.
//!
//! No backing image is used (`backing(None)`: unallocated clusters read as
//! zeros, as our reader reads them with `Backing::Ignore`) and anything else
//! the image names is denied by `DenyImplicitOpenGate`: a mutated image
//! never makes imago open a file of this machine.

use crate::backing::BackingFile;
use crate::Bounds;
use imago::file::File;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};
use std::io::Write;
use std::path::Path;

/// Reads the whole virtual disk of the qcow2 image `data`.
pub fn read(data: &[u8], bounds: &Bounds) -> Result<Vec<u8>, String> {
    crate::precheck(data, bounds)?;
    let mut tmp = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    tmp.write_all(data)
        .map_err(|e| format!("temporary file: {e}"))?;
    read_path(tmp.path(), bounds)
}

/// Reads the whole virtual disk of the qcow2 image at `path`, no backing
/// image used.
pub fn read_path(path: &Path, bounds: &Bounds) -> Result<Vec<u8>, String> {
    read_path_with(path, None, bounds)
}

/// Opens a file read-only through imago's File storage.
fn open_file(path: &Path) -> Result<File, String> {
    File::open(StorageOpenOptions::new().filename(path).write(false))
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// Opens `b` as imago's backing image (read-only; a qcow2 backing file's
/// own backing file is not used).
fn open_backing(b: &BackingFile) -> Result<FormatAccess<File>, String> {
    Ok(match b {
        BackingFile::Raw(p) => FormatAccess::new(
            Raw::builder(open_file(p)?)
                .write(false)
                .open(DenyImplicitOpenGate::default())
                .map_err(|e| format!("backing {}: {e}", p.display()))?,
        ),
        BackingFile::Qcow2(p) => FormatAccess::new(
            Qcow2::<File>::builder(open_file(p)?)
                .backing(None)
                .write(false)
                .open(DenyImplicitOpenGate::default())
                .map_err(|e| format!("backing {}: {e}", p.display()))?,
        ),
    })
}

/// Reads the whole virtual disk of the qcow2 image at `path` over the
/// backing file `backing` (None: unallocated clusters read as zeros).
pub fn read_path_with(
    path: &Path,
    backing: Option<&BackingFile>,
    bounds: &Bounds,
) -> Result<Vec<u8>, String> {
    // imago reads the header itself; the cap needs only its first bytes.
    let mut head = [0u8; 64];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.read(&mut head)
            .map_err(|e| format!("{}: {e}", path.display()))?
    };
    crate::precheck(head.get(..n).unwrap_or(&[]), bounds)?;
    let file = open_file(path)?;
    let backing = backing.map(open_backing).transpose()?;
    let qcow2 = Qcow2::<File>::builder(file)
        .backing(backing)
        .write(false)
        .open(DenyImplicitOpenGate::default())
        .map_err(|e| format!("open: {e}"))?;
    let disk = FormatAccess::new(qcow2);
    let size = disk.size();
    if size > bounds.max_virtual_size {
        return Err(format!("virtual size {size} is over the adapter's cap"));
    }
    crate::read_all(size, 1 << 20, |at, buf| {
        disk.read(buf, at)
            .map_err(|e| format!("read at {at:#x}: {e}"))
    })
}
