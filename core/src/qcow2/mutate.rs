//! Mutators: one structured corruption of a valid image at a time, each
//! naming the rules the checker must then report. They prove the checker
//! catches each rule on images of every shape the writer makes, and give
//! fuzzing a way deep into valid structure.

use super::check::{info, Info};
use super::header::{field as f, Header};
use super::mapping::*;
use crate::limits::Limits;
use crate::rules::{qcow2, Rule};

/// One corruption. `nth` picks among the candidates (modulo their count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A data cluster's refcount one higher: a leak (and COPIED now wrong).
    RefcountUp {
        /// Which data cluster (modulo their count).
        nth: usize,
    },
    /// A data cluster's refcount set to 0.
    RefcountZero {
        /// Which data cluster (modulo their count).
        nth: usize,
    },
    /// A second L2 entry points at a data cluster already mapped.
    DuplicateDataPointer {
        /// Which data cluster (modulo their count).
        nth: usize,
    },
    /// A data cluster's offset moved by 512 bytes.
    MisalignDataOffset {
        /// Which data cluster (modulo their count).
        nth: usize,
    },
    /// A data cluster's offset moved past the end of the file.
    DataPastEof {
        /// Which data cluster (modulo their count).
        nth: usize,
    },
    /// COPIED cleared on a data entry whose refcount is 1.
    ClearCopied {
        /// Which data entry with refcount 1 (modulo their count).
        nth: usize,
    },
    /// A reserved bit set in a standard L2 entry.
    L2ReservedBit {
        /// Which standard L2 entry (modulo their count).
        nth: usize,
        /// The bit set (reduced to a reserved bit of the entry).
        bit: u8,
    },
    /// A reserved bit set in an L1 entry.
    L1ReservedBit {
        /// Which L1 entry (modulo their count).
        nth: usize,
        /// The bit set (reduced to a reserved bit of the entry).
        bit: u8,
    },
    /// An incompatible feature bit no spec defines.
    UnknownIncompatibleBit {
        /// The incompatible_features bit set (reduced to one the spec does not define).
        bit: u8,
    },
    /// The refcount table names an L2 table as a refcount block.
    RefblockIsL2 {
        /// Which refcount table entry (modulo their count).
        nth: usize,
    },
    /// A compressed cluster's data moved past the end of the file.
    CompressedPastEof {
        /// Which compressed cluster (modulo their count).
        nth: usize,
    },
    /// A subcluster both allocated and reads-as-zero.
    SubclusterAllocAndZero {
        /// Which extended L2 entry (modulo their count).
        nth: usize,
    },
    /// A snapshot's L1 table offset moved off a cluster boundary.
    SnapshotL1Unaligned {
        /// Which snapshot (modulo their count).
        nth: usize,
    },
    /// A reserved bit in a bitmap table entry.
    BitmapEntryReserved {
        /// Which bitmap table entry (modulo their count).
        nth: usize,
    },
    /// refcount_order 7.
    RefcountOrderTooLarge,
}

/// All mutation shapes, for generators.
pub const KINDS: usize = 15;

/// Any mutation, drawn as [`Mutation::from_parts`] builds it (see
/// [`crate::structured`]).
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Mutation {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let (kind, a, b) = crate::structured::parts(u, KINDS)?;
        Ok(Mutation::from_parts(kind, a, b))
    }
}

impl Mutation {
    /// Builds mutation `kind` (0..KINDS) with the selector values `a`, `b`.
    pub fn from_parts(kind: usize, a: usize, b: u8) -> Mutation {
        match kind % KINDS {
            0 => Mutation::RefcountUp { nth: a },
            1 => Mutation::RefcountZero { nth: a },
            2 => Mutation::DuplicateDataPointer { nth: a },
            3 => Mutation::MisalignDataOffset { nth: a },
            4 => Mutation::DataPastEof { nth: a },
            5 => Mutation::ClearCopied { nth: a },
            6 => Mutation::L2ReservedBit { nth: a, bit: b },
            7 => Mutation::L1ReservedBit { nth: a, bit: b },
            8 => Mutation::UnknownIncompatibleBit { bit: 5 + b % 59 },
            9 => Mutation::RefblockIsL2 { nth: a },
            10 => Mutation::CompressedPastEof { nth: a },
            11 => Mutation::SubclusterAllocAndZero { nth: a },
            12 => Mutation::SnapshotL1Unaligned { nth: a },
            13 => Mutation::BitmapEntryReserved { nth: a },
            _ => Mutation::RefcountOrderTooLarge,
        }
    }
}

