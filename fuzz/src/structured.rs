//! The structured targets: the fuzzer's bytes are an
//! [`arbitrary::Unstructured`] from which qconform-core's `Arbitrary`
//! impls (feature `arbitrary`, core/src/structured.rs) draw a writer
//! description and one mutation. Each field is drawn by its own call, so
//! libFuzzer's byte edits change one choice (a cluster's kind, a size, the
//! mutation) without shifting the meaning of every later byte as much as a
//! hand-written byte reader did.
//!
//! Input layout: structured_image is `(qcow2::write::Description,
//! qcow2::mutate::Mutation)`; structured_qed_parallels is one `bool` (QED
//! or Parallels) then that format's pair. Past the end of the input every
//! draw is its smallest value, so any input is a valid one.
//!
//! The oracles, on every input:
//! 1. the written image checks clean (no finding, exit code 0, every byte
//!    of the file owned);
//! 2. the reader, given the description's backing and data files, reads
//!    back exactly the guest bytes the description defines — data,
//!    compressed (deflate and zstd), subclusters of extended L2 entries,
//!    zero, unallocated (backing bytes where there is a backing file,
//!    zeros past its end and without one);
//! 3. the map says of every range what the description says of it (data,
//!    compressed, zero, or unallocated in the top image);
//! 4. an applied mutation is reported with every rule it names (and a
//!    mutated qcow2 image never checks clean);
//! 5. the mutated image opens, reads and maps without a panic.

use super::{fuzz_limits, read_some};
use arbitrary::{Arbitrary, Unstructured};
use qconform_core::disk::{Backing, MapEntry, OpenOptions, Resolved, Resolver, Role, VirtualDisk};
use qconform_core::report::Report;
use qconform_core::rules::Rule;
use qconform_core::{parallels, qcow2, qed, Limits, ReadAt};
use std::rc::Rc;

/// What the top image of a description says of one unit of the guest
/// (a subcluster with extended L2 entries, else a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Data,
    Compressed,
    Zero,
    Unallocated,
}

impl Top {
    /// What a map entry says of its range, in the same terms.
    fn of(e: &MapEntry) -> Top {
        match (e.depth, e.present, e.data, e.compressed) {
            (0, true, true, true) => Top::Compressed,
            (0, true, true, false) => Top::Data,
            (0, true, false, _) => Top::Zero,
            _ => Top::Unallocated,
        }
    }
}

/// What a description says the guest holds: per unit, its kind in the top
/// image, and the guest's bytes once the backing file shows through.
struct Expected {
    unit: u64,
    top: Vec<Top>,
    bytes: Vec<u8>,
}

impl Expected {
    /// `bytes` are the description's own guest bytes (unallocated: zeros);
    /// units the top image leaves unallocated take `backing`'s bytes
    /// (zeros past its end).
    fn new(unit: u64, top: Vec<Top>, mut bytes: Vec<u8>, backing: Option<&[u8]>) -> Expected {
        if let Some(b) = backing {
            for (i, t) in top.iter().enumerate() {
                let start = i * unit as usize;
                let end = (start + unit as usize).min(bytes.len());
                if *t == Top::Unallocated && start < b.len() {
                    let n = (end - start).min(b.len() - start);
                    bytes[start..start + n].copy_from_slice(&b[start..start + n]);
                }
            }
        }
        Expected { unit, top, bytes }
    }

