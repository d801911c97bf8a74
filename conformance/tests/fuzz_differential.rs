//! The differential campaign against the real qemu-img (10.0.2; a missing
//! qemu-img fails these tests loudly): the committed regressions of the
//! raw-format fuzz targets and a few generated inputs per format go
//! through `qemu-img check`, `map` and `convert`, and every disagreement
//! must be one corpus/peers/qemu-img/expected.txt explains.

use qconform::fuzz::differential::{replay, Class, Options};
use qconform::fuzz::generate::GenFormat;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn options(format: GenFormat, target: &str, generate: u64) -> Options {
    let root = root();
    Options {
        corpus: vec![root.join("corpus/regressions").join(target)],
        generate,
        seed: 1,
        expect: Some(root.join("corpus/peers/qemu-img/expected.txt")),
        ..Options::new(format)
    }
}

fn agrees(format: GenFormat, target: &str) {
    let s = replay(&options(format, target, 40))
        .unwrap_or_else(|e| panic!("the differential cannot run (is qemu-img installed?): {e}"));
    assert!(s.inputs >= 40, "{target}: only {} inputs", s.inputs);
    assert!(s.read > 0, "{target}: no input was read and mapped by both");
    let bad = s.unexpected();
    assert!(
        bad.is_empty(),
        "{target}: {} unexplained disagreements with qemu-img:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!(
        "{target}: {} inputs, {} read by both, verdicts {:?}, classes {:?}",
        s.inputs, s.read, s.verdicts, s.classes
    );
}

#[test]
fn qcow2_regressions_and_generated_images_agree_with_qemu_img() {
    agrees(GenFormat::Qcow2, "qcow2_check");
}

#[test]
fn qed_regressions_and_generated_images_agree_with_qemu_img() {
    agrees(GenFormat::Qed, "qed_check");
}

#[test]
fn parallels_regressions_and_generated_images_agree_with_qemu_img() {
    agrees(GenFormat::Parallels, "parallels_check");
}

/// The comparison is not blind: without the expectations file, the known
/// faults it explains come back as disagreements — the QED seeds' table
/// size 1, which qemu-img cannot open, and the Parallels BAT entry past
/// the end of the file on which `qemu-img check` aborts.
#[test]
fn known_faults_are_disagreements_without_the_expectations_file() {
    let root = root();
    let qed = replay(&Options {
        corpus: vec![root.join("corpus/fuzz/qed_check/empty")],
        ..Options::new(GenFormat::Qed)
    })
    .expect("qemu-img runs");
    let d = &qed.disagreements;
    assert!(
        d.iter().any(|d| d.class == Class::Exit
            && !d.expected
            && d.rules.contains(&"qemu-img.qed.table-size-1")
            && d.detail.contains("qemu-img check exits 1")),
        "{d:?}"
    );
    assert_eq!(qed.exit_code(), 2);
    let parallels = replay(&Options {
        corpus: vec![
            root.join("corpus/peers/qemu-img/check-parallels/finding-0-crash/image.parallels")
        ],
        ..Options::new(GenFormat::Parallels)
    })
    .expect("qemu-img runs");
    assert!(
        parallels
            .disagreements
            .iter()
            .any(|d| d.class == Class::Crash && d.rules.contains(&"parallels.bat.inside-file")),
        "{:?}",
        parallels.disagreements
    );
}
