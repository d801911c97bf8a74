//! Parallels mutators: one structured corruption of a valid image at a
//! time, each naming the rules the checker must then report.

use super::ext::{
    bitmap_field, feature_field, field as ext_field, EXT_MAGIC, FEATURE_DIRTY_BITMAP,
};
use super::header::{self, field as f, Header, HEADER_SIZE, IN_USE_OPEN};
use super::SECTOR;
use crate::field::le_u32;
use crate::limits::Limits;
use crate::report::Report;
use crate::rules::{parallels, Rule};

/// One corruption. `nth` picks among the candidates (modulo their count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A BAT entry below the data offset.
    BatBelowData {
        /// Which allocated BAT entry (modulo their count).
        nth: usize,
    },
    /// A BAT entry past the end of the file.
    BatPastEof {
        /// Which allocated BAT entry (modulo their count).
        nth: usize,
    },
    /// A BAT entry equal to another one.
    BatDuplicate {
        /// Which allocated BAT entry (modulo their count).
        nth: usize,
    },
    /// A sector-based BAT entry moved back by one sector (WithoutFreeSpace, clusters > 512 bytes).
    BatUnaligned {
        /// Which allocated BAT entry (modulo their count).
        nth: usize,
    },
    /// One unused cluster appended.
    Leak,
    /// in_use says open read-write.
    InUseOpen,
    /// in_use a value the spec does not allow.
    InUseBad,
    /// tracks 0: a cluster of no bytes.
    TracksZero,
    /// version 3.
    Version,
    /// An unused flags bit.
    FlagsUnused {
        /// The bit set (1-31; bit 0 is the Empty Image flag).
        bit: u8,
    },
    /// The Empty Image flag on an image with allocated clusters.
    EmptyWithData,
    /// The Format Extension magic broken (the checksum still right).
    ExtMagic,
    /// A byte of the extension cluster changed, the checksum not updated.
    ExtChecksum,
    /// A dirty bitmap granularity that is not a power of 2.
    BitmapGranularity,
    /// A dirty bitmap L1 entry past the end of the file.
    BitmapL1PastEof,
    /// A dirty bitmap size other than the disk's.
    BitmapSize,
    /// nb_sectors with high bits in a WithoutFreeSpace image.
    NbSectorsHigh,
    /// data_off past the end of the file.
    DataOffPastEof,
    /// nb_sectors beyond what the BAT covers.
    BatShort,
}

/// All mutation shapes, for generators.
pub const KINDS: usize = 19;

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
            0 => Mutation::BatBelowData { nth: a },
            1 => Mutation::BatPastEof { nth: a },
            2 => Mutation::BatDuplicate { nth: a },
            3 => Mutation::BatUnaligned { nth: a },
            4 => Mutation::Leak,
            5 => Mutation::InUseOpen,
            6 => Mutation::InUseBad,
            7 => Mutation::TracksZero,
            8 => Mutation::Version,
            9 => Mutation::FlagsUnused { bit: 1 + b % 31 },
            10 => Mutation::EmptyWithData,
            11 => Mutation::ExtMagic,
            12 => Mutation::ExtChecksum,
            13 => Mutation::BitmapGranularity,
            14 => Mutation::BitmapL1PastEof,
            15 => Mutation::BitmapSize,
            16 => Mutation::NbSectorsHigh,
            17 => Mutation::DataOffPastEof,
            _ => Mutation::BatShort,
        }
    }
}

/// A BAT entry at file offset `at`.
fn put32(b: &mut [u8], at: u64, v: u32) {
    if let Ok(at) = usize::try_from(at) {
        crate::field::put_le32(b, at, v)
    }
}

fn pick<T: Copy>(v: &[T], nth: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[nth % v.len()])
}

/// Rewrites the extension cluster's MD5 after an edit of its body.
fn fix_checksum(img: &mut [u8], ext_at: u64, cs: u64) {
    if let Some(c) = img.get_mut(ext_at as usize..(ext_at + cs) as usize) {
        super::ext::seal(c);
    }
}

