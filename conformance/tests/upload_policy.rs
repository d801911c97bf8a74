//! `check --policy`: every refusal of the upload policy triggered by an
//! image qemu-img made (or one patched by hand where qemu-img cannot make
//! it), refused with its rule and exit 2 under `upload` and not refused
//! under `default`; and a policy file's silences, re-grades and caps.

use qconform_testkit::tools;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `qemu-img` in `dir` with whitespace-separated `args`, through the
/// testkit runner (hang guard, loud failure).
fn qemu_img(dir: &Path, args: &str) {
    tools::qemu_img(dir, &args.split_whitespace().collect::<Vec<_>>())
}

/// `check --output json [--policy P] [-f F] IMAGE`: exit code and the
/// rule ids of the findings, with their severities.
fn check(
    dir: &Path,
    image: &str,
    policy: Option<&str>,
    format: Option<&str>,
) -> (i32, Vec<(String, String)>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qconform"));
    cmd.current_dir(dir).args(["check", "--output", "json"]);
    if let Some(p) = policy {
        cmd.args(["--policy", p]);
    }
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = cmd.arg(image).output().expect("qconform runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{image}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let findings = v["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["rule"].as_str().unwrap_or("").to_owned(),
                        f["severity"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (out.status.code().unwrap_or(-1), findings)
}

fn has(findings: &[(String, String)], rule: &str) -> bool {
    findings.iter().any(|(r, _)| r == rule)
}

/// Refused under `upload` with `rule` and exit 2; under `default` the
/// rule is absent and the exit code is `default_code` (what the check
/// alone says).
fn refused(dir: &Path, image: &str, format: Option<&str>, rule: &str, default_code: i32) {
    let (code, f) = check(dir, image, Some("upload"), format);
    assert_eq!(code, 2, "{image} under upload: {f:?}");
    assert!(has(&f, rule), "{image}: no {rule} in {f:?}");
    let (code, f) = check(dir, image, None, format);
    assert_eq!(code, default_code, "{image} under default: {f:?}");
    assert!(!has(&f, rule), "{image}: {rule} under default");
    assert!(!f.iter().any(|(r, _)| r.starts_with("upload.")), "{f:?}");
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_path_buf();
    qemu_img(&p, "create -q -f qcow2 base.qcow2 1M");
    (t, p)
}

#[test]
fn a_plain_image_passes_the_upload_policy() {
    let (_t, d) = scratch();
    assert_eq!(
        check(&d, "base.qcow2", Some("upload"), Some("qcow2")),
        (0, vec![])
    );
    qemu_img(&d, "create -q -f qed plain.qed 1M");
    assert_eq!(check(&d, "plain.qed", Some("upload"), None), (0, vec![]));
    qemu_img(&d, "create -q -f parallels plain.parallels 1M");
    assert_eq!(
        check(&d, "plain.parallels", Some("upload"), None),
        (0, vec![])
    );
}

#[test]
fn backing_files_are_refused() {
    let (_t, d) = scratch();
    qemu_img(&d, "create -q -f qcow2 -b base.qcow2 -F qcow2 over.qcow2");
    refused(&d, "over.qcow2", None, "upload.backing-file", 0);
    qemu_img(&d, "create -q -f qed -b base.qcow2 -F qcow2 over.qed");
    refused(&d, "over.qed", None, "upload.backing-file", 0);
}

#[test]
fn external_data_files_are_refused() {
    let (_t, d) = scratch();
    qemu_img(&d, "create -q -f qcow2 -o data_file=data.raw df.qcow2 1M");
    refused(&d, "df.qcow2", None, "upload.data-file", 0);
}

#[test]
fn encryption_is_refused() {
    let (_t, d) = scratch();
    qemu_img(&d, "create -q -f qcow2 --object secret,id=s0,data=upload -o encrypt.format=luks,encrypt.key-secret=s0 enc.qcow2 1M");
    refused(&d, "enc.qcow2", None, "upload.encryption", 0);
}

#[test]
fn unknown_incompatible_and_autoclear_features_are_refused() {
    let (_t, d) = scratch();
    // qemu-img sets no bit it does not know: a v3 image (-o compat=1.1)
    // patched by hand. Incompatible bit 5 (byte 79, the low byte of the
    // big-endian field at 72): the check itself stops there (exit 1);
    // the policy still refuses, exit 2.
    qemu_img(&d, "create -q -f qcow2 -o compat=1.1 inc.qcow2 1M");
    patch(&d.join("inc.qcow2"), 79, &[0x20]);
    refused(&d, "inc.qcow2", None, "upload.feature-unknown", 1);
    // Autoclear bit 2 (byte 95): qemu-img clears it on open, qconform's
    // check only calls it a violation.
    qemu_img(&d, "create -q -f qcow2 -o compat=1.1 ac.qcow2 1M");
    patch(&d.join("ac.qcow2"), 95, &[0x04]);
    refused(&d, "ac.qcow2", None, "upload.feature-unknown", 0);
    // QED: an unknown feature bit (3, byte 16 of the little-endian field).
    qemu_img(&d, "create -q -f qed f.qed 1M");
    patch(&d.join("f.qed"), 16, &[0x08]);
    refused(&d, "f.qed", None, "upload.feature-unknown", 1);
}

#[test]
fn a_format_other_than_the_declared_one_is_refused() {
    let (_t, d) = scratch();
    refused(&d, "base.qcow2", Some("qed"), "upload.format-declared", 1);
    // A format qconform does not read is named in the finding.
    qemu_img(&d, "create -q -f vmdk v.vmdk 1M");
    refused(&d, "v.vmdk", Some("qcow2"), "upload.format-declared", 1);
}

#[test]
fn a_polyglot_is_refused() {
    let (_t, d) = scratch();
    // An ISO 9660 primary volume descriptor ("\x01CD001" at sector 16 of
    // 2048 bytes) written into cluster 0 of a 64 KiB-cluster qcow2, past
    // the header, where qcow2 readers never look: qemu-img and qconform's
    // check both call the image clean, and a CD-ROM prober (libblkid,
    // a hypervisor attaching it as install media) reads an ISO.
    patch(&d.join("base.qcow2"), 0x8000, b"\x01CD001\x01");
    refused(&d, "base.qcow2", None, "upload.polyglot", 0);
    let out = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(d.join("base.qcow2"))
        .status()
        .unwrap();
    assert!(out.success(), "qemu-img calls the polyglot clean");
    // A GPT header at LBA 1 of a QED header cluster, the same trick.
    qemu_img(&d, "create -q -f qed g.qed 1M");
    patch(&d.join("g.qed"), 0x200, b"EFI PART");
    refused(&d, "g.qed", None, "upload.polyglot", 0);
}

#[test]
fn a_virtual_size_above_the_cap_is_refused() {
    let (_t, d) = scratch();
    // 20 TiB against the default cap of 16 TiB; sparse, 512 KiB on disk.
    qemu_img(&d, "create -q -f qcow2 big.qcow2 20T");
    refused(&d, "big.qcow2", None, "upload.virtual-size", 0);
}

#[test]
fn a_compression_bomb_is_refused() {
    let (_t, d) = scratch();
    // 64 MiB of one byte deflates to ~100 bytes per 64 KiB cluster: the
    // image is ~400 KiB, 160x smaller than what converting it writes.
    std::fs::write(d.join("a.raw"), vec![b'a'; 64 << 20]).unwrap();
    qemu_img(&d, "convert -q -c -O qcow2 a.raw bomb.qcow2");
    refused(&d, "bomb.qcow2", None, "upload.compression-ratio", 0);
    // Ordinary compressible data (8 distinct bytes, ~45x) stays under it.
    let pattern: Vec<u8> = b"abcdefgh".iter().copied().cycle().take(16 << 20).collect();
    std::fs::write(d.join("p.raw"), pattern).unwrap();
    qemu_img(&d, "convert -q -c -O qcow2 p.raw p.qcow2");
    assert_eq!(check(&d, "p.qcow2", Some("upload"), None).0, 0);
}

#[test]
fn snapshot_and_bitmap_counts_above_the_caps_are_refused() {
    let (_t, d) = scratch();
    std::fs::copy(d.join("base.qcow2"), d.join("snaps.qcow2")).unwrap();
    std::fs::copy(d.join("base.qcow2"), d.join("bitmaps.qcow2")).unwrap();
    for i in 0..17 {
        qemu_img(&d, &format!("snapshot -c s{i} snaps.qcow2"));
        qemu_img(&d, &format!("bitmap --add bitmaps.qcow2 b{i}"));
    }
    refused(&d, "snaps.qcow2", None, "upload.snapshot-count", 0);
    refused(&d, "bitmaps.qcow2", None, "upload.bitmap-count", 0);
}

#[test]
fn a_policy_file_disables_regrades_and_caps() {
    let (_t, d) = scratch();
    qemu_img(&d, "create -q -f qcow2 -b base.qcow2 -F qcow2 over.qcow2");
    for i in 0..3 {
        qemu_img(&d, &format!("snapshot -c s{i} over.qcow2"));
    }
    std::fs::copy(d.join("base.qcow2"), d.join("dirty.qcow2")).unwrap();
    patch(&d.join("dirty.qcow2"), 79, &[0x01]); // incompatible bit 0: dirty
                                                // Under upload: refused for its backing file; 3 snapshots pass the cap.
    let (code, f) = check(&d, "over.qcow2", Some("upload"), None);
    assert_eq!(code, 2);
    assert!(
        has(&f, "upload.backing-file") && !has(&f, "upload.snapshot-count"),
        "{f:?}"
    );
    std::fs::write(
        d.join("p.toml"),
        "base = \"upload\"\n\
         [caps]\nsnapshots = 2\n\
         [rules]\n\"upload.backing-file\" = \"off\"\n\
         \"upload.snapshot-count\" = \"note\"\n\
         \"qcow2.header.dirty\" = \"corruption\"\n",
    )
    .unwrap();
    // The backing file is no longer a finding; the lowered cap finds the 3
    // snapshots, as a note, which refuses nothing.
    let (code, f) = check(&d, "over.qcow2", Some("p.toml"), None);
    assert!(!has(&f, "upload.backing-file"), "{f:?}");
    assert!(
        f.contains(&("upload.snapshot-count".into(), "note".into())),
        "{f:?}"
    );
    assert_eq!(code, 0, "{f:?}");
    // Any rule can be re-graded: the dirty bit, a note by default, now
    // counts as a corruption.
    assert_eq!(check(&d, "dirty.qcow2", Some("upload"), None).0, 0);
    let (code, f) = check(&d, "dirty.qcow2", Some("p.toml"), None);
    assert!(
        f.contains(&("qcow2.header.dirty".into(), "corruption".into())),
        "{f:?}"
    );
    assert_eq!(code, 2);
    // A file naming an unknown rule is a usage error.
    std::fs::write(d.join("bad.toml"), "[rules]\n\"upload.nope\" = \"off\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qconform"))
        .current_dir(&d)
        .args(["check", "--policy", "bad.toml", "base.qcow2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upload.nope"));
}

/// `conform --policy P` over the shipped corpus, as JSON: (exit code, cases).
fn conform(policy: &str, dir: &Path) -> (i32, Vec<serde_json::Value>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_qconform"))
        .args(["conform", "-q", "--output", "json", "--policy", policy])
        .current_dir(dir)
        .arg("--root")
        .arg(&root)
        .output()
        .expect("qconform runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let cases = v["cases"].as_array().cloned().unwrap_or_default();
    (out.status.code().unwrap_or(-1), cases)
}

/// The shipped goldens are the default policy's check: under `--policy
/// upload` they still match (exit 0) and every image case also carries its
/// verdict under the policy, which is exactly `check --policy upload`'s.
#[test]
fn conform_judges_the_shipped_corpus_under_the_upload_policy() {
    let (_t, d) = scratch();
    let (code, cases) = conform("upload", &d);
    assert_eq!(
        code, 0,
        "the default goldens still match under --policy upload"
    );
    let images = corpus_images();
    let mut refused = Vec::new();
    for c in cases.iter().filter(|c| c["format"] != "vhost-user") {
        let case = c["case"].as_str().unwrap();
        let p = &c["policy"];
        let image = images.join(format!("{case}.{}", c["format"].as_str().unwrap()));
        let (check_code, findings) = check(&d, image.to_str().unwrap(), Some("upload"), None);
        assert_eq!(p["exit-code"], check_code, "{case}: {c}");
        assert_eq!(p["verdict"] == "refused", check_code != 0, "{case}: {c}");
        for r in p["refused-by"].as_array().unwrap() {
            assert!(
                has(&findings, r.as_str().unwrap()),
                "{case}: {r} not in {findings:?}"
            );
        }
        if !p["refused-by"].as_array().unwrap().is_empty() {
            refused.push(case.to_owned());
        }
    }
    for (case, rule) in [
        ("backing-overlay", "upload.backing-file"),
        ("data-file", "upload.data-file"),
        ("luks", "upload.encryption"),
    ] {
        let c = cases.iter().find(|c| c["case"] == case).unwrap();
        assert!(
            c["policy"]["refused-by"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == rule),
            "{c}"
        );
    }
    let plain = cases.iter().find(|c| c["case"] == "v3-data").unwrap();
    assert_eq!(plain["policy"]["verdict"], "accepted", "{plain}");
    // Under the default policy there is nothing to add: no policy verdict.
    let (code, cases) = conform("default", &d);
    assert_eq!(code, 0);
    assert!(cases.iter().all(|c| c.get("policy").is_none()));
    // A policy file that allows backing files accepts the overlay.
    std::fs::write(
        d.join("p.toml"),
        "base = \"upload\"\n[rules]\n\"upload.backing-file\" = \"off\"\n",
    )
    .unwrap();
    let (code, cases) = conform("p.toml", &d);
    assert_eq!(code, 0);
    let c = cases
        .iter()
        .find(|c| c["case"] == "backing-overlay")
        .unwrap();
    assert_eq!(c["policy"]["verdict"], "accepted", "{c}");
    assert!(refused.len() > 3, "{refused:?}");
}

fn corpus_images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/images")
}
