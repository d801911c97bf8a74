//! The qconform binary as a user runs it: exit codes, JSON shape, messages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn image(name: &str) -> PathBuf {
    root().join("corpus/images").join(format!("{name}.qcow2"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn exit_codes_follow_qemu_img_check() {
    for (name, code) in [
        ("v3-data", 0),
        ("unknown-incompatible-bit", 1),
        ("refcount-down", 2),
        ("leaked-cluster", 3),
    ] {
        let (got, out, _) = run(qconform().arg("check").arg(image(name)));
        assert_eq!(got, code, "{name}: {out}");
    }
}

#[test]
fn strict_counts_violations_as_corruptions() {
    let img = image("header-padding-nonzero");
    assert_eq!(run(qconform().arg("check").arg(&img)).0, 0);
    let (code, out, _) = run(qconform().args(["check", "--strict"]).arg(&img));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("qcow2.header.padding-zero"));
}

#[test]
fn json_output_keeps_qemu_img_field_names_and_adds_findings() {
    let (code, out, _) = run(qconform()
        .args(["check", "--output", "json"])
        .arg(image("refcount-up")));
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "filename",
        "format",
        "check-errors",
        "corruptions",
        "leaks",
        "image-end-offset",
        "total-clusters",
        "allocated-clusters",
        "fragmented-clusters",
        "compressed-clusters",
        "findings",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {out}");
    }
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["leaks"], 1);
    let f = &v["findings"][0];
    assert!(
        f["rule"].is_string()
            && f["severity"].is_string()
            && f["offset"].is_u64()
            && f["detail"].is_string(),
        "{f}"
    );
}

#[test]
fn human_output_names_file_offset_and_rule() {
    let (_, out, _) = run(qconform().arg("check").arg(image("l2-misaligned")));
    assert!(
        out.contains("l2-misaligned.qcow2: CORRUPTION [qcow2.l2.entry-aligned] at offset 0x"),
        "{out}"
    );
    assert!(out.contains("qcow2.rst §Cluster mapping"), "{out}");
}

#[test]
fn missing_file_is_a_check_error() {
    let (code, out, _) = run(qconform().args(["check", "/nonexistent/x.qcow2"]));
    assert_eq!(code, 1);
    assert!(
        out.contains("[input.readable]") && out.contains("/nonexistent/x.qcow2"),
        "{out}"
    );
}

#[test]
fn forced_format_on_other_bytes_names_the_magic_rule() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("raw.img");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let (code, out, _) = run(qconform().args(["check", "-f", "qcow2"]).arg(&p));
    assert_eq!(code, 1);
    assert!(out.contains("[qcow2.header.magic]"), "{out}");
    let (code, out, _) = run(qconform().arg("check").arg(&p));
    assert_eq!(code, 1);
    assert!(out.contains("[input.format-known]"), "{out}");
}

#[test]
fn several_images_exit_with_the_worst_verdict() {
    let (code, _, _) = run(qconform()
        .arg("check")
        .arg(image("v3-data"))
        .arg(image("leaked-cluster"))
        .arg(image("refcount-down")));
    assert_eq!(code, 2);
}

#[test]
fn info_shows_features_snapshots_and_bitmaps() {
    let (code, out, _) = run(qconform().arg("info").arg(image("snapshots")));
    assert_eq!(code, 0);
    assert!(
        out.contains("snapshots: 2") && out.contains("first") && out.contains("second"),
        "{out}"
    );
    let (_, out, _) = run(qconform().arg("info").arg(image("bitmaps")));
    assert!(
        out.contains("autoclear features: bitmaps")
            && out.contains("bitmaps: 2")
            && out.contains("granularity 65536"),
        "{out}"
    );
    let (_, out, _) = run(qconform().arg("info").arg(image("extended-l2")));
    assert!(
        out.contains("incompatible features: extended L2 entries"),
        "{out}"
    );
    let (_, out, _) = run(qconform()
        .args(["info", "--output", "json"])
        .arg(image("compressed-zstd")));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["header"]["compression_type"], 1);
}

#[test]
fn rules_lists_every_rule_with_its_section() {
    let (code, out, _) = run(qconform()
        .args(["rules", "--output", "json"])
        .current_dir(root()));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), qconform_core::rules::all().count());
    let rule = list
        .iter()
        .find(|r| r["id"] == "qcow2.l2.entry-aligned")
        .unwrap();
    assert_eq!(rule["section"], "Cluster mapping");
    assert!(rule["corpus_cases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "l2-misaligned"));
}

#[test]
fn conform_passes_on_the_corpus_and_fails_on_a_changed_golden() {
    let (code, out, _) = run(qconform().arg("conform").current_dir(root()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 differ"), "{out}");
    // A copy of the tree with one golden file changed must fail and say which.
    let dir = tempfile::tempdir().unwrap();
    let (imgs, gold) = (
        dir.path().join("corpus/images"),
        dir.path().join("golden/check"),
    );
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&gold).unwrap();
    for n in ["v3-data", "refcount-up"] {
        std::fs::copy(image(n), imgs.join(format!("{n}.qcow2"))).unwrap();
        let g = std::fs::read_to_string(root().join(format!("golden/check/{n}.snap"))).unwrap();
        let g = if n == "refcount-up" {
            g.replace("\"leaks\": 1", "\"leaks\": 0")
        } else {
            g
        };
        std::fs::write(gold.join(format!("{n}.snap")), g).unwrap();
    }
    let (code, out, _) = run(qconform().args(["conform", "--root"]).arg(dir.path()));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("refcount-up") && l.ends_with("MISMATCH")),
        "{out}"
    );
}
