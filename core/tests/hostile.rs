//! Adversarial headers and tables: every one must end in a finding naming
//! its rule, without a panic, a hang, or an allocation sized by a claimed
//! field. The base image is built here byte by byte and validated against
//! qemu-img so the edits start from a known-good file.

use proptest::prelude::*;
use qconform_core::qcow2;
use qconform_core::source::ReadAt;
use qconform_core::{Limits, Report};

const CB: u32 = 16;
const CS: u64 = 1 << CB;

fn put64(b: &mut Vec<u8>, at: u64, v: u64) {
    put(b, at, &v.to_be_bytes());
}
fn put32(b: &mut Vec<u8>, at: u64, v: u32) {
    put(b, at, &v.to_be_bytes());
}
fn put(b: &mut Vec<u8>, at: u64, data: &[u8]) {
    let end = at as usize + data.len();
    if b.len() < end {
        b.resize(end, 0);
    }
    b[at as usize..end].copy_from_slice(data);
}

/// A valid, empty v3 image of 1 MiB virtual size: header, refcount table,
/// one refcount block and the L1 table, one cluster each (64 KiB clusters).
fn base() -> Vec<u8> {
    let mut b = vec![0u8; 4 * CS as usize];
    put(&mut b, 0, b"QFI\xfb");
    put32(&mut b, 4, 3);
    put32(&mut b, 20, CB);
    put64(&mut b, 24, 1 << 20);
    put32(&mut b, 36, 1); // l1_size
    put64(&mut b, 40, 3 * CS); // l1_table_offset
    put64(&mut b, 48, CS); // refcount_table_offset
    put32(&mut b, 56, 1); // refcount_table_clusters
    put32(&mut b, 96, 4); // refcount_order
    put32(&mut b, 100, 112); // header_length
    put64(&mut b, CS, 2 * CS); // refcount table entry 0 -> block at cluster 2
    for k in 0..4 {
        put(&mut b, 2 * CS + 2 * k, &1u16.to_be_bytes());
    }
    b
}

fn check(b: &[u8]) -> Report {
    qcow2::check(&b, "hostile", &Limits::default())
}

fn rules(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.rule.id).collect()
}

fn assert_reports(r: &Report, rule: &str) {
    assert!(
        r.findings.iter().any(|f| f.rule.id == rule),
        "{rule} not reported: {:?}",
        r.findings
    );
}

fn assert_rule(b: &[u8], rule: &str) -> Report {
    let r = check(b);
    assert!(
        rules(&r).contains(&rule),
        "expected {rule}, got {:?}",
        rules(&r)
    );
    r
}

#[test]
fn the_base_image_is_clean_for_us_and_for_qemu_img() {
    let b = base();
    let r = check(&b);
    assert_eq!(r.exit_code(true), 0, "{:?}", r.findings);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("base.qcow2");
    std::fs::write(&p, &b).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&p)
        .output()
        .expect("qemu-img must be installed");
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
}

#[test]
fn l1_size_2_pow_31_in_a_small_file() {
    let mut b = base();
    put32(&mut b, 36, 0x7fff_ffff);
    assert_rule(&b, "qcow2.header.l1-size-limit");
}

#[test]
fn l1_table_at_the_limit_running_past_eof_is_read_only_where_it_exists() {
    let mut b = base();
    put32(&mut b, 36, 4 << 20); // 32 MiB of entries in a 256 KiB file
    put64(&mut b, 24, 1 << 40);
    assert_rule(&b, "qcow2.refcount.reference-inside-file");
}

#[test]
fn huge_refcount_table_clusters() {
    let mut b = base();
    put32(&mut b, 56, u32::MAX);
    assert_rule(&b, "qcow2.header.refcount-table-size");
    put32(&mut b, 56, 128); // 8 MiB: QEMU's limit, far past the end of the file
    assert_rule(&b, "qcow2.refcount.reference-inside-file");
}

#[test]
fn huge_nb_snapshots() {
    let mut b = base();
    put32(&mut b, 60, u32::MAX);
    put64(&mut b, 64, 3 * CS);
    assert_rule(&b, "qcow2.header.nb-snapshots-limit");
    // 65536 entries, all past the end of the file: read as zeros, never allocated from the claim alone.
    put32(&mut b, 60, 65536);
    put64(&mut b, 64, 1 << 40);
    assert_rule(&b, "qcow2.snapshot.extra-data-v3");
}

