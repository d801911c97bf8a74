//! Inputs for out-of-process image campaigns: a valid image from the
//! writers (a random description: every cluster kind, snapshots, bitmaps,
//! backing and data files) with zero or more structured mutations stacked
//! on top, each knowing the rules it breaks. A run's input depends only on
//! the campaign seed and the run's index, so a fixed `--seed` gives the same
//! sequence on any machine, whatever the number of jobs.

use qconform_core::rules::Rule;
use qconform_core::{parallels, qcow2, qed};

/// A run's generator (core's SplitMix64: the same everywhere).
#[derive(Debug, Clone)]
pub struct Rng(qconform_core::rng::SplitMix64);

impl Rng {
    /// The generator of run `index` of a campaign seeded with `seed`.
    pub fn for_run(seed: u64, index: u64) -> Rng {
        let mut r = Rng(qconform_core::rng::SplitMix64::new(
            seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ));
        r.next_u64();
        r
    }
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// The formats a campaign can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenFormat {
    Qcow2,
    Qed,
    Parallels,
}

impl GenFormat {
    pub fn name(self) -> &'static str {
        match self {
            GenFormat::Qcow2 => "qcow2",
            GenFormat::Qed => "qed",
            GenFormat::Parallels => "parallels",
        }
    }
}

/// A valid image's description, per format.
#[derive(Debug, Clone)]
pub enum Desc {
    Qcow2(qcow2::write::Description),
    Qed(qed::write::Description),
    Parallels(parallels::write::Description),
}

/// One mutation as the mutators build it: (kind, selector, byte).
pub type MutationParts = (usize, usize, u8);

/// A generated input: a description and the mutations stacked on it.
#[derive(Debug, Clone)]
pub struct Input {
    pub desc: Desc,
    pub mutations: Vec<MutationParts>,
}

/// The files of an input, written: the image, files beside it, and the
/// rules the mutations that applied break.
pub struct Built {
    pub image: Vec<u8>,
    /// (file name, bytes) beside the image: backing and data files.
    pub beside: Vec<(String, Vec<u8>)>,
    pub rules: Vec<&'static Rule>,
    /// The mutations that applied (the others found nothing to change).
    pub applied: Vec<MutationParts>,
}

/// Name of the raw backing file a generated image names.
pub const BACKING: &str = "backing.raw";
/// Name of the external data file a generated qcow2 image names.
pub const DATA_FILE: &str = "image.data";

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let seed = rng.next_u64() as u8;
    // Mostly compressible, never constant: a pattern with a counter.
    (0..n)
        .map(|i| seed.wrapping_add((i / 97) as u8) ^ (i as u8 & 7))
        .collect()
}

fn qcow2_desc(rng: &mut Rng) -> qcow2::write::Description {
    use qcow2::write::{BitmapDesc, ClusterData};
    let cluster_bits = rng.pick(&[9u32, 12, 16]);
    let cs = 1u64 << cluster_bits;
    let clusters_in_disk = rng.pick(&[8u64, 32, 128]);
    let mut d = qcow2::write::Description::new(clusters_in_disk * cs, cluster_bits);
    if rng.chance(15) {
        d.version = 2;
    } else {
        d.refcount_order = rng.below(7) as u32;
        d.extended_l2 = cluster_bits == 16 && rng.chance(30);
        d.compression_type = rng.chance(30) as u8;
        d.lazy_refcounts = rng.chance(10);
    }
    let n = rng.below(clusters_in_disk.min(12) + 1);
    for _ in 0..n {
        let k = rng.below(clusters_in_disk);
        let data = bytes(rng, cs as usize);
        let c = match rng.below(4) {
            0 => ClusterData::Zero,
            1 => ClusterData::Compressed(data),
            2 if d.extended_l2 => {
                let alloc = rng.next_u64() as u32;
                ClusterData::Subclusters {
                    alloc,
                    zero: !alloc & rng.next_u64() as u32,
                    data,
                }
            }
            _ => ClusterData::Data(data),
        };
        d.clusters.insert(k, c);
    }
    if rng.chance(25) {
        d.snapshots = (0..1 + rng.below(3)).map(|i| format!("snap{i}")).collect();
    }
    if d.version >= 3 && rng.chance(20) {
        d.bitmaps.push(BitmapDesc {
            name: "dirty".into(),
            granularity_bits: rng.pick(&[9u8, 16]),
            dirty: vec![(rng.below(d.size), 1 + rng.below(4 * cs))],
        });
    }
    if rng.chance(20) {
        d.backing = Some((BACKING.into(), Some("raw".into())));
    } else if d.version >= 3 && d.snapshots.is_empty() && rng.chance(10) {
        d.clusters
            .retain(|_, c| !matches!(c, ClusterData::Compressed(_)));
        d.data_file = Some((DATA_FILE.into(), rng.chance(50)));
    }
    d
}

