//! Everything the writer produces must pass `qemu-img check` (exit 0) and
//! read back through `qemu-img convert -O raw` exactly as described: a
//! generated matrix of descriptions (proptest; regressions are committed).

use proptest::prelude::*;
use qconform_core::qcow2::write::{write, Description};
use std::process::Command;

#[allow(dead_code)] // SHAPES: this test has its own list
use qconform_testkit::descriptions;

/// The writer's shapes, plus 2 MiB clusters.
const SHAPES: &[(u32, bool)] = &[
    (9, false),
    (12, false),
    (16, false),
    (21, false),
    (14, true),
    (16, true),
];

fn description() -> impl Strategy<Value = Description> {
    descriptions::description(16, SHAPES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn qemu_img_accepts_and_reads_what_the_writer_writes(d in description()) {
        let dir = tempfile::tempdir().unwrap();
        let mut d = d;
        // Half of the images without a data file get a backing file: an
        // all-zero raw image (so unallocated clusters still read as zeros)
        // named in the header, with the backing format extension.
        if d.data_file.is_none() && d.clusters.len() % 2 == 1 {
            std::fs::write(dir.path().join("base.raw"), vec![0u8; d.size as usize]).unwrap();
            d.backing = Some(("base.raw".into(), Some("raw".into())));
        }
        let w = write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        std::fs::write(dir.path().join("img.qcow2"), &w.image).unwrap();
        if let Some(df) = &w.data_file {
            std::fs::write(dir.path().join("img.data"), df).unwrap();
        }
        let check = Command::new("qemu-img").args(["check", "-f", "qcow2", "--output=json", "img.qcow2"]).current_dir(dir.path()).output()
            .expect("qemu-img must be installed");
        prop_assert_eq!(check.status.code(), Some(0), "qemu-img check: {}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
        let conv = Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw", "img.qcow2", "out.raw"]).current_dir(dir.path()).output().unwrap();
        prop_assert!(conv.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&conv.stderr));
        let raw = std::fs::read(dir.path().join("out.raw")).unwrap();
        prop_assert!(raw == d.guest_bytes(), "qemu-img reads other bytes than the description");
        for s in &d.snapshots {
            let conv = Command::new("qemu-img").args(["convert", "-f", "qcow2", "-l", &format!("snapshot.name={s}"), "-O", "raw", "img.qcow2", "snap.raw"]).current_dir(dir.path()).output().unwrap();
            prop_assert!(conv.status.success(), "qemu-img convert -l {}: {}", s, String::from_utf8_lossy(&conv.stderr));
            prop_assert!(std::fs::read(dir.path().join("snap.raw")).unwrap() == d.guest_bytes(), "snapshot {} differs", s);
        }
        if !d.bitmaps.is_empty() {
            let info = Command::new("qemu-img").args(["info", "--output=json", "img.qcow2"]).current_dir(dir.path()).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            let n = v["format-specific"]["data"]["bitmaps"].as_array().map_or(0, |a| a.len());
            prop_assert_eq!(n, d.bitmaps.len(), "qemu-img info sees other bitmaps: {}", v);
        }
    }
}
