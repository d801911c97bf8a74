//! `qconform check -r leaks|all --repair-out NEW IMAGE`: a repaired copy.
//!
//! qemu-img repairs in place; a repair that fails half way there loses
//! data. qconform computes the repair from IMAGE (a plan of writes, see
//! qconform_core::repair), copies IMAGE to a temporary file next to NEW,
//! applies the plan to the copy, syncs it and renames it to NEW (never
//! over an existing file): IMAGE is only read, and NEW is either absent or
//! whole.

use crate::check::{check_file, human};
use crate::{out, outln, Output};
use qconform_core::formats::{self, Format};
use qconform_core::repair::{Mode, Patch, Plan};
use qconform_core::source::FileSource;
use qconform_core::Limits;
use std::path::Path;

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Repair {
    /// Leaked clusters: qcow2 refcounts lowered to the references, leaked
    /// space cut off a Parallels file (QED: as `all`, as in qemu-img).
    Leaks,
    /// Also corruptions qemu-img repairs: qcow2 refcounts rebuilt and
    /// COPIED flags fixed; QED invalid offsets cleared and NEED_CHECK
    /// cleared; Parallels BAT entries outside the file cleared, shared
    /// clusters copied, in_use cleared.
    All,
}

impl From<Repair> for Mode {
    fn from(r: Repair) -> Self {
        match r {
            Repair::Leaks => Mode::Leaks,
            Repair::All => Mode::All,
        }
    }
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
    match write_repaired(mode.into(), image, new) {
        Err(e) => {
            eprintln!("qconform: {}: {e}", image.display());
            1
        }
        Ok(plan) => {
            let report = check_file(new, None, &Limits::default());
            match output {
                Output::Human => {
                    outln!("{}: repaired into {}:", image.display(), new.display());
                    if plan.fixed.is_empty() {
                        outln!("  nothing to repair (an identical copy)");
                    }
                    for f in &plan.fixed {
                        outln!("  {f}");
                    }
                    out!("{}", human(&report));
                }
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "repaired": {
                            "from": image.display().to_string(),
                            "fixed": plan.fixed,
                        },
                        "check": report,
                    }))
                    .unwrap_or_default()
                ),
            }
            report.exit_code(strict)
        }
    }
}

/// The repair of `src` under its format's rules.
fn plan(src: &FileSource, name: &str, mode: Mode) -> Result<Plan, String> {
    use qconform_core::{parallels, qcow2, qed};
    let limits = Limits::default();
    let plan = match formats::probe(src).map(|f| f.format()) {
        Some(Format::Qcow2) => qcow2::repair::plan(src, name, &limits, mode),
        Some(Format::Qed) => qed::repair::plan(src, name, &limits, mode),
        Some(Format::Parallels) => parallels::repair::plan(src, name, &limits, mode),
        None => return Err("not an image of a format qconform repairs".into()),
    };
    plan.map_err(|e| e.to_string())
}

/// The copy with the plan applied, renamed to `new`; the plan.
fn write_repaired(mode: Mode, image: &Path, new: &Path) -> Result<Plan, String> {
    use std::os::unix::fs::FileExt;
    if new.exists() {
        return Err(format!(
            "{} exists: a repair never overwrites a file",
            new.display()
        ));
    }
    let src = FileSource::open(image).map_err(|e| e.to_string())?;
    let plan = plan(&src, &image.display().to_string(), mode)?;
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
    let orig = std::fs::File::open(image).map_err(|e| e.to_string())?;
    for (at, patch) in &plan.writes {
        let at = *at;
        let err = |e: std::io::Error| format!("writing the copy at {at:#x}: {e}");
        match patch {
            Patch::Bytes(bytes) => tmp.as_file().write_all_at(bytes, at).map_err(err)?,
            // A cluster copied a piece at a time: memory stays bounded
            // whatever the cluster size.
            Patch::Copy { from, len } => {
                let mut buf = vec![0u8; (*len).min(1 << 20) as usize];
                let mut done = 0u64;
                while done < *len {
                    let n = (*len - done).min(buf.len() as u64) as usize;
                    let piece = buf.get_mut(..n).unwrap_or_default();
                    orig.read_exact_at(piece, from + done).map_err(err)?;
                    tmp.as_file().write_all_at(piece, at + done).map_err(err)?;
                    done += n as u64;
                }
            }
        }
    }
    if let Some(len) = plan.set_len {
        tmp.as_file()
            .set_len(len)
            .map_err(|e| format!("setting the copy's length to {len}: {e}"))?;
    }
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist_noclobber(new)
        .map_err(|e| format!("{}: {}", new.display(), e.error))?;
    Ok(plan)
}
