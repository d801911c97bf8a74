//! The committed seeds of the raw-format targets (corpus/fuzz/<fmt>_check/),
//! built from code: small images (512 B-4 KiB clusters, at most
//! [`MAX_SEED`] bytes) from the writers of qconform-core, each mutator of
//! the format applied to them, and a few header edits for the rules no
//! mutator trips. Together they reach every image rule of the registry but
//! those in [`UNREACHABLE`]; fuzz/tests/seeds.rs proves it on the committed
//! files, and `cargo xtask fuzz --seeds` rewrites them.

use qconform_core::rules::{self, Rule};
use qconform_core::{parallels, qcow2, qed};
use std::collections::BTreeMap;

/// Largest seed, and the `-max_len` of the raw-format targets: a fuzzer
/// input larger than this only makes every execution slower.
pub const MAX_SEED: usize = 64 << 10;

/// Image rules no single image reaches through the checker or the reader,
/// with the reason. Every other rule of the registry's image modules must be
/// reported on some seed.
pub const UNREACHABLE: &[(&Rule, &str)] = &[
    (
        &rules::general::TABLE_LIMIT,
        "a table over Limits::max_table_bytes (256 MiB) needs a file that large; core/tests/hostile_bounds.rs lowers the cap",
    ),
    (
        &rules::policy::VIRTUAL_SIZE,
        "each format's header rules refuse such sizes first; the format-neutral backstop is tested in core/src/disk/chain.rs",
    ),
    (
        &rules::general::IO_ERROR,
        "the fuzz input is a byte slice: reads inside it never fail",
    ),
    (
        &rules::general::UNKNOWN_FORMAT,
        "reported by `qconform check` before a format's checker runs",
    ),
    (
        &rules::policy::REGULAR_FILE,
        "about the path the image is opened from (FIFOs, devices), not its bytes",
    ),
    (
        &rules::policy::NAME_SPECIAL,
        "needs a backing name that resolves to a special file on disk",
    ),
    (
        &rules::policy::NOT_OPENED,
        "needs a resolver that refuses to open a named file",
    ),
    (
        &rules::qcow2::SNAPSHOT_TABLE,
        "a snapshot table over 64 MiB needs a file over 64 MiB; the reader reports it only for a named snapshot",
    ),
    (
        &rules::policy::BACKING_DEPTH,
        "needs a chain of backing files",
    ),
    (
        &rules::policy::BACKING_CYCLE,
        "needs a chain of backing files",
    ),
];

/// One seed: its target, file name and bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Every image rule of the registry (all modules but vhost-user).
pub fn image_rules() -> impl Iterator<Item = &'static Rule> {
    rules::general::ALL
        .iter()
        .chain(rules::qcow2::ALL)
        .chain(rules::qed::ALL)
        .chain(rules::parallels::ALL)
        .chain(rules::policy::ALL)
        .copied()
}

/// The rules one raw-format input reaches: every finding of its format's
/// checker, and the rule a best-effort open of the virtual disk stops at.
pub fn rules_reached(format: &str, data: &[u8]) -> Vec<&'static Rule> {
    use qconform_core::disk::{Backing, NoFiles, OpenOptions, ReadError, VirtualDisk};
    let Some(f) = qconform_core::formats::by_name(format) else {
        return Vec::new();
    };
    let limits = crate::fuzz_limits();
    let mut out: Vec<&'static Rule> = f
        .check(&data, "seed", &limits)
        .findings
        .iter()
        .map(|f| f.rule)
        .collect();
    out.extend(crate::judge_names(f.named_files(&data)));
    let opts = OpenOptions {
        backing: Backing::Ignore,
        limits,
        verify: false,
        ..OpenOptions::default()
    };
    let stop = match VirtualDisk::open(Box::new(data.to_vec()), &NoFiles, &opts) {
        Ok(mut disk) => disk.map_each(|_| Ok(())).err(),
        Err(e) => Some(e),
    };
    if let Some(ReadError::Rule { rule, .. }) = stop {
        out.push(rule);
    }
    out
}

/// Keeps the seeds that reach a rule no earlier seed of the target reached
/// (and every seed marked `keep`), in order.
struct Picker {
    format: &'static str,
    target: &'static str,
    reached: Vec<&'static Rule>,
    seeds: Vec<Seed>,
}

impl Picker {
    fn new(format: &'static str, target: &'static str) -> Self {
        Picker {
            format,
            target,
            reached: Vec::new(),
            seeds: Vec::new(),
        }
    }

