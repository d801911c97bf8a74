//! Property tests of the writer: every image it writes checks clean (zero
//! findings, even counting violations), obeys the refcount invariants, and
//! reads back as the description says.

use proptest::prelude::*;
use qconform_core::disk::{Backing, OpenOptions, VirtualDisk};
use qconform_core::qcow2::write::{write, BitmapDesc, ClusterData, Description};
use qconform_core::{qcow2, Limits};

use mem::Mem;
use qconform_testkit::mem;

use descriptions::bytes;
use qconform_testkit::descriptions;

fn description() -> impl Strategy<Value = Description> {
    descriptions::description(64, descriptions::SHAPES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn written_images_check_clean_and_read_back(d in description()) {
        let w = write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let report = qcow2::check(&w.image.as_slice(), "written", &Limits::default());
        prop_assert!(report.findings.is_empty(), "findings on a written image: {:#?}", report.findings);
        prop_assert_eq!(report.exit_code(true), 0);
        // Every host cluster of the file is owned (no leak), and unique refcounts
        // follow from the census agreeing with the on-disk refcounts.
        prop_assert_eq!(report.stats.unwrap().image_end_offset, Some(w.image.len() as u64));
        let mut disk = VirtualDisk::open(Box::new(w.image.clone()), &Mem(w.data_file.clone()), &OpenOptions { backing: Backing::Confined, ..OpenOptions::default() })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut got = vec![0u8; d.size as usize];
        disk.read_at(0, &mut got).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(got == d.guest_bytes(), "read-back differs from the description");
        // Every snapshot sees the same data (each was taken of the final state).
        for s in &d.snapshots {
            let mut snap = VirtualDisk::open(Box::new(w.image.clone()), &Mem(None), &OpenOptions { backing: Backing::Confined, snapshot: Some(s), ..OpenOptions::default() })
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut got = vec![0u8; d.size as usize];
            snap.read_at(0, &mut got).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(got == d.guest_bytes(), "snapshot {} differs", s);
        }
    }
}

#[test]
fn a_rich_description_uses_every_structure() {
    let mut d = Description::new(64 << 16, 16);
    d.extended_l2 = true;
    d.compression_type = 1;
    d.refcount_order = 3;
    d.clusters.insert(0, ClusterData::Data(bytes(1, 1 << 16)));
    d.clusters
        .insert(1, ClusterData::Compressed(bytes(2, 1 << 16)));
    d.clusters.insert(2, ClusterData::Zero);
    d.clusters.insert(
        40,
        ClusterData::Subclusters {
            alloc: 0x0000_00ff,
            zero: 0xff00_0000,
            data: bytes(3, 1 << 16),
        },
    );
    d.snapshots = vec!["a".into(), "b".into()];
    d.bitmaps = vec![BitmapDesc {
        name: "dirty".into(),
        granularity_bits: 16,
        dirty: vec![(0, 1 << 17)],
    }];
    let w = write(&d).unwrap();
    let report = qcow2::check(&w.image.as_slice(), "rich", &Limits::default());
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.stats.unwrap().compressed_clusters, Some(1));
    assert_eq!(report.stats.unwrap().allocated_clusters, Some(3));
    let info = qcow2::check::info(&w.image.as_slice(), "rich", &Limits::default()).unwrap();
    assert_eq!(info.snapshots.snapshots.len(), 2);
    assert_eq!(info.bitmaps.len(), 1);
    assert_eq!(info.header.compression_type, 1);
    // Shared clusters: refcount 3 (active + 2 snapshots), so no COPIED in the active L1.
    let l1 = u64::from_be_bytes(
        w.image[info.header.l1_table_offset as usize..][..8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(l1 >> 63, 0);
    let mut disk =
        VirtualDisk::open(Box::new(w.image), &Mem(None), &OpenOptions::default()).unwrap();
    let mut got = vec![0u8; d.size as usize];
    disk.read_at(0, &mut got).unwrap();
    assert!(got == d.guest_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// writer -> mutator -> checker: the mutation's rules are reported, and
    /// neither the checker nor the reader panics on the result.
    #[test]
    fn every_mutation_is_caught(d in description(), kind in 0..qcow2::mutate::KINDS, a in any::<usize>(), b in any::<u8>()) {
        let w = write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut img = w.image.clone();
        let m = qcow2::mutate::Mutation::from_parts(kind, a, b);
        let Some(expect) = qcow2::mutate::apply(m, &mut img) else { return Ok(()) };
        let report = qcow2::check(&img.as_slice(), "mutated", &Limits::default());
        let got: Vec<&str> = report.findings.iter().map(|f| f.rule.id).collect();
        for rule in expect {
            prop_assert!(got.contains(&rule.id), "{:?}: {} not reported; got {:?}", m, rule, got);
        }
        prop_assert!(report.exit_code(false) != 0, "{:?} left the image clean", m);
        if let Ok(mut disk) = VirtualDisk::open(Box::new(img), &Mem(w.data_file.clone()), &OpenOptions { backing: Backing::Confined, verify: false, ..OpenOptions::default() }) {
            let mut buf = vec![0u8; d.size as usize];
            let _ = disk.read_at(0, &mut buf);
            let _ = disk.map();
        }
    }
}
