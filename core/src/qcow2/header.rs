//! The qcow2 header (spec sections "Header", "Additional fields",
//! "Header padding").

use super::*;
use crate::report::Report;
use crate::rules::qcow2 as rule;
use crate::source::ReadAt;
use field as f;
use serde::Serialize;

/// incompatible_features bit 0: dirty (refcounts may be inconsistent).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// incompatible_features bit 1: corrupt (must not be written).
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// incompatible_features bit 2: external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// incompatible_features bit 3: compression type field present.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// incompatible_features bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible_features bit the spec defines.
pub const INCOMPAT_KNOWN: u64 = 0x1f;
/// compatible_features bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// autoclear_features bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// autoclear_features bit 1: the external data file is raw (data_file_raw).
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// The header's field table (spec "Header", "Additional fields"): big
/// endian, offsets from byte 0 of the file. The parser, the writer and the
/// mutators all go through it.
pub mod field {
    crate::field::field_table! { Big;
        /// version (bytes 4-7).
        VERSION: u32 = "version" @ 4,
        /// backing_file_offset (bytes 8-15).
        BACKING_FILE_OFFSET: u64 = "backing_file_offset" @ 8,
        /// backing_file_size (bytes 16-19).
        BACKING_FILE_SIZE: u32 = "backing_file_size" @ 16,
        /// cluster_bits (bytes 20-23).
        CLUSTER_BITS: u32 = "cluster_bits" @ 20,
        /// size (bytes 24-31).
        SIZE: u64 = "size" @ 24,
        /// crypt_method (bytes 32-35).
        CRYPT_METHOD: u32 = "crypt_method" @ 32,
        /// l1_size (bytes 36-39).
        L1_SIZE: u32 = "l1_size" @ 36,
        /// l1_table_offset (bytes 40-47).
        L1_TABLE_OFFSET: u64 = "l1_table_offset" @ 40,
        /// refcount_table_offset (bytes 48-55).
        REFCOUNT_TABLE_OFFSET: u64 = "refcount_table_offset" @ 48,
        /// refcount_table_clusters (bytes 56-59).
        REFCOUNT_TABLE_CLUSTERS: u32 = "refcount_table_clusters" @ 56,
        /// nb_snapshots (bytes 60-63).
        NB_SNAPSHOTS: u32 = "nb_snapshots" @ 60,
        /// snapshots_offset (bytes 64-71).
        SNAPSHOTS_OFFSET: u64 = "snapshots_offset" @ 64,
        /// incompatible_features (bytes 72-79, version 3).
        INCOMPATIBLE_FEATURES: u64 = "incompatible_features" @ 72,
        /// compatible_features (bytes 80-87, version 3).
        COMPATIBLE_FEATURES: u64 = "compatible_features" @ 80,
        /// autoclear_features (bytes 88-95, version 3).
        AUTOCLEAR_FEATURES: u64 = "autoclear_features" @ 88,
        /// refcount_order (bytes 96-99, version 3).
        REFCOUNT_ORDER: u32 = "refcount_order" @ 96,
        /// header_length (bytes 100-103, version 3).
        HEADER_LENGTH: u32 = "header_length" @ 100,
        /// compression_type (byte 104, when header_length > 104).
        COMPRESSION_TYPE: u8 = "compression_type" @ 104,
    }
}

/// Header length of version 2, in bytes.
pub const V2_HEADER_LENGTH: u32 = 72;
/// Smallest header_length of version 3, in bytes.
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
/// Length of the header fields this implementation knows (through
/// compression_type and its padding).
pub const KNOWN_HEADER_LENGTH: u32 = 112;

/// Names of the feature bits the spec defines, by (feature type, bit).
pub fn feature_name(kind: u8, bit: u8) -> Option<&'static str> {
    Some(match (kind, bit) {
        (0, 0) => "dirty bit",
        (0, 1) => "corrupt bit",
        (0, 2) => "external data file",
        (0, 3) => "compression type",
        (0, 4) => "extended L2 entries",
        (1, 0) => "lazy refcounts",
        (2, 0) => "bitmaps",
        (2, 1) => "raw external data",
        _ => return None,
    })
}

