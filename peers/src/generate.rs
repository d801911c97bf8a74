//! Fuzz bytes read as structure: the first bytes choose a writer
//! description (cluster size, version, refcount width, compression, the
//! clusters and their kinds, snapshots, a bitmap, a backing name), the
//! rest mutations, so random bytes mostly give a valid image, then a
//! mutated one. Bytes past the end read as 0, so every input is one image.
//!
//! The bytes are drawn one `u8` at a time through `arbitrary`'s
//! [`Unstructured`] (which reads 0 once the data is used up), so the
//! cargo-fuzz targets take a [`Generated`] as their input like the other
//! structured targets, and an input file means the same image whether it
//! is read here or through [`generate`].

use arbitrary::{Arbitrary, Unstructured};
use qconform_core::qcow2::mutate::{self, Mutation};
use qconform_core::qcow2::write::{write, BitmapDesc, ClusterData, Description};

/// One generated input.
#[derive(Debug, Clone)]
pub struct Generated {
    pub description: Description,
    /// The image after the mutations.
    pub image: Vec<u8>,
    /// Each mutation that applied, with the rules it breaks.
    pub mutations: Vec<(Mutation, Vec<&'static str>)>,
    /// Bytes flipped after the structured mutations: (offset, xor).
    pub patches: Vec<(usize, u8)>,
}

impl Generated {
    /// The rules the mutations break (empty: the writer's valid image, or
    /// only byte patches).
    pub fn rules(&self) -> Vec<&'static str> {
        self.mutations
            .iter()
            .flat_map(|(_, r)| r.iter().copied())
            .collect()
    }

    /// One line: the shape and what was done to it.
    pub fn summary(&self) -> String {
        let d = &self.description;
        let kinds: Vec<&str> = d
            .clusters
            .values()
            .map(|c| match c {
                ClusterData::Data(_) => "data",
                ClusterData::Zero => "zero",
                ClusterData::Compressed(_) => "compressed",
                ClusterData::Subclusters { .. } => "subclusters",
            })
            .collect();
        format!(
            "v{} cluster_bits {} size {} refcount_order {} extended_l2 {} compression {} clusters [{}] snapshots {} bitmaps {} backing {} lazy {}; mutations {:?}; patches {:?}",
            d.version,
            d.cluster_bits,
            d.size,
            d.refcount_order,
            d.extended_l2,
            d.compression_type,
            kinds.join(","),
            d.snapshots.len(),
            d.bitmaps.len(),
            d.backing.is_some(),
            d.lazy_refcounts,
            self.mutations,
            self.patches
        )
    }

    /// What this input exercises, as short names (the shape, the cluster
    /// kinds, the optional structures, each mutation that applied): the
    /// seed corpus keeps inputs until every name the generator can give
    /// is covered ([`crate::campaign::seed_inputs`]).
    pub fn features(&self) -> Vec<String> {
        let d = &self.description;
        let cs = 1u64 << d.cluster_bits;
        let mut out = vec![
            format!(
                "cluster_bits {} extended_l2 {}",
                d.cluster_bits, d.extended_l2
            ),
            format!("version {}", d.version),
            format!("refcount_order {}", d.refcount_order),
            format!("mutations {}", self.mutations.len()),
        ];
        out.push(
            match (d.size % cs, d.size % 512) {
                (0, _) => "size whole clusters",
                (_, 0) => "size whole sectors",
                _ => "size not whole sectors",
            }
            .into(),
        );
        for c in d.clusters.values() {
            out.push(
                match c {
                    ClusterData::Data(_) => "cluster data",
                    ClusterData::Zero => "cluster zero",
                    ClusterData::Compressed(_) => "cluster compressed",
                    ClusterData::Subclusters { .. } => "cluster subclusters",
                }
                .into(),
            );
        }
        let flags = [
            (d.compression_type == 1, "compression zstd"),
            (d.lazy_refcounts, "lazy refcounts"),
            (!d.snapshots.is_empty(), "snapshots"),
            (!d.bitmaps.is_empty(), "bitmap"),
            (d.backing.is_some(), "backing"),
            (
                d.backing.as_ref().is_some_and(|(_, f)| f.is_some()),
                "backing format",
            ),
            (!self.patches.is_empty(), "byte flips"),
        ];
        out.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| n.to_string()),
        );
        for (m, _) in &self.mutations {
            // The variant's name, without its selectors.
            let name = format!("{m:?}");
            let kind = name.split([' ', '{']).next().unwrap_or_default();
            out.push(format!("mutation {kind}"));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A cluster's bytes: a pattern from `seed` that changes every 32 bytes
/// (compressible, and no two sectors alike when the seed differs).
fn pattern(seed: u8, cs: u64) -> Vec<u8> {
    (0..cs as usize)
        .map(|i| seed.wrapping_add((i / 32) as u8) ^ (i as u8 & 3))
        .collect()
}

/// Builds the input `data` describes; None when the writer refuses the
/// description (only combinations no valid image has).
pub fn generate(data: &[u8]) -> Option<Generated> {
    generate_from(&mut Unstructured::new(data))
}

/// A generated input is what a fuzz target draws (the writer refusing the
/// description is an input of the wrong format, which libFuzzer skips).
impl<'a> Arbitrary<'a> for Generated {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        generate_from(u).ok_or(arbitrary::Error::IncorrectFormat)
    }
}

