//! The adapters read writer-made images of every cluster kind equal to our
//! reader and to the description; what a peer does not support is in
//! KNOWN_UNSUPPORTED with why, and must still fail there (a KNOWN entry that
//! starts passing fails this test, so the list stays true).

use qconform_core::qcow2::write::{write, BitmapDesc, ClusterData, Description};
use qconform_peers::differential::ours;
use qconform_peers::{run, Bounds, Impl, Outcome};

/// One case: a name and its description.
fn cases() -> Vec<(&'static str, Description)> {
    let bytes = |seed: u8, cs: u64| -> Vec<u8> {
        (0..cs as usize)
            .map(|i| seed.wrapping_add((i / 64) as u8) ^ (i as u8))
            .collect()
    };
    let base = |cb: u32| {
        let mut d = Description::new(16 << cb, cb);
        d.clusters.insert(0, ClusterData::Data(bytes(1, 1 << cb)));
        d.clusters.insert(3, ClusterData::Data(bytes(7, 1 << cb)));
        d
    };
    let mut out = vec![
        ("standard 64k", base(16)),
        ("standard 4k", base(12)),
        ("standard 512", base(9)),
        ("standard 2k", base(11)),
    ];
    let mut d = base(16);
    d.clusters.insert(5, ClusterData::Zero);
    d.clusters.insert(0, ClusterData::Zero);
    out.push(("zero clusters", d));
    let mut d = base(16);
    d.clusters
        .insert(2, ClusterData::Compressed(bytes(9, 1 << 16)));
    d.clusters
        .insert(8, ClusterData::Compressed(vec![0x5a; 1 << 16]));
    out.push(("compressed deflate", d));
    let mut d = base(16);
    d.compression_type = 1;
    d.clusters
        .insert(2, ClusterData::Compressed(bytes(9, 1 << 16)));
    out.push(("compressed zstd", d));
    let mut d = base(16);
    d.extended_l2 = true;
    d.clusters.insert(
        4,
        ClusterData::Subclusters {
            alloc: 0x0f0f_00ff,
            zero: 0xf000_ff00,
            data: bytes(3, 1 << 16),
        },
    );
    out.push(("extended L2 subclusters", d));
    let mut d = base(16);
    d.snapshots = vec!["s0".into(), "s1".into()];
    out.push(("snapshots present", d));
    let mut d = base(16);
    d.backing = Some(("absent-base.qcow2".into(), Some("qcow2".into())));
    out.push(("backing file absent (v3)", d));
    let mut d = base(16);
    d.version = 2;
    out.push(("version 2", d));
    let mut d = base(16);
    d.version = 2;
    d.backing = Some(("absent-base.qcow2".into(), None));
    out.push(("version 2, backing file absent", d));
    for order in [0u32, 3, 6] {
        let mut d = base(16);
        d.refcount_order = order;
        out.push((
            match order {
                0 => "refcount_order 0",
                3 => "refcount_order 3",
                _ => "refcount_order 6",
            },
            d,
        ));
    }
    let mut d = base(16);
    d.lazy_refcounts = true;
    out.push(("lazy refcounts", d));
    let mut d = base(16);
    d.bitmaps.push(BitmapDesc {
        name: "b0".into(),
        granularity_bits: 16,
        dirty: vec![(0, 1 << 17)],
    });
    out.push(("persistent bitmap", d));
    let mut d = base(16);
    d.size -= 512;
    out.push(("size not a cluster multiple", d));
    let mut d = base(16);
    d.size -= 100;
    out.push(("size not a sector multiple, 16 clusters", d));
    // Two 32 KiB clusters, one byte short of them: the one 64 KiB read
    // spans both clusters and crosses the end.
    let mut d = Description::new((1 << 16) - 1, 15);
    d.clusters.insert(0, ClusterData::Data(bytes(5, 1 << 15)));
    d.clusters.insert(1, ClusterData::Data(bytes(6, 1 << 15)));
    out.push(("size not a sector multiple, read spanning clusters", d));
    out
}