/// An active L2 entry: where it is and what it says.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u64,
    value: u64,
    bitmap: u64,
}

/// A table entry (L1, L2, refcount table) at file offset `at`.
fn get64(b: &[u8], at: u64) -> u64 {
    usize::try_from(at).map_or(0, |at| crate::field::be_u64(b, at))
}

fn put64(b: &mut [u8], at: u64, v: u64) {
    if let Ok(at) = usize::try_from(at) {
        crate::field::put_be64(b, at, v)
    }
}

/// Most L2 entries a mutator looks at: mutators take any bytes, and a
/// claimed L1 size or overlapping tables must not make the walk unbounded.
const MAX_ENTRIES: usize = 1 << 22;

fn active_entries(img: &[u8], h: &Header) -> (Vec<u64>, Vec<Entry>) {
    let mut l1_at = Vec::new();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let l1_in_file =
        (h.l1_size as u64).min((img.len() as u64).saturating_sub(h.l1_table_offset) / 8);
    for i in 0..l1_in_file {
        let at = h.l1_table_offset + 8 * i;
        let l2 = get64(img, at) & L1E_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        l1_at.push(at);
        if !seen.insert(l2) || l2 >= img.len() as u64 {
            continue;
        }
        for j in 0..h.l2_entries() {
            if out.len() >= MAX_ENTRIES {
                return (l1_at, out);
            }
            let e = l2 + j * h.l2_entry_bytes();
            let value = get64(img, e);
            let bitmap = if h.extended_l2() {
                get64(img, e + 8)
            } else {
                0
            };
            if value != 0 || bitmap != 0 {
                out.push(Entry {
                    at: e,
                    value,
                    bitmap,
                });
            }
        }
    }
    (l1_at, out)
}

fn pick<T: Copy>(v: &[T], nth: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[nth % v.len()])
}

/// The `nth` (modulo their count) of the entries that satisfy `keep`.
fn pick_where(v: &[Entry], nth: usize, keep: impl Fn(&Entry) -> bool) -> Option<Entry> {
    let kept: Vec<Entry> = v.iter().copied().filter(|e| keep(e)).collect();
    pick(&kept, nth)
}

/// Sets the on-disk refcount of host cluster `k`.
fn set_refcount(img: &mut [u8], h: &Header, k: u64, value: u64) {
    let epb = (8 * h.cluster_size()) >> h.refcount_order;
    let block =
        get64(img, h.refcount_table_offset + 8 * (k / epb)) & super::refcount::REFT_OFFSET_MASK;
    if let Some(b) = usize::try_from(block).ok().and_then(|at| img.get_mut(at..)) {
        super::write::put_refcount(b, k % epb, h.refcount_order, value);
    }
}

/// What the mutators aim at in a valid image: its header, the active
/// state's table entries and data clusters, snapshots and bitmaps.
struct Target {
    h: Header,
    cs: u64,
    /// Data clusters only the active state owns (refcount exactly 1).
    own: Vec<Entry>,
    entries: Vec<Entry>,
    /// Offsets of the L1 entries that name an L2 table.
    l1_at: Vec<u64>,
    /// A cluster-aligned offset well past the end of the file.
    far: u64,
    snapshots: super::snapshot::SnapshotTable,
    bitmaps: Vec<super::bitmap::Bitmap>,
}

/// The rules a mutation must trip.
type RuleSet = &'static [&'static Rule];

impl Target {
    fn of(img: &[u8]) -> Option<Target> {
        let Info {
            header: h,
            snapshots,
            bitmaps,
            ..
        } = info(&img, "mutate", &Limits::default()).ok()?;
        let (l1_at, entries) = active_entries(img, &h);
        let cs = h.cluster_size();
        let own = entries
            .iter()
            .copied()
            .filter(|e| is_data(&h, e) && e.value & OFLAG_COPIED != 0 && !h.has_data_file())
            .collect();
        let far = (img.len() as u64 + (16 << 20)).next_multiple_of(cs);
        Some(Target {
            h,
            cs,
            own,
            entries,
            l1_at,
            far,
            snapshots,
            bitmaps,
        })
    }
}

