//! Everything the writer produces must pass `qemu-img check` (exit 0) and
//! read back through `qemu-img convert -O raw` exactly as described: a
//! generated matrix of descriptions (proptest; regressions are committed).

use proptest::prelude::*;
use qconform_core::qcow2::write::{write, BitmapDesc, ClusterData, Description};
use std::collections::BTreeMap;
use std::process::Command;

fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            seed.wrapping_add((i / 64) as u8)
                .wrapping_mul(if i % 3 == 0 { 1 } else { 7 })
        })
        .collect()
}

fn description() -> impl Strategy<Value = Description> {
    (
        prop::sample::select(vec![
            (9u32, false),
            (12, false),
            (16, false),
            (21, false),
            (14, true),
            (16, true),
        ]),
        0u32..=6,
        any::<bool>(),
        0u8..=1,
        prop::collection::vec(
            (0u64..16, 0u8..5, any::<u8>(), any::<u32>(), any::<u32>()),
            0..10,
        ),
        0usize..3,
        prop::collection::vec(
            (
                9u8..=20,
                prop::collection::vec((0u64..(1 << 20), 1u64..(1 << 18)), 0..3),
            ),
            0..3,
        ),
        prop::option::of(any::<bool>()),
        any::<bool>(),
    )
        .prop_map(
            |((cb, ext), order, v2, ztype, clusters, snaps, bitmaps, data_file, lazy)| {
                let cs = 1u64 << cb;
                let mut d = Description::new(cs * 16, cb);
                d.version = if v2 && !ext { 2 } else { 3 };
                d.refcount_order = if d.version == 2 { 4 } else { order };
                d.extended_l2 = ext;
                d.compression_type = if d.version == 3 { ztype } else { 0 };
                let mut map = BTreeMap::new();
                for (k, kind, seed, alloc, zero) in clusters {
                    let data = bytes(seed, cs as usize);
                    map.insert(
                        k,
                        match kind {
                            0 => ClusterData::Data(data),
                            1 => ClusterData::Zero,
                            2 => ClusterData::Compressed(data),
                            3 if ext => ClusterData::Subclusters {
                                alloc,
                                zero: zero & !alloc,
                                data,
                            },
                            _ => ClusterData::Data(data),
                        },
                    );
                }
                d.clusters = map;
                if let (Some(raw), 3) = (data_file, d.version) {
                    d.clusters
                        .retain(|_, c| !matches!(c, ClusterData::Compressed(_)));
                    d.data_file = Some(("img.data".into(), raw));
                } else {
                    let snaps = if d.refcount_order == 0 { 0 } else { snaps };
                    d.snapshots = (0..snaps).map(|i| format!("snap{i}")).collect();
                }
                if d.version == 3 {
                    d.bitmaps = bitmaps
                        .into_iter()
                        .enumerate()
                        .map(|(i, (g, dirty))| BitmapDesc {
                            name: format!("b{i}"),
                            granularity_bits: g,
                            dirty,
                        })
                        .collect();
                    d.lazy_refcounts = lazy;
                }
                d
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn qemu_img_accepts_and_reads_what_the_writer_writes(d in description()) {
        let dir = tempfile::tempdir().unwrap();
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
