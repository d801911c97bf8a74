//! `qconform check -r leaks --repair-out NEW IMAGE`: a repaired copy.
//!
//! qemu-img repairs in place; a repair that fails half way there loses
//! data. qconform copies IMAGE to a temporary file next to NEW, writes the
//! fixes into the copy, syncs it and renames it to NEW (never over an
//! existing file): IMAGE is only read, and NEW is either absent or whole.

use crate::check::{check_file, human};
use crate::{out, outln, Output};
use qconform_core::formats::{self, Format};
use qconform_core::qcow2::repair::leak_fixes;
use qconform_core::source::FileSource;
use qconform_core::Limits;
use std::path::Path;

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Repair {
    /// Leaked clusters (qcow2): refcounts lowered to the references.
    Leaks,
}

/// Writes the repaired copy of `image` to `new`; the exit code is that of
/// checking the copy (0 when the repair left it clean), 1 when no copy
/// could be written.
pub fn run(
    mode: Repair,
    images: &[std::path::PathBuf],
    new: &Path,
    output: Output,
    strict: bool,
) -> i32 {
    let [image] = images else {
        eprintln!(
            "qconform: -r repairs one image at a time ({} given)",
            images.len()
        );
        return 1;
    };
    match write_repaired(mode, image, new) {
        Err(e) => {
            eprintln!("qconform: {}: {e}", image.display());
            1
        }
        Ok(n) => {
            let report = check_file(new, None, &Limits::default());
            match output {
                Output::Human => {
                    outln!(
                        "{}: {n} leaked clusters repaired into {}",
                        image.display(),
                        new.display()
                    );
                    out!("{}", human(&report));
                }
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "repaired": { "leaks": n, "from": image.display().to_string() },
                        "check": report,
                    }))
                    .unwrap_or_default()
                ),
            }
            report.exit_code(strict)
        }
    }
}

/// The copy with the fixes applied, renamed to `new`; the leaks fixed.
fn write_repaired(mode: Repair, image: &Path, new: &Path) -> Result<usize, String> {
    use std::os::unix::fs::FileExt;
    let Repair::Leaks = mode;
    if new.exists() {
        return Err(format!(
            "{} exists: a repair never overwrites a file",
            new.display()
        ));
    }
    let src = FileSource::open(image).map_err(|e| e.to_string())?;
    if formats::probe(&src).map(|f| f.format()) != Some(Format::Qcow2) {
        return Err("-r leaks repairs qcow2 images only".into());
    }
    let name = image.display().to_string();
    let fixes = leak_fixes(&src, &name, &Limits::default()).map_err(|e| e.to_string())?;
    let dir = new
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // std::fs::copy uses copy_file_range, which keeps holes where the
    // filesystem can: the copy stays as sparse as the image.
    std::fs::copy(image, tmp.path())
        .map_err(|e| format!("copying to {}: {e}", tmp.path().display()))?;
    for (at, bytes) in &fixes.patches {
        tmp.as_file()
            .write_all_at(bytes, *at)
            .map_err(|e| format!("writing the copy at {at:#x}: {e}"))?;
    }
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist_noclobber(new)
        .map_err(|e| format!("{}: {}", new.display(), e.error))?;
    Ok(fixes.leaks.len())
}