/// The decoded header fields. For version 2 the feature fields read as 0,
/// refcount_order as 4 and header_length as 72, as the spec says.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// version (spec "Header", bytes 4-7); validated: 2 or 3.
    pub version: u32,
    /// backing_file_offset (bytes 8-15), in bytes; 0: no backing file; validated to lie in cluster 0.
    pub backing_file_offset: u64,
    /// backing_file_size (bytes 16-19): name length in bytes; validated (at most 1023).
    pub backing_file_size: u32,
    /// cluster_bits (bytes 20-23): clusters of 2^cluster_bits bytes; validated in [9, 21] (at least 14 with extended L2).
    pub cluster_bits: u32,
    /// size (bytes 24-31): virtual disk size in bytes.
    pub size: u64,
    /// crypt_method (bytes 32-35): 0 none, 1 AES, 2 LUKS; validated.
    pub crypt_method: u32,
    /// l1_size (bytes 36-39): entries of the active L1 table; validated against [`super::MAX_L1_BYTES`] and the disk size.
    pub l1_size: u32,
    /// l1_table_offset (bytes 40-47): offset of the active L1 table, in bytes; validated: cluster aligned.
    pub l1_table_offset: u64,
    /// refcount_table_offset (bytes 48-55), in bytes; validated: cluster aligned.
    pub refcount_table_offset: u64,
    /// refcount_table_clusters (bytes 56-59): size of the refcount table in clusters; validated against [`super::MAX_REFTABLE_BYTES`].
    pub refcount_table_clusters: u32,
    /// nb_snapshots (bytes 60-63): entries of the snapshot table.
    pub nb_snapshots: u32,
    /// snapshots_offset (bytes 64-71): offset of the snapshot table, in bytes.
    pub snapshots_offset: u64,
    /// incompatible_features (bytes 72-79, v3); validated: an unknown bit refuses the image.
    pub incompatible_features: u64,
    /// compatible_features (bytes 80-87, v3); unknown bits are a finding.
    pub compatible_features: u64,
    /// autoclear_features (bytes 88-95, v3); unknown bits are a finding.
    pub autoclear_features: u64,
    /// refcount_order (bytes 96-99, v3): refcounts of 2^refcount_order bits; validated at most 6.
    pub refcount_order: u32,
    /// header_length (bytes 100-103, v3): header size in bytes; validated: at least 104, a multiple of 8, inside cluster 0.
    pub header_length: u32,
    /// compression_type (byte 104, with incompatible bit 3): 0 deflate, 1 zstd; validated.
    pub compression_type: u8,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Whether incompatible bit 2 (external data file) is set.
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }
    /// Whether incompatible bit 4 (extended L2 entries) is set.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    /// Bytes per L2 entry: 8, or 16 with Extended L2 Entries.
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }
    /// Refcount width in bits (2^refcount_order).
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
    /// Entries of the L1 table needed to map the whole virtual disk.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l1 = self.l2_entries() << self.cluster_bits; // bytes one L2 maps
        self.size.div_ceil(per_l1)
    }
    /// Offset of the first header extension.
    pub fn extensions_start(&self) -> u64 {
        self.header_length as u64
    }
    /// Where the header extension area must end: the backing file name, or
    /// the end of cluster 0.
    pub fn extensions_end(&self) -> u64 {
        if self.backing_file_offset != 0 {
            self.backing_file_offset
        } else {
            self.cluster_size()
        }
    }
}

/// The outcome of reading the header: the header and cluster 0, or nothing
/// when the check cannot go on (the reason is in the report).
pub struct Parsed {
    /// The decoded header.
    pub header: Header,
    /// The whole first cluster (zero-padded past the end of the file).
    pub cluster0: Vec<u8>,
}

impl Parsed {
    /// The backing file name (not NUL terminated in the file), if the
    /// header names one; [`parse`] proved it lies inside cluster 0.
    pub fn backing_name(&self) -> Option<String> {
        let h = &self.header;
        (h.backing_file_offset != 0).then(|| {
            let start = h.backing_file_offset as usize;
            let size = h.backing_file_size as usize;
            let name = self.cluster0.get(start..).unwrap_or(&[]);
            let name = name.get(..size).unwrap_or(name);
            // Past the end of the file the name reads as zeros (at most
            // 1023 bytes: parse refused longer names).
            let mut name = String::from_utf8_lossy(name).into_owned();
            name.extend(std::iter::repeat_n('\0', size.saturating_sub(name.len())));
            name
        })
    }
}