    /// Oracles 2 and 3 on the written image; hands it back (the disk that
    /// read it shares it, so it is not copied).
    fn read_back(&self, image: Vec<u8>, files: &Files) -> Vec<u8> {
        let image = Rc::new(image);
        let opts = OpenOptions {
            backing: Backing::Confined,
            limits: Limits::default(),
            // Oracle 1 has just checked it.
            verify: false,
            ..OpenOptions::default()
        };
        let mut disk = VirtualDisk::open(Box::new(SharedFile(image.clone())), files, &opts)
            .unwrap_or_else(|e| panic!("a written image does not open: {e}"));
        assert_eq!(disk.size(), self.bytes.len() as u64, "virtual size");
        thread_local! {
            // One buffer for every run: a fresh zeroed guest per run costs
            // more under ASan than the read.
            static GOT: std::cell::RefCell<Vec<u8>> = Default::default();
        }
        GOT.with_borrow_mut(|got| {
            got.resize(self.bytes.len(), 0);
            disk.read_at(0, got)
                .unwrap_or_else(|e| panic!("a written image does not read: {e}"));
            if *got != self.bytes {
                let at = got.iter().zip(&self.bytes).position(|(a, b)| a != b);
                panic!("read-back differs from the description, first at {at:#x?}");
            }
        });
        let mut covered = 0u64;
        disk.map_each(|e| {
            assert_eq!(e.start, covered, "the map skips or repeats a range");
            covered += e.length;
            let said = Top::of(e);
            let first = e.start / self.unit;
            let last = (e.start + e.length).div_ceil(self.unit);
            for u in first..last {
                let want = self.top.get(u as usize).copied();
                assert!(
                    want == Some(said),
                    "map says {said:?} at {:#x}+{:#x} ({e:?}); the description {want:?} at unit {u}",
                    e.start,
                    e.length
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("a written image does not map: {e}"));
        assert_eq!(covered, self.bytes.len() as u64, "the map's end");
        drop(disk);
        Rc::try_unwrap(image).unwrap_or_else(|rc| rc.as_ref().clone())
    }
}

/// The backing file every description names (`base.img`): 64 KiB of
/// non-zero bytes, as a raw file and as a qcow2 image of the same guest
/// bytes (for a description that names qcow2 as its backing format). A
/// guest larger than it reads zeros past its end.
struct Base {
    raw: Rc<Vec<u8>>,
    qcow2: Rc<Vec<u8>>,
}

impl Base {
    fn get() -> Base {
        thread_local! {
            static BASE: (Rc<Vec<u8>>, Rc<Vec<u8>>) = {
                let mut d = qcow2::write::Description::new(64 << 10, 9);
                for k in (0..128).step_by(3) {
                    // Never a format's magic: the raw file probes as raw.
                    let bytes = (0..512).map(|i| 0x80 | (k as u8 ^ (i / 8) as u8)).collect();
                    d.clusters.insert(k, qcow2::write::ClusterData::Data(bytes));
                }
                let image = qcow2::write::write(&d).map(|w| w.image).unwrap_or_default();
                (Rc::new(d.guest_bytes()), Rc::new(image))
            };
        }
        BASE.with(|(raw, qcow2)| Base {
            raw: raw.clone(),
            qcow2: qcow2.clone(),
        })
    }
}

/// The other files of a written image: `base.img` and the data file.
struct Files {
    backing: Option<Rc<Vec<u8>>>,
    data_file: Option<Rc<Vec<u8>>>,
}

/// A file shared with the disk that reads it.
struct SharedFile(Rc<Vec<u8>>);

impl ReadAt for SharedFile {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        self.0.as_slice().read_exact_at(buf, offset)
    }
}

impl Resolver for Files {
    fn open(&self, name: &str, role: Role) -> Result<Resolved, qconform_core::Error> {
        let file = match role {
            Role::BackingFile => self.backing.clone(),
            Role::DataFile => self.data_file.clone(),
        };
        let file = file.ok_or_else(|| {
            qconform_core::Error::Open(format!("{name:?} is not a file of this description"))
        })?;
        Ok(Resolved {
            source: Box::new(SharedFile(file)),
            key: name.to_string(),
            resolver: Box::new(Files {
                backing: None,
                data_file: None,
            }),
        })
    }
}

/// Oracle 1: a written image checks clean.
fn assert_clean(report: &Report, image_len: usize, what: &dyn std::fmt::Debug) {
    assert!(
        report.findings.is_empty() && report.exit_code(true) == 0,
        "writer output is not clean: {:?}\n{what:?}",
        report.findings
    );
    let end = report.stats.as_ref().and_then(|s| s.image_end_offset);
    assert_eq!(end, Some(image_len as u64), "image end offset\n{what:?}");
}

/// Oracles 4 and 5: `rules` (what the applied mutation names) are all in
/// the mutated image's report; it reads without a panic.
fn assert_caught(
    rules: &[&'static Rule],
    report: &Report,
    mutated: &[u8],
    m: &dyn std::fmt::Debug,
) {
    for rule in rules {
        assert!(
            report.findings.iter().any(|f| std::ptr::eq(f.rule, *rule)),
            "{m:?}: {rule} not reported: {:?}",
            report.findings
        );
    }
    read_some(mutated, false);
}

/// The top-image kind of every unit of a qcow2 description.
fn qcow2_units(d: &qcow2::write::Description) -> (u64, Vec<Top>) {
    use qcow2::write::ClusterData as C;
    let cs = d.cluster_size();
    let per = if d.extended_l2 { 32 } else { 1 };
    let unit = cs / per;
    let units = d.size.div_ceil(unit);
    let mut top = vec![Top::Unallocated; units as usize];
    for (&k, c) in &d.clusters {
        for i in 0..per {
            let kind = match c {
                C::Data(_) => Top::Data,
                // Version 2 has no zero flag: the writer stores zeros.
                C::Zero if d.version < 3 => Top::Data,
                C::Zero => Top::Zero,
                C::Compressed(_) => Top::Compressed,
                C::Subclusters { alloc, zero, .. } => match (alloc >> i & 1, zero >> i & 1) {
                    (1, _) => Top::Data,
                    (_, 1) => Top::Zero,
                    _ => Top::Unallocated,
                },
            };
            if let Some(t) = top.get_mut((k * per + i) as usize) {
                *t = kind;
            }
        }
    }
    (unit, top)
}

/// structured_image: a qcow2 description and a mutation (see the module
/// documentation for the oracles).
pub fn structured_image(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((d, m)) = <(qcow2::write::Description, qcow2::mutate::Mutation)>::arbitrary(&mut u)
    else {
        return;
    };
    let w = qcow2::write::write(&d)
        .unwrap_or_else(|e| panic!("an arbitrary description is not writable: {e}\n{d:?}"));
    // The writer's output is judged under the default limits: a valid image
    // with 1-bit refcounts walks a whole refcount block, more than the fuzz
    // limits allow for hostile inputs.
    let limits = Limits::default();
    let report = qcow2::check(&w.image.as_slice(), "structured", &limits);
    assert_clean(&report, w.image.len(), &d);
    let base = Base::get();
    let backing = d
        .backing
        .as_ref()
        .map(|(_, format)| match format.as_deref() {
            Some("qcow2") => base.qcow2.clone(),
            _ => base.raw.clone(),
        });
    let (unit, top) = qcow2_units(&d);
    let expected = Expected::new(
        unit,
        top,
        d.guest_bytes(),
        backing.as_ref().map(|_| base.raw.as_slice()),
    );
    let files = Files {
        backing,
        data_file: w.data_file.map(Rc::new),
    };
    let mut img = expected.read_back(w.image, &files);
    if let Some(rules) = qcow2::mutate::apply(m, &mut img) {
        let r = qcow2::check(&img.as_slice(), "mutated", &limits);
        assert!(r.exit_code(false) != 0, "{m:?} left the image clean");
        assert_caught(rules, &r, &img, &m);
    }
}

/// structured_qed_parallels: a QED or Parallels description and a
/// mutation (see the module documentation for the oracles).
pub fn structured_qed_parallels(data: &[u8]) {
    let mut u = Unstructured::new(data);
    match bool::arbitrary(&mut u) {
        Ok(false) => qed_one(&mut u),
        Ok(true) => parallels_one(&mut u),
        Err(_) => {}
    }
}

fn qed_one(u: &mut Unstructured) {
    let Ok((d, m)) = <(qed::write::Description, qed::mutate::Mutation)>::arbitrary(u) else {
        return;
    };
    let img = qed::write::write(&d)
        .unwrap_or_else(|e| panic!("an arbitrary description is not writable: {e}\n{d:?}"));
    let limits = fuzz_limits();
    assert_clean(
        &qed::check(&img.as_slice(), "structured", &limits),
        img.len(),
        &d,
    );
    let cs = d.cluster_size as u64;
    let mut top = vec![Top::Unallocated; d.size.div_ceil(cs) as usize];
    for (&k, c) in &d.clusters {
        if let Some(t) = top.get_mut(k as usize) {
            *t = match c {
                qed::write::Cluster::Data(_) => Top::Data,
                qed::write::Cluster::Zero => Top::Zero,
            };
        }
    }
    let base = Base::get();
    let backing = d.backing.as_ref().map(|_| base.raw.clone());
    let expected = Expected::new(
        cs,
        top,
        d.guest_bytes(),
        backing.as_ref().map(|b| b.as_slice()),
    );
    let files = Files {
        backing,
        data_file: None,
    };
    let mut img = expected.read_back(img, &files);
    if let Some(rules) = qed::mutate::apply(m, &mut img) {
        let r = qed::check(&img.as_slice(), "mutated", &limits);
        assert_caught(rules, &r, &img, &m);
    }
}

fn parallels_one(u: &mut Unstructured) {
    let Ok((d, m)) = <(parallels::write::Description, parallels::mutate::Mutation)>::arbitrary(u)
    else {
        return;
    };
    let img = parallels::write::write(&d)
        .unwrap_or_else(|e| panic!("an arbitrary description is not writable: {e}\n{d:?}"));
    let limits = fuzz_limits();
    assert_clean(
        &parallels::check(&img.as_slice(), "structured", &limits),
        img.len(),
        &d,
    );
    let cs = d.cluster_size;
    let mut top = vec![Top::Unallocated; d.size.div_ceil(cs) as usize];
    for &k in d.clusters.keys() {
        if let Some(t) = top.get_mut(k as usize) {
            *t = Top::Data;
        }
    }
    let expected = Expected::new(cs, top, d.guest_bytes(), None);
    let files = Files {
        backing: None,
        data_file: None,
    };
    let mut img = expected.read_back(img, &files);
    if let Some(rules) = parallels::mutate::apply(m, &mut img) {
        let r = parallels::check(&img.as_slice(), "mutated", &limits);
        assert_caught(rules, &r, &img, &m);
    }
}

/// The name of a mutation kind: its Debug form up to the first field.
fn kind_name(m: &dyn std::fmt::Debug) -> String {
    let s = format!("{m:?}");
    s.split([' ', '{']).next().unwrap_or("").to_string()
}

/// What one structured_image input exercises, as feature names: the
/// description's shape, every cluster kind it holds, the files it names,
/// and the mutation kind when it applies. The committed seeds together hold
/// every feature of [`features`]`("structured_image")`.
fn qcow2_features(data: &[u8]) -> Vec<String> {
    use qcow2::write::ClusterData as C;
    let Ok((d, m)) = <(qcow2::write::Description, qcow2::mutate::Mutation)>::arbitrary(
        &mut Unstructured::new(data),
    ) else {
        return Vec::new();
    };
    let mut out = vec![
        format!("version {}", d.version),
        format!("refcount_order {}", d.refcount_order),
        format!("cluster_bits {}", d.cluster_bits),
        format!(
            "cluster_bits {} refcount_order {}",
            d.cluster_bits, d.refcount_order
        ),
    ];
    let compression = ["deflate", "zstd"][d.compression_type as usize & 1];
    for c in d.clusters.values() {
        out.push(match c {
            C::Data(_) => "data".into(),
            C::Zero => format!("zero v{}", d.version),
            C::Compressed(_) => format!("compressed {compression}"),
            C::Subclusters { .. } => "subclusters".into(),
        });
    }
    if d.extended_l2 {
        out.push("extended_l2".into());
    }
    if let Some((_, format)) = &d.backing {
        out.push(format!("backing {}", format.as_deref().unwrap_or("probed")));
    }
    if let Some((_, raw)) = &d.data_file {
        out.push(format!("data_file raw={raw}"));
    }
    if !d.snapshots.is_empty() {
        out.push("snapshots".into());
    }
    if !d.bitmaps.is_empty() {
        out.push("bitmaps".into());
    }
    if d.lazy_refcounts {
        out.push("lazy_refcounts".into());
    }
    if let Ok(w) = qcow2::write::write(&d) {
        let mut img = w.image;
        if qcow2::mutate::apply(m, &mut img).is_some() {
            out.push(format!("mutation {}", kind_name(&m)));
        }
    }
    out
}

/// What one structured_qed_parallels input exercises (see [`qcow2_features`]).
fn qed_parallels_features(data: &[u8]) -> Vec<String> {
    let mut u = Unstructured::new(data);
    let mut out = Vec::new();
    if !bool::arbitrary(&mut u).unwrap_or(false) {
        let Ok((d, m)) = <(qed::write::Description, qed::mutate::Mutation)>::arbitrary(&mut u)
        else {
            return out;
        };
        out.push(format!("qed cluster_size {}", d.cluster_size));
        out.push(format!("qed table_size {}", d.table_size));
        for c in d.clusters.values() {
            out.push(match c {
                qed::write::Cluster::Data(_) => "qed data".into(),
                qed::write::Cluster::Zero => "qed zero".into(),
            });
        }
        if let Some((_, raw)) = &d.backing {
            out.push(format!("qed backing raw={raw}"));
        }
        if let Ok(mut img) = qed::write::write(&d) {
            if qed::mutate::apply(m, &mut img).is_some() {
                out.push(format!("qed mutation {}", kind_name(&m)));
            }
        }
    } else {
        let Ok((d, m)) =
            <(parallels::write::Description, parallels::mutate::Mutation)>::arbitrary(&mut u)
        else {
            return out;
        };
        out.push(format!("parallels cluster_size {}", d.cluster_size));
        out.push(format!("parallels ext_magic={}", d.ext_magic));
        if !d.clusters.is_empty() {
            out.push("parallels data".into());
        }
        if d.bitmap.is_some() {
            out.push("parallels bitmap".into());
        }
        if let Ok(mut img) = parallels::write::write(&d) {
            if parallels::mutate::apply(m, &mut img).is_some() {
                out.push(format!("parallels mutation {}", kind_name(&m)));
            }
        }
    }
    out
}

/// The features one input of `target` exercises; empty for another target.
pub fn input_features(target: &str, data: &[u8]) -> Vec<String> {
    match target {
        "structured_image" => qcow2_features(data),
        "structured_qed_parallels" => qed_parallels_features(data),
        _ => Vec::new(),
    }
}

/// Every feature the seeds of `target` must hold together: each mutation
/// kind applied, each cluster kind (compressed with both algorithms), each
/// shape and each kind of other file.
pub fn features(target: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: String| out.push(s);
    match target {
        "structured_image" => {
            for v in [2, 3] {
                add(format!("version {v}"));
                add(format!("zero v{v}"));
            }
            for o in 0..=6 {
                add(format!("refcount_order {o}"));
            }
            // 1-bit refcounts at 512 B clusters, 16-bit ones at 16 KiB.
            add("cluster_bits 9 refcount_order 0".into());
            add("cluster_bits 14 refcount_order 4".into());
            for b in [9, 10, 11, 12, 14] {
                add(format!("cluster_bits {b}"));
            }
            for s in [
                "data",
                "compressed deflate",
                "compressed zstd",
                "subclusters",
                "extended_l2",
                "backing probed",
                "backing qcow2",
                "backing raw",
                "data_file raw=true",
                "data_file raw=false",
                "snapshots",
                "bitmaps",
                "lazy_refcounts",
            ] {
                add(s.into());
            }
            for k in 0..qcow2::mutate::KINDS {
                add(format!(
                    "mutation {}",
                    kind_name(&qcow2::mutate::Mutation::from_parts(k, 0, 0))
                ));
            }
        }
        "structured_qed_parallels" => {
            for s in [
                "qed data",
                "qed zero",
                "qed backing raw=true",
                "qed backing raw=false",
            ] {
                add(s.into());
            }
            for c in [4096, 8192] {
                add(format!("qed cluster_size {c}"));
            }
            for t in [1, 2, 4] {
                add(format!("qed table_size {t}"));
            }
            for k in 0..qed::mutate::KINDS {
                add(format!(
                    "qed mutation {}",
                    kind_name(&qed::mutate::Mutation::from_parts(k, 0, 0))
                ));
            }
            for c in [512, 1024, 4096, 16384] {
                add(format!("parallels cluster_size {c}"));
            }
            for s in [
                "parallels ext_magic=true",
                "parallels ext_magic=false",
                "parallels data",
                "parallels bitmap",
            ] {
                add(s.into());
            }
            for k in 0..parallels::mutate::KINDS {
                add(format!(
                    "parallels mutation {}",
                    kind_name(&parallels::mutate::Mutation::from_parts(k, 0, 0))
                ));
            }
        }
        _ => {}
    }
    out
}

/// The committed seeds of a structured target (corpus/fuzz/<target>/):
/// inputs of 64 B to 1 KiB from a fixed SplitMix64 stream, each kept when
/// it exercises a feature no earlier one does, until every feature of
/// [`features`] is held (or 200,000 candidates are spent). Deterministic;
/// fuzz/tests/structured.rs compares them with the committed files.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use std::collections::BTreeSet;
    let mut missing: BTreeSet<String> = features(target).into_iter().collect();
    let mut rng = qconform_core::rng::SplitMix64::new(0x5eed_5ce0 ^ target.len() as u64);
    let mut out = Vec::new();
    for _ in 0..200_000 {
        if missing.is_empty() {
            break;
        }
        let len = 64 + (rng.next_u64() % 960) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let got = input_features(target, &data);
        if got.iter().any(|f| missing.contains(f)) {
            for f in &got {
                missing.remove(f);
            }
            out.push(data);
        }
    }
    out
}
