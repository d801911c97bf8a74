//! Reads of hostile images: `cat` and `map` refuse what the checker calls
//! broken, as `qemu-img convert` refuses it (exit 1 naming the rule and the
//! offset), `--force` reads best effort, and claimed sizes never drive the
//! work. Images are made with qemu-img and edited here.

use qconform_testkit::qemu_read;
use qconform_testkit::tools::{qemu_convert_ok, run, tool as sh};

use std::path::{Path, PathBuf};
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn edit(p: &Path, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(p).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, b).unwrap();
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// `cat` and `map` refuse `img` with exit 1 naming `rule`; `--force` reads
/// it (best effort) when `force_reads`.
fn refused(img: &Path, rule: &str, force_reads: bool) {
    for cmd in ["cat", "map"] {
        let (code, out, err) = run(qconform().arg(cmd).arg(img));
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(err.contains(rule), "{cmd}: {rule} not named: {err}");
        assert!(
            err.contains("at offset 0x"),
            "{cmd}: no offset named: {err}"
        );
        assert!(
            out.len() <= 1,
            "{cmd} wrote {} bytes before refusing",
            out.len()
        );
        let (code, _, err) = run(qconform().args([cmd, "--force"]).arg(img));
        assert_eq!(code == 0, force_reads, "{cmd} --force: {err}");
    }
}

fn qed_image(dir: &Path) -> PathBuf {
    sh(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qed",
            "-o",
            "cluster_size=4096",
            "img.qed",
            "1M",
        ],
    );
    sh(dir, "qemu-io", &["-c", "write -P 0x5a 0 8k", "img.qed"]);
    dir.join("img.qed")
}

#[test]
fn qed_tables_past_eof_and_truncated_headers_are_refused_not_read_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let img = qed_image(dir.path());
    // l1_table_offset (bytes 40..48) moved one cluster past the end of the file.
    let len = std::fs::metadata(&img).unwrap().len();
    edit(&img, 40, &(len.next_multiple_of(4096) + 4096).to_le_bytes());
    assert!(
        !qemu_convert_ok("qed", &img),
        "qemu-img reads a QED image whose L1 is past EOF"
    );
    refused(&img, "qed.table.offset-valid", true);
    // Cut inside the header: no read at all.
    let dir2 = tempfile::tempdir().unwrap();
    let cut = qed_image(dir2.path());
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(40).unwrap();
    assert!(!qemu_convert_ok("qed", &cut));
    let (code, out, err) = run(qconform().arg("cat").arg(&cut));
    assert_eq!((code, out.len()), (1, 0), "{err}");
    assert!(err.contains("qed.header"), "{err}");
}

#[test]
fn subclusters_both_allocated_and_zero_are_an_error_like_qemus_eio() {
    let dir = tempfile::tempdir().unwrap();
    sh(
        dir.path(),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=64k,extended_l2=on",
            "img.qcow2",
            "1M",
        ],
    );
    sh(
        dir.path(),
        "qemu-io",
        &["-c", "write -P 0x11 0 64k", "img.qcow2"],
    );
    let img = dir.path().join("img.qcow2");
    let b = std::fs::read(&img).unwrap();
    let l1 = be64(&b, 40) as usize;
    let l2 = (be64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    // Subcluster 3: allocated (bit 3) and reads-as-zero (bit 35) at once.
    let bitmap = be64(&b, l2 + 8) | (1 << 35);
    edit(&img, l2 + 8, &bitmap.to_be_bytes());
    assert!(
        !qemu_convert_ok("qcow2", &img),
        "qemu-img reads an alloc-and-zero subcluster"
    );
    // --force does not help: like qemu, the reader itself answers EIO.
    refused(&img, "qcow2.subcluster.alloc-and-zero", false);
}

#[test]
fn a_parallels_disk_larger_than_any_block_device_is_refused_before_streaming() {
    let dir = tempfile::tempdir().unwrap();
    sh(
        dir.path(),
        "qemu-img",
        &["create", "-q", "-f", "parallels", "img.parallels", "1M"],
    );
    let img = dir.path().join("img.parallels");
    edit(&img, 36, &(1u64 << 63).to_le_bytes()); // nb_sectors
    for cmd in ["cat", "map"] {
        let (code, out, err) = run(qconform().args([cmd, "--force"]).arg(&img));
        assert_eq!((code, out.len()), (1, 0), "{cmd}: {err}");
        assert!(err.contains("size"), "{cmd}: {err}");
    }
}

#[test]
fn raw_backing_files_of_any_length_map_like_qemu_img() {
    // QEMU's raw driver rounds a file's size up to whole sectors; the tail
    // past the end of the file maps as present, zero, no data.
    let q = Path::new(env!("CARGO_BIN_EXE_qconform"));
    for len in [1usize, 511, 512, 513, 5000] {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        std::fs::write(dir.path().join("base.raw"), data).unwrap();
        sh(
            dir.path(),
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "top.qcow2",
                "8K",
            ],
        );
        let r = qemu_read::reads(q, "qcow2", &dir.path().join("top.qcow2"));
        let bad = r.differences(&format!("raw backing file of {len} bytes"));
        assert!(bad.is_empty(), "{bad:#?}");
    }
}

#[test]
fn claimed_disks_are_mapped_in_steps_of_what_the_file_holds() {
    // A 2 KiB-cluster-bits-9 qcow2 claiming a 128 GiB disk with an L1 table
    // of 256 entries: once took 7.7 s (one step per cluster); now one entry.
    let dir = tempfile::tempdir().unwrap();
    sh(
        dir.path(),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "img.qcow2",
            "128G",
        ],
    );
    let img = dir.path().join("img.qcow2");
    let (code, out, err) = run(qconform().args(["map", "--output", "json"]).arg(&img));
    assert_eq!(code, 0, "{err}");
    let map: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let theirs = qconform_testkit::tools::qemu_map(dir.path(), "img.qcow2", &[]);
    assert_eq!(map, theirs);
    assert_eq!(map.as_array().map(Vec::len), Some(1));
}

#[test]
fn a_map_streams_entry_by_entry_and_l2_tables_shared_by_every_l1_entry_are_refused() {
    // 4M L1 entries (a 32 MiB L1 of a 2 PiB disk, 64 KiB clusters), every
    // one naming the same L2 table: the map has millions of entries. Once
    // it grew past 2.9 GB before printing; now it refuses by default (the
    // L2 table's refcount says 1, it is referenced 4M times) and with
    // --force writes its first entries at once.
    let dir = tempfile::tempdir().unwrap();
    sh(
        dir.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "img.qcow2", "2P"],
    );
    sh(
        dir.path(),
        "qemu-io",
        &["-c", "write -P 0x33 0 64k", "img.qcow2"],
    );
    let img = dir.path().join("img.qcow2");
    let mut b = std::fs::read(&img).unwrap();
    let l1 = be64(&b, 40) as usize;
    let l1_size = u32::from_be_bytes(b[36..40].try_into().unwrap()) as usize;
    let first: [u8; 8] = b[l1..l1 + 8].try_into().unwrap();
    for i in 1..l1_size {
        b[l1 + 8 * i..l1 + 8 * i + 8].copy_from_slice(&first);
    }
    std::fs::write(&img, b).unwrap();
    let (code, _, err) = run(qconform().args(["map", "--output", "json"]).arg(&img));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("qcow2."), "{err}");
    let mut child = qconform()
        .args(["map", "--force", "--output", "json"])
        .arg(&img)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first_line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first_line.starts_with("[{\"start\":0,"), "{first_line}");
}