/// Reads and validates the header. Everything that stops QEMU from opening
/// the image stops the check with an error finding (exit code 1, as
/// qemu-img); other rule violations are recorded and parsing goes on.
pub fn parse(src: &dyn ReadAt, report: &mut Report) -> Option<Parsed> {
    let h = fixed_fields(src, report)?;
    lengths(src, &h, report)?;
    // Only the part of cluster 0 the file holds is read (to a multiple of
    // 8, so an extension header is wholly in or wholly past it): the rest
    // reads as zeros, and a 2 MiB cluster claimed by a 4 KiB file would
    // otherwise cost a 2 MiB zeroed buffer on every open.
    let cs = h.cluster_size();
    let held = src.size().min(cs).next_multiple_of(8).min(cs);
    let mut cluster0 = vec![0u8; held as usize];
    if let Err(e) = src.read_zero_padded(&mut cluster0, 0) {
        report.add(&crate::rules::general::IO_ERROR, Some(0), e.to_string());
        return None;
    }
    padding_and_backing_name(&h, &cluster0, report)?;
    features(&h, report)?;
    field_values(&h, report)?;
    tables(&h, report)?;
    // refcount_table_clusters == 0 is accepted, as QEMU does in check mode:
    // every cluster then has refcount 0 and each reference is a corruption.
    Some(Parsed {
        header: h,
        cluster0,
    })
}

/// The header fields of `b` (the first [`KNOWN_HEADER_LENGTH`] bytes of
/// the file) as they are, before any validation. For version 2 the
/// version 3 fields take their defaults; compression_type is read only when
/// header_length says the field is there.
pub fn decode(b: &[u8]) -> Header {
    let version = f::VERSION.get(b);
    let v3 = version >= 3;
    let v3_or = |v: u64, default: u64| if v3 { v } else { default };
    let header_length = v3_or(f::HEADER_LENGTH.get(b) as u64, V2_HEADER_LENGTH as u64) as u32;
    Header {
        version,
        backing_file_offset: f::BACKING_FILE_OFFSET.get(b),
        backing_file_size: f::BACKING_FILE_SIZE.get(b),
        cluster_bits: f::CLUSTER_BITS.get(b),
        size: f::SIZE.get(b),
        crypt_method: f::CRYPT_METHOD.get(b),
        l1_size: f::L1_SIZE.get(b),
        l1_table_offset: f::L1_TABLE_OFFSET.get(b),
        refcount_table_offset: f::REFCOUNT_TABLE_OFFSET.get(b),
        refcount_table_clusters: f::REFCOUNT_TABLE_CLUSTERS.get(b),
        nb_snapshots: f::NB_SNAPSHOTS.get(b),
        snapshots_offset: f::SNAPSHOTS_OFFSET.get(b),
        incompatible_features: v3_or(f::INCOMPATIBLE_FEATURES.get(b), 0),
        compatible_features: v3_or(f::COMPATIBLE_FEATURES.get(b), 0),
        autoclear_features: v3_or(f::AUTOCLEAR_FEATURES.get(b), 0),
        refcount_order: v3_or(f::REFCOUNT_ORDER.get(b) as u64, 4) as u32,
        header_length,
        compression_type: if v3 && header_length as usize > f::COMPRESSION_TYPE.offset {
            f::COMPRESSION_TYPE.get(b)
        } else {
            0
        },
    }
}

/// The magic, the version and the fixed fields (spec "Header").
fn fixed_fields(src: &dyn ReadAt, report: &mut Report) -> Option<Header> {
    let mut fixed = [0u8; KNOWN_HEADER_LENGTH as usize];
    if src.size() < 4 || src.read_zero_padded(&mut fixed, 0).is_err() || fixed[..4] != MAGIC {
        report.add(
            &rule::MAGIC,
            Some(0),
            "not a qcow2 image: the magic \"QFI\\xfb\" is missing",
        );
        return None;
    }
    let version = f::VERSION.get(&fixed);
    if !(2..=3).contains(&version) {
        report.add(
            &rule::VERSION,
            Some(f::VERSION.pos()),
            format_args!("unsupported qcow2 version {version}"),
        );
        return None;
    }
    Some(decode(&fixed))
}

/// The file holds the whole header; cluster_bits, header_length and the
/// version 3 fields (spec "Header", "Additional fields").
fn lengths(src: &dyn ReadAt, h: &Header, report: &mut Report) -> Option<()> {
    let v3 = h.version >= 3;
    let min_len = if v3 {
        V3_MIN_HEADER_LENGTH
    } else {
        V2_HEADER_LENGTH
    } as u64;
    if src.size() < min_len {
        report.add(
            &rule::TRUNCATED,
            Some(0),
            format_args!(
                "the file is {} bytes long, shorter than a version {} header",
                src.size(),
                h.version
            ),
        );
        return None;
    }
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
        report.add(
            &rule::CLUSTER_BITS,
            Some(f::CLUSTER_BITS.pos()),
            format_args!("cluster_bits {} is outside 9..=21", h.cluster_bits),
        );
        return None;
    }
    let cs = h.cluster_size();
    if v3 {
        if h.header_length < V3_MIN_HEADER_LENGTH {
            report.add(
                &rule::HEADER_LENGTH,
                Some(f::HEADER_LENGTH.pos()),
                format_args!(
                    "header_length {} is below {V3_MIN_HEADER_LENGTH}",
                    h.header_length
                ),
            );
            return None;
        }
        if h.header_length as u64 > cs {
            report.add(
                &rule::HEADER_LENGTH,
                Some(f::HEADER_LENGTH.pos()),
                format_args!(
                    "header_length {} exceeds the cluster size {cs}",
                    h.header_length
                ),
            );
            return None;
        }
        if !h.header_length.is_multiple_of(8) {
            report.add(
                &rule::HEADER_LENGTH_ALIGNED,
                Some(f::HEADER_LENGTH.pos()),
                format_args!("header_length {} is not a multiple of 8", h.header_length),
            );
        }
    }
    Some(())
}