/// Applies `m` to a valid image. Returns the rules the checker must report,
/// or None when the image has nothing to mutate that way (the image is then
/// unchanged).
pub fn apply(m: Mutation, img: &mut Vec<u8>) -> Option<RuleSet> {
    let t = Target::of(img)?;
    match m {
        Mutation::BatBelowData { .. }
        | Mutation::BatPastEof { .. }
        | Mutation::BatDuplicate { .. }
        | Mutation::BatUnaligned { .. }
        | Mutation::Leak => bat(&t, m, img),
        Mutation::ExtMagic
        | Mutation::ExtChecksum
        | Mutation::BitmapGranularity
        | Mutation::BitmapL1PastEof
        | Mutation::BitmapSize => extension(&t, m, img),
        _ => header_fields(&t, m, img),
    }
}

/// The rules a mutation must trip.
type RuleSet = &'static [&'static Rule];

/// What the mutators aim at in a valid image.
struct Target {
    h: Header,
    cs: u64,
    /// BAT entries as read (up to the last allocated one).
    bat: Vec<u32>,
    /// Allocated BAT entries: (file offset of the entry, value).
    allocated: Vec<(u64, u32)>,
    /// File offset of the extension cluster (0: none).
    ext_at: u64,
    /// Offset of the dirty bitmap's feature data, when the extension's
    /// first feature is one.
    bitmap: Option<usize>,
    /// A cluster-aligned offset past the end of the file.
    past_eof: u64,
}

impl Target {
    fn of(img: &[u8]) -> Option<Target> {
        let mut scratch = Report::new("mutate", "parallels", &Limits::default());
        let h = header::parse(&img, &mut scratch)?;
        let cs = h.cluster_size();
        let bat = header::read_bat(&img, &h);
        let allocated = bat
            .iter()
            .enumerate()
            .filter(|(_, &e)| e != 0)
            .map(|(i, &e)| (HEADER_SIZE + 4 * i as u64, e))
            .collect();
        let ext_at = h.ext_off.saturating_mul(SECTOR);
        let at = usize::try_from(ext_at).unwrap_or(usize::MAX);
        let feature = at.saturating_add(ext_field::FEATURES);
        let bitmap = (h.ext_off != 0
            && ext_field::MAGIC.get_at(img, at) == EXT_MAGIC
            && feature_field::MAGIC.get_at(img, feature) == FEATURE_DIRTY_BITMAP)
            .then(|| feature.saturating_add(feature_field::DATA));
        let past_eof = (img.len() as u64).next_multiple_of(cs) + 4 * cs;
        Some(Target {
            h,
            cs,
            bat,
            allocated,
            ext_at,
            bitmap,
            past_eof,
        })
    }

    /// A BAT value naming `off` bytes into the file.
    fn entry(&self, off: u64) -> u32 {
        if self.h.ext_magic {
            (off / self.cs) as u32
        } else {
            (off / SECTOR) as u32
        }
    }
}

/// Mutations of the BAT (and the file's length): below the data, past the
/// end, duplicated, unaligned, a leaked cluster.
fn bat(t: &Target, m: Mutation, img: &mut Vec<u8>) -> Option<RuleSet> {
    let Target {
        h,
        cs,
        bat,
        allocated,
        past_eof,
        ..
    } = t;
    let (cs, past_eof) = (*cs, *past_eof);
    Some(match m {
        Mutation::BatBelowData { nth } => {
            let (at, _) = pick(allocated, nth)?;
            // The lowest non-zero value: the first sector, or the first cluster.
            let low = if h.ext_magic { cs } else { SECTOR };
            if low >= h.data_offset() {
                return None;
            }
            put32(img, at, t.entry(low));
            crate::rule_set![parallels::BAT_BELOW_DATA]
        }
        Mutation::BatPastEof { nth } => {
            let (at, _) = pick(allocated, nth)?;
            put32(img, at, t.entry(past_eof));
            crate::rule_set![parallels::BAT_INSIDE_FILE]
        }
        Mutation::BatDuplicate { nth } => {
            let (_, e) = pick(allocated, nth)?;
            let others: Vec<u64> = (0..bat.len() as u64)
                .map(|i| HEADER_SIZE + 4 * i)
                .filter(|&at| le_u32(img, at as usize) != e)
                .collect();
            put32(img, pick(&others, nth / 2)?, e);
            crate::rule_set![parallels::BAT_UNIQUE]
        }
        Mutation::BatUnaligned { nth } => {
            if h.ext_magic || cs == SECTOR {
                return None;
            }
            // One sector back (forward could cross EOF), staying past the data offset.
            let movable: Vec<(u64, u32)> = allocated
                .iter()
                .copied()
                .filter(|&(_, e)| (e as u64 - 1) * SECTOR >= h.data_offset())
                .collect();
            let (at, e) = pick(&movable, nth)?;
            put32(img, at, e - 1);
            crate::rule_set![parallels::BAT_ALIGNED]
        }
        Mutation::Leak => {
            img.resize(img.len() + cs as usize, 0xAA);
            crate::rule_set![parallels::LEAK]
        }
        _ => return None,
    })
}

