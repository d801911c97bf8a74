//! `check -r leaks|all --repair-out NEW IMAGE` against `qemu-img check -r
//! leaks|all` on a copy, for every corpus image and every mutator case
//! that needs a repair. Where qemu-img repairs (its own check and ours of
//! its result exit 0), qconform's copy is called clean by both tools and
//! reads (`cat`) as `qemu-img convert -O raw` reads qemu-img's repair; in
//! every case the original is byte-identical afterwards (sha256). The cases
//! qemu-img does not repair are named below with why, and the list must
//! stay exact: a case that starts or stops being repaired fails the test.

use qconform_testkit::tools::{output, qemu_convert, run};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn digest(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn code(cmd: &mut Command) -> i32 {
    run(cmd).0
}

fn qemu_check(fmt: &str, img: &Path, mode: Option<&str>) -> i32 {
    let mut c = Command::new("qemu-img");
    c.args(["check", "-q", "-f", fmt]);
    if let Some(m) = mode {
        c.args(["-r", m]);
    }
    code(c.arg(img))
}

/// What happened to one case under one mode.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Both repairs are clean to both tools and read alike.
    Alike,
    /// qemu-img does not repair it; our repair exits with this code.
    NotByQemu(i32),
    /// qemu-img repairs it, qconform refuses (exit 1, nothing written).
    OnlyByQemu,
}

/// Repairs `image` (of format `fmt`) with both tools in `dir` (which holds
/// the files the image names) and compares.
fn compare(dir: &Path, image: &Path, fmt: &str, mode: &str) -> Outcome {
    let name = image.file_name().unwrap().to_string_lossy().into_owned();
    let before = digest(image);
    let theirs = dir.join(format!("{name}.{mode}.qemu.{fmt}"));
    std::fs::copy(image, &theirs).unwrap();
    qemu_check(fmt, &theirs, Some(mode));
    let qemu_repaired =
        qemu_check(fmt, &theirs, None) == 0 && code(qconform().arg("check").arg(&theirs)) == 0;
    let ours = dir.join(format!("{name}.{mode}.ours.{fmt}"));
    let out = output(
        qconform()
            .args(["check", "-r", mode, "--repair-out"])
            .arg(&ours)
            .arg(image),
    );
    assert_eq!(digest(image), before, "{name}: the original changed");
    let ours_code = out.status.code().unwrap_or(-1);
    if !qemu_repaired {
        return Outcome::NotByQemu(ours_code);
    }
    let said = || {
        format!(
            "{name} -r {mode}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if ours_code == 1 && !ours.exists() {
        return Outcome::OnlyByQemu;
    }
    assert_eq!(ours_code, 0, "{}", said());
    assert_eq!(qemu_check(fmt, &ours, None), 0, "{}", said());
    assert_eq!(code(qconform().arg("check").arg(&ours)), 0, "{}", said());
    let raw = dir.join(format!("{name}.{mode}.ours.raw"));
    assert_eq!(
        code(qconform().args(["cat", "-q", "-o"]).arg(&raw).arg(&ours)),
        0,
        "{name}: cat"
    );
    let theirs_raw = qemu_convert(dir, &theirs.display().to_string(), &["-f", fmt]);
    assert!(
        std::fs::read(&raw).unwrap() == theirs_raw,
        "{name} -r {mode}: the repaired copy reads differently from qemu-img's repair"
    );
    Outcome::Alike
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/images")
}

/// The format of a corpus file, by its extension (the corpus names them so).
fn format_of(p: &Path) -> Option<&'static str> {
    match p.extension()?.to_str()? {
        "qcow2" => Some("qcow2"),
        "qed" => Some("qed"),
        "parallels" => Some("parallels"),
        _ => None,
    }
}

