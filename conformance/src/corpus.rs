//! The shipped corpus: how each image under corpus/images/ is built (with
//! qemu-img and qemu-io, then an optional structured byte edit) and which
//! rules its check must report. `cargo xtask corpus` rebuilds the files from
//! these recipes; the differential tests build the same recipes (and a
//! wider option matrix) and compare with qemu-img check.

use qconform_core::qcow2::check::Info;
use qconform_core::qcow2::mapping::{L1E_OFFSET_MASK, L2E_OFFSET_MASK};
use qconform_core::qcow2::refcount::REFT_OFFSET_MASK;
use qconform_core::rule_set;
use qconform_core::rules::{general, parallels, policy, qcow2 as q2, qed, Rule};
use qconform_core::{qcow2, Limits};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A structured corruption applied to the bytes of a freshly built image.
pub type Edit = fn(&mut Image);

/// How qemu-img check's verdict relates to ours for a case.
#[derive(Debug, Clone, Copy)]
pub enum Oracle {
    /// Exit code equal; corruption and leak counts equal.
    Agrees,
    /// Exit codes equal, counts differ for the stated reason.
    SameExit(&'static str),
    /// qemu-img is wrong or lax here; we follow the spec sentence quoted.
    Differs(&'static str),
}

/// One corpus case.
pub struct Case {
    pub name: &'static str,
    /// Commands run in the corpus directory; `{img}` is this case's file.
    pub steps: &'static [&'static [&'static str]],
    pub edit: Option<Edit>,
    /// Rules the check must report.
    pub expect: &'static [&'static Rule],
    /// Exit code `qconform check` must give.
    pub exit: i32,
    pub oracle: Oracle,
}

/// An image being edited: its bytes and its parsed metadata.
pub struct Image {
    pub bytes: Vec<u8>,
    pub info: Info,
}

impl Image {
    pub fn get64(&self, at: u64) -> u64 {
        self.bytes
            .get(at as usize..at as usize + 8)
            .map_or(0, |s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
    }
    pub fn put64(&mut self, at: u64, v: u64) {
        self.put(at, &v.to_be_bytes());
    }
    pub fn put32(&mut self, at: u64, v: u32) {
        self.put(at, &v.to_be_bytes());
    }
    pub fn put16(&mut self, at: u64, v: u16) {
        self.put(at, &v.to_be_bytes());
    }
    pub fn put(&mut self, at: u64, data: &[u8]) {
        let end = at as usize + data.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[at as usize..end].copy_from_slice(data);
    }
    pub fn cluster_size(&self) -> u64 {
        self.info.header.cluster_size()
    }
    /// File offset of active L1 entry `i`.
    pub fn l1_entry(&self, i: u64) -> u64 {
        self.info.header.l1_table_offset + 8 * i
    }
    /// Offset of the L2 table of active L1 entry `i`.
    pub fn l2_table(&self, i: u64) -> u64 {
        self.get64(self.l1_entry(i)) & L1E_OFFSET_MASK
    }
    /// File offset of L2 entry `j` of the table of L1 entry 0.
    pub fn l2_entry(&self, j: u64) -> u64 {
        self.l2_table(0) + j * self.info.header.l2_entry_bytes()
    }
    /// Host offset of guest cluster `j` (L1 entry 0).
    pub fn data_cluster(&self, j: u64) -> u64 {
        self.get64(self.l2_entry(j)) & L2E_OFFSET_MASK
    }
    /// Sets the on-disk refcount of host cluster `k`.
    pub fn set_refcount(&mut self, k: u64, value: u64) {
        let h = &self.info.header;
        let order = h.refcount_order;
        let epb = (8 * h.cluster_size()) >> order;
        let block = self.get64(h.refcount_table_offset + 8 * (k / epb)) & REFT_OFFSET_MASK;
        let bit = (k % epb) << order;
        let width = 1u64 << order;
        if width >= 8 {
            let bytes = (width / 8) as usize;
            let be = value.to_be_bytes();
            self.put(block + bit / 8, &be[8 - bytes..]);
        } else {
            let at = (block + bit / 8) as usize;
            let shift = bit % 8;
            let mask = (((1u64 << width) - 1) << shift) as u8;
            if let Some(b) = self.bytes.get_mut(at) {
                *b = (*b & !mask) | (((value << shift) as u8) & mask);
            }
        }
    }
}

const QI: &str = "qemu-img";
const QIO: &str = "qemu-io";

macro_rules! create {
    ($opts:literal, $size:literal) => {
        &[
            "qemu-img", "create", "-q", "-f", "qcow2", "-o", $opts, "{img}", $size,
        ]
    };
}

/// A v3 image with 4 KiB clusters and data in its first clusters: the base
/// most corruption cases edit.
const DATA_V3: &[&[&str]] = &[
    create!("cluster_size=4096", "1M"),
    &[
        QIO,
        "-c",
        "write -P 0x11 0 16k",
        "-c",
        "write -P 0x22 64k 4k",
        "{img}",
    ],
];
const DATA_V2: &[&[&str]] = &[
    create!("cluster_size=4096,compat=0.10", "1M"),
    &[QIO, "-c", "write -P 0x11 0 16k", "{img}"],
];
const SNAPSHOTS: &[&[&str]] = &[
    create!("cluster_size=4096", "1M"),
    &[QIO, "-c", "write -P 0x11 0 8k", "{img}"],
    &[QI, "snapshot", "-c", "first", "{img}"],
    &[QIO, "-c", "write -P 0x22 4k 8k", "{img}"],
    &[QI, "snapshot", "-c", "second", "{img}"],
];
const BITMAPS: &[&[&str]] = &[
    create!("cluster_size=4096", "1M"),
    &[QIO, "-c", "write -P 0x11 0 8k", "{img}"],
    &[QI, "bitmap", "--add", "{img}", "b0"],
    &[QI, "bitmap", "--add", "-g", "65536", "{img}", "b1"],
];
const EXTL2: &[&[&str]] = &[
    create!("cluster_size=16384,extended_l2=on", "1M"),
    &[
        QIO,
        "-c",
        "write -P 0x11 0 2k",
        "-c",
        "write -z 4k 1k",
        "-c",
        "write -c -P 0x33 32k 16k",
        "{img}",
    ],
];
const COMPRESSED: &[&[&str]] = &[
    create!("cluster_size=4096", "1M"),
    &[
        QIO,
        "-c",
        "write -c -P 0x11 0 4k",
        "-c",
        "write -c -P 0x22 4k 4k",
        "-c",
        "write -P 0x33 8k 4k",
        "{img}",
    ],
];
const DATA_FILE: &[&[&str]] = &[
    &[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096,data_file={name}.data",
        "{img}",
        "1M",
    ],
    &[
        QIO,
        "-c",
        "write -P 0x11 0 8k",
        "-c",
        "write -P 0x22 64k 4k",
        "{img}",
    ],
];

/// LUKS-encrypted image (passphrase "qconform"): the LUKS header area is
/// owned by the image and must be refcounted.
pub const LUKS_SECRET: &str = "secret,id=sec0,data=qconform";
const LUKS: &[&[&str]] = &[
    &[
        "qemu-img",
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=qconform",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096,encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        "{img}",
        "1M",
    ],
    &[
        "qemu-io",
        "--object",
        "secret,id=sec0,data=qconform",
        "--image-opts",
        "driver=qcow2,file.filename={img},encrypt.key-secret=sec0",
        "-c",
        "write -P 0x11 0 8k",
    ],
];

fn bump_refcount(img: &mut Image, delta: i64) {
    let k = img.data_cluster(0) / img.cluster_size();
    let v = (1i64 + delta).max(0) as u64;
    img.set_refcount(k, v);
}

/// Every case of the shipped corpus.
pub fn cases() -> Vec<Case> {
    use Oracle::*;
    vec![
        // ---- valid images of every option family ----
        Case { name: "v3-empty", steps: &[create!("cluster_size=4096", "1M")], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "v3-data", steps: DATA_V3, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "v2-data", steps: DATA_V2, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "refcount-bits-1", steps: &[create!("cluster_size=4096,refcount_bits=1", "1M"), &[QIO, "-c", "write -P 1 0 12k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "refcount-bits-64", steps: &[create!("cluster_size=4096,refcount_bits=64", "1M"), &[QIO, "-c", "write -P 1 0 12k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "compressed-zlib", steps: COMPRESSED, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "compressed-zstd", steps: &[create!("cluster_size=4096,compression_type=zstd", "1M"), &[QIO, "-c", "write -c -P 0x11 0 8k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "snapshots", steps: SNAPSHOTS, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "bitmaps", steps: BITMAPS, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "extended-l2", steps: EXTL2, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "data-file", steps: DATA_FILE, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "data-file-raw", steps: &[&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,data_file={name}.data,data_file_raw=on", "{img}", "1M"], &[QIO, "-c", "write -P 0x11 0 8k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "luks", steps: LUKS, edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "luks-header-unrefcounted", steps: LUKS, edit: Some(|i| {
            let fde = i.info.extensions.fde.as_ref().map_or(0, |f| f.offset);
            let k = fde / i.cluster_size();
            i.set_refcount(k, 0);
        }), expect: rule_set![q2::REFCOUNT_TOO_LOW], exit: 2, oracle: Agrees },
        Case { name: "backing-base", steps: &[create!("cluster_size=4096", "1M"), &[QIO, "-c", "write -P 0x11 0 16k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "backing-overlay", steps: &[&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "backing-base.qcow2", "-F", "qcow2", "{img}", "1M"], &[QIO, "-c", "write -P 0x22 4k 4k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        // ---- names inside the image (judged by the path policy, never opened) ----
        Case { name: "backing-name-absolute", steps: &[&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", "/etc/passwd", "-F", "raw", "{img}", "1M"]], edit: None,
            expect: rule_set![policy::NAME_ABSOLUTE], exit: 0, oracle: Agrees },
        Case { name: "backing-name-dotdot", steps: &[&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", "../../../../../../etc/passwd", "-F", "raw", "{img}", "1M"]], edit: None,
            expect: rule_set![policy::NAME_ESCAPES], exit: 0, oracle: Agrees },
        Case { name: "backing-name-protocol", steps: &[&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", "json:{\"driver\":\"null-co\"}", "-F", "raw", "{img}", "1M"]], edit: None,
            expect: rule_set![policy::NAME_PROTOCOL], exit: 0,
            oracle: Differs("qemu-img check opens the backing file and fails on the protocol name (exit 1); a scanner must judge the name without opening it") },
        Case { name: "prealloc-metadata", steps: &[create!("cluster_size=4096,preallocation=metadata", "256k")], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "zero-and-discard", steps: &[create!("cluster_size=4096", "1M"), &[QIO, "-c", "write -P 0x11 0 32k", "-c", "write -z 8k 8k", "-c", "discard 16k 8k", "-c", "write -z -u 24k 4k", "{img}"]], edit: None, expect: &[], exit: 0, oracle: Agrees },
        Case { name: "lazy-refcounts-dirty", steps: &[create!("cluster_size=4096,lazy_refcounts=on", "1M"), &[QIO, "-c", "write -P 0x11 0 16k", "-c", "sigraise 9", "{img}"]], edit: None,
            expect: rule_set![q2::DIRTY, q2::REFCOUNT_TOO_LOW], exit: 2, oracle: Agrees },

        // ---- refcounts ----
        Case { name: "refcount-up", steps: DATA_V3, edit: Some(|i| bump_refcount(i, 1)), expect: rule_set![q2::REFCOUNT_LEAK, q2::L2_COPIED], exit: 2, oracle: Agrees },
        Case { name: "refcount-down", steps: DATA_V3, edit: Some(|i| bump_refcount(i, -1)), expect: rule_set![q2::REFCOUNT_TOO_LOW, q2::L2_COPIED], exit: 2, oracle: Agrees },
        Case { name: "leaked-cluster", steps: DATA_V3, edit: Some(|i| {
            // A cluster past every structure, refcounted but unowned.
            let end = i.bytes.len() as u64;
            let cs = i.cluster_size();
            i.put(end, &vec![0u8; cs as usize]);
            i.set_refcount(end / cs, 1);
        }), expect: rule_set![q2::REFCOUNT_LEAK], exit: 3, oracle: Agrees },
        Case { name: "refcount-overflow", steps: &[create!("cluster_size=4096,refcount_bits=1", "1M"), &[QIO, "-c", "write -P 1 0 4k", "{img}"]], edit: Some(|i| {
            // Guest cluster 1 shares guest cluster 0's host cluster: two references, refcount_bits 1.
            let e = i.get64(i.l2_entry(0));
            let at = i.l2_entry(1);
            i.put64(at, e);
        }), expect: rule_set![q2::REFCOUNT_OVERFLOW], exit: 2, oracle: Agrees },
        Case { name: "reftable-reserved", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.refcount_table_offset;
            let e = i.get64(at);
            i.put64(at, e | 0x10);
        }), expect: rule_set![q2::REFTABLE_RESERVED], exit: 2, oracle: Agrees },
        Case { name: "refblock-unaligned", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.refcount_table_offset;
            let e = i.get64(at);
            i.put64(at, e + 512);
        }), expect: rule_set![q2::REFBLOCK_ALIGNED, q2::REFBLOCK_UNREADABLE], exit: 1, oracle: Agrees },
        Case { name: "refblock-past-eof", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.refcount_table_offset;
            i.put64(at, 0x100_0000);
        }), expect: rule_set![q2::REFBLOCK_IN_FILE, q2::REFCOUNT_TOO_LOW], exit: 2, oracle: Agrees },
        Case { name: "refblock-shared-with-l2", steps: DATA_V3, edit: Some(|i| {
            // The refcount table names the active L2 table as a refcount block.
            let l2 = i.l2_table(0);
            let at = i.info.header.refcount_table_offset + 8;
            i.put64(at, l2);
        }), expect: rule_set![q2::METADATA_OVERLAP], exit: 2, oracle: Agrees },
        Case { name: "no-refcount-table", steps: DATA_V3, edit: Some(|i| i.put32(56, 0)), expect: rule_set![q2::REFCOUNT_TOO_LOW], exit: 2, oracle: Agrees },

        // ---- L1 / L2 ----
        Case { name: "l1-reserved", steps: DATA_V3, edit: Some(|i| { let at = i.l1_entry(0); let e = i.get64(at); i.put64(at, e | 1 << 60); }), expect: rule_set![q2::L1_RESERVED], exit: 2, oracle: Agrees },
        Case { name: "l1-copied-cleared", steps: DATA_V3, edit: Some(|i| { let at = i.l1_entry(0); let e = i.get64(at); i.put64(at, e & !(1 << 63)); }), expect: rule_set![q2::L1_COPIED], exit: 2, oracle: Agrees },
        Case { name: "l1-l2-unaligned", steps: DATA_V3, edit: Some(|i| { let at = i.l1_entry(0); let e = i.get64(at); i.put64(at, e + 512); }), expect: rule_set![q2::L1_L2_ALIGNED], exit: 2, oracle: SameExit("qemu-img also reads the unaligned table; both count the resulting refcount mismatches") },
        Case { name: "l2-reserved", steps: DATA_V3, edit: Some(|i| { let at = i.l2_entry(0); let e = i.get64(at); i.put64(at, e | 1 << 58); }), expect: rule_set![q2::L2_RESERVED], exit: 2, oracle: Agrees },
        Case { name: "l2-misaligned", steps: DATA_V3, edit: Some(|i| { let at = i.l2_entry(0); let e = i.get64(at); i.put64(at, e + 512); }), expect: rule_set![q2::L2_ALIGNED], exit: 2, oracle: Agrees },
        Case { name: "l2-past-eof", steps: DATA_V3, edit: Some(|i| { let at = i.l2_entry(0); i.put64(at, (1 << 63) | 0x40_0000_0000); }), expect: rule_set![q2::REFERENCE_PAST_EOF], exit: 2, oracle: Agrees },
        Case { name: "l2-duplicate", steps: DATA_V3, edit: Some(|i| { let e = i.get64(i.l2_entry(0)); let at = i.l2_entry(1); i.put64(at, e); }), expect: rule_set![q2::REFCOUNT_TOO_LOW], exit: 2, oracle: Agrees },
        Case { name: "l2-copied-cleared", steps: DATA_V3, edit: Some(|i| { let at = i.l2_entry(0); let e = i.get64(at); i.put64(at, e & !(1 << 63)); }), expect: rule_set![q2::L2_COPIED], exit: 2, oracle: Agrees },
        Case { name: "l2-compressed-copied", steps: COMPRESSED, edit: Some(|i| { let at = i.l2_entry(0); let e = i.get64(at); i.put64(at, e | 1 << 63); }), expect: rule_set![q2::L2_COMPRESSED_COPIED], exit: 2, oracle: Agrees },
        Case { name: "l2-offset-zero-copied", steps: DATA_V3, edit: Some(|i| { let at = i.l2_entry(100); i.put64(at, 1 << 63); }), expect: rule_set![q2::L2_OFFSET_ZERO_COPIED], exit: 0,
            oracle: SameExit("spec: 'The offset may only be 0 with bit 63 set ... when an external data file is used'; qemu-img reads it as unallocated and counts nothing") },
        Case { name: "l2-zero-flag-v2", steps: DATA_V2, edit: Some(|i| { let at = i.l2_entry(100); i.put64(at, 1); }), expect: rule_set![q2::L2_ZERO_V2], exit: 0,
            oracle: SameExit("spec: bit 0 'With version 2 ... this is always 0'; qemu-img does not look") },
        Case { name: "l2-beyond-virtual-size", steps: &[create!("cluster_size=4096", "64k"), &[QIO, "-c", "write -P 0x11 0 4k", "{img}"]], edit: Some(|i| {
            // A new, correctly refcounted cluster mapped at guest cluster 300 of a 16-cluster disk.
            let cs = i.cluster_size();
            let end = (i.bytes.len() as u64).next_multiple_of(cs);
            i.put(end, &vec![0x77u8; cs as usize]);
            i.set_refcount(end / cs, 1);
            let at = i.l2_entry(300);
            i.put64(at, (1 << 63) | end);
        }),
            expect: rule_set![q2::L2_BEYOND_DISK], exit: 0, oracle: SameExit("qemu-img does not check L2 entries past the virtual size") },

        // ---- subclusters (extended L2) ----
        Case { name: "subcluster-alloc-and-zero", steps: EXTL2, edit: Some(|i| { let at = i.l2_entry(0) + 8; let b = i.get64(at); i.put64(at, b | (b << 32)); }), expect: rule_set![q2::SUBCLUSTER_ALLOC_ZERO], exit: 2, oracle: Agrees },
        Case { name: "subcluster-compressed-bitmap", steps: EXTL2, edit: Some(|i| { let at = i.l2_entry(2) + 8; i.put64(at, 1); }), expect: rule_set![q2::SUBCLUSTER_COMPRESSED], exit: 2, oracle: Agrees },
        Case { name: "subcluster-unallocated-alloc", steps: EXTL2, edit: Some(|i| { let at = i.l2_entry(40) + 8; i.put64(at, 3); }), expect: rule_set![q2::SUBCLUSTER_UNALLOCATED], exit: 2, oracle: Agrees },

        // ---- external data file ----
        Case { name: "data-file-offset-mismatch", steps: DATA_FILE, edit: Some(|i| { let at = i.l2_entry(0); i.put64(at, (1 << 63) | 0x2000); }), expect: rule_set![q2::DATA_FILE_OFFSET], exit: 2,
            oracle: Differs("spec: 'The offset field in the Standard Cluster Descriptor must match the guest offset'; qemu-img does not check it") },
        Case { name: "data-file-compressed", steps: DATA_FILE, edit: Some(|i| { let at = i.l2_entry(0); i.put64(at, (1 << 62) | 0x2000); }), expect: rule_set![q2::DATA_FILE_COMPRESSED], exit: 2, oracle: Agrees },

        // ---- header ----
        Case { name: "unknown-incompatible-bit", steps: DATA_V3, edit: Some(|i| i.put64(72, 1 << 20)), expect: rule_set![q2::INCOMPATIBLE_UNKNOWN], exit: 1, oracle: Agrees },
        Case { name: "bad-magic", steps: DATA_V3, edit: Some(|i| i.put(0, b"QFI\0")), expect: rule_set![general::UNKNOWN_FORMAT], exit: 1, oracle: Agrees },
        Case { name: "bad-version", steps: DATA_V3, edit: Some(|i| i.put32(4, 4)), expect: rule_set![q2::VERSION], exit: 1, oracle: Agrees },
        Case { name: "cluster-bits-30", steps: DATA_V3, edit: Some(|i| i.put32(20, 30)), expect: rule_set![q2::CLUSTER_BITS], exit: 1, oracle: Agrees },
        Case { name: "header-length-short", steps: DATA_V3, edit: Some(|i| i.put32(100, 96)), expect: rule_set![q2::HEADER_LENGTH], exit: 1, oracle: Agrees },
        Case { name: "header-length-unaligned", steps: DATA_V3, edit: Some(|i| i.put32(100, 108)), expect: rule_set![q2::HEADER_LENGTH_ALIGNED], exit: 0,
            oracle: SameExit("spec: header_length 'must be a multiple of 8'; qemu-img does not enforce it") },
        Case { name: "header-padding-nonzero", steps: DATA_V3, edit: Some(|i| i.put(106, &[0xaa])), expect: rule_set![q2::HEADER_PADDING], exit: 0,
            oracle: SameExit("spec: 'This padding must be zeroed'; qemu-img ignores it") },
        Case { name: "refcount-order-7", steps: DATA_V3, edit: Some(|i| i.put32(96, 7)), expect: rule_set![q2::REFCOUNT_ORDER], exit: 1, oracle: Agrees },
        Case { name: "l1-offset-unaligned", steps: DATA_V3, edit: Some(|i| { let o = i.info.header.l1_table_offset; i.put64(40, o + 8); }), expect: rule_set![q2::L1_ALIGNED], exit: 1, oracle: Agrees },
        Case { name: "l1-size-huge", steps: DATA_V3, edit: Some(|i| i.put32(36, 0x7fff_ffff)), expect: rule_set![q2::L1_SIZE_LIMIT], exit: 1, oracle: Agrees },
        Case { name: "l1-too-small", steps: DATA_V3, edit: Some(|i| i.put64(24, 1 << 40)), expect: rule_set![q2::L1_COVERS_DISK], exit: 1, oracle: Agrees },
        Case { name: "reftable-unaligned", steps: DATA_V3, edit: Some(|i| { let o = i.info.header.refcount_table_offset; i.put64(48, o + 512); }), expect: rule_set![q2::REFTABLE_ALIGNED], exit: 1, oracle: Agrees },
        Case { name: "reftable-huge", steps: DATA_V3, edit: Some(|i| i.put32(56, 0x00ff_ffff)), expect: rule_set![q2::REFTABLE_SIZE], exit: 1, oracle: Agrees },
        Case { name: "backing-name-too-long", steps: DATA_V3, edit: Some(|i| { i.put64(8, 512); i.put32(16, 2000); }), expect: rule_set![q2::BACKING_FILE_SIZE], exit: 1, oracle: Agrees },
        Case { name: "backing-offset-past-cluster", steps: DATA_V3, edit: Some(|i| { i.put64(8, 0x10_0000); i.put32(16, 4); }), expect: rule_set![q2::BACKING_FILE_OFFSET], exit: 1, oracle: Agrees },
        Case { name: "crypt-method-3", steps: DATA_V3, edit: Some(|i| i.put32(32, 3)), expect: rule_set![q2::CRYPT_METHOD], exit: 1, oracle: Agrees },
        Case { name: "compression-bit-without-type", steps: DATA_V3, edit: Some(|i| i.put64(72, 1 << 3)), expect: rule_set![q2::COMPRESSION_TYPE], exit: 1, oracle: Agrees },
        Case { name: "extended-l2-small-clusters", steps: DATA_V3, edit: Some(|i| i.put64(72, 1 << 4)), expect: rule_set![q2::CLUSTER_BITS_EXTENDED_L2], exit: 1, oracle: Agrees },
        Case { name: "corrupt-bit", steps: DATA_V3, edit: Some(|i| i.put64(72, 1 << 1)), expect: rule_set![q2::CORRUPT], exit: 0, oracle: Agrees },
        Case { name: "reserved-compatible-bit", steps: DATA_V3, edit: Some(|i| i.put64(80, 1 << 5)), expect: rule_set![q2::COMPATIBLE_RESERVED], exit: 0, oracle: Agrees },
        Case { name: "reserved-autoclear-bit", steps: DATA_V3, edit: Some(|i| i.put64(88, 1 << 7)), expect: rule_set![q2::AUTOCLEAR_RESERVED], exit: 0,
            oracle: SameExit("spec: autoclear bits 2-63 are reserved (set to 0); qemu-img opens read-only and ignores them") },
        Case { name: "data-file-raw-without-data-file", steps: DATA_V3, edit: Some(|i| i.put64(88, 1 << 1)), expect: rule_set![q2::DATA_FILE_RAW], exit: 1, oracle: Agrees },
        Case { name: "truncated-header", steps: DATA_V3, edit: Some(|i| i.bytes.truncate(90)), expect: rule_set![q2::TRUNCATED], exit: 1, oracle: Agrees },

        // ---- header extensions ----
        Case { name: "ext-too-long", steps: DATA_V3, edit: Some(|i| { let at = i.info.header.header_length as u64; i.put32(at, 0x1234_5678); i.put32(at + 4, 0x10_0000); }), expect: rule_set![q2::EXT_BOUNDS], exit: 1, oracle: Agrees },
        Case { name: "ext-unknown-and-duplicate", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.header_length as u64;
            // Two unknown extensions of the same type, then the end marker.
            i.put32(at, 0x1234_5678); i.put32(at + 4, 4); i.put32(at + 8, 0xdead_beef);
            i.put32(at + 16, 0x1234_5678); i.put32(at + 20, 0);
            i.put64(at + 24, 0);
        }), expect: rule_set![q2::EXT_UNKNOWN, q2::EXT_UNIQUE], exit: 0, oracle: Agrees },
        Case { name: "ext-no-end-marker", steps: DATA_V3, edit: Some(|i| {
            // Unknown extensions fill the extension area of the first cluster exactly.
            let start = i.info.header.header_length as u64;
            let cs = i.cluster_size();
            i.put32(start, 0x1234_5678);
            i.put32(start + 4, (cs - start - 8) as u32);
            i.put(start + 8, &vec![0x5a; (cs - start - 8) as usize]);
        }), expect: rule_set![q2::EXT_NO_END], exit: 0, oracle: Agrees },
        Case { name: "ext-backing-format-alone", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.header_length as u64;
            i.put32(at, 0xe279_2aca); i.put32(at + 4, 5); i.put(at + 8, b"qcow2\0\0\0"); i.put64(at + 16, 0);
        }), expect: rule_set![q2::EXT_BACKING_FORMAT], exit: 0, oracle: SameExit("a backing format without a backing file is harmless to qemu-img") },
        Case { name: "ext-feature-table-bad", steps: DATA_V3, edit: Some(|i| {
            // A feature name table whose one entry has type 7 (only 0-2 exist).
            let at = i.info.header.header_length as u64;
            i.put32(at, 0x6803_f857); i.put32(at + 4, 48);
            let mut entry = [0u8; 48];
            entry[0] = 7;
            entry[2..9].copy_from_slice(b"mystery");
            i.put(at + 8, &entry);
            i.put64(at + 56, 0);
        }), expect: rule_set![q2::EXT_FEATURE_TABLE], exit: 0, oracle: SameExit("the feature name table is informative; qemu-img does not validate it") },
        Case { name: "ext-fde-without-luks", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.header_length as u64;
            i.put32(at, 0x0537_be77); i.put32(at + 4, 16); i.put64(at + 8, 0x10000); i.put64(at + 16, 4096); i.put64(at + 24, 0);
        }), expect: rule_set![q2::EXT_FDE_PRESENCE], exit: 1, oracle: Agrees },
        Case { name: "ext-data-file-name-alone", steps: DATA_V3, edit: Some(|i| {
            let at = i.info.header.header_length as u64;
            i.put32(at, 0x4441_5441); i.put32(at + 4, 4); i.put(at + 8, b"x.raw\0\0\0"); i.put64(at + 16, 0);
        }), expect: rule_set![q2::EXT_DATA_FILE_NAME], exit: 0, oracle: SameExit("spec: the data file name 'may be present if this bit is set'; qemu-img ignores it otherwise") },
        Case { name: "bitmaps-autoclear-without-ext", steps: DATA_V3, edit: Some(|i| i.put64(88, 1)), expect: rule_set![q2::EXT_BITMAPS_AUTOCLEAR], exit: 0,
            oracle: SameExit("spec: 'It is an error if this bit is set without the bitmaps extension present'; qemu-img does not count it") },
        Case { name: "bitmaps-autoclear-cleared", steps: BITMAPS, edit: Some(|i| i.put64(88, 0)), expect: rule_set![q2::EXT_BITMAPS_INCONSISTENT, q2::REFCOUNT_LEAK], exit: 3, oracle: Agrees },
        Case { name: "bitmaps-ext-reserved", steps: BITMAPS, edit: Some(|i| {
            let mut at = i.info.header.header_length as u64;
            while i.get64(at) >> 32 != 0x2385_2875 && at < 4096 { let len = (i.get64(at) & 0xffff_ffff).next_multiple_of(8); at += 8 + len; }
            i.put32(at + 12, 1);
        }), expect: rule_set![q2::EXT_BITMAPS_LAYOUT], exit: 1, oracle: Agrees },

        Case { name: "ext-fde-wrong-length", steps: DATA_V3, edit: Some(|i| {
            // LUKS claimed, with an 8-byte encryption header pointer.
            i.put32(32, 2);
            let at = i.info.header.header_length as u64;
            i.put32(at, 0x0537_be77); i.put32(at + 4, 8); i.put64(at + 8, 0x10000); i.put64(at + 16, 0);
        }), expect: rule_set![q2::EXT_FDE_LAYOUT], exit: 1, oracle: Agrees },
        Case { name: "ext-too-many", steps: &[create!("cluster_size=65536", "1M")], edit: Some(|i| {
            // 5000 empty unknown extensions (40 KiB of the 64 KiB first cluster), then the end marker:
            // valid (the cap is what cluster 0 can hold), with repeated types (a violation).
            let start = i.info.header.header_length as u64;
            for k in 0..5000u64 {
                i.put32(start + 8 * k, 0x7777_0000 + (k as u32 % 3));
                i.put32(start + 8 * k + 4, 0);
            }
            i.put64(start + 8 * 5000, 0);
        }), expect: rule_set![q2::EXT_UNIQUE, q2::EXT_UNKNOWN], exit: 0, oracle: Agrees },
        Case { name: "data-file-raw-with-backing", steps: &[&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,data_file={name}.data,data_file_raw=on", "{img}", "1M"]], edit: Some(|i| {
            // Names the corpus's backing-base image (built earlier), so qemu-img can open the chain.
            i.put(3000, b"backing-base.qcow2"); i.put64(8, 3000); i.put32(16, 18);
        }), expect: rule_set![q2::DATA_FILE_RAW_BACKING], exit: 0, oracle: SameExit("spec: raw external data 'conflicts with backing files'; qemu-img check does not look") },
        Case { name: "compressed-offset-high-bits", steps: COMPRESSED, edit: Some(|i| {
            // 4 KiB clusters: the compressed offset field is 58 bits; bit 56 must be 0.
            let at = i.l2_entry(0); let e = i.get64(at); i.put64(at, e | 1 << 56); }),
            expect: rule_set![q2::L2_COMPRESSED_OFFSET, q2::REFERENCE_PAST_EOF], exit: 2, oracle: Agrees },

        // ---- snapshots ----
        Case { name: "snapshot-l1-unaligned", steps: SNAPSHOTS, edit: Some(|i| { let e = i.info.snapshots.snapshots[0].entry_offset; let o = i.get64(e); i.put64(e, o + 8); }), expect: rule_set![q2::SNAPSHOT_L1_ALIGNED], exit: 2, oracle: Agrees },
        Case { name: "snapshot-l1-huge", steps: SNAPSHOTS, edit: Some(|i| { let e = i.info.snapshots.snapshots[0].entry_offset; i.put32(e + 8, 0x100_0000); }), expect: rule_set![q2::SNAPSHOT_L1_SIZE], exit: 2, oracle: Agrees },
        Case { name: "snapshot-extra-short", steps: SNAPSHOTS, edit: Some(|i| {
            // Entry 1 (the last) shrinks its extra data to 8 bytes; id and name move up.
            let s = &i.info.snapshots.snapshots[1];
            let e = s.entry_offset;
            let tail_at = (e + 40 + s.extra_data_size as u64) as usize;
            let tail_len = s.id.len() + s.name.len();
            let tail: Vec<u8> = i.bytes[tail_at..tail_at + tail_len].to_vec();
            i.put32(e + 36, 8);
            i.put(e + 48, &tail);
        }), expect: rule_set![q2::SNAPSHOT_EXTRA_V3], exit: 2, oracle: SameExit("qemu-img also counts the snapshot table refcount mismatch the shorter table leaves") },
        Case { name: "snapshot-extra-huge", steps: SNAPSHOTS, edit: Some(|i| { let e = i.info.snapshots.snapshots[0].entry_offset; i.put32(e + 36, 0x10000); }), expect: rule_set![q2::SNAPSHOT_EXTRA_SIZE], exit: 1, oracle: Agrees },
        Case { name: "snapshot-duplicate-id", steps: SNAPSHOTS, edit: Some(|i| {
            let s = &i.info.snapshots.snapshots[1];
            let at = s.entry_offset + 40 + s.extra_data_size as u64;
            let first = i.info.snapshots.snapshots[0].id.clone();
            if first.len() == s.id.len() { i.put(at, first.as_bytes()); }
        }), expect: rule_set![q2::SNAPSHOT_ID_UNIQUE], exit: 0, oracle: SameExit("spec: the ID is 'Unique ID string for the snapshot'; qemu-img does not check") },
        Case { name: "snapshots-too-many", steps: SNAPSHOTS, edit: Some(|i| i.put32(60, 70000)), expect: rule_set![q2::SNAPSHOTS_LIMIT], exit: 1, oracle: Agrees },
        Case { name: "snapshots-offset-unaligned", steps: SNAPSHOTS, edit: Some(|i| { let o = i.info.header.snapshots_offset; i.put64(64, o + 8); }), expect: rule_set![q2::SNAPSHOTS_ALIGNED], exit: 1, oracle: Agrees },
        Case { name: "snapshot-in-data-file-image", steps: DATA_FILE, edit: Some(|i| {
            // A one-entry snapshot table pointing at the active L1 table.
            let end = (i.bytes.len() as u64).next_multiple_of(4096);
            let l1 = i.info.header.l1_table_offset;
            let l1_size = i.info.header.l1_size;
            let mut e = Vec::new();
            e.extend_from_slice(&l1.to_be_bytes()); e.extend_from_slice(&l1_size.to_be_bytes());
            e.extend_from_slice(&1u16.to_be_bytes()); e.extend_from_slice(&1u16.to_be_bytes());
            e.extend_from_slice(&[0u8; 16]); e.extend_from_slice(&0u32.to_be_bytes()); e.extend_from_slice(&16u32.to_be_bytes());
            e.extend_from_slice(&[0u8; 16]); e.extend_from_slice(b"1s");
            i.put(end, &e); i.put(end + e.len() as u64, &vec![0u8; 4096 - e.len()]);
            i.put32(60, 1); i.put64(64, end);
        }), expect: rule_set![q2::DATA_FILE_SNAPSHOTS], exit: 2, oracle: SameExit("the snapshot table cluster is also unrefcounted, which both count") },

        // ---- bitmaps ----
        Case { name: "bitmap-table-entry-reserved", steps: BITMAPS, edit: Some(|i| { let b = i.info.bitmaps[0].bitmap_table_offset; i.put64(b, 0x10); }), expect: rule_set![q2::BITMAP_TABLE_ENTRY], exit: 2,
            oracle: Differs("qemu-img cannot open an image whose consistent bitmap has a bad table entry; spec (Bitmap table) makes it one bad entry, which we count as a corruption and finish the check") },
        Case { name: "bitmap-bad-type", steps: BITMAPS, edit: Some(|i| { let e = i.info.bitmaps[0].entry_offset; i.put(e + 16, &[2]); }), expect: rule_set![q2::BITMAP_ENTRY], exit: 1, oracle: Agrees },
        Case { name: "bitmap-table-too-small", steps: &[create!("cluster_size=4096", "64M"), &[QI, "bitmap", "--add", "-g", "512", "{img}", "fine"]],
            // 64 MiB at 512-byte granularity needs 4 table entries of 4 KiB clusters; claim 1.
            edit: Some(|i| { let e = i.info.bitmaps[0].entry_offset; i.put32(e + 8, 1); }), expect: rule_set![q2::BITMAP_TABLE_SIZE], exit: 1, oracle: Agrees },
        Case { name: "bitmap-count-mismatch", steps: BITMAPS, edit: Some(|i| {
            let mut at = i.info.header.header_length as u64;
            while i.get64(at) >> 32 != 0x2385_2875 && at < 4096 { let len = (i.get64(at) & 0xffff_ffff).next_multiple_of(8); at += 8 + len; }
            i.put32(at + 8, 3);
        }), expect: rule_set![q2::BITMAP_DIRECTORY], exit: 1, oracle: Agrees },
        Case { name: "bitmap-duplicate-name", steps: BITMAPS, edit: Some(|i| {
            let b = &i.info.bitmaps[1];
            let at = b.entry_offset + 24 + b.extra_data_size as u64;
            i.put(at, b"b0");
        }), expect: rule_set![q2::BITMAP_NAME_UNIQUE], exit: 1, oracle: Agrees },
        Case { name: "bitmap-in-use", steps: BITMAPS, edit: Some(|i| { let e = i.info.bitmaps[0].entry_offset; i.put32(e + 12, 1); }), expect: rule_set![q2::BITMAP_IN_USE], exit: 0, oracle: Agrees },
    ]
}