/// Header padding is zero and the backing file name lies in cluster 0
/// (spec "Header padding", "Header").
fn padding_and_backing_name(h: &Header, cluster0: &[u8], report: &mut Report) -> Option<()> {
    let v3 = h.version >= 3;
    let cs = h.cluster_size();
    if v3 {
        // Padding from the end of compression_type up to header_length must be zero.
        let pad_end = (h.header_length as usize).min(KNOWN_HEADER_LENGTH as usize);
        let pad_start = f::COMPRESSION_TYPE.end();
        if let Some(pad) = cluster0.get(pad_start..pad_end) {
            if let Some(pos) = pad.iter().position(|&b| b != 0) {
                report.add(
                    &rule::HEADER_PADDING,
                    Some((pad_start + pos) as u64),
                    "header padding after compression_type is not zero",
                );
            }
        }
    }
    if h.backing_file_offset > cs {
        report.add(
            &rule::BACKING_FILE_OFFSET,
            Some(f::BACKING_FILE_OFFSET.pos()),
            format_args!(
                "backing_file_offset {:#x} is past the first cluster",
                h.backing_file_offset
            ),
        );
        return None;
    }
    if h.backing_file_offset != 0 {
        let room = cs - h.backing_file_offset;
        if h.backing_file_size > 1023 || h.backing_file_size as u64 > room {
            report.add(
                &rule::BACKING_FILE_SIZE,
                Some(f::BACKING_FILE_SIZE.pos()),
                format_args!(
                    "backing file name of {} bytes does not fit (at most {} bytes)",
                    h.backing_file_size,
                    room.min(1023)
                ),
            );
            return None;
        }
        if h.backing_file_offset < h.header_length as u64 {
            report.add(
                &rule::BACKING_FILE_OFFSET,
                Some(f::BACKING_FILE_OFFSET.pos()),
                format_args!(
                    "backing file name at {:#x} overlaps the header",
                    h.backing_file_offset
                ),
            );
        }
    }
    Some(())
}

/// Feature bits: unknown incompatible bits stop the check; dirty, corrupt,
/// unknown compatible and autoclear bits are reported (spec "Header").
fn features(h: &Header, report: &mut Report) -> Option<()> {
    let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
    if unknown != 0 {
        report.add(
            &rule::INCOMPATIBLE_UNKNOWN,
            Some(f::INCOMPATIBLE_FEATURES.pos()),
            format_args!(
                "unknown incompatible feature bits {unknown:#x}; the image cannot be checked"
            ),
        );
        return None;
    }
    if h.incompatible_features & INCOMPAT_DIRTY != 0 {
        report.add(
            &rule::DIRTY,
            Some(f::INCOMPATIBLE_FEATURES.pos()),
            "the dirty bit is set (lazy refcounts were in use); refcounts may be stale",
        );
    }
    if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
        report.add(
            &rule::CORRUPT,
            Some(f::INCOMPATIBLE_FEATURES.pos()),
            "the corrupt bit is set",
        );
    }
    if h.compatible_features & !COMPAT_LAZY_REFCOUNTS != 0 {
        report.add(
            &rule::COMPATIBLE_RESERVED,
            Some(f::COMPATIBLE_FEATURES.pos()),
            format_args!(
                "reserved compatible feature bits {:#x}",
                h.compatible_features & !COMPAT_LAZY_REFCOUNTS
            ),
        );
    }
    let known_autoclear = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;
    if h.autoclear_features & !known_autoclear != 0 {
        report.add(
            &rule::AUTOCLEAR_RESERVED,
            Some(f::AUTOCLEAR_FEATURES.pos()),
            format_args!(
                "reserved autoclear feature bits {:#x}",
                h.autoclear_features & !known_autoclear
            ),
        );
    }
    Some(())
}