/// Mutations of the header's fields.
fn header_fields(t: &Target, m: Mutation, img: &mut [u8]) -> Option<RuleSet> {
    let Target {
        h,
        cs,
        allocated,
        past_eof,
        ..
    } = t;
    let (cs, past_eof) = (*cs, *past_eof);
    Some(match m {
        Mutation::InUseOpen => {
            f::IN_USE.put(img, IN_USE_OPEN);
            crate::rule_set![parallels::IN_USE_OPEN]
        }
        Mutation::InUseBad => {
            f::IN_USE.put(img, 0x1234_5678);
            crate::rule_set![parallels::IN_USE_VALUE]
        }
        Mutation::TracksZero => {
            f::TRACKS.put(img, 0);
            crate::rule_set![parallels::TRACKS]
        }
        Mutation::Version => {
            f::VERSION.put(img, 3);
            crate::rule_set![parallels::VERSION]
        }
        Mutation::FlagsUnused { bit } => {
            f::FLAGS.put(img, h.flags | 1 << bit.clamp(1, 31));
            crate::rule_set![parallels::FLAGS_UNUSED]
        }
        Mutation::EmptyWithData => {
            allocated.first()?;
            f::FLAGS.put(img, h.flags | header::FLAG_EMPTY);
            crate::rule_set![parallels::EMPTY_IMAGE]
        }
        Mutation::NbSectorsHigh => {
            if h.ext_magic {
                return None;
            }
            f::NB_SECTORS.put(img, h.nb_sectors | 1 << 40);
            crate::rule_set![parallels::NB_SECTORS_HIGH]
        }
        Mutation::DataOffPastEof => {
            f::DATA_OFF.put(img, (past_eof / SECTOR) as u32);
            crate::rule_set![parallels::DATA_OFF]
        }
        Mutation::BatShort => {
            // One sector more than the BAT's clusters cover.
            f::NB_SECTORS.put(img, h.nb_bat_entries as u64 * (cs / SECTOR) + 1);
            crate::rule_set![parallels::BAT_COVERS_DISK]
        }
        _ => return None,
    })
}

/// Mutations of the Format Extension cluster and its dirty bitmap (the
/// checksum repaired where the edit is not of the checksum itself).
fn extension(t: &Target, m: Mutation, img: &mut [u8]) -> Option<RuleSet> {
    let (bitmap, ext_at, cs, past_eof) = (t.bitmap, t.ext_at, t.cs, t.past_eof);
    Some(match m {
        Mutation::ExtMagic => {
            bitmap?;
            ext_field::MAGIC.put_at(img, ext_at as usize, EXT_MAGIC ^ 1);
            crate::rule_set![parallels::EXT_MAGIC]
        }
        Mutation::ExtChecksum => {
            bitmap?;
            let last = (ext_at + cs - 1) as usize;
            *img.get_mut(last)? ^= 0x5A;
            crate::rule_set![parallels::EXT_CHECKSUM]
        }
        Mutation::BitmapGranularity => {
            let data = bitmap?;
            bitmap_field::GRANULARITY.put_at(img, data, 3);
            fix_checksum(img, ext_at, cs);
            crate::rule_set![parallels::BITMAP_GRANULARITY]
        }
        Mutation::BitmapL1PastEof => {
            let data = bitmap?;
            crate::field::put_le64(img, data + bitmap_field::L1, past_eof / SECTOR);
            fix_checksum(img, ext_at, cs);
            crate::rule_set![parallels::BITMAP_L1_ENTRY]
        }
        Mutation::BitmapSize => {
            let data = bitmap?;
            let size = bitmap_field::SIZE.get_at(img, data);
            bitmap_field::SIZE.put_at(img, data, size + 1);
            fix_checksum(img, ext_at, cs);
            crate::rule_set![parallels::BITMAP_SIZE]
        }
        _ => return None,
    })
}