/// What a peer does not support (or gets wrong, see the FINDINGS.md of its
/// corpus folder), one line why.
const KNOWN_UNSUPPORTED: &[(Impl, &str, &str)] = &[
    (Impl::Imago, "compressed zstd", "imago 0.2.6: deflate only; refuses incompatible bit 3 at open"),
    (Impl::Imago, "extended L2 subclusters", "imago 0.2.6: no extended L2; refuses incompatible bit 4 at open"),
    (Impl::Qcow2Rs, "compressed zstd", "qcow2-rs 0.1.6: deflate only; refuses incompatible bit 3 at open"),
    (Impl::Qcow2Rs, "extended L2 subclusters", "qcow2-rs 0.1.6: no extended L2 ('todo' in its source); refuses bit 4 at open"),
    (Impl::Qcow2Rs, "standard 512", "qcow2-rs 0.1.6: panics (subtract overflow, dev.rs:105) for cluster_bits below 12: finding"),
    (Impl::Qcow2Rs, "standard 2k", "qcow2-rs 0.1.6: the same panic as 512-byte clusters: finding"),
    (Impl::Qcow2Rs, "version 2, backing file absent", "qcow2-rs 0.1.6: parses a v2 header as v3 (header_length from bytes 100..104): finding"),
    (Impl::Qcow2Rs, "size not a sector multiple, read spanning clusters", "qcow2-rs 0.1.6: a read spanning clusters and crossing the end of the disk reads only the overshoot, rounded up to 512 (short read): finding"),
];

#[test]
fn adapters_read_every_cluster_kind_as_we_do() {
    let bounds = Bounds::default();
    let mut failures = Vec::new();
    for (name, d) in cases() {
        let img = write(&d)
            .unwrap_or_else(|e| panic!("{name}: writer: {e:?}"))
            .image;
        let mine = ours(&img, &bounds).unwrap_or_else(|e| panic!("{name}: ours: {e}"));
        assert_eq!(
            mine,
            d.guest_bytes(),
            "{name}: our reader disagrees with the description"
        );
        for imp in Impl::ALL {
            let got = run(imp, &img, &bounds);
            let ok = got == Outcome::Read(mine.clone());
            let known = KNOWN_UNSUPPORTED
                .iter()
                .find(|(i, n, _)| *i == imp && *n == name);
            match (ok, known) {
                (true, None) | (false, Some(_)) => {}
                (true, Some((_, _, why))) => failures.push(format!(
                    "{} {name}: reads correctly now; drop it from KNOWN_UNSUPPORTED ({why})",
                    imp.name()
                )),
                (false, None) => failures.push(format!(
                    "{} {name}: {}",
                    imp.name(),
                    match got {
                        Outcome::Read(b) => format!(
                            "bytes differ (first at {:?})",
                            b.iter().zip(&mine).position(|(x, y)| x != y)
                        ),
                        other => format!("{other:?}"),
                    }
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn precheck_refuses_claims_over_the_caps() {
    let bounds = Bounds::default();
    let mut img = write(&Description::new(1 << 20, 16))
        .map(|w| w.image)
        .unwrap_or_default();
    // Virtual size 1 TiB: refused before either peer sees it.
    img[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes());
    for imp in Impl::ALL {
        assert!(matches!(run(imp, &img, &bounds), Outcome::Refused(_)));
    }
    // A refcount table of 2^20 clusters of 64 KiB.
    let mut img2 = write(&Description::new(1 << 20, 16))
        .map(|w| w.image)
        .unwrap_or_default();
    img2[56..60].copy_from_slice(&(1u32 << 20).to_be_bytes());
    assert!(qconform_peers::precheck(&img2, &bounds).is_err());
}

#[test]
fn a_hang_is_reported_after_the_timeout() {
    // No peer hangs on demand; the guard is tested with a zero timeout,
    // which no read beats.
    let bounds = Bounds {
        timeout: std::time::Duration::ZERO,
        ..Bounds::default()
    };
    let img = write(&Description::new(64 << 20, 16))
        .map(|w| w.image)
        .unwrap_or_default();
    assert_eq!(run(Impl::Imago, &img, &bounds), Outcome::Hang);
}