/// [`generate`] from an [`Unstructured`]: one byte per choice, 0 when the
/// data is used up.
pub fn generate_from(u: &mut Unstructured) -> Option<Generated> {
    let mut next = || u.arbitrary::<u8>().unwrap_or(0);
    // (cluster_bits, extended L2, most clusters): small disks, every
    // cluster size class up to 256 KiB (2 MiB clusters cost seconds each
    // in a debug build, for no shape the smaller ones lack).
    let shapes = [
        (16u32, false, 32u64),
        (9, false, 64),
        (12, false, 64),
        (14, true, 32),
        (16, true, 16),
        (18, false, 4),
        (10, false, 64),
        (15, false, 32),
    ];
    let (cb, ext, most) = shapes[next() as usize % shapes.len()];
    let cs = 1u64 << cb;
    let n = 1 + next() as u64 % most;
    // Most sizes are whole clusters; some end inside the last cluster, on
    // a sector boundary or not (a qcow2 size is any byte count).
    let size = match next() % 8 {
        0 => (n * cs)
            .saturating_sub(512 * (1 + next() as u64 % 8))
            .max(512),
        1 => (n * cs).saturating_sub(1 + next() as u64 % 511).max(1),
        _ => n * cs,
    };
    let mut d = Description::new(size, cb);
    d.extended_l2 = ext;
    if !ext && next() % 8 == 0 {
        d.version = 2;
    } else {
        d.refcount_order = (next() % 7) as u32;
        d.compression_type = u8::from(next() % 4 == 0);
        d.lazy_refcounts = next() % 8 == 0;
    }
    let clusters = size.div_ceil(cs);
    for _ in 0..next() % 16 {
        let k = next() as u64 % clusters;
        let bytes = pattern(next(), cs);
        let c = match next() % 5 {
            0 | 1 => ClusterData::Data(bytes),
            2 => ClusterData::Zero,
            3 => ClusterData::Compressed(bytes),
            _ if ext => {
                let alloc = u32::from_le_bytes([next(), next(), next(), next()]);
                let zero = u32::from_le_bytes([next(), next(), next(), next()]) & !alloc;
                ClusterData::Subclusters {
                    alloc,
                    zero,
                    data: bytes,
                }
            }
            _ => ClusterData::Data(bytes),
        };
        d.clusters.insert(k, c);
    }
    if d.refcount_order > 0 {
        d.snapshots = (0..next() % 3).map(|i| format!("s{i}")).collect();
    }
    if d.version == 3 && next() % 4 == 0 {
        d.bitmaps.push(BitmapDesc {
            name: "b0".into(),
            granularity_bits: 9 + next() % 12,
            dirty: vec![(next() as u64 % clusters * cs, cs)],
        });
    }
    if next() % 4 == 0 {
        let format = if next() % 2 == 0 {
            Some("qcow2".to_string())
        } else {
            None
        };
        d.backing = Some(("base.qcow2".into(), format));
    }
    let mut image = write(&d).ok()?.image;
    let mut mutations = Vec::new();
    let mut patches = Vec::new();
    let mode = next() % 4;
    let count = match mode {
        0 => 0,
        2 => 2,
        _ => 1,
    };
    for _ in 0..count {
        let m = Mutation::from_parts(next() as usize, next() as usize, next());
        if let Some(rules) = mutate::apply(m, &mut image) {
            mutations.push((m, rules.iter().map(|r| r.id).collect()));
        }
    }
    if mode == 3 && !image.is_empty() {
        for _ in 0..1 + next() % 4 {
            // Half the flips land in the header and its extensions, where
            // one byte changes what every later read means.
            let at = if next() % 2 == 0 {
                next() as usize * 2 % image.len().min(512)
            } else {
                u32::from_le_bytes([next(), next(), next(), 0]) as usize % image.len()
            };
            let x = next();
            if let Some(b) = image.get_mut(at) {
                *b ^= x;
            }
            patches.push((at, x));
        }
    }
    Some(Generated {
        description: d,
        image,
        mutations,
        patches,
    })
}
