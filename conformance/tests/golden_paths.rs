//! `qconform golden update|verify PATH...` as a user runs it on a folder of
//! vendor images: odd names, sub-folders, files that are not images, a FIFO;
//! then the image changes a user wants to be told about, each made by a
//! real tool (qemu-io, qemu-img) or a registered mutator.

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs qconform in `dir` with a deadline (a blocked open of a FIFO would
/// hang it): exit code, stdout, stderr.
fn qconform(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qconform"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qconform {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (install qemu-utils)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sha256 of the guest bytes as qemu-img reads them.
fn qemu_sha256(image: &Path) -> String {
    let raw = image.with_extension("raw-for-test");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    format!("{:x}", sha2::Sha256::digest(&bytes))
}

/// A vendor folder: corpus images under other names, qemu-img-made ones
/// with odd extensions or none, a text file, and a FIFO.
fn vendor() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("vendor");
    std::fs::create_dir_all(v.join("nested/deeper")).unwrap();
    let corpus = root().join("corpus/images");
    std::fs::copy(corpus.join("compressed-zlib.qcow2"), v.join("disk.img")).unwrap();
    std::fs::copy(corpus.join("leaked-cluster.qcow2"), v.join("nested/leaky")).unwrap();
    let qed = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "qed"))
        .unwrap();
    std::fs::copy(&qed, v.join("nested/deeper/old.bin")).unwrap();
    for (name, fmt) in [
        ("data.hds", "qcow2"),
        ("legacy.vhd", "parallels"),
        ("noext", "qed"),
    ] {
        let p = v.join(name);
        tool(
            "qemu-img",
            &["create", "-q", "-f", fmt, p.to_str().unwrap(), "4M"],
        );
        tool(
            "qemu-io",
            &["-f", fmt, "-c", "write -P 0x11 0 128k", p.to_str().unwrap()],
        );
    }
    std::fs::write(v.join("README.txt"), "vendor notes\n").unwrap();
    tool("mkfifo", &[v.join("pipe").to_str().unwrap()]);
    dir
}

fn update(dir: &Path) -> String {
    let (code, out, err) = qconform(dir, &["golden", "update", "-q", "vendor"]);
    assert_eq!(code, 0, "{out}{err}");
    err
}

/// `verify`'s line for `key` and the diff lines under it.
fn entry<'a>(out: &'a str, key: &str) -> (String, Vec<&'a str>) {
    let mut lines = out.lines();
    let head = lines
        .by_ref()
        .find(|l| l.split_whitespace().nth(1) == Some(key))
        .unwrap_or_else(|| panic!("no line for {key} in\n{out}"));
    let status = head.split_whitespace().next().unwrap().to_owned();
    let diff = lines
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    (status, diff)
}

const IMAGES: [&str; 6] = [
    "data.hds",
    "disk.img",
    "legacy.vhd",
    "nested/deeper/old.bin",
    "nested/leaky",
    "noext",
];

