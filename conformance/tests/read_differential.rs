//! `qconform cat` and `qconform map` against qemu-img (10.0.2): for every
//! valid image of the corpus recipes and an option matrix, the virtual disk
//! must be byte-identical to `qemu-img convert -O raw` (sha256) and the map
//! equal to `qemu-img map --output=json`.

use qconform::corpus;
use qconform_testkit::tools;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn ours_raw(dir: &Path, file: &str, extra: &[&str]) -> Vec<u8> {
    let out = qconform()
        .arg("cat")
        .args(extra)
        .arg(file)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qconform cat {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn maps(dir: &Path, file: &str) -> (Value, Value) {
    let o = qconform()
        .args(["map", "--output", "json", file])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qconform map {file}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        tools::qemu_map(dir, file, &[]),
        serde_json::from_slice(&o.stdout).unwrap(),
    )
}

/// Compares one image; returns what differs.
fn compare(dir: &Path, name: &str) -> Vec<String> {
    let file = format!("{name}.qcow2");
    let mut bad = Vec::new();
    let (theirs, ours) = (
        tools::qemu_convert(dir, &file, &[]),
        ours_raw(dir, &file, &[]),
    );
    if theirs != ours {
        bad.push(format!(
            "{name}: cat sha256 {} != qemu-img convert {} ({} vs {} bytes)",
            sha(&ours),
            sha(&theirs),
            ours.len(),
            theirs.len()
        ));
    }
    let (q, o) = maps(dir, &file);
    if q != o {
        bad.push(format!(
            "{name}: map differs\n  qemu-img: {q}\n  qconform: {o}"
        ));
    }
    bad
}

#[test]
fn cat_and_map_agree_with_qemu_img_on_every_valid_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = Vec::new();
    let mut n = 0;
    for case in corpus::cases() {
        corpus::build(&case, dir.path()).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Valid images only; LUKS is refused on purpose (tested below), and
        // so are backing names the path policy refuses (qemu-img convert
        // reads /etc/passwd for them; conformance/tests/paths.rs tests ours).
        let policy = case.expect.iter().any(|r| r.id.starts_with("policy."));
        if case.exit != 0 || case.edit.is_some() || case.name.starts_with("luks") || policy {
            continue;
        }
        n += 1;
        bad.extend(compare(dir.path(), case.name));
    }
    assert!(
        bad.is_empty(),
        "{} of {n} images differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!("read differential: {n}/{n} corpus images: cat and map equal qemu-img's");
}

#[test]
fn cat_and_map_agree_with_qemu_img_across_options() {
    let dir = tempfile::tempdir().unwrap();
    let families: &[(&str, &str, &[&str])] = &[
        (
            "cs512",
            "cluster_size=512",
            &["write -P 1 0 3k", "write -z 4k 1k", "write -c -P 2 8k 512"],
        ),
        (
            "cs64k",
            "cluster_size=65536",
            &[
                "write -P 1 0 200k",
                "write -c -P 2 256k 64k",
                "write -z 512k 64k",
                "discard 64k 64k",
            ],
        ),
        (
            "cs2m",
            "cluster_size=2M",
            &["write -P 1 0 1M", "write -c -P 3 2M 2M", "write -z 6M 2M"],
        ),
        (
            "v2",
            "compat=0.10,cluster_size=4096",
            &["write -P 1 0 12k", "write -z 16k 4k", "discard 0 4k"],
        ),
        (
            "zstd",
            "cluster_size=65536,compression_type=zstd",
            &["write -c -P 7 0 192k", "write -c -P 8 512k 64k"],
        ),
        (
            "extl2",
            "cluster_size=65536,extended_l2=on",
            &[
                "write -P 1 0 5k",
                "write -z 8k 2k",
                "write -P 2 70k 1k",
                "write -c -P 3 128k 64k",
                "discard 0 2k",
            ],
        ),
        (
            "extl2-16k",
            "cluster_size=16384,extended_l2=on",
            &["write -P 1 512 1k", "write -z 4k 3k"],
        ),
        (
            "prealloc",
            "cluster_size=65536,preallocation=metadata",
            &["write -P 9 64k 64k"],
        ),
        (
            "refcount1",
            "cluster_size=4096,refcount_bits=1",
            &["write -P 5 0 40k"],
        ),
    ];
    let mut bad = Vec::new();
    for (name, opts, io) in families {
        let image = format!("{name}.qcow2");
        tools::qemu_img(
            dir.path(),
            &["create", "-q", "-f", "qcow2", "-o", opts, &image, "16M"],
        );
        tools::qemu_io(dir.path(), &image, io);
        bad.extend(compare(dir.path(), name));
    }
    assert!(
        bad.is_empty(),
        "{} of {} images differ:\n{}",
        bad.len(),
        families.len(),
        bad.join("\n")
    );
}

#[test]
fn backing_chains_snapshots_and_data_files_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| tools::tool(d, args[0], &args[1..]);
    // A three-level chain; the middle layer is smaller than the top.
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "base.qcow2",
        "4M",
    ]);
    run(&[
        "qemu-io",
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -P 2 3M 1M",
        "base.qcow2",
    ]);
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=65536",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "mid.qcow2",
        "4M",
    ]);
    run(&[
        "qemu-io",
        "-c",
        "write -P 3 512k 1M",
        "-c",
        "write -z 3M 64k",
        "mid.qcow2",
    ]);
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
        "8M",
    ]);
    run(&[
        "qemu-io",
        "-c",
        "write -P 4 1M 64k",
        "-c",
        "write -P 5 6M 64k",
        "top.qcow2",
    ]);
    let mut bad = Vec::new();
    for n in ["base", "mid", "top"] {
        bad.extend(compare(d, n));
    }
    // A raw backing file.
    run(&["qemu-img", "create", "-q", "-f", "raw", "raw.img", "2M"]);
    run(&["qemu-io", "-f", "raw", "-c", "write -P 6 0 1M", "raw.img"]);
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "raw.img",
        "-F",
        "raw",
        "over-raw.qcow2",
        "2M",
    ]);
    run(&["qemu-io", "-c", "write -P 7 64k 64k", "over-raw.qcow2"]);
    bad.extend(compare(d, "over-raw"));
    // --backing ignore reads unallocated clusters as zeros: the top layer alone.
    let ignored = qconform()
        .args(["cat", "--backing", "ignore", "top.qcow2"])
        .current_dir(d)
        .output()
        .unwrap()
        .stdout;
    let qemu_alone = {
        let o = Command::new("qemu-img").args(["convert", "-O", "raw", r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"top.qcow2"},"backing":null}"#, "alone.raw"]).current_dir(d).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(d.join("alone.raw")).unwrap()
    };
    if ignored != qemu_alone {
        bad.push("top --backing ignore differs from qemu-img with backing=null".into());
    }
    // Internal snapshots: each one's view.
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "snap.qcow2",
        "1M",
    ]);
    run(&["qemu-io", "-c", "write -P 1 0 64k", "snap.qcow2"]);
    run(&["qemu-img", "snapshot", "-c", "one", "snap.qcow2"]);
    run(&[
        "qemu-io",
        "-c",
        "write -P 2 32k 64k",
        "-c",
        "write -z 0 8k",
        "snap.qcow2",
    ]);
    run(&["qemu-img", "snapshot", "-c", "two", "snap.qcow2"]);
    run(&["qemu-io", "-c", "discard 0 128k", "snap.qcow2"]);
    for s in ["one", "two"] {
        let t = tools::qemu_convert(d, "snap.qcow2", &["-l", &format!("snapshot.name={s}")]);
        let o = ours_raw(d, "snap.qcow2", &["--snapshot", s]);
        if t != o {
            bad.push(format!("snapshot {s}: cat differs"));
        }
    }
    bad.extend(compare(d, "snap"));
    // External data file, with and without data_file_raw.
    for (n, raw) in [("df", "off"), ("dfraw", "on")] {
        run(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size=4096,data_file={n}.data,data_file_raw={raw}"),
            &format!("{n}.qcow2"),
            "1M",
        ]);
        run(&[
            "qemu-io",
            "-c",
            "write -P 3 4k 12k",
            "-c",
            "write -z 64k 4k",
            &format!("{n}.qcow2"),
        ]);
        bad.extend(compare(d, n));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn encrypted_images_are_refused_and_broken_compression_is_an_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/images");
    let out = qconform()
        .arg("cat")
        .arg(root.join("luks.qcow2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("encrypted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no ciphertext may be written");
    // A compressed cluster whose deflate stream is garbage: an error naming offsets, no panic.
    let dir = tempfile::tempdir().unwrap();
    let mut img = std::fs::read(root.join("compressed-zlib.qcow2")).unwrap();
    let l1 = u64::from_be_bytes(img[40..48].try_into().unwrap());
    let l2 = u64::from_be_bytes(img[l1 as usize..l1 as usize + 8].try_into().unwrap())
        & 0x00ff_ffff_ffff_fe00;
    let e = u64::from_be_bytes(img[l2 as usize..l2 as usize + 8].try_into().unwrap());
    let host = (e & ((1u64 << 58) - 1)) as usize;
    for b in &mut img[host..host + 64] {
        *b = 0xff;
    }
    let p = dir.path().join("bad.qcow2");
    std::fs::write(&p, &img).unwrap();
    let out = qconform().arg("cat").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("compressed cluster for guest offset 0x0"),
        "{err}"
    );
}

