//! `qconform cat` and `map` of an image against `qemu-img convert -O raw`
//! and `qemu-img map --output=json`, shared by the QED, Parallels and
//! differential tests.

use std::path::Path;
use std::process::Command;

/// What qconform and qemu-img read from `file` (format `fmt`).
pub struct Reads {
    /// `qconform cat` (None if it failed, with its stderr in `cat_error`).
    pub ours: Option<Vec<u8>>,
    pub cat_error: String,
    pub qemu: Vec<u8>,
    pub our_map: serde_json::Value,
    pub qemu_map: serde_json::Value,
}

impl Reads {
    /// Why they differ, if they do.
    pub fn differences(&self, what: &str) -> Vec<String> {
        let mut bad = Vec::new();
        match &self.ours {
            None => bad.push(format!("{what}: cat failed: {}", self.cat_error)),
            Some(o) if *o != self.qemu => {
                bad.push(format!("{what}: cat differs from qemu-img convert"))
            }
            _ => {}
        }
        if self.our_map != self.qemu_map {
            bad.push(format!(
                "{what}: map differs\n ours {}\n qemu {}",
                self.our_map, self.qemu_map
            ));
        }
        bad
    }
}

pub fn reads(qconform: &Path, fmt: &str, file: &Path) -> Reads {
    reads_with(qconform, fmt, file, &[])
}

/// Like [`reads`], with extra `cat`/`map` arguments (`--force`, say).
pub fn reads_with(qconform: &Path, fmt: &str, file: &Path, extra: &[&str]) -> Reads {
    let dir = tempfile::tempdir().unwrap();
    let cat = crate::tools::output(Command::new(qconform).arg("cat").args(extra).arg(file));
    let file_name = file.display().to_string();
    let qemu = crate::tools::qemu_convert(dir.path(), &file_name, &["-f", fmt]);
    let map = |mut c: Command| -> serde_json::Value {
        serde_json::from_slice(&crate::tools::output(&mut c).stdout).unwrap_or_default()
    };
    let mut ours = Command::new(qconform);
    ours.args(["map", "--output", "json"]).args(extra).arg(file);
    Reads {
        ours: cat.status.success().then_some(cat.stdout),
        cat_error: String::from_utf8_lossy(&cat.stderr).into_owned(),
        qemu,
        our_map: map(ours),
        qemu_map: crate::tools::qemu_map(dir.path(), &file_name, &["-f", fmt]),
    }
}
