//! The path policy, tried as an attacker would: names inside an image
//! (backing file, external data file) that point at host files, escape the
//! image's directory, name protocols or special files; an image that is
//! itself a FIFO. Every hostile input is built here with qemu-img (which
//! must be installed: these tests fail loudly without it).

use qconform_testkit::tools::{output, qemu_img, qemu_io, run};
use std::path::{Path, PathBuf};
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success());
}

/// An overlay in a fresh directory naming `backing` (not opened by qemu-img: -u).
fn overlay(fmt: &str, backing: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join(format!("top.{fmt}"));
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            fmt,
            "-u",
            "-b",
            backing,
            "-F",
            "raw",
            img.to_str().unwrap(),
            "1M",
        ],
    );
    (dir, img)
}

/// A file outside every image directory, with recognisable bytes.
fn secret() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secret.raw");
    std::fs::write(&p, b"SECRET-HOST-FILE".repeat(64)).unwrap();
    (dir, p)
}

/// `cat` and `map` refuse with exit 1 naming `rule` and the name, and
/// return no byte of the target; `check` reports `rule` without reading it.
fn refused_everywhere(img: &Path, rule: &str, name: &str) {
    for cmd in ["cat", "map"] {
        let (code, out, err) = run(qconform().arg(cmd).arg(img));
        assert_eq!(code, 1, "{cmd} {}: {err}", img.display());
        assert!(err.contains(rule), "{cmd}: {rule} not named: {err}");
        assert!(
            err.contains(name) || err.contains(&format!("{name:?}")),
            "{cmd}: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&out).contains("SECRET"),
            "{cmd} leaked the target"
        );
    }
    let (code, out, _) = run(qconform().args(["check", "--output", "json"]).arg(img));
    let report: serde_json::Value = serde_json::from_slice(&out).expect("check json");
    let rules: Vec<&str> = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["rule"].as_str())
        .collect();
    assert!(
        rules.contains(&rule),
        "check does not report {rule}: {rules:?}"
    );
    // A violation: exit 0 by default, 2 with --strict.
    assert_eq!(code, 0);
    let (strict, _, _) = run(qconform().args(["check", "--strict"]).arg(img));
    assert_eq!(strict, 2);
}

#[test]
fn absolute_backing_names_are_refused_by_default_for_qcow2_and_qed() {
    let (_s, secret) = secret();
    for fmt in ["qcow2", "qed"] {
        let (_d, img) = overlay(fmt, secret.to_str().unwrap());
        refused_everywhere(&img, "policy.name.absolute", secret.to_str().unwrap());
        // --backing follow is the user's explicit opt-in for absolute paths.
        let (code, out, err) = run(qconform().args(["cat", "--backing", "follow"]).arg(&img));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with(b"SECRET-HOST-FILE"),
            "{fmt}: follow did not read the backing file"
        );
        // --backing ignore opens nothing: the unallocated disk reads as zeros.
        let (code, out, err) = run(qconform().args(["cat", "--backing", "ignore"]).arg(&img));
        assert_eq!(code, 0, "{err}");
        assert!(out.iter().all(|&b| b == 0));
    }
}

#[test]
fn dotdot_escapes_are_refused() {
    let (_d, img) = overlay("qcow2", "../../../etc/passwd");
    refused_everywhere(&img, "policy.name.escapes", "../../../etc/passwd");
}

#[test]
fn a_symlink_beside_the_image_to_a_host_file_is_refused() {
    let (_s, secret) = secret();
    let (d, img) = overlay("qcow2", "base.raw");
    std::os::unix::fs::symlink(&secret, d.path().join("base.raw")).unwrap();
    refused_everywhere(&img, "policy.name.escapes", "base.raw");
    // A symlink that stays inside the directory is followed.
    let (d2, img2) = overlay("qcow2", "link.raw");
    std::fs::write(d2.path().join("real.raw"), b"INSIDE".repeat(10)).unwrap();
    std::os::unix::fs::symlink("real.raw", d2.path().join("link.raw")).unwrap();
    let (code, out, err) = run(qconform().arg("cat").arg(&img2));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(b"INSIDE"));
}

#[test]
fn protocol_names_are_never_followed() {
    for name in [
        "json:{\"file\":{\"driver\":\"file\",\"filename\":\"/etc/passwd\"}}",
        "nbd:localhost:10809",
    ] {
        let (_d, img) = overlay("qcow2", name);
        refused_everywhere(&img, "policy.name.protocol", "");
        let (code, _, err) = run(qconform().args(["map", "--backing", "follow"]).arg(&img));
        assert_eq!(code, 1, "follow must still refuse {name}: {err}");
        assert!(err.contains("policy.name.protocol"), "{err}");
    }
}