/// A standard data cluster with a host offset (and, with extended L2,
/// some allocated subcluster).
fn is_data(h: &Header, e: &Entry) -> bool {
    matches!(classify(h, e.value), ClusterKind::Normal)
        && e.value & L2E_OFFSET_MASK != 0
        && (!h.extended_l2() || e.bitmap & 0xffff_ffff != 0)
}

/// Applies `m` to a valid image. Returns the rules the checker must report,
/// or None when the image has nothing to mutate that way (no compressed
/// cluster to move, say); the image is then unchanged.
pub fn apply(m: Mutation, img: &mut [u8]) -> Option<RuleSet> {
    let t = Target::of(img)?;
    match m {
        Mutation::RefcountUp { .. }
        | Mutation::RefcountZero { .. }
        | Mutation::RefblockIsL2 { .. } => refcounts(&t, m, img),
        Mutation::DuplicateDataPointer { .. }
        | Mutation::MisalignDataOffset { .. }
        | Mutation::DataPastEof { .. }
        | Mutation::ClearCopied { .. }
        | Mutation::L2ReservedBit { .. }
        | Mutation::CompressedPastEof { .. }
        | Mutation::SubclusterAllocAndZero { .. } => l2_entries(&t, m, img),
        _ => header_and_tables(&t, m, img),
    }
}

/// Mutations of the refcounts: counts raised or zeroed, an L2 table named as a refcount block.
fn refcounts(t: &Target, m: Mutation, img: &mut [u8]) -> Option<RuleSet> {
    let Target { h, own, l1_at, .. } = t;
    let (cs,) = (t.cs,);
    Some(match m {
        Mutation::RefcountUp { nth } => {
            let e = pick(own, nth)?;
            if h.refcount_order == 0 {
                return None; // a 1-bit refcount cannot go up
            }
            set_refcount(img, h, (e.value & L2E_OFFSET_MASK) / cs, 2);
            crate::rule_set![qcow2::REFCOUNT_LEAK, qcow2::L2_COPIED]
        }
        Mutation::RefcountZero { nth } => {
            let e = pick(own, nth)?;
            set_refcount(img, h, (e.value & L2E_OFFSET_MASK) / cs, 0);
            crate::rule_set![qcow2::REFCOUNT_TOO_LOW]
        }
        Mutation::RefblockIsL2 { nth } => {
            let at = pick(l1_at, nth)?;
            let l2 = get64(img, at) & L1E_OFFSET_MASK;
            // A refcount table entry that is unused: the second, if the table has room.
            let slot = h.refcount_table_offset + 8;
            if (h.refcount_table_clusters as u64 * cs) < 16 || get64(img, slot) != 0 {
                return None;
            }
            put64(img, slot, l2);
            if h.refcount_order == 0 {
                // Two owners of one cluster overflow a 1-bit refcount first.
                crate::rule_set![qcow2::REFCOUNT_OVERFLOW]
            } else {
                crate::rule_set![qcow2::METADATA_OVERLAP]
            }
        }
        _ => return None,
    })
}