#[test]
fn update_then_verify_matches_every_image_and_skips_what_is_not_one() {
    let dir = vendor();
    let err = update(dir.path());
    // The FIFO is skipped from its metadata (opening it would block) and
    // the text file because no format recognises it.
    assert!(
        err.contains("vendor/pipe: not a regular file, not opened"),
        "{err}"
    );
    assert!(err.contains("vendor/README.txt: not an image"), "{err}");
    let (code, out, err) = qconform(dir.path(), &["golden", "verify", "vendor"]);
    assert_eq!(code, 0, "{out}{err}");
    for key in IMAGES {
        assert_eq!(entry(&out, key).0, "match", "{out}");
    }
    assert!(
        out.contains("6 images: 6 match, 0 changed, 0 new, 0 stale"),
        "{out}"
    );
    // The records hold what check, cat and qemu-img say about each image.
    let golden = dir.path().join("qconform-golden");
    let rec = |k: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(golden.join(format!("{k}.json"))).unwrap())
            .unwrap()
    };
    let hds = rec("data.hds");
    assert_eq!(hds["format"], "qcow2");
    assert_eq!(hds["verdict"], "clean");
    assert_eq!(
        hds["content"]["sha256"],
        qemu_sha256(&dir.path().join("vendor/data.hds"))
    );
    assert_eq!(hds["content"]["bytes"], 4 << 20);
    assert_eq!(rec("noext")["format"], "qed");
    assert_eq!(rec("legacy.vhd")["format"], "parallels");
    let leaky = rec("nested/leaky");
    assert_eq!(leaky["verdict"], "leaks");
    assert!(leaky["counts"]["leaks"].as_u64().unwrap() > 0);
    assert!(leaky["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["severity"] == "leak"));
    assert_eq!(
        hds["produced-by"]["tool"],
        format!("qconform {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(hds["produced-by"]["spec"].as_object().unwrap().len(), 1);
    let text = std::fs::read_to_string(golden.join("data.hds.json")).unwrap();
    assert!(
        !text.contains("source:") && !text.contains(dir.path().to_str().unwrap()),
        "{text}"
    );
}

#[test]
fn rewritten_guest_data_is_a_content_change_with_both_digests() {
    let dir = vendor();
    update(dir.path());
    let img = dir.path().join("vendor/data.hds");
    let before = qemu_sha256(&img);
    // Same clusters, other bytes: nothing in the metadata changes.
    tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 64k",
            img.to_str().unwrap(),
        ],
    );
    let after = qemu_sha256(&img);
    assert_ne!(before, after);
    let (code, out, err) = qconform(dir.path(), &["golden", "verify", "vendor"]);
    assert_eq!(code, 4, "{out}{err}");
    let (status, diff) = entry(&out, "data.hds");
    assert_eq!(status, "changed");
    assert_eq!(
        diff,
        [format!("content: sha256 {before} → sha256 {after}")],
        "{out}"
    );
    assert_eq!(entry(&out, "disk.img").0, "match");
    // --no-content does not look at guest bytes.
    let (code, out, _) = qconform(dir.path(), &["golden", "verify", "--no-content", "vendor"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_deleted_image_is_stale_and_a_new_one_is_new() {
    let dir = vendor();
    update(dir.path());
    std::fs::remove_file(dir.path().join("vendor/disk.img")).unwrap();
    std::fs::copy(
        root().join("corpus/images/v3-data.qcow2"),
        dir.path().join("vendor/nested/fresh.QCOW"),
    )
    .unwrap();
    let (code, out, err) = qconform(dir.path(), &["golden", "verify", "vendor"]);
    assert_eq!(code, 4, "{out}{err}");
    assert_eq!(entry(&out, "disk.img").0, "stale", "{out}");
    assert_eq!(entry(&out, "nested/fresh.QCOW").0, "new", "{out}");
    assert!(
        out.contains("7 images: 5 match, 0 changed, 1 new, 1 stale"),
        "{out}"
    );
    // update takes the folder as it is now: the stale record goes.
    let (code, out, _) = qconform(dir.path(), &["golden", "update", "vendor"]);
    assert_eq!(code, 0);
    assert!(out.contains("removed 1 stale"), "{out}");
    assert_eq!(qconform(dir.path(), &["golden", "verify", "vendor"]).0, 0);
}

#[test]
fn a_corrupting_edit_is_a_change_that_names_the_finding_added() {
    use qconform_core::qcow2::mutate::{apply, Mutation};
    let dir = vendor();
    update(dir.path());
    let img = dir.path().join("vendor/data.hds");
    let mut bytes = std::fs::read(&img).unwrap();
    let rules =
        apply(Mutation::RefcountZero { nth: 0 }, &mut bytes).expect("the image has a data cluster");
    std::fs::write(&img, &bytes).unwrap();
    let (code, out, err) = qconform(dir.path(), &["golden", "verify", "vendor"]);
    assert_eq!(code, 4, "{out}{err}");
    let (status, diff) = entry(&out, "data.hds");
    assert_eq!(status, "changed");
    assert!(
        diff.contains(&"verdict: clean → corrupt (exit 0 → 2)"),
        "{out}"
    );
    assert!(
        diff.iter().any(|l| l.starts_with("finding added: [")
            && l.contains("] at offset 0x")
            && rules.iter().any(|r| l.contains(&format!("[{}]", r.id)))),
        "{out}"
    );
    assert!(
        diff.iter().any(|l| l.starts_with("corruptions: 0 → ")),
        "{out}"
    );
    // The same verdicts as JSON, read back: images in key order, one typed
    // change per line of the text.
    let (code, json, err) = qconform(
        dir.path(),
        &["golden", "verify", "--output", "json", "vendor"],
    );
    assert_eq!(code, 4, "{json}{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["exit-code"], 4);
    let images = v["images"].as_array().unwrap();
    let keys: Vec<&str> = images
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(v["summary"]["images"], images.len());
    assert_eq!(
        (
            v["summary"]["changed"].as_u64(),
            v["summary"]["match"].as_u64()
        ),
        (Some(1), Some(images.len() as u64 - 1))
    );
    let data = images.iter().find(|i| i["image"] == "data.hds").unwrap();
    assert_eq!(data["status"], "changed");
    let changes = data["changes"].as_array().unwrap();
    assert_eq!(changes.len(), diff.len(), "{json}");
    assert!(
        changes.iter().any(|c| c["kind"] == "verdict"
            && c["golden"] == "clean"
            && c["now"] == "corrupt"
            && c["golden-exit"] == 0
            && c["now-exit"] == 2),
        "{json}"
    );
    assert!(
        changes.iter().any(|c| c["kind"] == "finding-added"
            && c["offset"].is_u64()
            && rules.iter().any(|r| c["rule"] == r.id)),
        "{json}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c["kind"] == "field" && c["field"] == "corruptions" && c["golden"] == 0),
        "{json}"
    );
    for i in images.iter().filter(|i| i["image"] != "data.hds") {
        assert_eq!(
            (&i["status"], i["changes"].as_array().map(Vec::len)),
            (&serde_json::json!("match"), Some(0))
        );
    }
}

#[test]
fn verify_writes_junit_and_sarif_and_a_missing_path_cannot_run() {
    let dir = vendor();
    update(dir.path());
    std::fs::remove_file(dir.path().join("vendor/noext")).unwrap();
    let (code, out, _) = qconform(
        dir.path(),
        &[
            "golden", "verify", "vendor", "--junit", "j.xml", "--sarif", "s.sarif",
        ],
    );
    assert_eq!(code, 4, "{out}");
    let j = junit_parser::from_reader(std::io::BufReader::new(
        std::fs::File::open(dir.path().join("j.xml")).unwrap(),
    ))
    .unwrap();
    let cases: Vec<_> = j.suites.iter().flat_map(|s| &s.cases).collect();
    assert_eq!(cases.len(), 6);
    let failed: Vec<_> = cases
        .iter()
        .filter(|c| c.status.is_failure())
        .map(|c| c.original_name.as_str())
        .collect();
    assert_eq!(failed, ["noext"]);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.sarif")).unwrap())
            .unwrap();
    // The leaking image's findings, located in its file.
    let results = s["runs"][0]["results"].as_array().unwrap();
    assert!(
        results.iter().any(|r| r["level"] == "warning"
            && r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                == "vendor/nested/leaky"
            && r["locations"][0]["physicalLocation"]["region"]["byteOffset"].is_u64()),
        "{s:#}"
    );
    let (code, _, err) = qconform(
        dir.path(),
        &["golden", "verify", "vendor", "no-such-folder"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-folder"), "{err}");
}

#[test]
fn under_the_upload_policy_a_new_backing_file_is_a_refusal_added() {
    // A vendor image re-based onto a backing file (qemu-img rebase -u) is a
    // change a plain record shows in its info; the upload policy's record
    // also shows the refusal the upload check would now make.
    let dir = vendor();
    let (code, out, err) = qconform(
        dir.path(),
        &["golden", "update", "-q", "--policy", "upload", "vendor"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let verify = |policy: &str| {
        let mut args = vec!["golden", "verify", "-q"];
        if !policy.is_empty() {
            args.extend(["--policy", policy]);
        }
        args.push("vendor");
        qconform(dir.path(), &args)
    };
    let (code, out, err) = verify("upload");
    assert_eq!(
        code, 0,
        "unchanged images match under the same policy: {out}{err}"
    );
    let img = dir.path().join("vendor/data.hds");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            dir.path().join("vendor/base.qcow2").to_str().unwrap(),
            "4M",
        ],
    );
    tool(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            img.to_str().unwrap(),
        ],
    );
    let (code, out, err) = verify("upload");
    assert_eq!(code, 4, "{out}{err}");
    let (status, diff) = entry(&out, "data.hds");
    assert_eq!(status, "changed");
    assert!(
        diff.iter()
            .any(|l| l.starts_with("finding added: [upload.backing-file]")),
        "{out}"
    );
    // The default policy's view of the same image: changed, no refusal.
    let (_, out, _) = verify("");
    let (_, diff) = entry(&out, "data.hds");
    assert!(!diff.iter().any(|l| l.contains("upload.")), "{out}");
}
