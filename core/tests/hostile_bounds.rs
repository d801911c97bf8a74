//! Hostile files whose claims (a sparse length, a table size, a count) are
//! far larger than what they hold. Each test builds its input here, checks
//! it through `FileSource` as the CLI does, and asserts the findings: the
//! check must complete with memory and time that follow the bytes present.
//! A regression shows up as an allocation abort or a test-harness timeout,
//! so each case is cheap when the code is right.

use qconform_core::qcow2::{self, write};
use qconform_core::source::FileSource;
use qconform_core::{Limits, ReadAt, Report};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TIB: u64 = 1 << 40;

/// Writes `bytes` to a new file in `dir` and extends it to `len` with a hole.
fn sparse_file(dir: &Path, name: &str, bytes: &[u8], len: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len).unwrap();
    path
}

fn check_qcow2(path: &Path, limits: &Limits) -> Report {
    let src = FileSource::open(path).unwrap();
    qcow2::check(&src, "hostile", limits)
}

/// Rule ids with their counts (repetitions and omitted findings included).
fn counts(r: &Report) -> BTreeMap<&'static str, u64> {
    let mut ids: Vec<&'static str> = r.findings.iter().map(|f| f.rule.id).collect();
    ids.dedup();
    ids.into_iter().map(|id| (id, r.count(id))).collect()
}

/// A valid 512-byte-cluster image of `size` virtual bytes with guest
/// clusters `0..data` written.
fn small_cluster_image(size: u64, data: u64) -> Vec<u8> {
    let mut d = write::Description::new(size, 9);
    for k in 0..data {
        d.clusters
            .insert(k, write::ClusterData::Data(vec![0x5a; 512]));
    }
    write::write(&d).unwrap().image
}

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

/// Runs qemu-img with `args` and the image path (qemu-utils is on every
/// project machine: a missing qemu-img fails the test, it does not skip).
fn qemu_img(args: &[&str], path: &Path) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .expect("qemu-img must be installed (qemu-utils); this test does not skip")
}

/// `qemu-img check --output=json`: its exit code and report.
fn qemu_img_check(path: &Path) -> (i32, serde_json::Value) {
    let out = qemu_img(&["check", "-f", "qcow2", "--output=json"], path);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

/// Class "memory follows claims": 512-byte clusters in a 15 TiB sparse file
/// used to need a count and an owner byte per file cluster (30 GiB) and a
/// bit per cluster for the COPIED check; the image holds 260 KiB.
#[test]
fn qcow2_in_a_15_tib_sparse_file_is_checked_clean() {
    assert_clean_in_sparse_file(4, 15 * TIB);
}

/// Checks a clean 512-byte-cluster image with `data` clusters written,
/// extended with a hole to `len`.
fn assert_clean_in_sparse_file(data: u64, len: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = small_cluster_image(1 << 30, data);
    let path = sparse_file(dir.path(), "sparse.qcow2", &img, len);
    let r = check_qcow2(&path, &Limits::default());
    // The hole past the image is neither referenced nor refcounted: clean,
    // and the image ends where its last cluster does.
    assert_eq!(r.exit_code(true), 0, "{:?}", r.findings);
    assert!(counts(&r).is_empty(), "{:?}", r.findings);
    assert_eq!(r.stats.unwrap().allocated_clusters, Some(data));
    assert!(r.stats.unwrap().image_end_offset.unwrap() <= img.len() as u64 + 512);
}

/// Class "time follows claims": the refcount comparison used to walk all
/// 2^34 clusters of an 8 TiB file (76 s); only clusters that are referenced
/// or covered by a non-zero refcount block can differ.
#[test]
fn qcow2_in_an_8_tib_sparse_file_compares_only_allocated_metadata() {
    assert_clean_in_sparse_file(1, 8 * TIB);
}

/// References scattered over a huge sparse file: every L2 entry names a
/// data cluster 16 GiB from the previous one, each in a hole with refcount
/// 0. The census keeps such clusters in sparse pages (no dense page per
/// reference); every one is a corruption twice, as qemu-img counts it: the
/// refcount is below the references, and COPIED is set with refcount 0.
#[test]
fn qcow2_references_scattered_over_a_sparse_file_are_each_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = small_cluster_image(1 << 30, 1);
    let l1 = be64(&img, 40);
    let l2 = be64(&img, l1) & 0x00ff_ffff_ffff_fe00;
    let n = 64u64;
    let copied = 1u64 << 63;
    for i in 0..n {
        let off = (i + 1) * (16 << 30);
        let at = (l2 + 8 * i) as usize;
        img[at..at + 8].copy_from_slice(&(off | copied).to_be_bytes());
    }
    let path = sparse_file(dir.path(), "scattered.qcow2", &img, 2 * TIB);
    let r = check_qcow2(&path, &Limits::default());
    let c = counts(&r);
    assert_eq!(c.get("qcow2.refcount.covers-references"), Some(&n), "{c:?}");
    assert_eq!(c.get("qcow2.l2.copied"), Some(&n), "{c:?}");
    // The original data cluster lost its only reference: a leak.
    assert_eq!(c.get("qcow2.refcount.no-leak"), Some(&1), "{c:?}");
    assert_eq!(r.corruptions, 2 * n);
    assert_eq!(r.stats.unwrap().allocated_clusters, Some(n));
}