#[test]
fn sparse_output_file_equals_qemu_img_convert() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/images");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "zero-and-discard",
        "compressed-zstd",
        "backing-overlay",
        "writer-rich",
        "extended-l2",
    ] {
        let out = dir.path().join(format!("{name}.raw"));
        let st = qconform()
            .args(["cat", "-o"])
            .arg(&out)
            .arg(root.join(format!("{name}.qcow2")))
            .status()
            .unwrap();
        assert!(st.success(), "{name}");
        let theirs = tools::qemu_convert(&root, &format!("{name}.qcow2"), &[]);
        assert!(
            std::fs::read(&out).unwrap() == theirs,
            "{name}: cat -o differs from qemu-img convert"
        );
    }
}

#[test]
fn backing_cycles_and_missing_files_are_errors_not_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| tools::tool(d, args[0], &args[1..]);
    run(&["qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    run(&[
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
    ]);
    // Unsafe rebase: a now names b, which names a.
    run(&[
        "qemu-img", "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2",
    ]);
    let out = qconform()
        .args(["cat", "b.qcow2"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loops back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With --backing ignore the same image reads (its own clusters only).
    let out = qconform()
        .args(["cat", "--backing", "ignore", "b.qcow2"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.len() == 1 << 20);
    // A missing backing file names itself.
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        "-u",
        "c.qcow2",
        "1M",
    ]);
    let out = qconform()
        .args(["map", "c.qcow2"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gone.qcow2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
