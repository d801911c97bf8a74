//! `check -r leaks --repair-out NEW IMAGE` against `qemu-img check -r
//! leaks` on a copy: for every corpus and mutator case with leaks that
//! qemu-img repairs (its double check exits 0), qconform's copy is called
//! clean by both tools, reads as the image qemu-img repaired, and the
//! original is untouched.

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
    cmd.output().unwrap().status.code().unwrap_or(-1)
}

/// Whether qemu-img repairs a copy of `image` (exit 0); the copy is left
/// at `dir/qemu.qcow2`.
fn qemu_repairs(dir: &Path, image: &Path) -> bool {
    let copy = dir.join("qemu.qcow2");
    std::fs::copy(image, &copy).unwrap();
    code(
        Command::new("qemu-img")
            .args(["check", "-q", "-r", "leaks"])
            .arg(&copy),
    ) == 0
}

/// Repairs `image` with qconform and compares with qemu-img's repair.
fn repaired_like_qemu(image: &Path) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let name = image.display();
    let before = digest(image);
    let new = d.join("ours.qcow2");
    let out = qconform()
        .args(["check", "-r", "leaks", "--repair-out"])
        .arg(&new)
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(digest(image), before, "{name}: the original changed");
    assert!(
        qemu_repairs(d, image),
        "{name}: qemu-img does not repair it"
    );
    assert_eq!(
        code(Command::new("qemu-img").args(["check", "-q"]).arg(&new)),
        0,
        "{name}"
    );
    assert_eq!(code(qconform().arg("check").arg(&new)), 0, "{name}");
    let theirs = d.join("theirs.raw");
    let convert = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(d.join("qemu.qcow2"))
        .arg(&theirs)
        .status()
        .unwrap();
    assert!(convert.success());
    let ours = d.join("ours.raw");
    assert_eq!(
        code(
            qconform()
                .args(["cat", "--backing", "ignore", "-o"])
                .arg(&ours)
                .arg(&new)
        ),
        0,
        "{name}: cat"
    );
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "{name}: the repaired copy reads differently from qemu-img's repair"
    );
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/images")
}

#[test]
fn corpus_leaks_qemu_img_repairs_are_repaired_alike() {
    let mut repaired = Vec::new();
    for e in std::fs::read_dir(corpus()).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "qcow2") {
            continue;
        }
        let out = qconform()
            .args(["check", "--output", "json"])
            .arg(&p)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["leaks"].as_u64().unwrap_or(0) == 0 || v["check-errors"].as_u64() != Some(0) {
            continue;
        }
        let t = tempfile::tempdir().unwrap();
        if !qemu_repairs(t.path(), &p) {
            continue;
        }
        repaired_like_qemu(&p);
        repaired.push(p.file_name().unwrap().to_string_lossy().into_owned());
    }
    // The cases this was written against, so an empty loop cannot pass.
    for want in [
        "leaked-cluster.qcow2",
        "refcount-up.qcow2",
        "bitmaps-autoclear-cleared.qcow2",
    ] {
        assert!(
            repaired.iter().any(|r| r == want),
            "{want} not repaired: {repaired:?}"
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
        repaired_like_qemu(&p);
    }
}

#[test]
fn the_output_is_never_the_input_nor_an_existing_file() {
    let img = corpus().join("leaked-cluster.qcow2");
    let before = digest(&img);
    let t = tempfile::tempdir().unwrap();
    let existing = t.path().join("x.qcow2");
    std::fs::write(&existing, b"keep").unwrap();
    for out in [&img, &existing] {
        let c = code(
            qconform()
                .args(["check", "-r", "leaks", "--repair-out"])
                .arg(out)
                .arg(&img),
        );
        assert_eq!(c, 1);
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
    assert_eq!(digest(&img), before);
    // -r without --repair-out is a usage error: there is no in-place repair.
    assert_eq!(code(qconform().args(["check", "-r", "leaks"]).arg(&img)), 1);
}
