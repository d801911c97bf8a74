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
    assert_eq!(v["qconform"]["header"]["compression_type"], 1);
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
    let (code, out, err) = run(qconform().args(["conform", "--root"]).arg(dir.path()));
    // 4: differs from golden (1 is "could not run", 2 and 3 are check's).
    assert_eq!(code, 4, "{out}");
    // Said in the report's terms: the golden file read back as a Report.
    assert!(
        err.lines().any(|l| l == "refcount-up: leaks: 0 → 1"),
        "{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("refcount-up") && l.ends_with("MISMATCH")),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_1_with_clap_message_help_and_version_exit_0() {
    let (code, out, err) = run(qconform().args(["check", "--no-such-flag", "x.qcow2"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("unexpected argument '--no-such-flag'"),
        "{err}"
    );
    let (code, _, err) = run(qconform().args(["check", "--output", "xml", "x.qcow2"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid value 'xml' for '--output"), "{err}");
    // -f takes the registry's names, and says which.
    let (code, _, err) = run(qconform().args(["check", "-f", "vmdk", "x.img"]));
    assert_eq!(code, 1, "{err}");
    let names: Vec<_> = qconform_core::formats::names().collect();
    assert!(
        err.contains(&format!("[possible values: {}]", names.join(", "))),
        "{err}"
    );
    let (code, out, _) = run(qconform().args(["check", "--help"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("corruptions (2) > could not check (1) > leaks only (3) > clean (0)"),
        "{out}"
    );
    let (code, out, _) = run(qconform().arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains(&names.join(", ")), "{out}");
    let (code, out, _) = run(qconform().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.starts_with("qconform "), "{out}");
    // No subcommand is a usage error too.
    assert_eq!(run(&mut qconform()).0, 1);
}

/// Runs qconform with stdout a pipe that is closed after one byte.
fn run_closing_stdout_after_one_byte(args: &[std::ffi::OsString]) -> (i32, String) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = qconform()
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    stdout.read_exact(&mut one).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_closed_stdout_ends_quietly_with_exit_0() {
    let images: Vec<std::ffi::OsString> = qconform::golden::corpus_images(&root())
        .into_iter()
        .map(|(_, p)| p.into_os_string())
        .collect();
    // Far more than a pipe buffer holds, so the writes after the close fail.
    let mut check: Vec<std::ffi::OsString> = vec!["check".into()];
    for _ in 0..8 {
        check.extend(images.iter().cloned());
    }
    let mut check_json = check.clone();
    check_json.insert(1, "--output=json".into());
    let rules: Vec<std::ffi::OsString> = vec!["rules".into()];
    // map prints with println! (conformance/src/read.rs): the panic-hook net.
    // 4096 data clusters between unallocated ones: 4096 extents of 60 bytes and more.
    use qconform_core::qed::write::{write, Cluster, Description};
    let dir = tempfile::tempdir().unwrap();
    let mut d = Description::new(8192 * 4096, 4096, 4);
    for k in (0..8192).step_by(2) {
        d.clusters.insert(k, Cluster::Data(vec![0xa5; 4096]));
    }
    let img = dir.path().join("striped.qed");
    std::fs::write(&img, write(&d).unwrap()).unwrap();
    let map: Vec<std::ffi::OsString> = vec!["map".into(), img.clone().into_os_string()];
    let (code, out, _) = run(qconform().args(&map));
    assert!(
        code == 0 && out.len() > 1 << 17,
        "{code}: {} bytes",
        out.len()
    );
    let map_json: Vec<std::ffi::OsString> =
        vec!["map".into(), "--output=json".into(), img.into_os_string()];
    for args in [check, check_json, rules, map, map_json] {
        let (code, err) = run_closing_stdout_after_one_byte(&args);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{:?}: {err}",
            args.first()
        );
        assert_eq!(code, 0, "{:?}: {err}", args.first());
    }
}

#[test]
fn exit_code_is_the_most_severe_verdict_whatever_the_order() {
    let missing = PathBuf::from("/nonexistent/x.qcow2");
    let (corrupt, leaks, clean) = (
        image("refcount-down"),
        image("leaked-cluster"),
        image("v3-data"),
    );
    for (files, want) in [
        (vec![&missing, &corrupt], 2),
        (vec![&corrupt, &missing], 2),
        (vec![&leaks, &missing, &clean], 1),
        (vec![&clean, &leaks], 3),
        (vec![&clean, &clean], 0),
    ] {
        let (code, out, _) = run(qconform().arg("check").args(&files));
        assert_eq!(code, want, "{files:?}: {out}");
    }
}

/// `qemu-img info --output=json` of a file.
fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img is needed (Debian qemu-utils)");
    assert!(out.status.success(), "qemu-img info {}", path.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn info_works_for_qed_and_parallels_and_agrees_with_qemu_img() {
    let dir = root().join("corpus/images");
    for (file, fmt) in [
        ("qed-data.qed", "qed"),
        ("writer-qed-backing.qed", "qed"),
        ("qed-need-check.qed", "qed"),
        ("parallels-v2.parallels", "parallels"),
        ("writer-parallels-bitmap.parallels", "parallels"),
    ] {
        let path = dir.join(file);
        let theirs = qemu_img_info(&path);
        assert_eq!(theirs["format"], fmt);
        let (code, out, err) = run(qconform().args(["info", "--output", "json"]).arg(&path));
        assert_eq!(code, 0, "{file}: {err}");
        let ours: serde_json::Value = serde_json::from_str(&out).unwrap();
        let size = match fmt {
            "qed" => &ours["qconform"]["image_size"],
            _ => &ours["qconform"]["header"]["nb_sectors"],
        };
        let size = size.as_u64().unwrap() * if fmt == "qed" { 1 } else { 512 };
        assert_eq!(Some(size), theirs["virtual-size"].as_u64(), "{file}");
        if fmt == "qed" {
            assert_eq!(
                ours["qconform"]["cluster_size"], theirs["cluster-size"],
                "{file}"
            );
            assert_eq!(
                ours["qconform"]["backing_file"].as_str(),
                theirs["backing-filename"].as_str(),
                "{file}"
            );
        }
        let (code, human, _) = run(qconform().arg("info").arg(&path));
        assert_eq!(code, 0, "{file}");
        assert!(
            human.contains(&format!("file format: {fmt}"))
                && human.contains(&format!("virtual size: {size} bytes")),
            "{file}: {human}"
        );
    }
    let (_, human, _) = run(qconform().arg("info").arg(dir.join("qed-need-check.qed")));
    assert!(
        human.contains("features: need_check") && human.contains("dirty (NEED_CHECK): yes"),
        "{human}"
    );
    let (_, human, _) = run(qconform()
        .arg("info")
        .arg(dir.join("writer-qed-backing.qed")));
    assert!(
        human.contains("features: backing_file")
            && human.contains("backing file: \"writer-qed.qed\""),
        "{human}"
    );
}

/// Progress bars go to a terminal only: a pipe gets no progress bytes, a
/// terminal (util-linux `script` gives the command one) gets the bar of
/// bytes done, and `-q` silences it there too.
#[test]
fn progress_bars_go_to_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.qcow2");
    let img_s = img.to_str().unwrap();
    for args in [
        vec!["qemu-img", "create", "-q", "-f", "qcow2", img_s, "256M"],
        vec!["qemu-io", "-c", "write -P 0x33 0 96M", img_s],
    ] {
        let st = Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .status();
        assert!(st.unwrap_or_else(|e| panic!("{}: {e}", args[0])).success());
    }
    let raw = dir.path().join("big.raw");
    let raw_s = raw.to_str().unwrap();
    // Piped: nothing on stderr, for cat -o, golden and conform alike.
    let (code, out, err) = run(qconform().args(["cat", "-o", raw_s, img_s]));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let (code, _, err) = run(qconform().args(["check", img_s]));
    assert_eq!((code, err.as_str()), (0, ""));
    let (code, _, err) = run(qconform()
        .args(["golden", "update", "--golden"])
        .arg(dir.path().join("g"))
        .arg(&img));
    assert_eq!((code, err.as_str()), (0, ""));
    let (code, _, err) = run(qconform().arg("conform").current_dir(root()));
    assert_eq!((code, err.as_str()), (0, ""));
    // On a terminal: the bar, in bytes; with -q: none.
    let bin = env!("CARGO_BIN_EXE_qconform");
    let on_tty = |args: &str| {
        let log = dir.path().join("tty.log");
        let cmd = format!("{bin} {args}");
        let st = Command::new("script")
            .args(["-qec", &cmd])
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("script (util-linux)");
        assert!(st.success());
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    assert!(
        on_tty(&format!("cat -o {raw_s} {img_s}")).contains("/96.00 MiB"),
        "no progress on a terminal"
    );
    assert!(!on_tty(&format!("cat -q -o {raw_s} {img_s}")).contains("MiB"));
    // check: a bar of the metadata bytes read against the total the header
    // and the top-level tables give (at least the 64 KiB header cluster
    // and one L2 table), with an ETA.
    let shown = on_tty(&format!("check {img_s}"));
    assert!(
        shown.contains("KiB of metadata (")
            && shown.contains("ETA")
            && shown.contains("No errors were found"),
        "no check progress on a terminal: {shown:?}"
    );
    assert!(!on_tty(&format!("check -q {img_s}")).contains("of metadata"));
}