fn qed_desc(rng: &mut Rng) -> qed::write::Description {
    let cs = rng.pick(&[4096u32, 65536]);
    let table_size = rng.pick(&[1u32, 2, 4, 16]);
    let clusters_in_disk = rng.pick(&[8u64, 32, 128]);
    let mut d = qed::write::Description::new(clusters_in_disk * cs as u64, cs, table_size);
    for _ in 0..rng.below(clusters_in_disk.min(12) + 1) {
        let k = rng.below(clusters_in_disk);
        let c = if rng.chance(25) {
            qed::write::Cluster::Zero
        } else {
            qed::write::Cluster::Data(bytes(rng, cs as usize))
        };
        d.clusters.insert(k, c);
    }
    if rng.chance(25) {
        d.backing = Some((BACKING.into(), true));
    }
    d.need_check = rng.chance(10);
    d
}

fn parallels_desc(rng: &mut Rng) -> parallels::write::Description {
    let cs = rng.pick(&[4096u64, 65536]);
    let clusters_in_disk = rng.pick(&[8u64, 32, 128]);
    let mut d = parallels::write::Description::new(clusters_in_disk * cs, cs, rng.chance(70));
    for _ in 0..rng.below(clusters_in_disk.min(12) + 1) {
        let k = rng.below(clusters_in_disk);
        d.clusters.insert(k, bytes(rng, cs as usize));
    }
    if d.ext_magic && rng.chance(20) {
        let granularity = (cs / 512) as u32;
        d.bitmap = Some(parallels::write::BitmapDesc {
            id: [0x5a; 16],
            granularity,
            dirty_bits: vec![rng.below(clusters_in_disk)],
        });
    }
    d
}

/// The input of one run.
pub fn input(format: GenFormat, rng: &mut Rng) -> Input {
    let desc = match format {
        GenFormat::Qcow2 => Desc::Qcow2(qcow2_desc(rng)),
        GenFormat::Qed => Desc::Qed(qed_desc(rng)),
        GenFormat::Parallels => Desc::Parallels(parallels_desc(rng)),
    };
    let kinds = match format {
        GenFormat::Qcow2 => qcow2::mutate::KINDS,
        GenFormat::Qed => qed::mutate::KINDS,
        GenFormat::Parallels => parallels::mutate::KINDS,
    };
    // Mostly one or two mutations; some runs stay valid.
    let n = rng.pick(&[0usize, 1, 1, 1, 2, 2, 3]);
    let mutations = (0..n)
        .map(|_| {
            (
                rng.below(kinds as u64) as usize,
                rng.next_u64() as usize,
                rng.next_u64() as u8,
            )
        })
        .collect();
    Input { desc, mutations }
}

/// Writes an input's files; None when the writer refuses its description.
pub fn build(input: &Input) -> Option<Built> {
    let (mut image, beside, size) = match &input.desc {
        Desc::Qcow2(d) => {
            let w = qcow2::write::write(d).ok()?;
            let mut beside = Vec::new();
            if let (Some(bytes), Some((name, _))) = (w.data_file, &d.data_file) {
                beside.push((name.clone(), bytes));
            }
            (w.image, beside, d.size)
        }
        Desc::Qed(d) => (qed::write::write(d).ok()?, Vec::new(), d.size),
        Desc::Parallels(d) => (parallels::write::write(d).ok()?, Vec::new(), d.size),
    };
    let mut beside = beside;
    let names_backing = match &input.desc {
        Desc::Qcow2(d) => d.backing.is_some(),
        Desc::Qed(d) => d.backing.is_some(),
        Desc::Parallels(_) => false,
    };
    if names_backing {
        // A raw backing file of a different length than the disk.
        let len = (size / 2 + 1000) as usize;
        beside.push((BACKING.into(), (0..len).map(|i| (i % 251) as u8).collect()));
    }
    let mut rules: Vec<&'static Rule> = Vec::new();
    let mut applied = Vec::new();
    for &(kind, a, b) in &input.mutations {
        let broke = match &input.desc {
            Desc::Qcow2(_) => {
                qcow2::mutate::apply(qcow2::mutate::Mutation::from_parts(kind, a, b), &mut image)
            }
            Desc::Qed(_) => {
                qed::mutate::apply(qed::mutate::Mutation::from_parts(kind, a, b), &mut image)
            }
            Desc::Parallels(_) => parallels::mutate::apply(
                parallels::mutate::Mutation::from_parts(kind, a, b),
                &mut image,
            ),
        };
        if let Some(r) = broke {
            applied.push((kind, a, b));
            for rule in r {
                if !rules.iter().any(|x| std::ptr::eq(*x, *rule)) {
                    rules.push(rule);
                }
            }
        }
    }
    Some(Built {
        image,
        beside,
        rules,
        applied,
    })
}