/// Field values QEMU refuses: refcount order, compression type (and its
/// bit), extended L2 with small clusters, the encryption method, raw data
/// files without a data file.
fn field_values(h: &Header, report: &mut Report) -> Option<()> {
    let cs = h.cluster_size();
    if h.refcount_order > 6 {
        report.add(
            &rule::REFCOUNT_ORDER,
            Some(f::REFCOUNT_ORDER.pos()),
            format_args!("refcount_order {} exceeds 6", h.refcount_order),
        );
        return None;
    }
    let compression_bit = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
    if h.compression_type > 1 {
        report.add(
            &rule::COMPRESSION_TYPE,
            Some(f::COMPRESSION_TYPE.pos()),
            format_args!("unknown compression_type {}", h.compression_type),
        );
        return None;
    }
    if compression_bit != (h.compression_type != 0) {
        report.add(
            &rule::COMPRESSION_TYPE,
            Some(f::INCOMPATIBLE_FEATURES.pos()),
            format_args!(
                "compression type bit is {} but compression_type is {}",
                if compression_bit { "set" } else { "clear" },
                h.compression_type
            ),
        );
        return None;
    }
    if h.extended_l2() && h.cluster_bits < 14 {
        report.add(
            &rule::CLUSTER_BITS_EXTENDED_L2,
            Some(f::CLUSTER_BITS.pos()),
            format_args!(
                "extended L2 entries with {cs}-byte clusters make subclusters below 512 bytes"
            ),
        );
        return None;
    }
    if h.crypt_method > 2 {
        report.add(
            &rule::CRYPT_METHOD,
            Some(f::CRYPT_METHOD.pos()),
            format_args!("unknown crypt_method {}", h.crypt_method),
        );
        return None;
    }
    if h.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0 {
        if !h.has_data_file() {
            report.add(
                &rule::DATA_FILE_RAW,
                Some(f::AUTOCLEAR_FEATURES.pos()),
                "raw external data bit without the external data file bit",
            );
        } else if h.backing_file_offset != 0 {
            report.add(
                &rule::DATA_FILE_RAW_BACKING,
                Some(f::BACKING_FILE_OFFSET.pos()),
                "raw external data file together with a backing file",
            );
        }
    }
    Some(())
}

/// The active L1 table and the refcount table fit QEMU's limits and are
/// aligned (spec "Header", "Host cluster management").
fn tables(h: &Header, report: &mut Report) -> Option<()> {
    let cs = h.cluster_size();
    // Active L1 table.
    let l1_bytes = h.l1_size as u64 * 8;
    if l1_bytes > MAX_L1_BYTES {
        report.add(
            &rule::L1_SIZE_LIMIT,
            Some(f::L1_SIZE.pos()),
            format_args!("active L1 table of {} entries exceeds 32 MiB", h.l1_size),
        );
        return None;
    }
    if (h.l1_size as u64) < h.l1_entries_needed() {
        report.add(
            &rule::L1_COVERS_DISK,
            Some(f::L1_SIZE.pos()),
            format_args!(
                "l1_size {} is too small for a {}-byte virtual disk (needs {})",
                h.l1_size,
                h.size,
                h.l1_entries_needed()
            ),
        );
        return None;
    }
    if !h.l1_table_offset.is_multiple_of(cs)
        || h.l1_table_offset
            .checked_add(l1_bytes)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        report.add(
            &rule::L1_ALIGNED,
            Some(f::L1_TABLE_OFFSET.pos()),
            format_args!("active L1 table offset {:#x} is invalid", h.l1_table_offset),
        );
        return None;
    }
    // Refcount table. QEMU accepts refcount_table_clusters == 0 in check mode.
    let reftable_bytes = h.refcount_table_clusters as u64 * cs;
    if reftable_bytes > MAX_REFTABLE_BYTES {
        report.add(
            &rule::REFTABLE_SIZE,
            Some(f::REFCOUNT_TABLE_CLUSTERS.pos()),
            format_args!(
                "refcount table of {} clusters exceeds 8 MiB",
                h.refcount_table_clusters
            ),
        );
        return None;
    }
    if !h.refcount_table_offset.is_multiple_of(cs)
        || h.refcount_table_offset
            .checked_add(reftable_bytes)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        report.add(
            &rule::REFTABLE_ALIGNED,
            Some(f::REFCOUNT_TABLE_OFFSET.pos()),
            format_args!(
                "refcount table offset {:#x} is invalid",
                h.refcount_table_offset
            ),
        );
        return None;
    }
    Some(())
}