/// Class "wrong answer": a v3 image with 64 KiB clusters, 2 MiB written by
/// qemu-io, cut at 0x60000. The 31 data clusters past the end are each one
/// corruption for qemu-img (a reference past EOF); their on-disk refcount is
/// 1 and COPIED is set, so COPIED is no error. We used to read the refcount
/// of clusters past the end of the file as 0 and report 30 contradictory
/// COPIED mismatches ("COPIED is set but its refcount is 1").
#[test]
fn qcow2_truncated_after_writes_counts_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.qcow2");
    let p = path.to_str().unwrap();
    let run = |tool: &str, args: Vec<&str>| {
        let st = Command::new(tool)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("qemu-img and qemu-io must be installed (qemu-utils)");
        assert!(st.success(), "{tool} {args:?}");
    };
    let create = "create -q -f qcow2 -o cluster_size=65536".split(' ');
    run("qemu-img", create.chain([p, "64M"]).collect());
    run("qemu-io", vec!["-c", "write -P 0x5a 0 2M", p]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0x60000)
        .unwrap();
    let (exit, q) = qemu_img_check(&path);
    let r = check_qcow2(&path, &Limits::default());
    assert_eq!(r.exit_code(false), exit, "{:?}", r.findings);
    assert_eq!(
        Some(r.corruptions),
        q["corruptions"].as_u64(),
        "{:?}",
        counts(&r)
    );
    assert_eq!(Some(r.leaks), Some(q["leaks"].as_u64().unwrap_or(0)));
    assert_eq!(
        r.stats.unwrap().image_end_offset,
        q["image-end-offset"].as_u64()
    );
    let c = counts(&r);
    assert_eq!(
        c.get("qcow2.refcount.reference-inside-file"),
        Some(&31),
        "{c:?}"
    );
    assert!(!c.contains_key("qcow2.l2.copied"), "{:?}", r.findings);
}

/// Class "snapshots": 65,536 valid snapshots (QEMU's maximum) used to take
/// 18-30 s, quadratic in the ID uniqueness check. Every snapshot here has
/// its own L1 copy sharing the one L2 table and data cluster, as qemu-img
/// snapshot -c makes them; the image is clean for us (and for qemu-img).
#[test]
fn qcow2_with_65536_snapshots_is_checked_clean() {
    let n = 65536u32;
    let mut d = write::Description::new(1 << 20, 9);
    // 65537 references to the shared clusters need 32-bit refcounts.
    d.refcount_order = 5;
    d.clusters
        .insert(0, write::ClusterData::Data(vec![0x5a; 512]));
    d.snapshots = (0..n).map(|i| format!("s{i}")).collect();
    let img = write::write(&d).unwrap().image;
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_file(dir.path(), "snapshots.qcow2", &img, img.len() as u64);
    let r = check_qcow2(&path, &Limits::default());
    assert_eq!(r.exit_code(true), 0, "{:?}", counts(&r));
    let info = {
        let src = FileSource::open(&path).unwrap();
        qcow2::check::info(&src, "snapshots", &Limits::default()).unwrap()
    };
    assert_eq!(info.snapshots.snapshots.len(), n as usize);
}