/// Smaller variants of an input, for minimisation: each drops one mutation,
/// or one cluster, snapshot or bitmap of the description.
pub fn smaller(input: &Input) -> Vec<Input> {
    let mut out = Vec::new();
    for i in 0..input.mutations.len() {
        let mut v = input.clone();
        v.mutations.remove(i);
        out.push(v);
    }
    let drop_cluster = |keys: Vec<u64>, f: &dyn Fn(&mut Desc, u64)| -> Vec<Input> {
        keys.into_iter()
            .map(|k| {
                let mut v = input.clone();
                f(&mut v.desc, k);
                v
            })
            .collect()
    };
    match &input.desc {
        Desc::Qcow2(d) => {
            out.extend(drop_cluster(
                d.clusters.keys().copied().collect(),
                &|x, k| {
                    if let Desc::Qcow2(d) = x {
                        d.clusters.remove(&k);
                    }
                },
            ));
            if !d.snapshots.is_empty() || !d.bitmaps.is_empty() {
                let mut v = input.clone();
                if let Desc::Qcow2(d) = &mut v.desc {
                    d.snapshots.clear();
                    d.bitmaps.clear();
                }
                out.push(v);
            }
        }
        Desc::Qed(d) => out.extend(drop_cluster(
            d.clusters.keys().copied().collect(),
            &|x, k| {
                if let Desc::Qed(d) = x {
                    d.clusters.remove(&k);
                }
            },
        )),
        Desc::Parallels(d) => out.extend(drop_cluster(
            d.clusters.keys().copied().collect(),
            &|x, k| {
                if let Desc::Parallels(d) = x {
                    d.clusters.remove(&k);
                }
            },
        )),
    }
    out
}

/// How many clusters a description holds (minimisation's measure).
pub fn weight(input: &Input) -> usize {
    let n = match &input.desc {
        Desc::Qcow2(d) => d.clusters.len() + d.snapshots.len() + d.bitmaps.len(),
        Desc::Qed(d) => d.clusters.len(),
        Desc::Parallels(d) => d.clusters.len(),
    };
    n + input.mutations.len()
}

/// An input in a few lines: the description without its cluster bytes,
/// and each mutation by name (for finding.json; the image file itself is
/// the reproducer).
pub fn summary(input: &Input) -> serde_json::Value {
    use serde_json::json;
    let kinds = |m: &mut dyn Iterator<Item = (u64, &'static str)>| -> Vec<String> {
        m.map(|(k, what)| format!("{k}:{what}")).collect()
    };
    let desc = match &input.desc {
        Desc::Qcow2(d) => {
            use qcow2::write::ClusterData as C;
            let clusters = kinds(&mut d.clusters.iter().map(|(k, c)| {
                let what = match c {
                    C::Data(_) => "data",
                    C::Zero => "zero",
                    C::Compressed(_) => "compressed",
                    C::Subclusters { .. } => "subclusters",
                };
                (*k, what)
            }));
            json!({"format": "qcow2", "size": d.size, "version": d.version,
                "cluster_bits": d.cluster_bits, "refcount_order": d.refcount_order,
                "extended_l2": d.extended_l2, "compression_type": d.compression_type,
                "clusters": clusters, "snapshots": d.snapshots,
                "bitmaps": d.bitmaps.iter().map(|b| &b.name).collect::<Vec<_>>(),
                "backing": d.backing, "data_file": d.data_file, "lazy_refcounts": d.lazy_refcounts})
        }
        Desc::Qed(d) => {
            let clusters = kinds(&mut d.clusters.iter().map(|(k, c)| {
                (
                    *k,
                    if matches!(c, qed::write::Cluster::Zero) {
                        "zero"
                    } else {
                        "data"
                    },
                )
            }));
            json!({"format": "qed", "size": d.size, "cluster_size": d.cluster_size,
                "table_size": d.table_size, "clusters": clusters, "backing": d.backing,
                "need_check": d.need_check})
        }
        Desc::Parallels(d) => json!({"format": "parallels", "size": d.size,
            "cluster_size": d.cluster_size, "ext_magic": d.ext_magic,
            "clusters": d.clusters.keys().collect::<Vec<_>>(),
            "bitmap": d.bitmap.as_ref().map(|b| json!({"granularity": b.granularity, "dirty_bits": b.dirty_bits}))}),
    };
    let mutations: Vec<String> = input
        .mutations
        .iter()
        .map(|&(k, a, b)| match &input.desc {
            Desc::Qcow2(_) => format!("{:?}", qcow2::mutate::Mutation::from_parts(k, a, b)),
            Desc::Qed(_) => format!("{:?}", qed::mutate::Mutation::from_parts(k, a, b)),
            Desc::Parallels(_) => format!("{:?}", parallels::mutate::Mutation::from_parts(k, a, b)),
        })
        .collect();
    json!({"description": desc, "mutations": mutations})
}
