//! Generated image descriptions for property tests, shared by the writer
//! tests of qconform-core and the qemu-img differential tests of qconform
//! (which include this file by path).

use proptest::prelude::*;
use qconform_core::qcow2::write::{BitmapDesc, ClusterData, Description};
use std::collections::BTreeMap;

/// Cluster shapes: (cluster_bits, extended L2).
pub const SHAPES: &[(u32, bool)] = &[(9, false), (12, false), (16, false), (14, true), (16, true)];

/// Compressible but not constant cluster contents.
pub fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            seed.wrapping_add((i / 64) as u8)
                .wrapping_mul(if i % 3 == 0 { 1 } else { 7 })
        })
        .collect()
}

/// Descriptions of images `clusters` clusters large, of the given shapes:
/// every cluster kind, refcount widths, both versions and compression types,
/// snapshots, bitmaps, data files, lazy refcounts.
pub fn description(
    clusters: u64,
    shapes: &'static [(u32, bool)],
) -> impl Strategy<Value = Description> {
    (
        prop::sample::select(shapes.to_vec()),
        0u32..=6,
        any::<bool>(),
        0u8..=1,
        prop::collection::vec(
            (0..clusters, 0u8..5, any::<u8>(), any::<u32>(), any::<u32>()),
            0..16,
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
            move |((cb, ext), order, v2, ztype, cl, snaps, bitmaps, data_file, lazy)| {
                let cs = 1u64 << cb;
                let mut d = Description::new(cs * clusters, cb);
                d.version = if v2 && !ext { 2 } else { 3 };
                d.refcount_order = if d.version == 2 { 4 } else { order };
                d.extended_l2 = ext;
                d.compression_type = if d.version == 3 { ztype } else { 0 };
                let mut map = BTreeMap::new();
                for (k, kind, seed, alloc, zero) in cl {
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
                // A data file excludes compressed clusters and snapshots.
                if let (Some(raw), 3) = (data_file, d.version) {
                    d.clusters
                        .retain(|_, c| !matches!(c, ClusterData::Compressed(_)));
                    d.data_file = Some(("img.data".into(), raw));
                } else {
                    // Snapshots share clusters: refcounts need more than one bit.
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