/// Substitutes `{img}` and `{name}` in a recipe step.
fn expand(arg: &str, name: &str) -> String {
    arg.replace("{img}", &format!("{name}.qcow2"))
        .replace("{name}", name)
}

/// Runs a tool; a missing tool or a failure is an error naming both.
pub fn run_tool(dir: &Path, args: &[String]) -> Result<(), String> {
    let (prog, rest) = args.split_first().ok_or("empty command")?;
    let out = Command::new(prog)
        .args(rest)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e} (is it installed?)"))?;
    // `sigraise 9` kills qemu-io on purpose (a dirty lazy-refcounts image).
    let killed = rest.iter().any(|a| a == "sigraise 9");
    if !out.status.success() && !killed {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Builds one case as `dir/<name>.qcow2` (with its companions).
pub fn build(case: &Case, dir: &Path) -> Result<PathBuf, String> {
    build_steps(case.name, case.steps, case.edit, dir)
}

/// Builds an image from recipe steps and applies an edit.
pub fn build_steps(
    name: &str,
    steps: &[&[&str]],
    edit: Option<Edit>,
    dir: &Path,
) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.qcow2"));
    let _ = std::fs::remove_file(&path);
    for step in steps {
        let args: Vec<String> = step.iter().map(|a| expand(a, name)).collect();
        run_tool(dir, &args)?;
    }
    if let Some(edit) = edit {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let info = qcow2::check::info(&bytes, name, &Limits::default())
            .map_err(|e| format!("{name}: cannot parse the fresh image: {e}"))?;
        let mut img = Image { bytes, info };
        edit(&mut img);
        std::fs::write(&path, &img.bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// Corpus images made by qconform's own writer (not qemu-img), one per
/// shape the writer supports; `cargo xtask corpus` writes them.
pub fn writer_cases() -> Vec<(&'static str, qconform_core::qcow2::write::Description)> {
    use qconform_core::qcow2::write::{BitmapDesc, ClusterData, Description};
    let data = |seed: u8, cs: u64| -> Vec<u8> {
        (0..cs as usize)
            .map(|i| seed.wrapping_add((i / 64) as u8))
            .collect()
    };
    let mut out = Vec::new();
    // Extended L2, zstd, subclusters, snapshots and a bitmap together.
    let mut rich = Description::new(1 << 20, 16);
    rich.extended_l2 = true;
    rich.compression_type = 1;
    rich.clusters.insert(0, ClusterData::Data(data(1, 1 << 16)));
    rich.clusters
        .insert(1, ClusterData::Compressed(data(2, 1 << 16)));
    rich.clusters.insert(2, ClusterData::Zero);
    rich.clusters.insert(
        5,
        ClusterData::Subclusters {
            alloc: 0x0000_ffff,
            zero: 0xff00_0000,
            data: data(3, 1 << 16),
        },
    );
    rich.snapshots = vec!["first".into(), "second".into()];
    rich.bitmaps = vec![BitmapDesc {
        name: "dirty".into(),
        granularity_bits: 16,
        dirty: vec![(0, 3 << 16)],
    }];
    out.push(("writer-rich", rich));
    // Version 2, 512-byte clusters.
    let mut v2 = Description::new(64 << 10, 9);
    v2.version = 2;
    v2.clusters.insert(0, ClusterData::Data(data(4, 512)));
    v2.clusters.insert(7, ClusterData::Compressed(data(5, 512)));
    v2.clusters.insert(9, ClusterData::Zero);
    out.push(("writer-v2-512", v2));
    // 1-bit and 64-bit refcounts.
    for (name, order) in [("writer-refcount-1", 0u32), ("writer-refcount-64", 6)] {
        let mut d = Description::new(256 << 10, 12);
        d.refcount_order = order;
        for k in [0u64, 3, 17, 40] {
            d.clusters.insert(k, ClusterData::Data(data(k as u8, 4096)));
        }
        out.push((name, d));
    }
    // 2 MiB clusters with deflate.
    let mut big = Description::new(8 << 20, 21);
    big.clusters
        .insert(1, ClusterData::Compressed(data(6, 2 << 20)));
    out.push(("writer-cluster-2m", big));
    // A raw external data file.
    let mut df = Description::new(1 << 20, 12);
    df.data_file = Some(("writer-data-file.data".into(), true));
    df.clusters.insert(0, ClusterData::Data(data(7, 4096)));
    df.clusters.insert(10, ClusterData::Zero);
    out.push(("writer-data-file", df));
    out
}

/// A Parallels corpus case: one of QEMU's sample images, with an edit.
pub struct ParallelsCase {
    pub name: &'static str,
    /// Sample image (in shared/samples/qemu-iotests/parallels, bzip2).
    pub base: &'static str,
    pub edit: Option<fn(&mut Vec<u8>)>,
    pub expect: &'static [&'static Rule],
    pub exit: i32,
}

fn le32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn le64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// parallels-with-bitmap: the Format Extension cluster (1 MiB) at 2 MiB.
const EXT_AT: usize = 2 << 20;
/// Rewrites the extension's MD5 after an edit, so only the edited rule fires.
fn fix_md5(b: &mut [u8]) {
    use md5::{Digest, Md5};
    let sum = Md5::digest(&b[EXT_AT + 24..EXT_AT + (1 << 20)]);
    b[EXT_AT + 8..EXT_AT + 24].copy_from_slice(&sum);
}

/// Every Parallels case of the corpus (the four QEMU samples, then one edit
/// per rule on the sample it fits).
pub fn parallels_cases() -> Vec<ParallelsCase> {
    const V1: &str = "parallels-v1";
    const V2: &str = "parallels-v2";
    const BM: &str = "parallels-with-bitmap";
    vec![
        ParallelsCase {
            name: "parallels-v1",
            base: V1,
            edit: None,
            expect: &[],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-v2",
            base: V2,
            edit: None,
            expect: &[],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-flags-unused",
            base: V2,
            edit: Some(|b| le32(b, 52, 0x8000_0000)),
            expect: rule_set![parallels::FLAGS_UNUSED],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-empty-with-data",
            base: V2,
            edit: Some(|b| le32(b, 52, 1)),
            expect: rule_set![parallels::EMPTY_IMAGE],
            exit: 0,
        },
        // Clean per the spec; qemu-img 10.0.2 wrongly reports 2 leaked clusters (it ignores ext_off and the bitmap).
        ParallelsCase {
            name: "parallels-with-bitmap",
            base: BM,
            edit: None,
            expect: &[],
            exit: 0,
        },
        // The 2014 hand-made image: a BAT that does not cover nb_sectors, and clusters at
        // 64 KiB multiples while the computed data offset is 512 (spec: "(cluster offset -
        // data offset) must be aligned to cluster size"); qemu-img checks neither.
        ParallelsCase {
            name: "parallels-fake",
            base: "fake.parallels",
            edit: None,
            expect: rule_set![parallels::BAT_COVERS_DISK, parallels::BAT_ALIGNED],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-bad-version",
            base: V2,
            edit: Some(|b| le32(b, 16, 3)),
            expect: rule_set![parallels::VERSION],
            exit: 1,
        },
        ParallelsCase {
            name: "parallels-tracks-zero",
            base: V2,
            edit: Some(|b| le32(b, 28, 0)),
            expect: rule_set![parallels::TRACKS],
            exit: 1,
        },
        ParallelsCase {
            name: "parallels-bat-entries-huge",
            base: V1,
            edit: Some(|b| le32(b, 32, u32::MAX)),
            expect: rule_set![parallels::BAT_SIZE],
            exit: 1,
        },
        ParallelsCase {
            name: "parallels-nb-sectors-high",
            base: V1,
            edit: Some(|b| le64(b, 36, 1 << 32 | 4096)),
            expect: rule_set![parallels::NB_SECTORS_HIGH],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-in-use-open",
            base: V2,
            edit: Some(|b| le32(b, 44, 0x746F_6E59)),
            expect: rule_set![parallels::IN_USE_OPEN],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-in-use-odd",
            base: V2,
            edit: Some(|b| le32(b, 44, 0x1234_5678)),
            expect: rule_set![parallels::IN_USE_VALUE],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-data-off-unaligned",
            base: V2,
            edit: Some(|b| le32(b, 48, 129)),
            expect: rule_set![parallels::DATA_OFF],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-bat-below-data",
            base: V1,
            edit: Some(|b| le32(b, 64, 1)),
            expect: rule_set![parallels::BAT_BELOW_DATA],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-bat-past-eof",
            base: V2,
            edit: Some(|b| le32(b, 64, 100)),
            expect: rule_set![parallels::BAT_INSIDE_FILE],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-bat-duplicate",
            base: V2,
            edit: Some(|b| {
                let e = u32::from_le_bytes(b[64..68].try_into().unwrap_or_default());
                let at = (68..64 + 4 * 32)
                    .step_by(4)
                    .find(|&a| b[a..a + 4] != [0, 0, 0, 0])
                    .unwrap_or(68);
                le32(b, at, e);
            }),
            expect: rule_set![parallels::BAT_UNIQUE],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-bat-unaligned",
            base: V1,
            edit: Some(|b| {
                let e = u32::from_le_bytes(b[64..68].try_into().unwrap_or_default());
                le32(b, 64, e + 1);
            }),
            expect: rule_set![parallels::BAT_ALIGNED],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-leak",
            base: V2,
            edit: Some(|b| b.extend_from_slice(&vec![0u8; 64 << 10])),
            expect: rule_set![parallels::LEAK],
            exit: 3,
        },
        ParallelsCase {
            name: "parallels-ext-past-eof",
            base: BM,
            edit: Some(|b| le64(b, 56, 100_000)),
            expect: rule_set![parallels::EXT_PLACEMENT],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-ext-magic",
            base: BM,
            edit: Some(|b| b[EXT_AT] ^= 0xff),
            expect: rule_set![parallels::EXT_MAGIC],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-ext-checksum",
            base: BM,
            edit: Some(|b| b[EXT_AT + 4000] ^= 1),
            expect: rule_set![parallels::EXT_CHECKSUM],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-ext-feature-overrun",
            base: BM,
            edit: Some(|b| {
                le32(b, EXT_AT + 24 + 16, 0x00ff_fff0);
                fix_md5(b);
            }),
            expect: rule_set![parallels::EXT_FEATURES],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-ext-unknown-feature",
            base: BM,
            edit: Some(|b| {
                le64(b, EXT_AT + 24, 0x1234);
                le64(b, EXT_AT + 32, 1);
                fix_md5(b);
            }),
            expect: rule_set![parallels::EXT_UNKNOWN_FEATURE],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-bitmap-size",
            base: BM,
            edit: Some(|b| {
                le64(b, EXT_AT + 48, 1234);
                fix_md5(b);
            }),
            expect: rule_set![parallels::BITMAP_SIZE],
            exit: 0,
        },
        ParallelsCase {
            name: "parallels-bitmap-granularity",
            base: BM,
            edit: Some(|b| {
                le32(b, EXT_AT + 72, 3);
                fix_md5(b);
            }),
            expect: rule_set![parallels::BITMAP_GRANULARITY],
            exit: 2,
        },
        ParallelsCase {
            name: "parallels-bitmap-l1-past-eof",
            base: BM,
            edit: Some(|b| {
                le64(b, EXT_AT + 80, 100_000);
                fix_md5(b);
            }),
            expect: rule_set![parallels::BITMAP_L1_ENTRY],
            exit: 2,
        },
    ]
}

/// A QED corpus case: a qemu-img-made image (4 KiB clusters, two-cluster
/// tables) with an edit of its bytes.
pub struct QedCase {
    pub name: &'static str,
    /// How qemu-img and qemu-io make the image before the edit.
    pub steps: &'static [&'static [&'static str]],
    pub edit: Option<fn(&mut Vec<u8>)>,
    pub expect: &'static [&'static Rule],
    pub exit: i32,
}

fn qed_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}
/// File offsets of the first L2 table and of its first data entry.
fn qed_l2(b: &[u8]) -> (u64, u64) {
    let l1 = qed_u64(b, 40);
    let l2 = qed_u64(b, l1 as usize);
    (l2, qed_u64(b, l2 as usize))
}

/// The recipe every QED case starts from.
pub const QED_STEPS: &[&[&str]] = &[
    &[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qed",
        "-o",
        "cluster_size=4096,table_size=2",
        "{img}",
        "1M",
    ],
    &[
        "qemu-io",
        "-f",
        "qed",
        "-c",
        "write -P 0x11 0 12k",
        "-c",
        "write -z 64k 4k",
        "-c",
        "write -P 0x22 600k 4k",
        "{img}",
    ],
];

/// qemu-img's own table_size=1 image, written by nothing else.
pub const QED_TABLE1_STEPS: &[&[&str]] = &[&[
    "qemu-img",
    "create",
    "-q",
    "-f",
    "qed",
    "-o",
    "cluster_size=4096,table_size=1",
    "{img}",
    "1M",
]];

/// Images made by qconform's own QED and Parallels writers (corpus files
/// writer-*.qed and writer-*.parallels), for golden snapshots and
/// `qconform conform`.
pub fn writer_qed_parallels_cases() -> Vec<(&'static str, Vec<u8>)> {
    use qconform_core::{parallels, qed};
    let data = |seed: u8, n: u64| -> Vec<u8> {
        (0..n as usize)
            .map(|i| seed.wrapping_add((i / 64) as u8))
            .collect()
    };
    let mut out = Vec::new();
    let mut q = qed::write::Description::new(1 << 20, 4096, 2);
    q.clusters
        .insert(0, qed::write::Cluster::Data(data(1, 4096)));
    q.clusters.insert(5, qed::write::Cluster::Zero);
    q.clusters
        .insert(200, qed::write::Cluster::Data(data(2, 4096)));
    out.push(("writer-qed", qed::write::write(&q)));
    let mut b = qed::write::Description::new(1 << 20, 65536, 2);
    b.clusters.insert(3, qed::write::Cluster::Zero);
    b.clusters
        .insert(4, qed::write::Cluster::Data(data(3, 65536)));
    b.backing = Some(("writer-qed.qed".into(), false));
    out.push(("writer-qed-backing", qed::write::write(&b)));
    let mut p = parallels::write::Description::new(1 << 20, 4096, false);
    p.clusters.insert(2, data(4, 4096));
    p.clusters.insert(100, data(5, 4096));
    out.push(("writer-parallels-v1", parallels::write::write(&p)));
    let mut x = parallels::write::Description::new(4 << 20, 65536, true);
    x.clusters.insert(0, data(6, 65536));
    x.clusters.insert(63, data(7, 65536));
    x.bitmap = Some(parallels::write::BitmapDesc {
        id: *b"qconform-bitmap!",
        granularity: 128,
        dirty_bits: vec![0, 1, 7, 20, 21, 22, 63],
    });
    out.push(("writer-parallels-bitmap", parallels::write::write(&x)));
    out.into_iter()
        .filter_map(|(n, r)| r.ok().map(|b| (n, b)))
        .collect()
}

pub fn qed_cases() -> Vec<QedCase> {
    vec![
        // Valid per the spec (table_size 1 is a power of 2 in [1, 16]);
        // qemu-img makes it and then cannot open it (see tests/qed.rs).
        QedCase {
            name: "qed-table-size-1",
            steps: QED_TABLE1_STEPS,
            edit: None,
            expect: &[],
            exit: 0,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-data",
            edit: None,
            expect: &[],
            exit: 0,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-cluster-size",
            edit: Some(|b| le32(b, 4, 3000)),
            expect: rule_set![qed::CLUSTER_SIZE],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-table-size",
            edit: Some(|b| le32(b, 8, 3)),
            expect: rule_set![qed::TABLE_SIZE],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-header-size",
            edit: Some(|b| le32(b, 12, 0)),
            expect: rule_set![qed::HEADER_SIZE],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-unknown-feature",
            edit: Some(|b| le64(b, 16, 0x10)),
            expect: rule_set![qed::FEATURES],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-image-size",
            edit: Some(|b| le64(b, 48, 1000)),
            expect: rule_set![qed::IMAGE_SIZE],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-l1-offset",
            edit: Some(|b| {
                let v = qed_u64(b, 40);
                le64(b, 40, v + 8);
            }),
            expect: rule_set![qed::L1_OFFSET],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-backing-name-outside",
            edit: Some(|b| {
                le64(b, 16, 1);
                le32(b, 56, 4000);
                le32(b, 60, 200);
            }),
            expect: rule_set![qed::BACKING_NAME],
            exit: 1,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-need-check",
            edit: Some(|b| le64(b, 16, 2)),
            expect: rule_set![qed::NEED_CHECK],
            exit: 0,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-l2-offset-invalid",
            edit: Some(|b| {
                let l1 = qed_u64(b, 40) as usize;
                let v = qed_u64(b, l1);
                le64(b, l1, v + 512);
            }),
            expect: rule_set![qed::TABLE_OFFSET],
            exit: 2,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-data-past-eof",
            edit: Some(|b| {
                let (l2, _) = qed_l2(b);
                le64(b, l2 as usize, 1 << 40);
            }),
            expect: rule_set![qed::CLUSTER_OFFSET],
            exit: 2,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-duplicate",
            edit: Some(|b| {
                let (l2, d) = qed_l2(b);
                le64(b, l2 as usize + 8, d);
            }),
            expect: rule_set![qed::REFERENCED_ONCE],
            exit: 2,
        },
        QedCase {
            steps: QED_STEPS,
            name: "qed-leak",
            edit: Some(|b| b.extend_from_slice(&[0u8; 4096])),
            expect: rule_set![qed::LEAK],
            exit: 3,
        },
    ]
}