#[test]
fn cluster_bits_out_of_range() {
    for cb in [0u32, 8, 22, 63, u32::MAX] {
        let mut b = base();
        put32(&mut b, 20, cb);
        assert_rule(&b, "qcow2.header.cluster-bits");
    }
}

#[test]
fn header_length_past_the_cluster() {
    for len in [CS as u32 + 8, u32::MAX] {
        let mut b = base();
        put32(&mut b, 100, len);
        assert_rule(&b, "qcow2.header.header-length");
    }
}

#[test]
fn extension_lengths_past_the_cluster() {
    for len in [CS as u32, u32::MAX, u32::MAX - 7] {
        let mut b = base();
        put32(&mut b, 112, 0x1234_5678);
        put32(&mut b, 116, len);
        assert_rule(&b, "qcow2.ext.within-header-area");
    }
}

#[test]
fn offsets_near_u64_max() {
    let near = !(CS - 1);
    let mut b = base();
    put64(&mut b, 40, near);
    assert_rule(&b, "qcow2.header.l1-table-aligned");
    let mut b = base();
    put64(&mut b, 48, near);
    assert_rule(&b, "qcow2.header.refcount-table-aligned");
    let mut b = base();
    put32(&mut b, 60, 1);
    put64(&mut b, 64, near);
    assert_rule(&b, "qcow2.header.snapshots-aligned");
    let mut b = base();
    put64(&mut b, CS + 8, near); // a refcount block at the end of the address space
    assert_rule(&b, "qcow2.refcount.block-inside-file");
    // An L2 table and a data cluster at the top of the 56-bit offset space.
    let mut b = base();
    put64(&mut b, 3 * CS, (1 << 63) | 0x00ff_ffff_ffff_0000);
    assert_rule(&b, "qcow2.refcount.reference-inside-file");
    let mut b = base();
    put64(&mut b, 8, u64::MAX);
    put32(&mut b, 16, u32::MAX);
    assert_rule(&b, "qcow2.header.backing-file-offset");
}

#[test]
fn refcount_table_entry_pointing_at_itself() {
    let mut b = base();
    put64(&mut b, CS, CS); // the refcount table is its own refcount block
    let r = check(&b);
    assert!(r.exit_code(false) == 2, "{:?}", rules(&r));
    assert!(
        rules(&r).contains(&"qcow2.metadata.no-overlap"),
        "{:?}",
        rules(&r)
    );
}

#[test]
fn l1_entries_pointing_at_the_l1_table() {
    let mut b = base();
    put32(&mut b, 36, 8192);
    put64(&mut b, 24, 8192 * 8192 * CS);
    for i in 0..8192 {
        put64(&mut b, 3 * CS + 8 * i, 3 * CS);
    }
    // One L2 visit for 8192 references: the census multiplies instead of re-reading.
    assert_rule(&b, "qcow2.refcount.covers-references");
}

/// `n` snapshots all naming the one L1 table of 512 entries at cluster 3.
fn shared_l1_snapshots(n: u32) -> Vec<u8> {
    let mut b = base();
    put32(&mut b, 36, 8192);
    put64(&mut b, 24, 8192 * 8192 * CS);
    let table = 4 * CS;
    put32(&mut b, 60, n);
    put64(&mut b, 64, table);
    let mut at = table;
    for i in 0..n {
        put64(&mut b, at, 3 * CS);
        put32(&mut b, at + 8, 8192 - (i % 2)); // two distinct (offset, size) pairs
        put32(&mut b, at + 36, 16);
        at += 40 + 16;
    }
    b
}

#[test]
fn snapshots_sharing_one_l1_hit_the_work_limit() {
    let b = shared_l1_snapshots(4096);
    // With the default limits the shared tables are walked once each.
    let r = check(&b);
    assert!(
        !rules(&r).contains(&"limits.entries-visited"),
        "{:?}",
        rules(&r)
    );
    // With a small budget the check stops with a check error instead of working on.
    let limits = Limits {
        max_entries_visited: 10_000,
        ..Limits::default()
    };
    let r = qcow2::check(&b.as_slice(), "amplified", &limits);
    assert!(
        rules(&r).contains(&"limits.entries-visited"),
        "{:?}",
        rules(&r)
    );
    assert_eq!(r.exit_code(false), 1);
}