/// Mutations of L2 entries: shared, misaligned, past EOF, COPIED cleared, reserved bits, compressed past EOF, subclusters both allocated and zero.
fn l2_entries(t: &Target, m: Mutation, img: &mut [u8]) -> Option<RuleSet> {
    let Target {
        h, own, entries, ..
    } = t;
    let (cs, far) = (t.cs, t.far);
    Some(match m {
        Mutation::DuplicateDataPointer { nth } => {
            let e = pick(own, nth)?;
            // Any other entry (or an empty slot of the same table) gets the same pointer.
            let l2 = e.at - (e.at % cs);
            let slot = (0..h.l2_entries())
                .map(|j| l2 + j * h.l2_entry_bytes())
                .find(|&a| a != e.at && get64(img, a) == 0)?;
            put64(img, slot, e.value);
            if h.extended_l2() {
                put64(img, slot + 8, e.bitmap);
            }
            if h.refcount_order == 0 {
                // The second reference overflows a 1-bit refcount (QEMU says so too).
                crate::rule_set![qcow2::REFCOUNT_OVERFLOW]
            } else {
                crate::rule_set![qcow2::REFCOUNT_TOO_LOW]
            }
        }
        Mutation::MisalignDataOffset { nth } => {
            let e = pick(own, nth)?;
            if cs == 512 {
                return None;
            }
            put64(img, e.at, e.value + 512);
            crate::rule_set![qcow2::L2_ALIGNED]
        }
        Mutation::DataPastEof { nth } => {
            let e = pick(own, nth)?;
            put64(img, e.at, (e.value & !L2E_OFFSET_MASK) | far);
            crate::rule_set![qcow2::REFERENCE_PAST_EOF]
        }
        Mutation::ClearCopied { nth } => {
            let e = pick(own, nth)?;
            put64(img, e.at, e.value & !OFLAG_COPIED);
            crate::rule_set![qcow2::L2_COPIED]
        }
        Mutation::L2ReservedBit { nth, bit } => {
            let e = pick_where(entries, nth, |e| e.value & OFLAG_COMPRESSED == 0)?;
            let reserved: Vec<u8> = (1..=8).chain(56..=61).collect();
            let b = reserved[bit as usize % reserved.len()];
            put64(img, e.at, e.value | 1 << b);
            crate::rule_set![qcow2::L2_RESERVED]
        }
        Mutation::CompressedPastEof { nth } => {
            let e = pick_where(entries, nth, |e| e.value & OFLAG_COMPRESSED != 0)?;
            let shift = 62 - (h.cluster_bits - 8);
            let offset_mask = (1u64 << shift) - 1;
            if far > offset_mask {
                return None;
            }
            put64(img, e.at, (e.value & !offset_mask) | far);
            crate::rule_set![qcow2::REFERENCE_PAST_EOF]
        }
        Mutation::SubclusterAllocAndZero { nth } => {
            if !h.extended_l2() {
                return None;
            }
            let e = pick_where(entries, nth, |e| is_data(h, e))?;
            put64(img, e.at + 8, e.bitmap | (e.bitmap & 0xffff_ffff) << 32);
            crate::rule_set![qcow2::SUBCLUSTER_ALLOC_ZERO]
        }
        _ => return None,
    })
}

/// Mutations of the header, the L1 table, the snapshot table and the bitmap tables.
fn header_and_tables(t: &Target, m: Mutation, img: &mut [u8]) -> Option<RuleSet> {
    let Target {
        h,
        l1_at,
        snapshots,
        bitmaps,
        ..
    } = t;
    Some(match m {
        Mutation::L1ReservedBit { nth, bit } => {
            let at = pick(l1_at, nth)?;
            let reserved: Vec<u8> = (0..=8).chain(56..=62).collect();
            let b = reserved[bit as usize % reserved.len()];
            let v = get64(img, at);
            put64(img, at, v | 1 << b);
            crate::rule_set![qcow2::L1_RESERVED]
        }
        Mutation::UnknownIncompatibleBit { bit } => {
            if h.version < 3 {
                return None;
            }
            let v = f::INCOMPATIBLE_FEATURES.get(img);
            f::INCOMPATIBLE_FEATURES.put(img, v | 1 << (bit.clamp(5, 63)));
            crate::rule_set![qcow2::INCOMPATIBLE_UNKNOWN]
        }
        Mutation::SnapshotL1Unaligned { nth } => {
            let s = pick(
                &snapshots
                    .snapshots
                    .iter()
                    .map(|s| s.entry_offset)
                    .collect::<Vec<_>>(),
                nth,
            )?;
            let v = get64(img, s);
            put64(img, s, v + 8);
            crate::rule_set![qcow2::SNAPSHOT_L1_ALIGNED]
        }
        Mutation::BitmapEntryReserved { nth } => {
            let b = pick(
                &bitmaps
                    .iter()
                    .map(|b| b.bitmap_table_offset)
                    .collect::<Vec<_>>(),
                nth,
            )?;
            let v = get64(img, b);
            put64(img, b, v | 0x10);
            crate::rule_set![qcow2::BITMAP_TABLE_ENTRY]
        }
        Mutation::RefcountOrderTooLarge => {
            if h.version < 3 {
                return None;
            }
            f::REFCOUNT_ORDER.put(img, 7);
            crate::rule_set![qcow2::REFCOUNT_ORDER]
        }
        _ => return None,
    })
}
