//! Generated image descriptions for property tests, shared by the writer
//! tests of qconform-core and the qemu-img differential tests of qconform
//! (which include this file by path).

use proptest::prelude::*;
use qconform_core::qcow2::write::{BitmapDesc, ClusterData, Description};
use std::collections::BTreeMap;

/// Cluster shapes: (cluster_bits, extended L2).
#[allow(dead_code)]
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
#[allow(dead_code)]
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

/// QED descriptions: cluster sizes 4-64 KiB, table sizes 1-4, up to 16
/// data or zero clusters of a disk of up to `clusters` clusters (its last
/// one partial when `tail` sectors cut it), a backing name or not.
#[allow(dead_code)]
pub fn qed_description(
    clusters: u64,
) -> impl Strategy<Value = qconform_core::qed::write::Description> {
    use qconform_core::qed::write::{Cluster, Description};
    (
        prop::sample::select(vec![4096u32, 8192, 65536]),
        prop::sample::select(vec![1u32, 2, 4]),
        1..=clusters,
        0u64..8,
        prop::collection::vec((0..clusters, any::<bool>(), any::<u8>()), 0..16),
        prop::option::of(("[a-z]{1,12}\\.img", any::<bool>())),
    )
        .prop_map(move |(cs, ts, n, tail, cl, backing)| {
            let size = n * cs as u64 - tail * 512;
            let mut d = Description::new(size, cs, ts);
            for (k, zero, seed) in cl {
                if k < size.div_ceil(cs as u64) {
                    d.clusters.insert(
                        k,
                        if zero {
                            Cluster::Zero
                        } else {
                            Cluster::Data(bytes(seed, cs as usize))
                        },
                    );
                }
            }
            d.backing = backing;
            d
        })
}

/// Parallels descriptions: both magics, cluster sizes 512 B-64 KiB, up to
/// 16 allocated clusters of a disk of up to `clusters` clusters, and
/// (for the extension magic) a dirty bitmap of any power-of-2 granularity.
#[allow(dead_code)]
pub fn parallels_description(
    clusters: u64,
) -> impl Strategy<Value = qconform_core::parallels::write::Description> {
    use qconform_core::parallels::write::{BitmapDesc, Description};
    (
        prop::sample::select(vec![512u64, 1024, 4096, 65536]),
        any::<bool>(),
        1..=clusters,
        0u64..4,
        prop::collection::vec((0..clusters, any::<u8>()), 0..16),
        prop::option::of((
            0u32..8,
            prop::collection::vec(any::<u64>(), 0..24),
            any::<[u8; 16]>(),
        )),
    )
        .prop_map(move |(cs, ext, n, tail, cl, bitmap)| {
            let size = (n * cs).saturating_sub(tail * 512).max(512);
            let mut d = Description::new(size, cs, ext);
            for (k, seed) in cl {
                if k < d.bat_entries() {
                    d.clusters.insert(k, bytes(seed, cs as usize));
                }
            }
            if let (true, Some((g, bits, id))) = (ext, bitmap) {
                let granularity = 1u32 << g;
                let total = (size / 512).div_ceil(granularity as u64);
                d.bitmap = Some(BitmapDesc {
                    id,
                    granularity,
                    dirty_bits: bits.iter().map(|b| b % total).collect(),
                });
            }
            d
        })
}