/// Cases qemu-img can check but does not repair (its check, or ours, of
/// its repair is not clean): (names, mode or "" for both, our exit code,
/// why). Cases qemu-img cannot even check (exit 1 on the original: a
/// header it refuses, a file it needs and does not have, a LUKS secret)
/// are counted apart. `mutated` cases are named by the mutation.
const NOT_BY_QEMU: &[(&[&str], &str, i32, &str)] = &[
    (&["parallels-bat-below-data.parallels", "BatBelowData"], "all", 0,
        "spec, not qemu-img: clusters lie in the data area; qemu-img reads the header as guest data, we clear the entry"),
    (&["parallels-bat-below-data.parallels", "BatBelowData"], "leaks", 2,
        "qemu-img calls it clean; -r leaks leaves the corruption we see"),
    (&["parallels-with-bitmap.parallels"], "", 0,
        "spec, not qemu-img: it ignores ext_off and cuts the Format Extension off as leaked (FINDINGS.md); ours is an identical copy"),
    (&["reftable-reserved.qcow2"], "all", 0,
        "qemu-img's rebuild stops at the reserved bits; ours rebuilds the refcounts and is clean"),
    (&["compressed-offset-high-bits.qcow2", "l1-l2-unaligned.qcow2", "l1-reserved.qcow2",
       "l2-compressed-copied.qcow2", "l2-misaligned.qcow2", "l2-past-eof.qcow2", "l2-reserved.qcow2",
       "refcount-overflow.qcow2", "snapshot-l1-huge.qcow2", "snapshot-l1-unaligned.qcow2",
       "subcluster-alloc-and-zero.qcow2", "subcluster-compressed-bitmap.qcow2",
       "subcluster-unallocated-alloc.qcow2", "parallels-bitmap-l1-past-eof.parallels",
       "parallels-bitmap-granularity.parallels", "parallels-data-off-unaligned.parallels",
       "parallels-bat-unaligned.parallels", "parallels-fake.parallels",
       "MisalignDataOffset", "DataPastEof", "L2ReservedBit", "L1ReservedBit", "CompressedPastEof",
       "SubclusterAllocAndZero", "SnapshotL1Unaligned", "BatUnaligned"], "all", 1,
        "a corruption qemu-img leaves (it repairs refcounts, COPIED and the header bits; Parallels: it does not check alignment, aborts or cuts the extension): ours refuses"),
    (&["qed-data-past-eof.qed", "qed-l2-offset-invalid.qed", "qed-leak.qed", "DataPastEof", "L2PastEof", "MisalignData", "Leak"], "", 3,
        "QED: the invalid entries are cleared, but the clusters they left stay leaked (no refcounts; qemu-img does not truncate), as in qemu-img"),
    (&["qed-duplicate.qed", "DuplicateData"], "", 2,
        "QED: a cluster referenced twice stays so, as in qemu-img"),
    (&["qed-header-size.qed"], "", 1,
        "qemu-img opens a header_size our check cannot finish with: ours refuses, there is nothing certain to repair from"),
    (&["*"], "leaks", 2,
        "-r leaks repairs leaks (and COPIED when nothing else is wrong), not corruptions, as qemu-img"),
];

/// The named reason for a case qemu-img does not repair, if any: the first
/// entry naming the case (or "*") under `mode` whose exit code is `code`.
fn named(case: &str, mode: &str, code: i32) -> Option<&'static str> {
    NOT_BY_QEMU.iter().find_map(|(names, m, c, why)| {
        (names.iter().any(|n| *n == case || *n == "*")
            && (m.is_empty() || *m == mode)
            && *c == code)
            .then_some(*why)
    })
}