/// A 2 MiB-cluster image whose cluster 0 holds `n` empty extensions of
/// distinct unknown types after the header, then the end marker.
fn many_extensions(n: u32) -> Vec<u8> {
    let mut img = write::write(&write::Description::new(1 << 30, 21))
        .unwrap()
        .image;
    let start = u32::from_be_bytes(img[100..104].try_into().unwrap()) as usize;
    for i in 0..n as usize {
        let at = start + 8 * i;
        img[at..at + 4].copy_from_slice(&(0x1000_0000 + i as u32).to_be_bytes());
        img[at + 4..at + 8].copy_from_slice(&0u32.to_be_bytes());
    }
    let end = start + 8 * n as usize;
    img[end..end + 8].fill(0);
    img
}

/// Class "a count under the wrong rule": 100,000 distinct unknown header
/// extensions fit the 2 MiB cluster 0 and are valid (qemu-img agrees); only
/// a lowered cap refuses them, under its own rule.
#[test]
fn qcow2_100000_header_extensions_are_valid_and_capped_under_their_own_rule() {
    let dir = tempfile::tempdir().unwrap();
    let img = many_extensions(100_000);
    let path = sparse_file(dir.path(), "exts.qcow2", &img, img.len() as u64);
    let r = check_qcow2(&path, &Limits::default());
    assert_eq!(r.exit_code(true), 0, "{:?}", counts(&r));
    assert_eq!(counts(&r).get("qcow2.ext.unknown"), Some(&100_000));
    let (exit, _) = qemu_img_check(&path);
    assert_eq!(exit, 0, "qemu-img refuses the image");
    let limits = Limits {
        max_header_extensions: 1000,
        ..Limits::default()
    };
    let r = check_qcow2(&path, &limits);
    assert_eq!(r.exit_code(false), 1);
    assert_eq!(counts(&r).get("limits.header-extensions"), Some(&1));
    assert!(!counts(&r).contains_key("limits.table-bytes"));
}

/// Every table held in memory whole is under `max_table_bytes`, with its
/// own rule: here the one-cluster (2 MiB) refcount table of a 2 MiB-cluster
/// image against a 64 KiB cap.
#[test]
fn qcow2_tables_above_max_table_bytes_are_refused_under_limits_table_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = write::Description::new(1 << 30, 21);
    d.snapshots = vec!["a".into()];
    let img = write::write(&d).unwrap().image;
    let path = sparse_file(dir.path(), "tables.qcow2", &img, img.len() as u64);
    assert_eq!(check_qcow2(&path, &Limits::default()).exit_code(true), 0);
    let limits = Limits {
        max_table_bytes: 64 << 10,
        ..Limits::default()
    };
    let r = check_qcow2(&path, &limits);
    assert_eq!(r.exit_code(false), 1, "{:?}", counts(&r));
    assert_eq!(counts(&r).get("limits.table-bytes"), Some(&1));
}

/// A Parallels header ("WithouFreSpacExt", 4 KiB clusters) with
/// `nb_bat_entries` entries, data starting right after the BAT.
fn parallels_header(nb_bat_entries: u32, nb_sectors: u64) -> (Vec<u8>, u64) {
    let mut b = vec![0u8; 64];
    b[..16].copy_from_slice(b"WithouFreSpacExt");
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 16, 2); // version
    put32(&mut b, 20, 16); // heads
    put32(&mut b, 24, 1); // cylinders
    put32(&mut b, 28, 8); // tracks: 8 sectors = 4 KiB clusters
    put32(&mut b, 32, nb_bat_entries);
    b[36..44].copy_from_slice(&nb_sectors.to_le_bytes());
    let data_off = (64 + 4 * nb_bat_entries as u64).next_multiple_of(4096);
    put32(&mut b, 48, (data_off / 512) as u32);
    (b, data_off)
}

fn check_file(path: &Path, check: fn(&dyn ReadAt, &str, &Limits) -> Report) -> Report {
    let src = FileSource::open(path).unwrap();
    check(&src, "hostile", &Limits::default())
}

