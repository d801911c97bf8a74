//! The path policy: which files the names inside an image (backing file,
//! external data file) may reach. This is the one place that opens them.
//!
//! Names inside an image are untrusted input. By default ([`Backing::Confined`])
//! a name is followed only when it resolves, after `..` and symlinks, to a
//! regular file inside the top image's directory; [`Backing::Follow`] also
//! follows absolute names (local libvirt chains use them); [`Backing::Ignore`]
//! opens no other file at all. Protocol names (`json:`, `nbd:`, any
//! `proto:`) and anything that is not a regular file are refused under every
//! policy, before the target is opened (stat and realpath never block; an
//! open of a FIFO would).
//!
//! Names are resolved as QEMU 10.0.2 resolves them: a backing file name
//! relative to the directory of the image that names it
//! (bdrv_get_full_backing_filename), an external data file name relative to
//! the current working directory (qcow2 opens it with bdrv_open_child, which
//! takes the name as given; conformance/tests/paths.rs shows qemu-io doing so).

use super::{ReadError, Resolved, Resolver};
use crate::report::Report;
use crate::rules::{policy as rule, Rule};
use crate::source::{file_kind, FileSource};
use std::path::{Component, Path, PathBuf};

/// Which files the names inside an image may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backing {
    /// Relative names resolving, after symlinks, inside the image's directory.
    #[default]
    Confined,
    /// Also absolute names; still only regular files, never protocols.
    Follow,
    /// No backing file and no data file is opened.
    Ignore,
}

/// What a name inside an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The image's backing file (the qcow2 and QED backing file name).
    BackingFile,
    /// qcow2's external data file (header extension 0x44415441).
    DataFile,
}

impl Role {
    /// The role as messages name it ("backing file", "external data file").
    pub fn label(self) -> &'static str {
        match self {
            Role::BackingFile => "backing file",
            Role::DataFile => "external data file",
        }
    }
}

/// Why a name is refused: the rule and what was seen.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The path-policy rule the name breaks.
    pub rule: &'static Rule,
    /// What was seen: the name and why the rule refuses it.
    pub detail: String,
}

fn refuse(rule: &'static Rule, detail: String) -> Refusal {
    Refusal { rule, detail }
}

/// QEMU's path_has_protocol: a colon before any slash makes the name a
/// protocol (`json:{...}`, `file:x`, `nbd:host:port`, `foo:bar`).
pub fn has_protocol(name: &str) -> bool {
    name.find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':')
}

/// Judges a name by its text alone (nothing is opened or looked up):
/// malformed, protocol, absolute (unless `policy` is Follow), or `..`
/// leading out of the directory it is resolved in.
pub fn judge_name(name: &str, role: Role, policy: Backing) -> Result<(), Refusal> {
    let what = role.label();
    if name.is_empty() || name.contains('\0') || name.contains('\u{fffd}') {
        return Err(refuse(
            &rule::NAME_MALFORMED,
            format!("{what} name {name:?} is empty, has a NUL byte or is not UTF-8"),
        ));
    }
    if has_protocol(name) {
        return Err(refuse(
            &rule::NAME_PROTOCOL,
            format!("{what} name {name:?} is a protocol name, never followed"),
        ));
    }
    if Path::new(name).is_absolute() {
        return match policy {
            Backing::Follow => Ok(()),
            _ => Err(refuse(
                &rule::NAME_ABSOLUTE,
                format!("{what} name {name:?} is absolute (followed only with --backing follow)"),
            )),
        };
    }
    let mut depth: i64 = 0;
    for c in Path::new(name).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 && policy != Backing::Follow {
            return Err(refuse(
                &rule::NAME_ESCAPES,
                format!("{what} name {name:?} leaves the image's directory through .."),
            ));
        }
    }
    Ok(())
}

/// Where a name resolves on the file system, judged without opening it:
/// confined to `root` unless `policy` is Follow, and a regular file.
/// `Ok(None)` when nothing exists there.
fn locate(
    path: &Path,
    name: &str,
    role: Role,
    root: &Path,
    policy: Backing,
) -> Result<Option<PathBuf>, Refusal> {
    let what = role.label();
    // realpath: lstat and readlink of each component, never an open.
    let Ok(canon) = std::fs::canonicalize(path) else {
        return Ok(None);
    };
    if policy != Backing::Follow && !canon.starts_with(root) {
        return Err(refuse(
            &rule::NAME_ESCAPES,
            format!(
                "{what} name {name:?} resolves to {}, outside the image's directory {}",
                canon.display(),
                root.display()
            ),
        ));
    }
    match std::fs::metadata(&canon) {
        Ok(m) if !m.is_file() => Err(refuse(
            &rule::NAME_SPECIAL,
            format!(
                "{what} name {name:?} resolves to {}, a {}, not a regular file",
                canon.display(),
                file_kind(&m)
            ),
        )),
        Ok(_) => Ok(Some(canon)),
        Err(_) => Ok(None),
    }
}

