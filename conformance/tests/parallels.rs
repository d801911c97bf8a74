//! Parallels: QEMU's own sample images and one edit per rule (corpus/images/
//! *.parallels, built by `cargo xtask corpus --only parallels`), against the
//! recipes and against qemu-img 10.0.2, whose known faults are named here.

use qconform::corpus::parallels_cases;
use std::path::{Path, PathBuf};
use std::process::Command;

use qconform_testkit::qemu_read;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/images")
}

/// qemu-img check's exit code; 128 + N when a signal N killed it (134 = SIGABRT), as a shell shows it.
fn qemu_check(file: &Path) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let st = Command::new("qemu-img")
        .args(["check", "-f", "parallels"])
        .arg(file)
        .output()
        .expect("qemu-img must be installed")
        .status;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Where qemu-img 10.0.2 and the spec part, by case: (case, qemu-img's exit code, why we differ).
const QEMU_IMG_FAULTS: &[(&str, i32, &str)] = &[
    ("parallels-with-bitmap", 3, "qemu-img ignores ext_off and the bitmap cluster and calls them leaked; spec (Data Area): clusters allocated by ext_off and extensions are used"),
    ("parallels-bat-past-eof", 134, "qemu-img aborts on an assertion; spec (BAT): the value must be lower than the desired file size"),
    ("parallels-bat-below-data", 0, "qemu-img does not check it; spec (BAT): the value must not be lower than data offset"),
    ("parallels-bat-unaligned", 0, "qemu-img does not check it; spec (BAT): (cluster offset - data offset) must be aligned to cluster size"),
    ("parallels-fake", 0, "qemu-img checks neither BAT coverage nor alignment against the computed data offset"),
    ("parallels-bitmap-granularity", 134, "qemu-img aborts on a granularity that is not a power of 2; spec: granularity must be a power of 2"),
    ("parallels-bitmap-l1-past-eof", 3, "qemu-img ignores the bitmap (and calls the extension leaked); spec: L1 clusters obey the BAT rules"),
    ("parallels-bitmap-size", 1, "qemu-img refuses to open; spec: the size should equal the disk size (a should: a violation here)"),
    ("parallels-ext-checksum", 1, "qemu-img refuses to open; we finish the check and report the checksum"),
    ("parallels-ext-feature-overrun", 1, "qemu-img refuses to open; we finish the check and report the feature list"),
    ("parallels-ext-magic", 1, "qemu-img refuses to open; we finish the check and report the magic"),
    ("parallels-ext-past-eof", 1, "qemu-img refuses to open; we finish the check and report the placement"),
    ("parallels-ext-unknown-feature", 1, "qemu-img refuses unknown features; spec: reading is allowed, only NECESSARY ones forbid changes"),
];

#[test]
fn every_parallels_case_reports_its_rules_and_exit_code() {
    for case in parallels_cases() {
        let file = images().join(format!("{}.parallels", case.name));
        let out = qconform()
            .args(["check", "--output", "json"])
            .arg(&file)
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(out.status.code(), Some(case.exit), "{}: {v:#}", case.name);
        let rules: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["rule"].as_str())
            .collect();
        for r in case.expect {
            assert!(
                rules.contains(&r.id),
                "{}: {r} missing, got {rules:?}",
                case.name
            );
        }
    }
}

#[test]
fn exit_codes_agree_with_qemu_img_except_its_named_faults() {
    let mut bad = Vec::new();
    for case in parallels_cases() {
        let file = images().join(format!("{}.parallels", case.name));
        let theirs = qemu_check(&file);
        match QEMU_IMG_FAULTS.iter().find(|(n, _, _)| *n == case.name) {
            Some((_, expected, why)) if theirs != *expected => bad.push(format!(
                "{}: qemu-img now exits {theirs}, not {expected} ({why}): update the list",
                case.name
            )),
            Some(_) => {}
            None if theirs != case.exit => bad.push(format!(
                "{}: qemu-img exits {theirs}, we {}",
                case.name, case.exit
            )),
            None => {}
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn samples_read_exactly_like_qemu_img_and_the_bitmap_is_clean() {
    for name in ["parallels-v1", "parallels-v2", "parallels-fake"] {
        let file = images().join(format!("{name}.parallels"));
        let q = Path::new(env!("CARGO_BIN_EXE_qconform"));
        // parallels-fake's BAT entries are not cluster multiples past the
        // data offset: a corruption, so reads refuse it by default (qemu-img
        // convert reads it); --force reads it as qemu-img does.
        let extra: &[&str] = if name == "parallels-fake" {
            let out = std::process::Command::new(q)
                .arg("cat")
                .arg(&file)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&out.stderr).contains("parallels.bat.cluster-aligned"));
            &["--force"]
        } else {
            &[]
        };
        let r = qemu_read::reads_with(q, "parallels", &file, extra);
        let bad = r.differences(name);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        if name != "parallels-fake" {
            let ours = r.ours.unwrap_or_default();
            assert!(
                ours.len() >= 64 << 10 && ours[..64 << 10].iter().all(|&b| b == 0x11),
                "{name}: the first 64 KiB must read 0x11"
            );
        }
    }
    let out = qconform()
        .arg("info")
        .arg(images().join("parallels-with-bitmap.parallels"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "dirty clusters 5-6",
        "dirty clusters 10-12",
        "dirty clusters 30-30",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}

#[test]
fn other_formats_are_not_ours() {
    // QEMU's non-Parallels samples (vpc, vmdk, vhdx, ...): exit 1, never a crash.
    let samples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/images");
    let out = qconform()
        .args(["check", "-f", "parallels"])
        .arg(samples.join("v3-data.qcow2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[parallels.header.magic]"));
}

#[test]
fn foreign_samples_exit_1_and_never_crash() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/foreign");
    let mut n = 0;
    for e in std::fs::read_dir(&foreign).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "bz2") {
            continue;
        }
        // The first 8 MiB of each (some decompress to hundreds of MiB of zeros).
        let out = Command::new("bunzip2")
            .arg("-c")
            .arg(&p)
            .output()
            .expect("bunzip2 must be installed (bzip2)");
        let img = dir.path().join(p.file_stem().unwrap());
        std::fs::write(&img, &out.stdout[..out.stdout.len().min(8 << 20)]).unwrap();
        for args in [
            &["check"][..],
            &["check", "-f", "qcow2"],
            &["check", "-f", "qed"],
            &["check", "-f", "parallels"],
            &["info"],
            &["map"],
        ] {
            let r = qconform().args(args).arg(&img).output().unwrap();
            assert_eq!(
                r.status.code(),
                Some(1),
                "{} {args:?}: {}",
                img.display(),
                String::from_utf8_lossy(&r.stdout)
            );
        }
        n += 1;
    }
    assert_eq!(
        n, 13,
        "corpus/foreign should hold QEMU's 13 foreign samples"
    );
}
