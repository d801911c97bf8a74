//! `qconform fuzz image` is tested to find what it exists to find, and not
//! to cry wolf: fixed-seed campaigns of a few seconds against qemu-img
//! (whose Parallels check aborts on a BAT entry past the end of the file),
//! against qconform itself (which must give no finding), and against fakes
//! that crash or hang on purpose.

use qconform_testkit::tools::{findings, has_rule, run_json};
use std::path::Path;
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

/// Runs a campaign; returns (exit code, the JSON summary).
fn campaign(args: &[&str]) -> (i32, serde_json::Value) {
    run_json(
        qconform()
            .args(["fuzz", "image", "--output", "json"])
            .args(args),
    )
}

#[test]
fn finds_qemu_img_aborting_on_a_parallels_bat_entry_past_eof() {
    // qemu-img 10.0.2's parallels_check_duplicate asserts on -E2BIG.
    let out = tempfile::tempdir().unwrap();
    let (code, v) = campaign(&[
        "--format",
        "parallels",
        "--target",
        "qemu-img check -f parallels {image}",
        "--runs",
        "120",
        "--seed",
        "1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{v}");
    let crash = findings(&v)
        .into_iter()
        .find(|f| f["kind"] == "crash" && has_rule(f, "parallels.bat.inside-file"))
        .unwrap_or_else(|| panic!("the abort was not found: {v}"));
    assert_eq!(crash["signal"], 6, "{crash}");
    // The reproducer holds the minimised image and reproduces with qemu-img.
    let dir = Path::new(crash["reproducer"].as_str().unwrap_or_default());
    let st = qconform_testkit::tools::output(
        Command::new("qemu-img")
            .args(["check", "-f", "parallels"])
            .arg(dir.join("image.parallels")),
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.status.signal(),
        Some(6),
        "the reproducer does not abort qemu-img"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("finding.json")).unwrap()).unwrap();
    assert_eq!(meta["kind"], "crash");
    // The same seed gives the same first finding.
    let (_, again) = campaign(&[
        "--format",
        "parallels",
        "--target",
        "qemu-img check -f parallels {image}",
        "--runs",
        "120",
        "--seed",
        "1",
        "--jobs",
        "2",
    ]);
    let runs = |v: &serde_json::Value| -> Vec<u64> {
        findings(v)
            .iter()
            .filter_map(|f| f["run"].as_u64())
            .collect()
    };
    assert_eq!(runs(&v), runs(&again));
}

#[test]
fn known_faults_listed_as_expected_do_not_fail_the_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("expected.txt");
    std::fs::write(
        &expect,
        "# qemu-img 10.0.2's Parallels check\ncrash parallels.bat.inside-file\ncrash parallels.bitmap.granularity\n",
    )
    .unwrap();
    let (code, v) = campaign(&[
        "--format",
        "parallels",
        "--target",
        "qemu-img check -f parallels {image}",
        "--runs",
        "60",
        "--seed",
        "1",
        "--expect",
        expect.to_str().unwrap(),
    ]);
    assert!(!findings(&v).is_empty(), "{v}");
    assert!(findings(&v).iter().all(|f| f["expected"] == true), "{v}");
    assert_eq!(code, 0);
}

#[test]
fn qconform_itself_gives_no_finding() {
    let me = env!("CARGO_BIN_EXE_qconform");
    for fmt in ["qcow2", "qed", "parallels"] {
        let target = format!("{me} check -f {fmt} {{image}}");
        let (code, v) = campaign(&[
            "--format", fmt, "--target", &target, "--runs", "40", "--seed", "7", "--oracle",
            "check",
        ]);
        assert_eq!(code, 0, "{fmt}: {v}");
        assert!(findings(&v).is_empty(), "{fmt}: {v}");
        let cat = format!("{me} cat -o {{out}} {{image}}");
        let (code, v) = campaign(&[
            "--format", fmt, "--target", &cat, "--runs", "40", "--seed", "7", "--oracle", "read",
        ]);
        assert_eq!(code, 0, "{fmt}: {v}");
    }
}

#[test]
fn deliberately_broken_fakes_are_caught() {
    // Crashes on any image over 100 KB; hangs on any image under 20 KB.
    let crash =
        "sh -c 'test $(stat -c %s \"$1\") -gt 100000 && kill -SEGV $$; exit 0' fake {image}";
    let (code, v) = campaign(&[
        "--format", "qcow2", "--target", crash, "--runs", "40", "--seed", "3",
    ]);
    assert_eq!(code, 2, "{v}");
    assert!(
        findings(&v)
            .iter()
            .any(|f| f["kind"] == "crash" && f["signal"] == 11),
        "{v}"
    );
    let hang = "sh -c 'test $(stat -c %s \"$1\") -lt 20000 && sleep 30; exit 0' fake {image}";
    let (_, v) = campaign(&[
        "--format",
        "qed",
        "--target",
        hang,
        "--runs",
        "20",
        "--seed",
        "3",
        "--timeout-ms",
        "300",
    ]);
    assert!(findings(&v).iter().any(|f| f["kind"] == "hang"), "{v}");
    // A "checker" that calls everything clean disagrees on corrupt images.
    let (_, v) = campaign(&[
        "--format", "qed", "--target", "true", "--runs", "40", "--seed", "3", "--oracle", "check",
    ]);
    assert!(findings(&v).iter().any(|f| f["kind"] == "check"), "{v}");
    // A reader that returns zeros for everything differs on valid images.
    let zeros = "sh -c 'truncate -s 1M \"$1\"' fake {out}";
    let (_, v) = campaign(&[
        "--format",
        "parallels",
        "--target",
        zeros,
        "--runs",
        "40",
        "--seed",
        "3",
        "--oracle",
        "read",
    ]);
    assert!(
        findings(&v)
            .iter()
            .any(|f| f["kind"] == "read" || f["kind"] == "accepts-corrupt"),
        "{v}"
    );
    // A reader that refuses everything rejects images qconform reads.
    let (_, v) = campaign(&[
        "--format", "qed", "--target", "false", "--runs", "20", "--seed", "3", "--oracle", "read",
    ]);
    assert!(
        findings(&v).iter().any(|f| f["kind"] == "rejects-valid"),
        "{v}"
    );
    // A target that is not there is a campaign that cannot run, not "0 findings".
    let st = qconform()
        .args([
            "fuzz",
            "image",
            "--format",
            "qcow2",
            "--target",
            "/nonexistent/tool {image}",
            "--runs",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&st.stderr).contains("not found"));
    // A campaign that cannot run (its expectations file is missing): exit 1.
    let st = qconform()
        .args([
            "fuzz", "image", "--format", "qcow2", "--target", "true", "--runs", "1",
        ])
        .args(["--expect", "/nonexistent/expected.txt"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
}