    fn offer(&mut self, name: String, bytes: Vec<u8>, keep: bool) {
        if bytes.len() > MAX_SEED || self.seeds.iter().any(|s| s.bytes == bytes) {
            return;
        }
        let mut new = false;
        for r in rules_reached(self.format, &bytes) {
            if !self.reached.iter().any(|x| std::ptr::eq(*x, r)) {
                self.reached.push(r);
                new = true;
            }
        }
        if new || keep {
            self.seeds.push(Seed {
                target: self.target,
                name,
                bytes,
            });
        }
    }
}

fn be32(img: &mut [u8], at: usize, v: u32) {
    if let Some(s) = img.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}
fn be64(img: &mut [u8], at: usize, v: u64) {
    if let Some(s) = img.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}
fn le32(img: &mut [u8], at: usize, v: u32) {
    if let Some(s) = img.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
fn le64(img: &mut [u8], at: usize, v: u64) {
    if let Some(s) = img.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
fn get_be64(img: &[u8], at: usize) -> u64 {
    img.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Guest data that compresses (runs of 32 equal bytes).
fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len as usize)
        .map(|i| seed.wrapping_add((i / 32) as u8))
        .collect()
}

fn qcow2_bases() -> Vec<(&'static str, qcow2::write::Description)> {
    use qcow2::write::{BitmapDesc, ClusterData as C, Description};
    let with = |cb: u32, f: &dyn Fn(&mut Description)| {
        let mut d = Description::new(64 << cb, cb);
        let cs = 1u64 << cb;
        d.clusters.insert(0, C::Data(pattern(1, cs)));
        d.clusters.insert(3, C::Data(pattern(7, cs)));
        d.clusters.insert(5, C::Zero);
        f(&mut d);
        d
    };
    let cs = 512u64;
    vec![
        ("empty", Description::new(1 << 20, 9)),
        ("data", with(9, &|_| {})),
        (
            "compressed",
            with(9, &|d| {
                d.clusters.insert(8, C::Compressed(pattern(3, cs)));
            }),
        ),
        (
            "zstd",
            with(9, &|d| {
                d.compression_type = 1;
                d.clusters.insert(8, C::Compressed(pattern(3, cs)));
            }),
        ),
        (
            "snapshots",
            with(9, &|d| d.snapshots = vec!["s0".into(), "s1".into()]),
        ),
        (
            "bitmaps",
            with(9, &|d| {
                d.bitmaps = vec![
                    BitmapDesc {
                        name: "b0".into(),
                        granularity_bits: 9,
                        dirty: vec![(0, 2048)],
                    },
                    BitmapDesc {
                        name: "b1".into(),
                        granularity_bits: 12,
                        dirty: vec![(4096, 4096)],
                    },
                ]
            }),
        ),
        (
            "v2",
            with(9, &|d| {
                d.version = 2;
                d.clusters.remove(&5);
            }),
        ),
        ("refcount-1", with(9, &|d| d.refcount_order = 0)),
        ("refcount-64", with(9, &|d| d.refcount_order = 6)),
        (
            "backing",
            with(9, &|d| {
                d.backing = Some(("base.qcow2".into(), Some("qcow2".into())))
            }),
        ),
        (
            "data-file",
            with(9, &|d| d.data_file = Some(("data.raw".into(), false))),
        ),
        (
            "data-file-raw",
            with(9, &|d| d.data_file = Some(("data.raw".into(), true))),
        ),
        ("lazy-refcounts", with(9, &|d| d.lazy_refcounts = true)),
        ("cluster-4k", with(12, &|_| {})),
        (
            "bitmap-tables",
            with(9, &|d| {
                d.size = 4 << 20;
                d.bitmaps = vec![BitmapDesc {
                    name: "big".into(),
                    granularity_bits: 9,
                    dirty: vec![(0, 1 << 20)],
                }]
            }),
        ),
    ]
}

/// A header extension (type, payload) appended after the last one of a
/// written v3 image, whose extensions end at `end_marker`.
fn qcow2_add_ext(img: &mut [u8], kind: u32, payload: &[u8]) {
    let hl = u32::from_be_bytes([img[100], img[101], img[102], img[103]]) as usize;
    let mut at = hl;
    while at + 8 <= img.len() {
        let t = u32::from_be_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]]);
        let len = u32::from_be_bytes([img[at + 4], img[at + 5], img[at + 6], img[at + 7]]);
        if t == 0 {
            break;
        }
        at += 8 + (len as usize).next_multiple_of(8);
    }
    be32(img, at, kind);
    be32(img, at + 4, payload.len() as u32);
    let body = at + 8;
    if let Some(s) = img.get_mut(body..body + payload.len()) {
        s.copy_from_slice(payload);
    }
    let end = body + payload.len().next_multiple_of(8);
    if let Some(s) = img.get_mut(end..end + 8) {
        s.fill(0);
    }
}

