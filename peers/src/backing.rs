//! The backing file of an image on disk, for the adapter binary: found by
//! qconform's own path policy (`FsResolver`, `Backing::Confined`: relative
//! names inside the image's directory, no protocols, no absolute names) and
//! probed (qcow2 magic, else raw), as `qconform cat` would follow it. Only
//! one level is followed: a backing file's own backing file is not opened.

use qconform_core::disk::{Backing, FsResolver, Role};
use std::path::{Path, PathBuf};

/// A backing file the policy lets us open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingFile {
    Raw(PathBuf),
    Qcow2(PathBuf),
}

/// The backing file `image` names, if it names one the policy allows and
/// that exists; an error when it names one the policy refuses.
pub fn locate(image: &Path, data: &[u8]) -> Result<Option<BackingFile>, String> {
    let names = qconform_core::disk::named_files(&data);
    let Some(name) = names.iter().find(|n| n.role == Role::BackingFile) else {
        return Ok(None);
    };
    let resolver = FsResolver::for_image(image, Backing::Confined, None, true)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    let path = match resolver.judge(&name.name, Role::BackingFile) {
        Ok(Some(p)) => p,
        // Named, allowed, but not there: unallocated clusters read as zeros
        // (the peer gets no backing image), as in the in-process bodies.
        Ok(None) => return Ok(None),
        Err(r) => {
            return Err(format!(
                "backing file {:?} refused: {}",
                name.name, r.rule.id
            ))
        }
    };
    let mut magic = [0u8; 4];
    let is_qcow2 = {
        use std::io::Read;
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == *b"QFI\xfb"
    };
    Ok(Some(if is_qcow2 {
        BackingFile::Qcow2(path)
    } else {
        BackingFile::Raw(path)
    }))
}