/// Opens the files an image names from the file system, under a policy.
#[derive(Debug, Clone)]
pub struct FsResolver {
    /// Which names may be opened at all.
    pub policy: Backing,
    /// The top image's directory (canonical): the confinement root.
    pub root: PathBuf,
    /// The directory of the image whose names are resolved (canonical).
    pub dir: PathBuf,
    /// Where data file names are resolved (QEMU: the working directory).
    pub data_dir: PathBuf,
    /// Whether file holes count (see [`FileSource::open_with`]).
    pub holes: bool,
}

impl FsResolver {
    /// A resolver for the names inside the image at `image` (already
    /// opened). `data_dir` is where data file names are resolved: None for
    /// the working directory, as QEMU does.
    pub fn for_image(
        image: &Path,
        policy: Backing,
        data_dir: Option<&Path>,
        holes: bool,
    ) -> std::io::Result<FsResolver> {
        let canon = std::fs::canonicalize(image)?;
        let dir = canon.parent().map(Path::to_path_buf).unwrap_or_default();
        let data_dir = match data_dir {
            Some(d) => std::fs::canonicalize(d)?,
            None => std::env::current_dir()?,
        };
        Ok(FsResolver {
            policy,
            root: dir.clone(),
            dir,
            data_dir,
            holes,
        })
    }

    /// Judges `name` as this resolver would open it, without opening it.
    pub fn judge(&self, name: &str, role: Role) -> Result<Option<PathBuf>, Refusal> {
        judge_name(name, role, self.policy)?;
        let base = match role {
            Role::BackingFile => &self.dir,
            Role::DataFile => &self.data_dir,
        };
        locate(&base.join(name), name, role, &self.root, self.policy)
    }
}

impl Resolver for FsResolver {
    fn open(&self, name: &str, role: Role) -> Result<Resolved, ReadError> {
        if self.policy == Backing::Ignore {
            return Err(ReadError::rule(
                &rule::NOT_OPENED,
                None,
                format!(
                    "{} {name:?} is not opened with --backing ignore",
                    role.label()
                ),
            ));
        }
        let canon = self
            .judge(name, role)
            .map_err(|r| ReadError::rule(r.rule, None, r.detail))?
            .ok_or_else(|| ReadError::Open(format!("{} {name:?}: no such file", role.label())))?;
        // open_regular checks the type again on the open descriptor.
        let source = FileSource::open_with(&canon, self.holes)
            .map_err(|e| ReadError::Open(format!("{} {}: {e}", role.label(), canon.display())))?;
        let mut below = self.clone();
        below.dir = canon.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Resolved {
            source: Box::new(source),
            key: canon.display().to_string(),
            resolver: Box::new(below),
        })
    }
}

/// Opens the top image: a regular file, or a finding of `input.regular-file`.
pub fn open_image(path: &Path, holes: bool) -> Result<FileSource, ReadError> {
    FileSource::open_with(path, holes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            ReadError::rule(
                &rule::REGULAR_FILE,
                None,
                format!("{}: {e}", path.display()),
            )
        } else {
            ReadError::Open(format!("{}: {e}", path.display()))
        }
    })
}

/// A name an image carries, and where in the file it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// What the name is for.
    pub role: Role,
    /// The name as stored in the image (raw, unvalidated).
    pub name: String,
    /// Byte offset in the image file where the name is stored.
    pub offset: u64,
}

/// Reports every name the default policy would refuse, under its rule, and
/// opens none of them: what `check` tells a scanner about an image's names.
pub fn audit(report: &mut Report, image: &Path, names: &[NamedFile]) {
    let resolver = FsResolver::for_image(image, Backing::Confined, None, true).ok();
    for n in names {
        let judged = match &resolver {
            Some(r) => r.judge(&n.name, n.role).map(|_| ()),
            None => judge_name(&n.name, n.role, Backing::Confined),
        };
        if let Err(r) = judged {
            report.add(r.rule, Some(n.offset), r.detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_judged_as_qemu_would_open_them() {
        let ok = |n: &str, p| judge_name(n, Role::BackingFile, p).is_ok();
        let rule_of = |n: &str, p| judge_name(n, Role::BackingFile, p).err().map(|r| r.rule.id);
        assert!(ok("base.qcow2", Backing::Confined));
        assert!(ok("sub/../base.qcow2", Backing::Confined));
        assert!(ok("./a:b", Backing::Confined)); // a slash before the colon: a file
        assert_eq!(
            rule_of("../../etc/passwd", Backing::Confined),
            Some("policy.name.escapes")
        );
        assert_eq!(
            rule_of("/etc/passwd", Backing::Confined),
            Some("policy.name.absolute")
        );
        assert!(ok("/etc/passwd", Backing::Follow));
        for p in [
            "json:{\"file\":{}}",
            "file:/etc/passwd",
            "nbd:localhost:10809",
            "x:y",
        ] {
            assert_eq!(
                rule_of(p, Backing::Follow),
                Some("policy.name.protocol"),
                "{p}"
            );
        }
        assert_eq!(rule_of("", Backing::Follow), Some("policy.name.malformed"));
        assert_eq!(
            rule_of("a\0b", Backing::Follow),
            Some("policy.name.malformed")
        );
    }
}