/// A source that presents `base` followed by a long run of synthetic
/// snapshot entries with 64 KiB names, without allocating them.
struct SyntheticSnapshots {
    base: Vec<u8>,
    table: u64,
    stride: u64,
    entry: Vec<u8>,
    len: u64,
}

impl ReadAt for SyntheticSnapshots {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(qconform_core::Error::OutOfBounds {
                offset,
                len: buf.len() as u64,
                source_len: self.len,
            });
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            let o = offset + i as u64;
            *byte = if o < self.base.len() as u64 {
                self.base[o as usize]
            } else if o >= self.table {
                self.entry
                    .get(((o - self.table) % self.stride) as usize)
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            };
        }
        Ok(())
    }
}

#[test]
fn snapshot_table_over_64_mib_is_refused() {
    let mut b = base();
    let table = 4 * CS;
    put32(&mut b, 60, 1000);
    put64(&mut b, 64, table);
    let mut entry = vec![0u8; 40];
    entry[12..14].copy_from_slice(&0xffffu16.to_be_bytes());
    entry[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    entry[36..40].copy_from_slice(&16u32.to_be_bytes());
    let stride = (40u64 + 16 + 0xffff + 0xffff).next_multiple_of(8);
    let src = SyntheticSnapshots {
        base: b,
        table,
        stride,
        entry,
        len: table + 1000 * stride,
    };
    let r = qcow2::check(&src, "synthetic", &Limits::default());
    assert!(
        rules(&r).contains(&"qcow2.snapshot.table-readable"),
        "{:?}",
        rules(&r)
    );
    assert_eq!(r.exit_code(false), 1);
}

#[test]
fn refcount_widths_all_decode_the_base_image() {
    // The same four clusters with every refcount_order: rewrite the block.
    for order in 0..=6u32 {
        let mut b = base();
        put32(&mut b, 96, order);
        let block = 2 * CS as usize;
        b[block..block + CS as usize].fill(0);
        let bits = 1usize << order;
        for k in 0..4usize {
            let bit = k * bits;
            if bits >= 8 {
                b[block + bit / 8 + bits / 8 - 1] = 1;
            } else {
                b[block + bit / 8] |= 1 << (bit % 8);
            }
        }
        let r = check(&b);
        assert_eq!(r.exit_code(true), 0, "order {order}: {:?}", r.findings);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any set of byte edits to a valid image ends in a report, never a panic.
    #[test]
    fn edits_never_panic(edits in proptest::collection::vec((0u64..4 * CS, any::<u8>()), 1..24),
                         words in proptest::collection::vec((0usize..64, any::<u64>()), 0..4)) {
        let mut b = base();
        for (at, v) in edits {
            b[at as usize] = v;
        }
        // Whole 64-bit fields of the header with arbitrary values, too.
        for (field, v) in words {
            put64(&mut b, (field as u64 * 8) % 112, v);
        }
        let r = check(&b);
        prop_assert!((0..=3).contains(&r.exit_code(false)));
    }
}

#[test]
fn refcount_table_past_eof_reads_as_empty() {
    // Found by differential random edits: the in-file part of the table is
    // empty, which must mean "no refcount blocks", not an unreadable file.
    let mut b = base();
    put64(&mut b, 48, 0x9a_0000_0000);
    let r = assert_rule(&b, "qcow2.refcount.covers-references");
    assert!(!rules(&r).contains(&"input.readable"), "{:?}", rules(&r));
    assert_eq!(r.exit_code(false), 2);
}

#[test]
fn parallels_with_a_huge_claimed_disk_maps_in_bounded_time() {
    // A 64-byte header and a 4-entry BAT claiming the largest disk QEMU opens
    // (0x3f_ffff_ffe0_0000 sectors, ~2^62 bytes) of 512-byte clusters: the
    // map walks the BAT, not the claim.
    let mut b = vec![0u8; 4096];
    b[..16].copy_from_slice(b"WithouFreSpacExt");
    b[16..20].copy_from_slice(&2u32.to_le_bytes());
    b[28..32].copy_from_slice(&1u32.to_le_bytes()); // tracks: 1 sector clusters
    b[32..36].copy_from_slice(&4u32.to_le_bytes());
    b[36..44].copy_from_slice(&0x3f_ffff_ffe0_0000u64.to_le_bytes());
    b[48..52].copy_from_slice(&1u32.to_le_bytes());
    use qconform_core::disk::{Backing, NoFiles, OpenOptions, VirtualDisk};
    let opts = OpenOptions {
        backing: Backing::Ignore,
        ..OpenOptions::default()
    };
    let mut disk = VirtualDisk::open(Box::new(b.clone()), &NoFiles, &opts).unwrap();
    let map = disk.map().unwrap();
    assert!(map.len() <= 3, "{map:?}");
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), disk.size());
    // One sector more than QEMU opens: refused before any read.
    b[36..44].copy_from_slice(&0x40_0000_0000_0000u64.to_le_bytes());
    let e = VirtualDisk::open(Box::new(b.clone()), &NoFiles, &opts).err();
    assert_eq!(
        e.and_then(|e| e.rule_id()),
        Some("parallels.header.disk-size-limit")
    );
    // 2^40 sectors (512 TiB): mapped in a few steps too.
    b[36..44].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut disk = VirtualDisk::open(Box::new(b.clone()), &NoFiles, &opts).unwrap();
    let map = disk.map().unwrap();
    assert!(map.len() <= 3, "{map:?}");
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), disk.size());
    let r = qconform_core::parallels::check(&b.as_slice(), "huge", &Limits::default());
    assert_reports(&r, "parallels.header.bat-covers-disk");
}

