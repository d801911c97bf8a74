//! QED mutators: one structured corruption of a valid image at a time, each
//! naming the rules the checker must then report (as qcow2's mutators do).

use super::header::{self, field as f, Header, F_BACKING_FILE, ZERO_CLUSTER};
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{qed, Rule};

/// One corruption. `nth` picks among the candidates (modulo their count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// An unallocated L2 entry (or another data entry) names a data cluster already in use.
    DuplicateData {
        /// Which data cluster entry (modulo their count).
        nth: usize,
    },
    /// A data cluster offset moved by 512 bytes (its low 12 bits are reserved).
    MisalignData {
        /// Which data cluster entry (modulo their count).
        nth: usize,
    },
    /// A data cluster offset past the end of the file.
    DataPastEof {
        /// Which data cluster entry (modulo their count).
        nth: usize,
    },
    /// An L2 table offset past the end of the file.
    L2PastEof {
        /// Which L1 entry naming an L2 table (modulo their count).
        nth: usize,
    },
    /// One unreferenced cluster appended.
    Leak,
    /// A `features` bit no spec defines.
    UnknownFeature {
        /// The bit set (3-63).
        bit: u8,
    },
    /// NEED_CHECK set.
    NeedCheck,
    /// cluster_size not a power of 2.
    BadClusterSize,
    /// table_size 3.
    BadTableSize,
    /// image_size not a multiple of 512.
    UnalignedImageSize,
    /// l1_table_offset off a cluster boundary.
    UnalignedL1,
    /// A backing file name that ends past the header clusters.
    BackingNamePastHeader,
}

/// All mutation shapes, for generators.
pub const KINDS: usize = 12;

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
            0 => Mutation::DuplicateData { nth: a },
            1 => Mutation::MisalignData { nth: a },
            2 => Mutation::DataPastEof { nth: a },
            3 => Mutation::L2PastEof { nth: a },
            4 => Mutation::Leak,
            5 => Mutation::UnknownFeature { bit: 3 + b % 61 },
            6 => Mutation::NeedCheck,
            7 => Mutation::BadClusterSize,
            8 => Mutation::BadTableSize,
            9 => Mutation::UnalignedImageSize,
            10 => Mutation::UnalignedL1,
            _ => Mutation::BackingNamePastHeader,
        }
    }
}

/// A table entry (L1 or L2) at file offset `at`.
fn get64(b: &[u8], at: u64) -> u64 {
    usize::try_from(at).map_or(0, |at| crate::field::le_u64(b, at))
}
fn put64(b: &mut [u8], at: u64, v: u64) {
    if let Ok(at) = usize::try_from(at) {
        crate::field::put_le64(b, at, v)
    }
}

/// Most table entries a mutator looks at: mutators take any bytes, and
/// overlapping tables must not make the walk quadratic in the file size.
const MAX_ENTRIES: usize = 1 << 22;

/// Where the tables are: (L1 entry positions in use, L2 entries as
/// (position, value)); only entries inside the file, each L2 table once.
fn entries(img: &[u8], h: &Header) -> (Vec<u64>, Vec<(u64, u64)>) {
    let mut l1 = Vec::new();
    let mut l2 = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let in_file = |at: u64| {
        h.table_entries()
            .min((img.len() as u64).saturating_sub(at) / 8)
    };
    for i in 0..in_file(h.l1_table_offset) {
        let at = h.l1_table_offset + 8 * i;
        let t = get64(img, at);
        if t == 0 {
            continue;
        }
        l1.push(at);
        if !seen.insert(t) {
            continue;
        }
        for j in 0..in_file(t) {
            if l2.len() >= MAX_ENTRIES {
                return (l1, l2);
            }
            let e = t + 8 * j;
            l2.push((e, get64(img, e)));
        }
    }
    (l1, l2)
}

fn pick<T: Copy>(v: &[T], nth: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[nth % v.len()])
}

/// Applies `m` to a valid image. Returns the rules the checker must report,
/// or None when the image has nothing to mutate that way (the image is then
/// unchanged).
pub fn apply(m: Mutation, img: &mut Vec<u8>) -> Option<&'static [&'static Rule]> {
    let mut scratch = Report::new("mutate", "qed", &Limits::default());
    let h = header::parse(&img.as_slice(), &mut scratch)?;
    let cs = h.cs();
    let (l1, l2) = entries(img, &h);
    let data: Vec<(u64, u64)> = l2
        .iter()
        .copied()
        .filter(|&(_, v)| v > ZERO_CLUSTER)
        .collect();
    let past_eof = (img.len() as u64).next_multiple_of(cs) + 4 * cs;
    Some(match m {
        Mutation::DuplicateData { nth } => {
            let (_, target) = pick(&data, nth)?;
            let free: Vec<(u64, u64)> = l2.iter().copied().filter(|&(_, v)| v != target).collect();
            let (at, _) = pick(&free, nth / 2)?;
            put64(img, at, target);
            crate::rule_set![qed::REFERENCED_ONCE]
        }
        Mutation::MisalignData { nth } => {
            let (at, v) = pick(&data, nth)?;
            put64(img, at, v + 512);
            crate::rule_set![qed::CLUSTER_OFFSET]
        }
        Mutation::DataPastEof { nth } => {
            let (at, _) = pick(&data, nth)?;
            put64(img, at, past_eof);
            crate::rule_set![qed::CLUSTER_OFFSET]
        }
        Mutation::L2PastEof { nth } => {
            let at = pick(&l1, nth)?;
            put64(img, at, past_eof);
            crate::rule_set![qed::TABLE_OFFSET]
        }
        Mutation::Leak => {
            img.resize(img.len().next_multiple_of(cs as usize) + cs as usize, 0xAA);
            crate::rule_set![qed::LEAK]
        }
        Mutation::UnknownFeature { bit } => {
            f::FEATURES.put(img, h.features | 1 << (bit.clamp(3, 63)));
            crate::rule_set![qed::FEATURES]
        }
        Mutation::NeedCheck => {
            f::FEATURES.put(img, h.features | header::F_NEED_CHECK);
            crate::rule_set![qed::NEED_CHECK]
        }
        Mutation::BadClusterSize => {
            f::CLUSTER_SIZE.put(img, h.cluster_size + 512);
            crate::rule_set![qed::CLUSTER_SIZE]
        }
        Mutation::BadTableSize => {
            f::TABLE_SIZE.put(img, 3);
            crate::rule_set![qed::TABLE_SIZE]
        }
        Mutation::UnalignedImageSize => {
            let size = h.image_size.checked_sub(1)?;
            f::IMAGE_SIZE.put(img, size);
            crate::rule_set![qed::IMAGE_SIZE]
        }
        Mutation::UnalignedL1 => {
            f::L1_TABLE_OFFSET.put(img, h.l1_table_offset + 512);
            crate::rule_set![qed::L1_OFFSET]
        }
        Mutation::BackingNamePastHeader => {
            f::FEATURES.put(img, h.features | F_BACKING_FILE);
            f::BACKING_FILENAME_OFFSET.put(img, (h.header_bytes() - 8) as u32);
            f::BACKING_FILENAME_SIZE.put(img, 64);
            crate::rule_set![qed::BACKING_NAME]
        }
    })
}