#[test]
fn fifos_are_never_opened_as_backing_file_data_file_or_image() {
    // A FIFO as the backing file.
    let (d, img) = overlay("qcow2", "fifo");
    mkfifo(&d.path().join("fifo"));
    refused_everywhere(&img, "policy.name.special-file", "fifo");
    let (code, _, err) = run(qconform().args(["cat", "--backing", "follow"]).arg(&img));
    assert_eq!(code, 1, "{err}");
    // A FIFO as the external data file.
    let dir = tempfile::tempdir().unwrap();
    qemu_img(
        dir.path(),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=d.raw",
            "img.qcow2",
            "1M",
        ],
    );
    // Guest data that only the data file holds.
    qemu_io(dir.path(), "img.qcow2", &["write -P 0x41 0 64k"]);
    std::fs::remove_file(dir.path().join("d.raw")).unwrap();
    mkfifo(&dir.path().join("d.raw"));
    // Data file names resolve against the working directory, as in QEMU.
    let (code, _, err) = run(qconform()
        .arg("cat")
        .arg("img.qcow2")
        .current_dir(dir.path()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("policy.name.special-file"), "{err}");
    // --backing ignore opens no data file: the read is refused, not zero-filled.
    let (code, out, err) = run(qconform()
        .args(["cat", "--backing", "ignore"])
        .arg("img.qcow2")
        .current_dir(dir.path()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("policy.file-not-opened"), "{err}");
    assert!(out.is_empty());
    // A FIFO as the image itself: every command refuses before any read.
    let fifo = dir.path().join("image.fifo");
    mkfifo(&fifo);
    for args in [&["check"][..], &["info"], &["map"], &["cat"]] {
        let (code, out, err) = run(qconform().args(args).arg(&fifo));
        let said = format!("{}{err}", String::from_utf8_lossy(&out));
        assert_eq!(code, 1, "{args:?}: {said}");
        assert!(said.contains("FIFO"), "{args:?}: {said}");
    }
    let (_, out, _) = run(qconform().args(["check", "--output", "json"]).arg(&fifo));
    assert!(String::from_utf8_lossy(&out).contains("input.regular-file"));
}

#[test]
fn data_file_names_resolve_against_the_working_directory_as_qemu_does() {
    // qemu-io opens a relative data file name against its working directory,
    // not the image's: from elsewhere the same image fails to open.
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("images");
    std::fs::create_dir(&sub).unwrap();
    qemu_img(
        &sub,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=d.raw",
            "img.qcow2",
            "1M",
        ],
    );
    let io = |cwd: &Path, img: &str| {
        output(
            Command::new("qemu-io")
                .args(["-c", "read 0 512", img])
                .current_dir(cwd),
        )
    };
    let elsewhere = io(dir.path(), "images/img.qcow2");
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("Could not open 'd.raw'"));
    assert!(io(&sub, "img.qcow2").status.success());
    let (code, _, err) = run(qconform()
        .arg("cat")
        .arg("images/img.qcow2")
        .current_dir(dir.path()));
    assert_eq!(code, 1, "qconform must fail where qemu-io fails: {err}");
    let (code, out, err) = run(qconform().arg("cat").arg("img.qcow2").current_dir(&sub));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 1 << 20);
    // An absolute data file name outside the directory is refused by default.
    let outside = tempfile::tempdir().unwrap();
    let data = outside.path().join("d.raw");
    qemu_img(
        &sub,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", data.display()),
            "abs.qcow2",
            "1M",
        ],
    );
    refused_everywhere(
        &sub.join("abs.qcow2"),
        "policy.name.absolute",
        data.to_str().unwrap(),
    );
}

#[test]
fn deep_chains_are_read_and_cycles_are_refused_at_once() {
    // 40 qcow2 layers over a raw base (QEMU reads such chains; the old cap was 16).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("l0.raw"), b"BASE".repeat(16)).unwrap();
    for i in 1..=40 {
        let (b, f) = if i == 1 {
            ("l0.raw".to_string(), "raw")
        } else {
            (format!("l{}.qcow2", i - 1), "qcow2")
        };
        qemu_img(
            dir.path(),
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                &b,
                "-F",
                f,
                &format!("l{i}.qcow2"),
                "64K",
            ],
        );
    }
    let (code, out, err) = run(qconform().arg("cat").arg(dir.path().join("l40.qcow2")));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(b"BASEBASE"));
    // qemu-img reads the same 41 images to the same bytes.
    let raw = dir.path().join("qemu.raw");
    qemu_img(
        dir.path(),
        &["convert", "-O", "raw", "l40.qcow2", raw.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(&raw).unwrap(),
        out,
        "cat differs from qemu-img convert"
    );
    let (code, out, _) = run(qconform()
        .args(["map", "--output", "json"])
        .arg(dir.path().join("l40.qcow2")));
    assert_eq!(code, 0);
    let map: serde_json::Value = serde_json::from_slice(&out).expect("map json");
    assert_eq!(map[0]["depth"], 40);
    // a -> b -> a
    qemu_img(
        dir.path(),
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "64K",
        ],
    );
    qemu_img(
        dir.path(),
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "64K",
        ],
    );
    let (code, _, err) = run(qconform().arg("map").arg(dir.path().join("a.qcow2")));
    assert_eq!(code, 1);
    assert!(err.contains("input.backing-chain-acyclic"), "{err}");
}

#[test]
fn a_data_file_bit_without_a_name_checks_with_a_note_and_is_not_read() {
    // The spec allows the bit without the name extension ("may be
    // present"); qemu-img then cannot open the image at all without being
    // told the data file, and neither may we guess one.
    let dir = tempfile::tempdir().unwrap();
    qemu_img(
        dir.path(),
        &["create", "-q", "-f", "qcow2", "img.qcow2", "1M"],
    );
    let img = dir.path().join("img.qcow2");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[79] |= 0x04; // incompatible_features bit 2, big-endian u64 at 72
    std::fs::write(&img, &bytes).unwrap();
    let qemu = output(Command::new("qemu-img").args(["check", img.to_str().unwrap()]));
    assert_eq!(qemu.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&qemu.stderr).contains("'data-file' is required"));
    let (code, out, err) = run(qconform().args(["check", "--output", "json"]).arg(&img));
    assert_eq!(code, 0, "valid by the spec: {err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("qcow2.header.data-file-unnamed"), "{out}");
    let (code, _, err) = run(qconform().arg("cat").arg(&img));
    assert_eq!(code, 1);
    assert!(err.contains("qcow2.header.data-file-unnamed"), "{err}");
}