/// A QED header in a small file: 4 KiB clusters, table_size 1, L1 at 4 KiB.
fn qed_base() -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[..4].copy_from_slice(b"QED\0");
    b[4..8].copy_from_slice(&4096u32.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&1u32.to_le_bytes());
    b[40..48].copy_from_slice(&4096u64.to_le_bytes());
    b[48..56].copy_from_slice(&(1u64 << 20).to_le_bytes());
    b
}

/// Opens a QED image best effort (no check first): the reader itself must
/// hold on hostile tables.
fn qed_open(b: &[u8]) -> Result<qconform_core::disk::VirtualDisk, String> {
    use qconform_core::disk::{Backing, NoFiles, OpenOptions, VirtualDisk};
    let opts = OpenOptions {
        backing: Backing::Ignore,
        verify: false,
        ..OpenOptions::default()
    };
    VirtualDisk::open(Box::new(b.to_vec()), &NoFiles, &opts).map_err(|e| e.to_string())
}

#[test]
fn qed_the_base_is_clean() {
    let r = qconform_core::qed::check(&qed_base().as_slice(), "qed", &Limits::default());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn qed_one_gib_tables_claimed_in_an_eight_kib_file() {
    // 64 MiB clusters, table_size 16: each table claims 1 GiB. The check
    // reads what the file holds and reports the L1 table that does not fit.
    let mut b = qed_base();
    b[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    b[8..12].copy_from_slice(&16u32.to_le_bytes());
    b[40..48].copy_from_slice(&(64u64 << 20).to_le_bytes());
    b[48..56].copy_from_slice(&(!511u64).to_le_bytes());
    let r = qconform_core::qed::check(&b.as_slice(), "qed", &Limits::default());
    assert!(
        r.findings
            .iter()
            .any(|f| f.rule.id == "qed.table.offset-valid" || f.rule.id == "qed.header.image-size"),
        "{:?}",
        r.findings
    );
}

#[test]
fn qed_huge_image_with_an_empty_l1_maps_in_one_entry() {
    // The largest image_size 4 KiB clusters and a 1-cluster table address.
    let mut b = qed_base();
    let max = (512u64 * 512) * 4096;
    b[48..56].copy_from_slice(&max.to_le_bytes());
    let mut disk = qed_open(&b).unwrap();
    let map = disk.map().unwrap();
    assert_eq!(map.len(), 1, "{map:?}");
    assert_eq!(map[0].length, max);
}

#[test]
fn qed_backing_name_of_four_gib_is_refused_without_allocating_it() {
    // header_size 2^20 - 1 clusters makes a 4 GiB name "fit in the header".
    let mut b = qed_base();
    let clusters = (1u32 << 20) - 1;
    b[12..16].copy_from_slice(&clusters.to_le_bytes());
    b[16..24].copy_from_slice(&1u64.to_le_bytes());
    b[40..48].copy_from_slice(&(clusters as u64 * 4096).to_le_bytes());
    b[56..60].copy_from_slice(&64u32.to_le_bytes());
    b[60..64].copy_from_slice(&(clusters * 4096 - 64).to_le_bytes());
    let e = qed_open(&b).err().unwrap_or_default();
    assert!(e.contains("backing file name"), "{e}");
}

#[test]
fn qed_tables_pointing_at_themselves_and_at_the_header() {
    let mut b = qed_base();
    // L1 entry 0 names the L1 table itself; its entry 0 then names the L1 again.
    b[4096..4104].copy_from_slice(&4096u64.to_le_bytes());
    let r = qconform_core::qed::check(&b.as_slice(), "qed", &Limits::default());
    assert_reports(&r, "qed.cluster.referenced-once");
    // A data entry naming the header cluster.
    let mut b = qed_base();
    b.resize(12288, 0);
    b[4096..4104].copy_from_slice(&8192u64.to_le_bytes());
    b[8192..8200].copy_from_slice(&0u64.to_le_bytes());
    b[8200..8208].copy_from_slice(&0u64.to_le_bytes());
    b[8192 + 16..8192 + 24].copy_from_slice(&0u64.to_le_bytes());
    b[8192 + 24..8192 + 32].copy_from_slice(&4096u64.to_le_bytes());
    let r = qconform_core::qed::check(&b.as_slice(), "qed", &Limits::default());
    assert_reports(&r, "qed.cluster.referenced-once");
    // Reading either never loops or panics.
    let _ = qed_open(&b).map(|mut d| d.map());
}

/// A resolver that serves the same overlay under every name: an endless chain.
struct Endless(Vec<u8>);
impl qconform_core::disk::Resolver for Endless {
    fn open(
        &self,
        name: &str,
        _: qconform_core::disk::Role,
    ) -> Result<qconform_core::disk::Resolved, qconform_core::disk::ReadError> {
        Ok(qconform_core::disk::Resolved {
            source: Box::new(self.0.clone()),
            key: format!("{name}-{}", self.0.len()),
            resolver: Box::new(Endless(self.0.clone())),
        })
    }
}

#[test]
fn backing_chains_deeper_than_the_cap_are_refused() {
    use qconform_core::disk::{OpenOptions, VirtualDisk};
    // An image naming a backing file; every "file" below is a new copy of
    // it, so only the depth cap ends the chain (keys differ per layer here
    // because each copy grows by one byte).
    let mut b = base();
    put64(&mut b, 8, 0x200); // backing_file_offset
    put32(&mut b, 16, 4); // backing_file_size
    put(&mut b, 0x200, b"next");
    put(&mut b, 0x204, b"\0");
    struct Growing(std::cell::Cell<usize>, Vec<u8>);
    impl qconform_core::disk::Resolver for Growing {
        fn open(
            &self,
            _: &str,
            _: qconform_core::disk::Role,
        ) -> Result<qconform_core::disk::Resolved, qconform_core::disk::ReadError> {
            let n = self.0.get() + 1;
            self.0.set(n);
            Ok(qconform_core::disk::Resolved {
                source: Box::new(self.1.clone()),
                key: format!("layer-{n}"),
                resolver: Box::new(Growing(std::cell::Cell::new(n), self.1.clone())),
            })
        }
    }
    let limits = Limits {
        max_backing_depth: 40,
        ..Limits::default()
    };
    let opts = OpenOptions {
        limits,
        ..OpenOptions::default()
    };
    let e = VirtualDisk::open(
        Box::new(b.clone()),
        &Growing(Default::default(), b.clone()),
        &opts,
    )
    .err();
    assert_eq!(e.and_then(|e| e.rule_id()), Some("limits.backing-depth"));
    // The same file under the same key is a cycle, found at the first repeat.
    let e = VirtualDisk::open(Box::new(b.clone()), &Endless(b), &OpenOptions::default()).err();
    assert_eq!(
        e.and_then(|e| e.rule_id()),
        Some("input.backing-chain-acyclic")
    );
}