/// Runs every case of `dir` (files `(case name, path, format)`) under both
/// modes; fails on a case qemu-img repairs and we do not alike, or one it
/// does not repair without a named reason. Returns the cases repaired alike.
fn run_cases(dir: &Path, cases: &[(String, PathBuf, &'static str)]) -> Vec<String> {
    let mut alike = Vec::new();
    let mut unnamed = Vec::new();
    let mut only = Vec::new();
    let mut cannot_check = 0;
    for (case, p, fmt) in cases {
        // Images both tools call clean need no repair.
        let qemu_before = qemu_check(fmt, p, None);
        if code(qconform().arg("check").arg(p)) == 0 && qemu_before == 0 {
            continue;
        }
        for mode in ["leaks", "all"] {
            match compare(dir, p, fmt, mode) {
                Outcome::Alike => alike.push(format!("{mode}:{case}")),
                Outcome::OnlyByQemu => only.push(format!("{mode}:{case}")),
                Outcome::NotByQemu(_) if qemu_before == 1 => cannot_check += 1,
                Outcome::NotByQemu(c) => {
                    if named(case, mode, c).is_none() {
                        unnamed.push(format!("{mode}:{case} (ours exits {c})"));
                    }
                }
            }
        }
    }
    eprintln!("repaired alike: {alike:?}; qemu-img cannot check: {cannot_check} runs");
    assert!(
        unnamed.is_empty(),
        "not repaired by qemu-img, and not named: {unnamed:?}"
    );
    assert!(
        only.iter().all(|c| MISSING.contains(&c.as_str())),
        "repaired by qemu-img only: {only:?}"
    );
    alike
}

/// What qemu-img repairs and qconform does not yet (refused, exit 1,
/// nothing written): nothing today. A case that joins this list fails the
/// test until it is named here.
const MISSING: &[&str] = &[];

#[test]
fn corpus_images_are_repaired_as_qemu_img_repairs_them() {
    let t = tempfile::tempdir().unwrap();
    // The images' neighbours (backing and data files) come along: both
    // tools open them from the copies' folder.
    let dir = t.path();
    let mut cases = Vec::new();
    for e in std::fs::read_dir(corpus()).unwrap().flatten() {
        let to = dir.join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        if let Some(fmt) = format_of(&to) {
            cases.push((e.file_name().to_string_lossy().into_owned(), to, fmt));
        }
    }
    cases.sort();
    let alike = run_cases(dir, &cases);
    // The cases this was written against, so an empty loop cannot pass.
    for want in [
        "leaks:leaked-cluster.qcow2",
        "all:refcount-down.qcow2",
        "all:no-refcount-table.qcow2",
        "all:refblock-past-eof.qcow2",
        "all:refblock-shared-with-l2.qcow2",
        "all:l2-duplicate.qcow2",
        "all:lazy-refcounts-dirty.qcow2",
        "leaks:l1-copied-cleared.qcow2",
        "all:l2-copied-cleared.qcow2",
        "leaks:bitmaps-autoclear-cleared.qcow2",
        "all:parallels-bat-duplicate.parallels",
        "all:parallels-bat-past-eof.parallels",
        "leaks:parallels-in-use-open.parallels",
        "leaks:parallels-leak.parallels",
        "all:snapshot-extra-huge.qcow2",
        "all:snapshot-extra-short.qcow2",
    ] {
        assert!(
            alike.iter().any(|r| r == want),
            "{want} not repaired alike: {alike:?}"
        );
    }
}

/// The snapshot table rewrites: what `qemu-img info` lists of our repair is
/// what it lists of its own (ids, names, dates, VM state and clock, icount,
/// in order), and our check of the result agrees with qemu-img's.
#[test]
fn snapshot_tables_are_rewritten_as_qemu_img_rewrites_them() {
    let t = tempfile::tempdir().unwrap();
    let snapshots = |p: &Path| {
        let out = output(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(p),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["snapshots"].clone()
    };
    for name in ["snapshot-extra-huge.qcow2", "snapshot-extra-short.qcow2"] {
        let img = corpus().join(name);
        let theirs = t.path().join(format!("{name}.qemu"));
        std::fs::copy(&img, &theirs).unwrap();
        assert_eq!(qemu_check("qcow2", &theirs, Some("all")), 0, "{name}");
        let ours = t.path().join(format!("{name}.ours"));
        let out = output(
            qconform()
                .args(["check", "-r", "all", "--repair-out"])
                .arg(&ours)
                .arg(&img),
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{name}: {said}");
        assert!(
            said.contains("the snapshot table rewritten"),
            "{name}: {said}"
        );
        let (a, b) = (snapshots(&ours), snapshots(&theirs));
        assert!(a.as_array().is_some_and(|s| s.len() == 2), "{name}: {a}");
        assert_eq!(a, b, "{name}: the snapshots listed differ");
    }
}

/// Mutator cases: every mutation kind with the first two selectors, on a
/// writer image of each format.
#[test]
fn mutator_cases_are_repaired_as_qemu_img_repairs_them() {
    use qconform_core::{parallels, qcow2, qed};
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut cases = Vec::new();
    let mut add = |name: String, img: Vec<u8>, fmt: &'static str| {
        let p = dir.join(format!("{}-{}.{fmt}", cases.len(), name));
        std::fs::write(&p, img).unwrap();
        cases.push((name, p, fmt));
    };
    let mut d = qcow2::write::Description::new(4 << 20, 16);
    for k in 0..6u64 {
        d.clusters.insert(
            k * 5,
            qcow2::write::ClusterData::Data(vec![k as u8 + 1; 65536]),
        );
    }
    let base = qcow2::write::write(&d).unwrap().image;
    let mut q = qed::write::Description::new(1 << 20, 4096, 1);
    for k in [0u64, 3, 7, 9] {
        q.clusters
            .insert(k, qed::write::Cluster::Data(vec![k as u8 + 1; 4096]));
    }
    let qbase = qed::write::write(&q).unwrap();
    let mut pd = parallels::write::Description::new(1 << 20, 4096, true);
    for k in [0u64, 3, 7, 9] {
        pd.clusters.insert(k, vec![k as u8 + 1; 4096]);
    }
    let pbase = parallels::write::write(&pd).unwrap();
    let kind = |m: &dyn std::fmt::Debug| {
        let s = format!("{m:?}");
        s.split([' ', '{']).next().unwrap_or_default().to_owned()
    };
    // Every mutation kind of a format's mutator, on a copy of its base image.
    macro_rules! mutated {
        ($fmt:ident, $base:expr) => {
            for k in 0..$fmt::mutate::KINDS {
                for a in 0..2 {
                    let m = $fmt::mutate::Mutation::from_parts(k, a, 3);
                    let mut img = $base.clone();
                    if $fmt::mutate::apply(m, &mut img).is_some() {
                        add(kind(&m), img, stringify!($fmt));
                    }
                }
            }
        };
    }
    mutated!(qcow2, base);
    mutated!(qed, qbase);
    mutated!(parallels, pbase);
    let alike = run_cases(dir, &cases);
    for want in [
        "leaks:RefcountUp",
        "all:RefcountZero",
        "all:DuplicateDataPointer",
        "all:ClearCopied",
        "all:RefblockIsL2",
        "all:BatDuplicate",
        "all:BatPastEof",
        "leaks:InUseOpen",
        "all:DataOffPastEof",
        "leaks:Leak",
    ] {
        assert!(
            alike.iter().any(|r| r == want),
            "{want} not repaired alike: {alike:?}"
        );
    }
}

#[test]
fn mutated_refcounts_of_every_width_are_repaired_alike() {
    use qconform_core::qcow2::{mutate, write};
    let t = tempfile::tempdir().unwrap();
    for order in 1..=6 {
        let mut d = write::Description::new(4 << 20, 16);
        d.refcount_order = order;
        for k in 0..4u64 {
            d.clusters
                .insert(k * 3, write::ClusterData::Data(vec![k as u8 + 1; 65536]));
        }
        let mut img = write::write(&d).unwrap().image;
        for nth in 0..2 {
            assert!(mutate::apply(mutate::Mutation::RefcountUp { nth }, &mut img).is_some());
        }
        let p = t.path().join(format!("rc{order}.qcow2"));
        std::fs::write(&p, &img).unwrap();
        for mode in ["leaks", "all"] {
            assert_eq!(
                compare(t.path(), &p, "qcow2", mode),
                Outcome::Alike,
                "order {order}"
            );
        }
    }
}

#[test]
fn the_output_is_never_the_input_nor_an_existing_file() {
    let img = corpus().join("leaked-cluster.qcow2");
    let before = digest(&img);
    let t = tempfile::tempdir().unwrap();
    let existing = t.path().join("x.qcow2");
    std::fs::write(&existing, b"keep").unwrap();
    for mode in ["leaks", "all"] {
        for out in [&img, &existing] {
            let c = code(
                qconform()
                    .args(["check", "-r", mode, "--repair-out"])
                    .arg(out)
                    .arg(&img),
            );
            assert_eq!(c, 1);
        }
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
    assert_eq!(digest(&img), before);
    // -r without --repair-out is a usage error: there is no in-place repair.
    assert_eq!(code(qconform().args(["check", "-r", "all"]).arg(&img)), 1);
    // Nothing is left next to NEW by a refused repair.
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
}

/// NEED_CHECK is a note to both tools, so the loops above skip it: the copy
/// is byte-identical to qemu-img's repair (the bit cleared, nothing else).
#[test]
fn qed_need_check_is_cleared_as_qemu_img_clears_it() {
    let t = tempfile::tempdir().unwrap();
    let img = corpus().join("qed-need-check.qed");
    let theirs = t.path().join("theirs.qed");
    std::fs::copy(&img, &theirs).unwrap();
    assert_eq!(qemu_check("qed", &theirs, Some("all")), 0);
    for mode in ["leaks", "all"] {
        let ours = t.path().join(format!("{mode}.qed"));
        let out = output(
            qconform()
                .args(["check", "-r", mode, "--repair-out"])
                .arg(&ours)
                .arg(&img),
        );
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains("NEED_CHECK cleared"));
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "-r {mode}"
        );
        assert!(std::fs::read(&ours).unwrap() != std::fs::read(&img).unwrap());
    }
}