/// Class "memory follows claims", Parallels: a 1 GiB BAT (2^28 entries)
/// lying in a file hole, with one allocated cluster named by its last
/// entry. check and info used to read the whole BAT (2 GiB of RSS); it is
/// now read in chunks with the hole skipped.
#[test]
fn parallels_bat_in_a_hole_is_not_materialised() {
    use qconform_core::parallels;
    let n = 1u32 << 28;
    let (mut img, data_off) = parallels_header(n, n as u64 * 8);
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_file(dir.path(), "hole.hds", &img, data_off + 4096);
    // The last BAT entry names the one data cluster (in clusters).
    img = (data_off / 4096).to_le_bytes()[..4].to_vec();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&img, 64 + 4 * (n as u64 - 1)).unwrap();
    }
    let r = check_file(&path, parallels::check);
    assert_eq!(r.exit_code(true), 0, "{:?}", counts(&r));
    assert_eq!(r.stats.unwrap().allocated_clusters, Some(1));
    assert_eq!(r.stats.unwrap().image_end_offset, Some(data_off + 4096));
    let src = FileSource::open(&path).unwrap();
    let info = parallels::check::info(&src, "hole", &Limits::default()).unwrap();
    assert_eq!(info.allocated_clusters, 1);
}

/// Class "memory follows claims", QED: a 1 GiB L1 table (64 MiB clusters,
/// table_size 16) lying in a file hole: the check reads it in chunks,
/// skipping the hole; every cluster of the file is in use, so it is clean.
#[test]
fn qed_l1_in_a_hole_is_not_materialised() {
    let cs = 64u64 << 20;
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"QED\0");
    b[4..8].copy_from_slice(&(cs as u32).to_le_bytes());
    b[8..12].copy_from_slice(&16u32.to_le_bytes()); // table_size
    b[12..16].copy_from_slice(&1u32.to_le_bytes()); // header_size
    b[40..48].copy_from_slice(&cs.to_le_bytes()); // l1_table_offset
    b[48..56].copy_from_slice(&(1u64 << 30).to_le_bytes()); // image_size
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_file(dir.path(), "hole.qed", &b, cs + 16 * cs);
    let r = check_file(&path, qconform_core::qed::check);
    assert_eq!(r.exit_code(true), 0, "{:?}", counts(&r));
    assert_eq!(r.stats.unwrap().allocated_clusters, Some(0));
}

/// Class "Parallels virtual size": QEMU 10.0.2 opens nb_sectors up to
/// BDRV_MAX_LENGTH / 512 = 0x3f_ffff_ffe0_0000 and refuses one more
/// ("File too large"); 2^63 sectors used to give a virtual size of
/// 2^64 - 1. Above the cap the header is refused under its own rule, like
/// qemu-img; at the cap it opens and the size never exceeds it.
#[test]
fn parallels_disk_size_is_capped_like_qemu() {
    use qconform_core::parallels;
    let dir = tempfile::tempdir().unwrap();
    let max_sectors = 0x3f_ffff_ffe0_0000u64;
    for (sectors, accepted) in [
        (1u64 << 63, false),
        (max_sectors + 1, false),
        (max_sectors, true),
    ] {
        let (img, data_off) = parallels_header(4, sectors);
        let path = sparse_file(dir.path(), "big.hds", &img, data_off);
        let r = check_file(&path, parallels::check);
        let qemu = qemu_img(&["info", "-f", "parallels"], &path);
        assert_eq!(
            qemu.status.success(),
            accepted,
            "qemu-img info on {sectors:#x} sectors"
        );
        if accepted {
            assert!(!counts(&r).contains_key("parallels.header.disk-size-limit"));
            let src = FileSource::open(&path).unwrap();
            let info = parallels::check::info(&src, "big", &Limits::default()).unwrap();
            assert_eq!(info.header.disk_size(), max_sectors * 512);
        } else {
            assert_eq!(r.exit_code(false), 1, "{sectors:#x}: {:?}", counts(&r));
            assert_eq!(counts(&r).get("parallels.header.disk-size-limit"), Some(&1));
        }
    }
}
