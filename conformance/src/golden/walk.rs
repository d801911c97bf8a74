//! Which files of the PATHs given to `qconform golden` are images: files
//! named directly, and under folders (recursively) every regular file whose
//! content a registered format recognises, whatever its name. Anything that
//! is not a regular file (FIFO, socket, device) is skipped from its
//! metadata, never opened; symbolic links to files are followed, links to
//! folders are not (no cycles).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An image found, under the key its golden record is filed by.
#[derive(Debug, Clone)]
pub struct Found {
    /// The path relative to the folder given (a file given: its name), '/'-separated.
    pub key: String,
    pub path: PathBuf,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Sorted by key.
    pub images: Vec<Found>,
    /// Files skipped, and why (printed, not an error).
    pub skipped: Vec<String>,
    /// PATHs that could not be read, and keys two PATHs share: the command cannot run.
    pub errors: Vec<String>,
}

/// Folders deeper than this are not entered (a file system is finite, but
/// a hostile tree should not cost unbounded stack).
const MAX_DEPTH: usize = 64;

/// Finds the images of `paths`, leaving out the folder `exclude` (the
/// golden folder, when it lies inside one of them).
pub fn images(paths: &[PathBuf], exclude: &Path) -> Walk {
    let exclude = exclude.canonicalize().ok();
    let mut w = Walk::default();
    let mut by_key: BTreeMap<String, PathBuf> = BTreeMap::new();
    for p in paths {
        let mut found = Vec::new();
        match std::fs::metadata(p) {
            Err(e) => w.errors.push(format!("{}: {e}", p.display())),
            Ok(m) if m.is_dir() => folder(p, "", 0, exclude.as_deref(), &mut found, &mut w),
            Ok(m) if m.is_file() => found.push(Found {
                key: p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                path: p.clone(),
            }),
            Ok(_) => w
                .skipped
                .push(format!("{}: not a regular file, not opened", p.display())),
        }
        for f in found {
            if let Some(other) = by_key.get(&f.key) {
                w.errors.push(format!(
                    "{} and {} would share the golden record {:?}; give them in separate runs",
                    other.display(),
                    f.path.display(),
                    f.key
                ));
            } else {
                by_key.insert(f.key.clone(), f.path);
            }
        }
    }
    w.images = by_key
        .into_iter()
        .map(|(key, path)| Found { key, path })
        .collect();
    w
}

fn folder(
    dir: &Path,
    prefix: &str,
    depth: usize,
    exclude: Option<&Path>,
    out: &mut Vec<Found>,
    w: &mut Walk,
) {
    if depth > MAX_DEPTH {
        w.skipped.push(format!(
            "{}: more than {MAX_DEPTH} folders deep, not entered",
            dir.display()
        ));
        return;
    }
    if exclude.is_some() && dir.canonicalize().ok().as_deref() == exclude {
        return;
    }
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().collect(),
        Err(e) => {
            w.errors.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let key = format!("{prefix}{name}");
        let Ok(lm) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = lm.file_type();
        if ft.is_dir() {
            folder(&path, &format!("{key}/"), depth + 1, exclude, out, w);
            continue;
        }
        // A link is judged by what it points to, from metadata only.
        let target = if ft.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {
                    w.skipped.push(format!(
                        "{}: a link to a folder, not followed",
                        path.display()
                    ));
                    continue;
                }
                Ok(m) => m.file_type(),
                Err(e) => {
                    w.skipped.push(format!("{}: {e}", path.display()));
                    continue;
                }
            }
        } else {
            ft
        };
        if !target.is_file() {
            w.skipped.push(format!(
                "{}: not a regular file, not opened",
                path.display()
            ));
        } else if is_image(&path) {
            out.push(Found { key, path });
        } else {
            w.skipped.push(format!(
                "{}: not an image of a format qconform knows",
                path.display()
            ));
        }
    }
}

/// Whether a registered format recognises the file's content.
fn is_image(path: &Path) -> bool {
    qconform_core::source::FileSource::open(path)
        .is_ok_and(|src| qconform_core::formats::probe(&src).is_some())
}
