//! QED: qemu-img-made images with one edit per rule (corpus/images/*.qed),
//! against the recipes and against qemu-img 10.0.2 (exit codes and the
//! corruption and leak counts), whose known laxities are named here.

use qconform::corpus::qed_cases;
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

/// (case, qemu-img's exit code, why we differ).
const QEMU_IMG_LAX: &[(&str, i32, &str)] = &[
    ("qed-table-size-1", 1, "qemu-img creates it, then refuses to open it: its table-offset overflow check rejects a one-cluster table; spec: table_size is a power of 2 in [1, 16]"),
    (
    "qed-header-size",
    3,
    "qemu-img opens header_size 0 and calls cluster 0 leaked; spec: header_size is the number of clusters used by the header (at least the one holding it)",
)];

#[test]
fn every_qed_case_reports_its_rules_and_matches_qemu_img() {
    let mut bad = Vec::new();
    for case in qed_cases() {
        let file = images().join(format!("{}.qed", case.name));
        let out = qconform()
            .args(["check", "--output", "json"])
            .arg(&file)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.code() != Some(case.exit) {
            bad.push(format!(
                "{}: exit {:?}, recipe says {}",
                case.name,
                out.status.code(),
                case.exit
            ));
        }
        let rules: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["rule"].as_str())
            .collect();
        for r in case.expect {
            if !rules.contains(&r.id) {
                bad.push(format!("{}: {r} not reported ({rules:?})", case.name));
            }
        }
        let q = Command::new("qemu-img")
            .args(["check", "-f", "qed", "--output=json"])
            .arg(&file)
            .output()
            .expect("qemu-img must be installed");
        let qexit = q.status.code().unwrap_or(-1);
        match QEMU_IMG_LAX.iter().find(|(n, _, _)| *n == case.name) {
            Some((_, e, why)) if qexit != *e => bad.push(format!(
                "{}: qemu-img now exits {qexit} ({why}): update the list",
                case.name
            )),
            Some(_) => {}
            None if qexit != case.exit => bad.push(format!(
                "{}: qemu-img exits {qexit}, we {}",
                case.name, case.exit
            )),
            None => {
                if let Ok(qj) = serde_json::from_slice::<serde_json::Value>(&q.stdout) {
                    for k in [
                        "corruptions",
                        "leaks",
                        "allocated-clusters",
                        "total-clusters",
                    ] {
                        let (a, b) = (
                            qj.get(k).and_then(|x| x.as_u64()).unwrap_or(0),
                            v.get(k).and_then(|x| x.as_u64()).unwrap_or(0),
                        );
                        if a != b {
                            bad.push(format!("{}: {k} {b}, qemu-img {a}", case.name));
                        }
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn qed_reads_like_qemu_img() {
    for name in ["qed-data", "qed-need-check"] {
        let file = images().join(format!("{name}.qed"));
        let bad = qemu_read::reads(Path::new(env!("CARGO_BIN_EXE_qconform")), "qed", &file)
            .differences(name);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}

#[test]
fn forced_qed_on_other_bytes_names_the_magic_rule() {
    let out = qconform()
        .args(["check", "-f", "qed"])
        .arg(images().join("v3-data.qcow2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[qed.header.magic]"));
}