type Edit = (&'static str, fn(&mut Vec<u8>));
type Qcow2Edit = (&'static str, fn(&mut Vec<u8>, &qcow2::check::Info));

/// The L2 entry of guest cluster `k` (standard entries, first L2 table).
fn l2_entry(i: &[u8], info: &qcow2::check::Info, k: u64) -> usize {
    let l1 = info.header.l1_table_offset as usize;
    let l2 = get_be64(i, l1) & 0x00ff_ffff_ffff_fe00;
    (l2 + 8 * k) as usize
}

/// Replaces the backing file name (kept at its offset, inside cluster 0).
fn set_backing_name(i: &mut [u8], name: &[u8]) {
    let at = match get_be64(i, 8) {
        0 => 400,
        at => at as usize,
    };
    be64(i, 8, at as u64);
    be32(i, 16, name.len() as u32);
    if let Some(s) = i.get_mut(at..at + name.len()) {
        s.copy_from_slice(name);
    }
}

/// Header edits of a written v3 image, for the rules no mutator trips
/// (offsets as in qcow2.rst "Header"; the parsed metadata locates the rest).
fn qcow2_edits() -> Vec<Qcow2Edit> {
    vec![
        ("bad-magic", |i, _| i[3] = 0),
        ("bad-version", |i, _| be32(i, 4, 4)),
        ("truncated", |i, _| i.truncate(60)),
        ("cluster-bits-8", |i, _| be32(i, 20, 8)),
        ("cluster-bits-22", |i, _| be32(i, 20, 22)),
        ("extended-l2-small-clusters", |i, _| i[79] |= 0x10),
        ("header-length-short", |i, _| be32(i, 100, 96)),
        ("header-length-unaligned", |i, _| be32(i, 100, 108)),
        ("header-padding", |i, _| i[110] = 1),
        ("backing-offset-past-cluster", |i, h| {
            be64(i, 8, h.header.cluster_size() + 8);
            be32(i, 16, 10)
        }),
        ("backing-offset-in-header", |i, _| {
            be64(i, 8, 16);
            be32(i, 16, 10)
        }),
        ("backing-size-huge", |i, _| {
            be64(i, 8, 200);
            be32(i, 16, 1024)
        }),
        ("backing-absolute", |i, _| {
            set_backing_name(i, b"/etc/passwd")
        }),
        ("backing-protocol", |i, _| {
            set_backing_name(i, b"json:{\"driver\":\"null-co\"}")
        }),
        ("backing-dotdot", |i, _| {
            set_backing_name(i, b"../../../etc/passwd")
        }),
        ("backing-nul", |i, _| set_backing_name(i, b"base\0.qcow2")),
        ("crypt-method-3", |i, _| be32(i, 32, 3)),
        ("crypt-aes", |i, _| be32(i, 32, 1)),
        ("crypt-luks", |i, _| be32(i, 32, 2)),
        ("compatible-reserved", |i, _| i[87] |= 2),
        ("autoclear-reserved", |i, _| i[95] |= 4),
        ("bitmaps-autoclear-cleared", |i, _| i[95] &= !1),
        ("dirty", |i, _| i[79] |= 1),
        ("corrupt", |i, _| i[79] |= 2),
        ("data-file-bit", |i, _| i[79] |= 4),
        ("compression-without-bit", |i, _| i[104] = 1),
        ("compression-type-2", |i, _| {
            i[79] |= 8;
            i[104] = 2
        }),
        ("data-file-raw-alone", |i, _| i[95] |= 2),
        ("l1-unaligned", |i, _| {
            let v = get_be64(i, 40);
            be64(i, 40, v + 8)
        }),
        ("l1-size-huge", |i, _| be32(i, 36, 0x0400_0001)),
        ("l1-too-small", |i, _| be64(i, 24, 1 << 40)),
        ("size-below-l2", |i, h| {
            be64(i, 24, 2 * h.header.cluster_size())
        }),
        ("size-huge", |i, _| be64(i, 24, u64::MAX >> 1)),
        ("reftable-unaligned", |i, _| {
            let v = get_be64(i, 48);
            be64(i, 48, v + 8)
        }),
        ("reftable-empty", |i, _| be32(i, 56, 0)),
        ("reftable-huge", |i, _| be32(i, 56, 0x00ff_ffff)),
        ("snapshots-unaligned", |i, _| {
            be32(i, 60, 1);
            be64(i, 64, 520)
        }),
        ("snapshots-too-many", |i, _| {
            be32(i, 60, 70_000);
            be64(i, 64, 512)
        }),
        ("snapshots-past-eof", |i, _| {
            be32(i, 60, 2);
            be64(i, 64, 1 << 30)
        }),
        ("refcount-order-7", |i, _| be32(i, 96, 7)),
        ("v2-with-v3-fields", |i, _| be32(i, 4, 2)),
        ("ext-unknown-and-duplicate", |i, _| {
            qcow2_add_ext(i, 0x1234_5678, b"abc");
            qcow2_add_ext(i, 0xe279_2aca, b"raw");
            qcow2_add_ext(i, 0xe279_2aca, b"raw")
        }),
        ("ext-backing-format-alone", |i, _| {
            qcow2_add_ext(i, 0xe279_2aca, b"qcow2")
        }),
        ("ext-data-file-name-alone", |i, _| {
            qcow2_add_ext(i, 0x4441_5441, b"data.raw")
        }),
        ("ext-fde-without-luks", |i, _| {
            let mut p = [0u8; 16];
            p[6] = 0x10;
            p[15] = 0x02;
            qcow2_add_ext(i, 0x0537_be77, &p)
        }),
        ("ext-fde-wrong-length", |i, _| {
            be32(i, 32, 2);
            qcow2_add_ext(i, 0x0537_be77, &[0u8; 8])
        }),
        ("ext-feature-table-bad", |i, _| {
            qcow2_add_ext(i, 0x6803_f857, &[0u8; 20])
        }),
        ("ext-bitmaps-bad", |i, _| {
            i[95] |= 1;
            qcow2_add_ext(i, 0x2385_2875, &[0u8; 12])
        }),
        ("ext-bitmaps-reserved", |i, _| {
            i[95] |= 1;
            let mut p = [0u8; 24];
            p[3] = 1;
            p[4] = 1;
            p[23] = 0x01;
            qcow2_add_ext(i, 0x2385_2875, &p)
        }),
        ("ext-too-long", |i, h| {
            let hl = h.header.header_length as usize;
            be32(i, hl, 0x1234_5678);
            be32(i, hl + 4, 4096)
        }),
        ("ext-no-end", |i, h| {
            let (hl, cs) = (
                h.header.header_length as usize,
                h.header.cluster_size() as usize,
            );
            i[hl..cs].fill(0xab);
        }),
        ("ext-too-many", |i, h| {
            let (mut at, cs) = (
                h.header.header_length as usize,
                h.header.cluster_size() as usize,
            );
            while at + 8 <= cs {
                be32(i, at, 0x1234_0000 + at as u32);
                be32(i, at + 4, 0);
                at += 8;
            }
        }),
        ("l2-past-eof", |i, h| {
            let l1 = h.header.l1_table_offset as usize;
            be64(i, l1, (1 << 63) | (1 << 30))
        }),
        ("l1-l2-unaligned", |i, h| {
            let l1 = h.header.l1_table_offset as usize;
            let v = get_be64(i, l1);
            be64(i, l1, v + 512)
        }),
        ("l1-copied-cleared", |i, h| {
            let l1 = h.header.l1_table_offset as usize;
            let v = get_be64(i, l1);
            be64(i, l1, v & !(1 << 63))
        }),
        ("l2-duplicate", |i, h| {
            let l1 = h.header.l1_table_offset as usize;
            let v = get_be64(i, l1);
            be64(i, l1 + 8, v)
        }),
        ("l2-compressed-copied", |i, h| {
            let at = l2_entry(i, h, 8);
            let v = get_be64(i, at);
            be64(i, at, v | 1 << 63)
        }),
        ("l2-compressed-first", |i, h| {
            let at = l2_entry(i, h, 0);
            let v = get_be64(i, at) & 0x00ff_ffff_ffff_fe00;
            be64(i, at, (1 << 62) | v)
        }),
        ("l2-compressed-offset-high-bits", |i, h| {
            let at = l2_entry(i, h, 8);
            let v = get_be64(i, at);
            be64(i, at, v | 1 << 57)
        }),
        ("l2-not-guest-offset", |i, h| {
            let at = l2_entry(i, h, 0);
            be64(i, at, (1 << 63) | (7 * h.header.cluster_size()))
        }),
        ("refblock-reserved", |i, h| {
            let rt = h.header.refcount_table_offset as usize;
            let v = get_be64(i, rt);
            be64(i, rt, v | 0x100)
        }),
        ("refblock-past-eof", |i, h| {
            let rt = h.header.refcount_table_offset as usize;
            be64(i, rt, 1 << 30)
        }),
        ("refblock-unaligned", |i, h| {
            let rt = h.header.refcount_table_offset as usize;
            let v = get_be64(i, rt);
            be64(i, rt, v + 512)
        }),
        ("refblock-is-header", |i, h| {
            let rt = h.header.refcount_table_offset as usize;
            be64(i, rt, 0)
        }),
        ("snapshot-l1-huge", |i, h| {
            if let Some(s) = h.snapshots.snapshots.first() {
                be32(i, s.entry_offset as usize + 8, 0x100_0000)
            }
        }),
        ("snapshot-extra-huge", |i, h| {
            if let Some(s) = h.snapshots.snapshots.first() {
                be32(i, s.entry_offset as usize + 36, 0x10000)
            }
        }),
        ("snapshot-extra-short", |i, h| {
            // The last entry's extra data shrinks to 8 bytes; id and name move up.
            if let Some(s) = h.snapshots.snapshots.last() {
                let e = s.entry_offset as usize;
                let tail_at = e + 40 + s.extra_data_size as usize;
                let tail = i[tail_at..tail_at + s.id.len() + s.name.len()].to_vec();
                be32(i, e + 36, 8);
                i[e + 48..e + 48 + tail.len()].copy_from_slice(&tail);
            }
        }),
        ("snapshot-duplicate-id", |i, h| {
            if let [a, b, ..] = h.snapshots.snapshots.as_slice() {
                let at = b.entry_offset as usize + 40 + b.extra_data_size as usize;
                if a.id.len() == b.id.len() {
                    i[at..at + a.id.len()].copy_from_slice(a.id.as_bytes());
                }
            }
        }),
        ("bitmap-count-mismatch", |i, h| {
            let mut at = h.header.header_length as usize;
            while at + 8 < i.len() {
                let t = get_be64(i, at);
                if t >> 32 == 0x2385_2875 || t == 0 {
                    break;
                }
                at += 8 + ((t & 0xffff_ffff) as usize).next_multiple_of(8);
            }
            be32(i, at + 8, 3)
        }),
        ("bitmap-bad-type", |i, h| {
            if let Some(b) = h.bitmaps.first() {
                i[b.entry_offset as usize + 16] = 2
            }
        }),
        ("bitmap-table-too-small", |i, h| {
            if let Some(b) = h.bitmaps.iter().max_by_key(|b| b.bitmap_table_size) {
                be32(i, b.entry_offset as usize + 8, b.bitmap_table_size - 1)
            }
        }),
        ("bitmap-duplicate-name", |i, h| {
            if let [a, b, ..] = h.bitmaps.as_slice() {
                let at = b.entry_offset as usize + 24 + b.extra_data_size as usize;
                if a.name.len() == b.name.len() {
                    i[at..at + a.name.len()].copy_from_slice(a.name.as_bytes());
                }
            }
        }),
        ("bitmap-table-huge", |i, h| {
            // Legal (larger than needed), but more entries than the fuzz
            // work limit: the cheapest way to that limit.
            if let Some(b) = h.bitmaps.first() {
                be32(i, b.entry_offset as usize + 8, 0x2_0001)
            }
        }),
        ("bitmap-in-use", |i, h| {
            if let Some(b) = h.bitmaps.first() {
                be32(i, b.entry_offset as usize + 12, 1)
            }
        }),
    ]
}

/// An extended-L2 image in four 16 KiB clusters (header, L1, L2, refcount
/// table without blocks): Extended L2 Entries need 16 KiB clusters, so no
/// complete image of that shape fits in [`MAX_SEED`]. Its L2 entries break
/// the three subcluster rules.
fn qcow2_extended_l2() -> Vec<u8> {
    use qcow2::write::{write, ClusterData, Description};
    let cs = 1usize << 14;
    let mut d = Description::new(8 * cs as u64, 14);
    d.extended_l2 = true;
    d.clusters.insert(0, ClusterData::Zero);
    let Ok(w) = write(&d) else {
        return Vec::new();
    };
    let mut i = w.image;
    let l2 = (get_be64(&i, get_be64(&i, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    i.resize(4 * cs, 0);
    be64(&mut i, 48, 3 * cs as u64);
    be32(&mut i, 56, 1);
    i[3 * cs..].fill(0);
    // 0: allocated and zero at once; 1: unallocated with allocation bits;
    // 2: compressed with a subcluster bitmap.
    be64(&mut i, l2, (1 << 63) | (3 * cs as u64));
    be64(&mut i, l2 + 8, 0x0000_00ff_0000_00ff);
    be64(&mut i, l2 + 16, 0);
    be64(&mut i, l2 + 24, 0x0000_0000_0000_000f);
    be64(&mut i, l2 + 32, (1 << 62) | (2 * cs as u64 + 64));
    be64(&mut i, l2 + 40, 1);
    i
}

fn qcow2_seeds() -> Vec<Seed> {
    let mut p = Picker::new("qcow2", "qcow2_check");
    let mut written = Vec::new();
    for (name, d) in qcow2_bases() {
        match qcow2::write::write(&d) {
            Ok(w) => {
                p.offer(name.into(), w.image.clone(), true);
                written.push((name, w.image));
            }
            Err(e) => panic!("qcow2 seed base {name}: {e}"),
        }
    }
    for (base, img) in &written {
        for kind in 0..qcow2::mutate::KINDS {
            for (a, b) in [(0, 0), (1, 3), (2, 9)] {
                let m = qcow2::mutate::Mutation::from_parts(kind, a, b);
                let mut img = img.clone();
                if qcow2::mutate::apply(m, &mut img).is_some() {
                    p.offer(format!("{base}-m{kind}-{a}"), img, false);
                }
            }
        }
    }
    for (base, img) in &written {
        let Ok(info) = qcow2::check::info(&img.as_slice(), "seed", &crate::fuzz_limits()) else {
            continue;
        };
        for (name, edit) in qcow2_edits() {
            let mut img = img.clone();
            edit(&mut img, &info);
            p.offer(format!("{base}-{name}"), img, false);
        }
    }
    p.offer("extended-l2-subclusters".into(), qcow2_extended_l2(), true);
    p.seeds
}

fn qed_seeds() -> Vec<Seed> {
    use qed::write::{Cluster, Description};
    let mut p = Picker::new("qed", "qed_check");
    let cs = 4096u32;
    let mut bases = Vec::new();
    for (name, ts, backing, raw) in [
        ("data", 1, false, false),
        ("backing", 1, true, false),
        ("backing-raw", 2, true, true),
    ] {
        let mut d = Description::new(64 * cs as u64, cs, ts);
        d.clusters.insert(0, Cluster::Data(pattern(1, cs as u64)));
        d.clusters.insert(2, Cluster::Data(pattern(9, cs as u64)));
        d.clusters.insert(4, Cluster::Zero);
        if backing {
            d.backing = Some(("base.qed".into(), raw));
        }
        let img = qed::write::write(&d).unwrap_or_else(|e| panic!("qed seed base {name}: {e}"));
        p.offer(name.into(), img.clone(), true);
        bases.push((name, img));
    }
    p.offer(
        "empty".into(),
        qed::write::write(&Description::new(1 << 20, cs, 1)).unwrap_or_default(),
        true,
    );
    for (base, img) in &bases {
        for kind in 0..qed::mutate::KINDS {
            for (a, b) in [(0, 0), (1, 7)] {
                let mut img = img.clone();
                let m = qed::mutate::Mutation::from_parts(kind, a, b);
                if qed::mutate::apply(m, &mut img).is_some() {
                    p.offer(format!("{base}-m{kind}-{a}"), img, false);
                }
            }
        }
    }
    let edits: Vec<Edit> = vec![
        ("bad-magic", |i| i[0] = b'X'),
        ("header-size", |i| le32(i, 12, 0)),
        ("table-size-1-huge-image", |i| le64(i, 48, 1 << 50)),
        ("image-size-zero-l1", |i| le64(i, 40, 0)),
        ("l2-offset-invalid", |i| {
            let l1 = u64::from_le_bytes(i[40..48].try_into().unwrap_or([0; 8])) as usize;
            le64(i, l1, 4097)
        }),
        ("truncated", |i| i.truncate(40)),
        ("size-huge", |i| le64(i, 48, u64::MAX - 511)),
        ("size-2-pow-63", |i| le64(i, 48, 1 << 63)),
        ("backing-absolute", |i| qed_backing_name(i, b"/etc/passwd")),
        ("backing-protocol", |i| {
            qed_backing_name(i, b"nbd:host:10809")
        }),
        ("backing-dotdot", |i| {
            qed_backing_name(i, b"../../etc/passwd")
        }),
        ("backing-nul", |i| qed_backing_name(i, b"ba\0se")),
    ];
    for (base, img) in &bases {
        for (name, edit) in &edits {
            let mut img = img.clone();
            edit(&mut img);
            p.offer(format!("{base}-{name}"), img, false);
        }
    }
    p.seeds
}

/// Replaces a QED image's backing file name (stored after the header fields).
fn qed_backing_name(i: &mut [u8], name: &[u8]) {
    let at = qed::header::HEADER_FIELDS;
    le32(i, 56, at as u32);
    le32(i, 60, name.len() as u32);
    if let Some(s) = i.get_mut(at..at + name.len()) {
        s.copy_from_slice(name);
    }
}

/// Edits a Parallels image's Format Extension cluster (as `edit` sees it
/// from its start) and rewrites its MD5 checksum.
fn parallels_ext_edit(i: &mut [u8], edit: fn(&mut [u8])) {
    use md5::{Digest, Md5};
    let at = u64::from_le_bytes(i[56..64].try_into().unwrap_or([0; 8])) as usize * 512;
    let cs = u32::from_le_bytes(i[28..32].try_into().unwrap_or([0; 4])) as usize * 512;
    let Some(ext) = i.get_mut(at..at + cs) else {
        return;
    };
    edit(ext);
    let sum = Md5::digest(&ext[24..]);
    ext[8..24].copy_from_slice(&sum);
}

fn parallels_seeds() -> Vec<Seed> {
    use parallels::write::{BitmapDesc, Description};
    let mut p = Picker::new("parallels", "parallels_check");
    let mut bases = Vec::new();
    for (name, cs, ext, bitmap) in [
        ("v1", 512u64, false, false),
        ("v2", 1024, true, false),
        ("v2-4k", 4096, true, false),
        ("bitmap", 1024, true, true),
    ] {
        let n = 32u64;
        let mut d = Description::new(n * cs, cs, ext);
        d.clusters.insert(0, pattern(1, cs));
        d.clusters.insert(5, pattern(4, cs));
        if bitmap {
            d.bitmap = Some(BitmapDesc {
                id: [7; 16],
                granularity: 2,
                dirty_bits: vec![0, 3, 9],
            });
        }
        let img = parallels::write::write(&d)
            .unwrap_or_else(|e| panic!("parallels seed base {name}: {e}"));
        p.offer(name.into(), img.clone(), true);
        bases.push((name, img));
    }
    for (base, img) in &bases {
        for kind in 0..parallels::mutate::KINDS {
            for (a, b) in [(0, 0), (1, 5)] {
                let mut img = img.clone();
                let m = parallels::mutate::Mutation::from_parts(kind, a, b);
                if parallels::mutate::apply(m, &mut img).is_some() {
                    p.offer(format!("{base}-m{kind}-{a}"), img, false);
                }
            }
        }
    }
    let edits: Vec<Edit> = vec![
        ("bad-magic", |i| i[0] = b'X'),
        ("bat-entries-huge", |i| le32(i, 32, u32::MAX)),
        ("truncated", |i| i.truncate(40)),
        ("data-off-unaligned", |i| le32(i, 48, 3)),
        ("tracks-huge", |i| le32(i, 28, u32::MAX)),
        ("ext-past-eof", |i| le64(i, 56, 1 << 30)),
        ("nb-sectors-huge", |i| le64(i, 36, 1 << 54)),
        ("ext-feature-overrun", |i| {
            parallels_ext_edit(i, |e| le32(e, 24 + 16, 0x00ff_fff0))
        }),
        ("ext-unknown-feature", |i| {
            parallels_ext_edit(i, |e| {
                le64(e, 24, 0x1234);
                le64(e, 32, 1)
            })
        }),
    ];
    for (base, img) in &bases {
        for (name, edit) in &edits {
            let mut img = img.clone();
            edit(&mut img);
            p.offer(format!("{base}-{name}"), img, false);
        }
    }
    p.seeds
}

/// The seeds of the three raw-format targets.
pub fn image_seeds() -> Vec<Seed> {
    let mut out = qcow2_seeds();
    out.extend(qed_seeds());
    out.extend(parallels_seeds());
    out
}

/// Rules of [`image_rules`] that none of `seeds` reaches and that
/// [`UNREACHABLE`] does not name, by id.
pub fn rules_missed<'a>(seeds: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<&'static str> {
    let mut reached: BTreeMap<*const Rule, ()> = BTreeMap::new();
    for (target, bytes) in seeds {
        let format = target.trim_end_matches("_check");
        for r in rules_reached(format, bytes) {
            reached.insert(r as *const Rule, ());
        }
    }
    image_rules()
        .filter(|r| !reached.contains_key(&(*r as *const Rule)))
        .filter(|r| !UNREACHABLE.iter().any(|(u, _)| std::ptr::eq(*u, *r)))
        .map(|r| r.id)
        .collect()
}

/// The minimised crashes and hangs of the raw-format targets that are
/// built from code: (target, file name, bytes). `cargo xtask fuzz --seeds`
/// writes them to corpus/regressions/<target>/; the replay test runs them.
pub fn regressions() -> Vec<Seed> {
    let seed = |target, name: &str, bytes| Seed {
        target,
        name: name.into(),
        bytes,
    };
    vec![
        seed(
            "qcow2_check",
            "map-128g-claim-cluster-bits-9",
            qcow2_big_claim(),
        ),
        seed("qed_check", "map-128g-claim-4k-clusters", qed_big_claim()),
        seed(
            "parallels_check",
            "map-128g-claim-512-clusters",
            parallels_big_claim(),
        ),
    ]
}

/// A 2 KiB qcow2 file with 512-byte clusters claiming a 128 GiB disk: its
/// L1 table (4 Mi entries, 32 MiB) lies almost all past the end of the file.
/// The map once walked such a disk one cluster at a time (2^28 steps).
fn qcow2_big_claim() -> Vec<u8> {
    let mut i = vec![0u8; 2048];
    i[..4].copy_from_slice(&qcow2::MAGIC);
    be32(&mut i, 4, 3);
    be32(&mut i, 20, 9);
    be64(&mut i, 24, 128 << 30);
    be32(&mut i, 36, 4 << 20);
    be64(&mut i, 40, 1536);
    be64(&mut i, 48, 512);
    be32(&mut i, 56, 1);
    be32(&mut i, 96, 4);
    be32(&mut i, 100, 112);
    // Refcount table -> block at 1024: header, table, block, first L1 cluster.
    be64(&mut i, 512, 1024);
    for k in 0..4 {
        i[1024 + 2 * k + 1] = 1;
    }
    i
}

/// A QED image (4 KiB clusters, 16-cluster tables) claiming 128 GiB, its
/// 64 KiB L1 table mostly past the end of a 16 KiB file.
fn qed_big_claim() -> Vec<u8> {
    let d = qed::write::Description::new(1 << 20, 4096, 16);
    let Ok(mut i) = qed::write::write(&d) else {
        return Vec::new();
    };
    i.truncate(16 << 10);
    le64(&mut i, 48, 128 << 30);
    i
}

/// A Parallels image (512-byte clusters) claiming 128 GiB: 2^28 BAT
/// entries, all but the first 496 past the end of a 2 KiB file.
fn parallels_big_claim() -> Vec<u8> {
    let d = parallels::write::Description::new(512 * 8, 512, true);
    let Ok(mut i) = parallels::write::write(&d) else {
        return Vec::new();
    };
    i.resize(2048, 0);
    le32(&mut i, 32, 1 << 28);
    le64(&mut i, 36, 1 << 28);
    i
}

/// The differential targets.
pub const DIFFERENTIAL_TARGETS: [&str; 2] = ["differential_imago", "differential_qcow2rs"];

/// How many inputs of the fixed stream [`differential_seeds`] looks at.
pub const DIFFERENTIAL_SCAN: u64 = 3000;

/// The seeds of differential_imago and differential_qcow2rs (the same
/// inputs for both): generator inputs that together give every shape,
/// cluster kind, optional structure and mutation the peers generator makes
/// (`qconform_peers::campaign::seed_inputs`), named `seed-NN`.
pub fn differential_seeds() -> Vec<Seed> {
    let inputs = qconform_peers::campaign::seed_inputs(DIFFERENTIAL_SCAN);
    DIFFERENTIAL_TARGETS
        .iter()
        .flat_map(|t| {
            inputs.iter().enumerate().map(move |(i, bytes)| Seed {
                target: t,
                name: format!("seed-{i:02}"),
                bytes: bytes.clone(),
            })
        })
        .collect()
}
