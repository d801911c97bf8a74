//! The rule registry: every normative statement of a spec that qconform
//! checks, with a stable dotted id, the spec file and section it comes from,
//! and the severity a violation has by default.
//!
//! Ids are part of the public contract (golden files and users' CI gates name
//! them): never rename one; retire it instead.

use serde::{Deserialize, Serialize};

/// How bad a finding is. The first two are qemu-img's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The check could not be completed (not this format, an unsupported
    /// feature, an unreadable or over-limit structure). qemu-img exit code 1.
    Error,
    /// Data or metadata is wrong; reads may return wrong data. Exit code 2.
    Corruption,
    /// Clusters are allocated but unused. Exit code 3.
    Leak,
    /// The spec is broken in a way qemu-img does not count. Counts as a
    /// corruption with `--strict`.
    Violation,
    /// Worth knowing; never affects the exit code.
    Note,
}

/// One checkable statement of a spec.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Rule {
    /// Stable dotted id, `<format>.<structure>.<property>`.
    pub id: &'static str,
    /// Spec file under specs/upstream/ (or `qconform` for our own limits).
    pub spec: &'static str,
    /// Section heading of that file.
    pub section: &'static str,
    /// Severity of a violation (see [`Severity`]).
    pub severity: Severity,
    /// One line: what must hold.
    pub summary: &'static str,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id)
    }
}

macro_rules! rules {
    ($( $name:ident = $id:literal, $spec:literal, $section:literal, $sev:ident, $summary:literal; )*) => {
        $(
            #[doc = concat!("`", $id, "` (", $spec, ", \"", $section, "\"): ", $summary)]
            pub static $name: Rule = Rule {
            id: $id, spec: $spec, section: $section, severity: Severity::$sev, summary: $summary,
            };
        )*
        /// Every rule of this module, in registry order.
        pub static ALL: &[&Rule] = &[ $( &$name ),* ];
    };
}

/// A `&'static [&'static Rule]` of the rules named, for what a mutator or
/// a corpus case must trip: `rule_set![qcow2::L2_COPIED, qcow2::LEAK]`.
#[macro_export]
macro_rules! rule_set {
    ($($r:path),* $(,)?) => {{
        const SET: &[&$crate::rules::Rule] = &[$(&$r),*];
        SET
    }};
}

/// Rules about the checker itself: limits it refuses to exceed, input it cannot read.
pub mod general {
    use super::*;
    rules! {
        IO_ERROR = "input.readable", "qconform", "Input", Error,
            "The image can be opened and read.";
        UNKNOWN_FORMAT = "input.format-known", "qconform", "Input", Error,
            "The image is in a format qconform checks (qcow2, QED, Parallels).";
        TABLE_LIMIT = "limits.table-bytes", "qconform", "Limits", Error,
            "No single metadata table exceeds Limits::max_table_bytes.";
        WORK_LIMIT = "limits.entries-visited", "qconform", "Limits", Error,
            "A check visits at most Limits::max_entries_visited table entries.";
        HEADER_EXT_LIMIT = "limits.header-extensions", "qconform", "Limits", Error,
            "A qcow2 header holds at most Limits::max_header_extensions extensions (by default all cluster 0 can hold).";
    }
}

/// Rules of docs/interop/qcow2.rst.
pub mod qcow2 {
    use super::*;
    rules! {
        MAGIC = "qcow2.header.magic", "qcow2.rst", "Header", Error,
            "Bytes 0-3 are the magic \"QFI\\xfb\".";
        TRUNCATED = "qcow2.header.truncated", "qcow2.rst", "Header", Error,
            "The file holds the whole header (72 bytes for v2, header_length for v3).";
        VERSION = "qcow2.header.version", "qcow2.rst", "Header", Error,
            "version is 2 or 3.";
        CLUSTER_BITS = "qcow2.header.cluster-bits", "qcow2.rst", "Header", Error,
            "cluster_bits is at least 9 (and at most 21, QEMU's implementation limit).";
        CLUSTER_BITS_EXTENDED_L2 = "qcow2.header.cluster-bits-extended-l2", "qcow2.rst", "Header", Error,
            "With Extended L2 Entries, cluster_bits is at least 14.";
        HEADER_LENGTH = "qcow2.header.header-length", "qcow2.rst", "Header", Error,
            "For version 3, header_length is at least 104 and fits in the first cluster.";
        HEADER_LENGTH_ALIGNED = "qcow2.header.header-length-multiple-of-8", "qcow2.rst", "Header", Violation,
            "header_length is a multiple of 8.";
        HEADER_PADDING = "qcow2.header.padding-zero", "qcow2.rst", "Header padding", Violation,
            "Padding after the last additional field, up to header_length, is zero.";
        BACKING_FILE_OFFSET = "qcow2.header.backing-file-offset", "qcow2.rst", "Header", Error,
            "The backing file name lies inside the first cluster, after the header.";
        BACKING_FILE_SIZE = "qcow2.header.backing-file-size", "qcow2.rst", "Header", Error,
            "backing_file_size is at most 1023 bytes.";
        CRYPT_METHOD = "qcow2.header.crypt-method", "qcow2.rst", "Header", Error,
            "crypt_method is 0 (none), 1 (AES) or 2 (LUKS).";
        INCOMPATIBLE_UNKNOWN = "qcow2.header.incompatible-unknown", "qcow2.rst", "Header", Error,
            "No unknown incompatible feature bit (5-63) is set; an implementation must refuse such an image.";
        COMPATIBLE_RESERVED = "qcow2.header.compatible-reserved", "qcow2.rst", "Header", Note,
            "Compatible feature bits 1-63 are reserved (set to 0); they can be ignored.";
        AUTOCLEAR_RESERVED = "qcow2.header.autoclear-reserved", "qcow2.rst", "Header", Violation,
            "Autoclear feature bits 2-63 are reserved (set to 0).";
        DIRTY = "qcow2.header.dirty", "qcow2.rst", "Header", Note,
            "Dirty bit set: refcounts may be inconsistent until the image is repaired.";
        CORRUPT = "qcow2.header.corrupt", "qcow2.rst", "Header", Note,
            "Corrupt bit set: the image must not be written to until it is repaired.";
        REFCOUNT_ORDER = "qcow2.header.refcount-order", "qcow2.rst", "Header", Error,
            "refcount_order does not exceed 6.";
        COMPRESSION_TYPE = "qcow2.header.compression-type", "qcow2.rst", "Additional fields (version 3 and higher)", Error,
            "compression_type is 0 (deflate) or 1 (zstd), non-zero exactly when incompatible bit 3 is set.";
        DATA_FILE_RAW = "qcow2.header.data-file-raw-requires-data-file", "qcow2.rst", "Header", Error,
            "Autoclear bit 1 (raw external data) is set only together with the external data file bit.";
        DATA_FILE_RAW_BACKING = "qcow2.header.data-file-raw-no-backing", "qcow2.rst", "Header", Violation,
            "Backing files are incompatible with raw external data files.";
        L1_ALIGNED = "qcow2.header.l1-table-aligned", "qcow2.rst", "Header", Error,
            "l1_table_offset is aligned to a cluster boundary.";
        L1_SIZE_LIMIT = "qcow2.header.l1-size-limit", "qcow2.rst", "Header", Error,
            "The active L1 table is at most 32 MiB (QEMU's implementation limit, named in the spec).";
        L1_COVERS_DISK = "qcow2.header.l1-covers-virtual-size", "qcow2.rst", "Cluster mapping", Error,
            "l1_size has enough entries to map the whole virtual disk.";
        REFTABLE_ALIGNED = "qcow2.header.refcount-table-aligned", "qcow2.rst", "Header", Error,
            "refcount_table_offset is aligned to a cluster boundary.";
        REFTABLE_SIZE = "qcow2.header.refcount-table-size", "qcow2.rst", "Host cluster management", Error,
            "The refcount table is non-empty and at most 8 MiB (QEMU's implementation limit, named in the spec).";
        SNAPSHOTS_ALIGNED = "qcow2.header.snapshots-aligned", "qcow2.rst", "Header", Error,
            "snapshots_offset is aligned to a cluster boundary.";
        SNAPSHOTS_LIMIT = "qcow2.header.nb-snapshots-limit", "qcow2.rst", "Snapshots", Error,
            "nb_snapshots is at most 65536 (QEMU's implementation limit).";

        EXT_BOUNDS = "qcow2.ext.within-header-area", "qcow2.rst", "Header extensions", Error,
            "Every header extension lies inside the first cluster, before the backing file name.";
        EXT_UNIQUE = "qcow2.ext.at-most-once", "qcow2.rst", "Header extensions", Violation,
            "Each header extension type appears at most once.";
        EXT_UNKNOWN = "qcow2.ext.unknown", "qcow2.rst", "Header extensions", Note,
            "An unknown header extension was found; it is kept and can be ignored.";
        EXT_NO_END = "qcow2.ext.end-marker", "qcow2.rst", "Header extensions", Note,
            "The header extension area ends with an end-of-area (type 0) extension.";
        EXT_BACKING_FORMAT = "qcow2.ext.backing-format", "qcow2.rst", "String header extensions", Violation,
            "The backing file format name is only present with a backing file.";
        EXT_FEATURE_TABLE = "qcow2.ext.feature-name-table", "qcow2.rst", "Feature name table", Violation,
            "Feature name table entries are 48 bytes with type 0-2 and bit 0-63.";
        EXT_BITMAPS_LAYOUT = "qcow2.ext.bitmaps-layout", "qcow2.rst", "Bitmaps extension", Error,
            "The bitmaps extension is 24 bytes, nb_bitmaps is 1-65535, the reserved field is zero and the directory is cluster aligned.";
        EXT_BITMAPS_AUTOCLEAR = "qcow2.ext.bitmaps-autoclear", "qcow2.rst", "Header", Violation,
            "Autoclear bit 0 is set only when the bitmaps extension is present.";
        EXT_BITMAPS_INCONSISTENT = "qcow2.ext.bitmaps-inconsistent", "qcow2.rst", "Bitmaps extension", Note,
            "The bitmaps extension is present but autoclear bit 0 is clear: its data must be considered inconsistent.";
        EXT_FDE_PRESENCE = "qcow2.ext.fde-presence", "qcow2.rst", "Full disk encryption header pointer", Error,
            "The full disk encryption header pointer is present if, and only if, crypt_method is LUKS.";
        EXT_FDE_LAYOUT = "qcow2.ext.fde-layout", "qcow2.rst", "Full disk encryption header pointer", Error,
            "The encryption header pointer is 16 bytes and its offset is cluster aligned.";
        EXT_DATA_FILE_NAME = "qcow2.ext.data-file-name", "qcow2.rst", "Header", Violation,
            "The external data file name extension is present only with the external data file bit.";
        DATA_FILE_UNNAMED = "qcow2.header.data-file-unnamed", "qcow2.rst", "Header", Note,
            "With the external data file bit set and no External Data File Name extension (which the spec allows), the data file must be named by the user: nothing in the image says where guest data lies (QEMU refuses to open it without a data-file option).";

        REFTABLE_RESERVED = "qcow2.refcount.table-entry-reserved", "qcow2.rst", "Host cluster management", Corruption,
            "Bits 0-8 of a refcount table entry are zero.";
        REFBLOCK_ALIGNED = "qcow2.refcount.block-aligned", "qcow2.rst", "Host cluster management", Corruption,
            "Refcount blocks are aligned to a cluster boundary.";
        REFBLOCK_IN_FILE = "qcow2.refcount.block-inside-file", "qcow2.rst", "Host cluster management", Corruption,
            "Refcount blocks lie inside the image file.";
        REFBLOCK_UNREADABLE = "qcow2.refcount.block-readable", "qcow2.rst", "Host cluster management", Error,
            "The refcount of every cluster of the file can be looked up (its refcount block offset is valid).";
        REFCOUNT_TOO_LOW = "qcow2.refcount.covers-references", "qcow2.rst", "Host cluster management", Corruption,
            "A cluster's refcount is at least the number of references to it.";
        REFCOUNT_LEAK = "qcow2.refcount.no-leak", "qcow2.rst", "Host cluster management", Leak,
            "A cluster's refcount is not above the number of references to it.";
        REFCOUNT_OVERFLOW = "qcow2.refcount.overflow", "qcow2.rst", "Host cluster management", Corruption,
            "The number of references to a cluster fits in refcount_bits.";
        REFERENCE_PAST_EOF = "qcow2.refcount.reference-inside-file", "qcow2.rst", "Host cluster management", Corruption,
            "Every referenced range lies inside the file (the last cluster may be partly allocated).";
        METADATA_OVERLAP = "qcow2.metadata.no-overlap", "qcow2.rst", "Host cluster management", Corruption,
            "No host cluster is owned by two different kinds of structure (header, L1, L2, refcounts, snapshot table, bitmaps, data).";

        L1_RESERVED = "qcow2.l1.entry-reserved", "qcow2.rst", "Cluster mapping", Corruption,
            "Bits 0-8 and 56-62 of an L1 entry are zero.";
        L1_L2_ALIGNED = "qcow2.l1.l2-aligned", "qcow2.rst", "Cluster mapping", Corruption,
            "L2 tables are aligned to a cluster boundary.";
        L1_COPIED = "qcow2.l1.copied", "qcow2.rst", "Cluster mapping", Corruption,
            "In the active L1 table, bit 63 is set exactly when the L2 table's refcount is 1.";
        L2_RESERVED = "qcow2.l2.entry-reserved", "qcow2.rst", "Cluster mapping", Corruption,
            "Bits 1-8 and 56-61 of a standard cluster descriptor are zero.";
        L2_ALIGNED = "qcow2.l2.entry-aligned", "qcow2.rst", "Cluster mapping", Corruption,
            "The host cluster offset of a standard cluster is aligned to a cluster boundary.";
        L2_COPIED = "qcow2.l2.copied", "qcow2.rst", "Cluster mapping", Corruption,
            "In L2 tables reachable from the active L1, bit 63 is set exactly when the data cluster's refcount is 1.";
        L2_COMPRESSED_COPIED = "qcow2.l2.compressed-not-copied", "qcow2.rst", "Cluster mapping", Corruption,
            "Bit 63 is never set for compressed clusters.";
        L2_COMPRESSED_OFFSET = "qcow2.l2.compressed-offset-bits", "qcow2.rst", "Cluster mapping", Violation,
            "Compressed cluster offset bits beyond bit 55 are zero.";
        L2_ZERO_V2 = "qcow2.l2.zero-flag-v3-only", "qcow2.rst", "Cluster mapping", Violation,
            "Bit 0 (reads as zero) is 0 in version 2 images.";
        L2_OFFSET_ZERO_COPIED = "qcow2.l2.offset-zero-copied", "qcow2.rst", "Cluster mapping", Violation,
            "A host offset of 0 with bit 63 set is used only with an external data file.";
        L2_BEYOND_DISK = "qcow2.l2.beyond-virtual-size", "qcow2.rst", "Cluster mapping", Violation,
            "No cluster past the end of the virtual disk is allocated.";
        DATA_FILE_COMPRESSED = "qcow2.data-file.no-compressed", "qcow2.rst", "Header", Corruption,
            "Images with an external data file have no compressed clusters.";
        DATA_FILE_SNAPSHOTS = "qcow2.data-file.no-snapshots", "qcow2.rst", "Header", Corruption,
            "Images with an external data file have no internal snapshots.";
        DATA_FILE_OFFSET = "qcow2.data-file.offset-is-guest-offset", "qcow2.rst", "Header", Corruption,
            "With an external data file, a standard cluster's host offset equals its guest offset.";

        SUBCLUSTER_ALLOC_ZERO = "qcow2.subcluster.alloc-and-zero", "qcow2.rst", "Extended L2 Entries", Corruption,
            "No subcluster is both allocated and reads-as-zero.";
        SUBCLUSTER_COMPRESSED = "qcow2.subcluster.compressed-bitmap-zero", "qcow2.rst", "Extended L2 Entries", Corruption,
            "The subcluster bitmap of a compressed cluster is zero.";
        SUBCLUSTER_UNALLOCATED = "qcow2.subcluster.unallocated-no-alloc-bits", "qcow2.rst", "Extended L2 Entries", Corruption,
            "A cluster without a host offset has no allocated subclusters.";

        SNAPSHOT_TABLE = "qcow2.snapshot.table-readable", "qcow2.rst", "Snapshots", Error,
            "The snapshot table lies inside the file and within QEMU's size limits.";
        SNAPSHOT_EXTRA_V3 = "qcow2.snapshot.extra-data-v3", "qcow2.rst", "Snapshots", Corruption,
            "In version 3 images every snapshot has at least 16 bytes of extra data.";
        SNAPSHOT_EXTRA_SIZE = "qcow2.snapshot.extra-data-size", "qcow2.rst", "Snapshots", Error,
            "Snapshot extra data is at most 1024 bytes (QEMU's limit).";
        SNAPSHOT_L1_ALIGNED = "qcow2.snapshot.l1-aligned", "qcow2.rst", "Snapshots", Corruption,
            "A snapshot's L1 table is aligned to a cluster boundary.";
        SNAPSHOT_L1_SIZE = "qcow2.snapshot.l1-size-limit", "qcow2.rst", "Snapshots", Corruption,
            "A snapshot's L1 table is at most 32 MiB (QEMU's implementation limit).";
        SNAPSHOT_ID_UNIQUE = "qcow2.snapshot.id-unique", "qcow2.rst", "Snapshots", Violation,
            "Snapshot ID strings are unique.";

        BITMAP_DIRECTORY = "qcow2.bitmap.directory-valid", "qcow2.rst", "Bitmap directory", Error,
            "The bitmap directory holds exactly nb_bitmaps well-formed entries filling bitmap_directory_size bytes.";
        BITMAP_ENTRY = "qcow2.bitmap.entry-valid", "qcow2.rst", "Bitmap directory", Error,
            "A directory entry has a cluster-aligned table, type 1, granularity 9-31, no reserved flags, a name, no extra data unless bit 2 allows it.";
        BITMAP_TABLE_SIZE = "qcow2.bitmap.table-size", "qcow2.rst", "Bitmap table", Error,
            "A bitmap's table has enough entries to cover the virtual disk at its granularity.";
        BITMAP_NAME_UNIQUE = "qcow2.bitmap.name-unique", "qcow2.rst", "Bitmap directory", Error,
            "Bitmap names are unique.";
        BITMAP_TABLE_ENTRY = "qcow2.bitmap.table-entry-valid", "qcow2.rst", "Bitmap table", Corruption,
            "A bitmap table entry has no reserved bits, is cluster aligned, and sets bit 0 only without an offset.";
        BITMAP_IN_USE = "qcow2.bitmap.in-use", "qcow2.rst", "Bitmap directory", Note,
            "A bitmap has the in_use flag: its data is inconsistent and must not be used.";
    }
}

/// Rules of docs/interop/vhost-user.rst. A violation names the side that
/// broke the rule in its detail ("front-end:" or "back-end:").
pub mod vhost_user {
    use super::*;
    rules! {
        HEADER_VERSION = "vhost-user.header.version", "vhost-user.rst", "Header", Violation,
            "The version bits (0-1) of every message are 0x1.";
        HEADER_REPLY_FLAG = "vhost-user.header.reply-flag", "vhost-user.rst", "Header", Violation,
            "The reply flag (bit 2) is set on each reply and on no request.";
        HEADER_RESERVED = "vhost-user.header.reserved-flags", "vhost-user.rst", "Header", Violation,
            "Flag bits 4-31 are zero: only the version, reply and need_reply bits are defined.";
        HEADER_NEED_REPLY_ON_REPLY = "vhost-user.header.need-reply-on-reply", "vhost-user.rst", "Header", Violation,
            "A reply does not itself set need_reply (bit 3).";
        HEADER_KNOWN = "vhost-user.header.known-request", "vhost-user.rst", "Front-end message types", Violation,
            "The request id is one the spec defines for its channel (front-end 1-45, back-end 1-10).";
        HEADER_SIZE = "vhost-user.header.size", "vhost-user.rst", "Payload", Violation,
            "size equals the size of the payload the request (or reply) defines.";
        HEADER_SIZE_LIMIT = "vhost-user.header.size-limit", "vhost-user.rst", "Payload", Violation,
            "size is at most the largest payload of the protocol (4096 bytes accepted); larger claims are never read.";
        PAYLOAD_VALID = "vhost-user.payload.valid", "vhost-user.rst", "Payload", Violation,
            "Counts and sizes inside a payload stay within the spec (at most 8 regions, config size within limits).";
        REPLY_ECHO = "vhost-user.reply.request-echo", "vhost-user.rst", "Communication", Violation,
            "A reply's request field equals the request it answers.";
        REPLY_MISSING = "vhost-user.reply.missing", "vhost-user.rst", "Communication", Violation,
            "Every request that needs a reply gets one.";
        REPLY_UNEXPECTED = "vhost-user.reply.unexpected", "vhost-user.rst", "Communication", Violation,
            "No reply is sent to a request that does not get one.";
        REPLY_ACK_FORMAT = "vhost-user.reply-ack.u64", "vhost-user.rst", "VHOST_USER_PROTOCOL_F_REPLY_ACK", Violation,
            "With REPLY_ACK negotiated and need_reply set, the reply is a u64: 0 for success, non-zero for failure.";
        REPLY_ACK_NOT_NEGOTIATED = "vhost-user.reply-ack.negotiated", "vhost-user.rst", "VHOST_USER_PROTOCOL_F_REPLY_ACK", Note,
            "need_reply is only meaningful once REPLY_ACK is negotiated; an ack without it cannot be relied on.";
        NEG_BIT30 = "vhost-user.negotiation.protocol-features-offered", "vhost-user.rst", "Communication", Violation,
            "GET/SET_PROTOCOL_FEATURES are sent only after the back-end offered VHOST_USER_F_PROTOCOL_FEATURES (bit 30).";
        NEG_FEATURES_SUBSET = "vhost-user.negotiation.features-subset", "vhost-user.rst", "Front-end message types", Violation,
            "SET_FEATURES acknowledges only features the back-end offered.";
        NEG_PROTOCOL_SUBSET = "vhost-user.negotiation.protocol-features-subset", "vhost-user.rst", "Protocol features", Violation,
            "SET_PROTOCOL_FEATURES acknowledges only protocol features the back-end offered.";
        NEG_GATED = "vhost-user.negotiation.gated-request", "vhost-user.rst", "Protocol features", Violation,
            "A request gated by a feature is sent only after that feature was negotiated.";
        NEG_INBAND = "vhost-user.negotiation.inband-notifications-requires", "vhost-user.rst", "In-band notifications", Violation,
            "INBAND_NOTIFICATIONS is negotiated only together with REPLY_ACK and BACKEND_REQ.";
        NEG_SKIP_DRAIN = "vhost-user.negotiation.skip-drain-requires", "vhost-user.rst", "Protocol features", Violation,
            "GET_VRING_BASE_SKIP_DRAIN is negotiated only together with INFLIGHT_SHMFD and GET_VRING_BASE_INFLIGHT.";
        NEG_VRING_ENABLE = "vhost-user.negotiation.vring-enable-needs-protocol-features", "vhost-user.rst", "Ring states", Violation,
            "SET_VRING_ENABLE is sent only when VHOST_USER_F_PROTOCOL_FEATURES was negotiated (acknowledged; offered in the lenient profile).";
        NEG_MAX_SLOTS = "vhost-user.negotiation.max-mem-slots-never-decreases", "vhost-user.rst", "Front-end message types", Violation,
            "The GET_MAX_MEM_SLOTS reply never decreases within a connection.";
        NEG_POSTCOPY_SLOTS = "vhost-user.negotiation.no-postcopy-with-mem-slots", "vhost-user.rst", "Front-end message types", Violation,
            "No POSTCOPY_* message is sent once CONFIGURE_MEM_SLOTS is negotiated.";
        NEG_UNKNOWN_PROTOCOL = "vhost-user.negotiation.unknown-protocol-features", "vhost-user.rst", "Protocol features", Note,
            "The back-end offers protocol feature bits the current spec does not define.";
        FDS_COUNT = "vhost-user.fds.count", "vhost-user.rst", "Communication", Violation,
            "A message carries exactly the file descriptors its request defines, consistent with the NOFD bit (8).";
        FDS_MAX = "vhost-user.fds.max", "vhost-user.rst", "Back-end communication", Violation,
            "At most 8 file descriptors travel with one message.";
        FDS_REPLY = "vhost-user.fds.reply", "vhost-user.rst", "Communication", Violation,
            "Replies carry file descriptors only where the request defines them.";
        MEM_MAX_REGIONS = "vhost-user.memory.table-max-regions", "vhost-user.rst", "Multiple Memory regions description", Violation,
            "SET_MEM_TABLE describes at most 8 regions.";
        MEM_OVERLAP = "vhost-user.memory.no-overlap", "vhost-user.rst", "Memory region description", Violation,
            "Live memory regions never overlap in guest address or user address ranges.";
        MEM_REMOVE_LIVE = "vhost-user.memory.remove-live-region", "vhost-user.rst", "Front-end message types", Violation,
            "REM_MEM_REG names a region that is live.";
        MEM_GPA = "vhost-user.memory.gpa-addresses", "vhost-user.rst", "Memory region description", Violation,
            "With GPA_ADDRESSES the user address of a region equals its guest address.";
        MEM_SLOTS = "vhost-user.memory.slots-limit", "vhost-user.rst", "Front-end message types", Violation,
            "Live regions never exceed the GET_MAX_MEM_SLOTS reply.";
        RING_INDEX = "vhost-user.ring.index-in-range", "vhost-user.rst", "Multiple queue support", Violation,
            "A vring index is below the number of queues.";
        RING_RESERVED = "vhost-user.ring.reserved-zero", "vhost-user.rst", "Front-end message types", Violation,
            "Reserved fields are zero: num of GET_VRING_BASE and VRING_KICK, bits 9-63 of vring fd payloads.";
        RING_ENABLE_VALUE = "vhost-user.ring.enable-value", "vhost-user.rst", "Front-end message types", Violation,
            "SET_VRING_ENABLE and SET_VRING_ENDIAN carry num 0 or 1.";
        RING_NOT_STARTED = "vhost-user.ring.stopped-ring", "vhost-user.rst", "Ring states", Note,
            "GET_VRING_BASE stops a ring; here the ring was never started (no SET_VRING_KICK).";
        BACKEND_CHANNEL = "vhost-user.backend.channel-negotiated", "vhost-user.rst", "Back-end communication", Violation,
            "Back-end requests travel only on a channel set up by SET_BACKEND_REQ_FD with BACKEND_REQ negotiated.";
        BACKEND_SEND_FD = "vhost-user.backend.send-fd-negotiated", "vhost-user.rst", "Back-end message types", Violation,
            "The back-end attaches file descriptors only when BACKEND_SEND_FD is negotiated.";
        ROBUST_CRASH = "vhost-user.robustness.no-crash", "vhost-user.rst", "Communication", Violation,
            "Invalid input is answered with a failure or a closed connection; the back-end keeps accepting connections.";
        ROBUST_HANG = "vhost-user.robustness.no-hang", "vhost-user.rst", "Communication", Violation,
            "A message that needs a reply is answered, or the connection closed, before the deadline.";
        ROBUST_ACCEPTS = "vhost-user.robustness.rejects-invalid", "vhost-user.rst", "VHOST_USER_PROTOCOL_F_REPLY_ACK", Violation,
            "A request the back-end cannot have carried out (an unknown request, a wrong size, a missing fd, a ring it does not have) is never acknowledged as a success: the ack is zero on success, non-zero on failure.";
        ROBUST_POLICY = "vhost-user.robustness.tester-policy", "vhost-user.rst", "Communication", Note,
            "The back-end carried out a request the spec asks the front-end not to send (a \"should\" that binds the front-end); qconform would rather it refused, the spec does not require it.";
        PEER_CLOSED = "vhost-user.peer.closed-valid-conversation", "vhost-user.rst", "Communication", Violation,
            "A peer closes the connection only on error, never during a valid conversation.";
        RING_STOPPED_IDLE = "vhost-user.ring.stopped-not-processed", "vhost-user.rst", "Ring states", Violation,
            "While a ring is stopped (before SET_VRING_KICK, after GET_VRING_BASE) the back-end does not process it: no used entry, no call.";
        RING_BASE_RESUMES = "vhost-user.ring.get-base-is-next-avail", "vhost-user.rst", "Front-end message types", Violation,
            "GET_VRING_BASE of a split ring returns the next available index the back-end processes: with every request drained, the driver's available index.";
        RING_CALL_FIRES = "vhost-user.ring.call-fires", "vhost-user.rst", "Front-end message types", Violation,
            "A back-end that adds used entries signals the call eventfd set by SET_VRING_CALL (unless the driver suppressed interrupts).";
    }
}

/// Rules of the virtio 1.2 specification (OASIS), which is not in the
/// repository: sections are its numbered headings, and each summary says
/// only what the rule relies on.
pub mod virtio {
    use super::*;
    rules! {
        USED_ID_POSTED = "virtio.used.id-posted", "virtio-v1.2", "2.7.8 The Virtqueue Used Ring", Violation,
            "A used element's id is the head of a chain the driver made available and the device has not returned yet (\"id indicates the head entry of the descriptor chain describing the buffer\").";
        USED_LEN_WITHIN = "virtio.used.len-within-buffer", "virtio-v1.2", "2.7.8 The Virtqueue Used Ring", Violation,
            "A used element's len is at most the chain's device-writable bytes (\"the total of bytes written into the buffer\").";
        USED_INDEX_JUMP = "virtio.used.index-counts-returned", "virtio-v1.2", "2.7.8 The Virtqueue Used Ring", Violation,
            "used.idx advances by at most the number of chains outstanding (\"where the device would put the next descriptor entry in the ring\").";
        DEVICE_WRITES_WRITABLE = "virtio.device.writes-only-writable-buffers", "virtio-v1.2", "2.7.5 The Virtqueue Descriptor Table", Violation,
            "The device writes guest memory only through device-writable descriptors and the used ring (\"VIRTQ_DESC_F_WRITE ... marks a buffer as device write-only (otherwise device read-only)\"): memory no ring or buffer covers stays as the driver left it.";
        USED_COMPLETES = "virtio.used.request-completed", "virtio-v1.2", "2.7.8 The Virtqueue Used Ring", Violation,
            "A well-formed chain made available on an enabled, started ring is returned in the used ring (within the probe's deadline).";
        BLK_STATUS = "virtio.blk.status", "virtio-v1.2", "5.2.6 Device Operation", Violation,
            "A valid request in range completes with VIRTIO_BLK_S_OK; a read or write past the capacity with VIRTIO_BLK_S_IOERR; the status is a value the spec defines.";
        BLK_DATA = "virtio.blk.read-after-write", "virtio-v1.2", "5.2.6 Device Operation", Violation,
            "A read of sectors returns what the last completed write put there, and the disk the device exports holds it.";
        RNG_FILLS = "virtio.rng.fills-buffer", "virtio-v1.2", "5.4.6 Device Operation", Violation,
            "The entropy device returns each buffer with random bytes in it (\"The device MUST place one or more random bytes into the buffer\"): a used len of 0, or a filled part all zero, is not random data.";
        BLK_ID = "virtio.blk.get-id", "virtio-v1.2", "5.2.6 Device Operation", Note,
            "VIRTIO_BLK_T_GET_ID writes the device id string (up to 20 bytes) or answers VIRTIO_BLK_S_UNSUPP.";
    }
}

/// Rules of docs/interop/parallels.rst.
pub mod parallels {
    use super::*;
    rules! {
        MAGIC = "parallels.header.magic", "parallels.rst", "Header", Error,
            "The magic is \"WithoutFreeSpace\" or \"WithouFreSpacExt\".";
        VERSION = "parallels.header.version", "parallels.rst", "Header", Error,
            "version is 2.";
        TRACKS = "parallels.header.tracks", "parallels.rst", "Header", Error,
            "tracks (the cluster size in sectors) is not zero (and within QEMU's limit).";
        BAT_SIZE = "parallels.header.bat-entries-limit", "parallels.rst", "Header", Error,
            "nb_bat_entries is within QEMU's limit (INT32_MAX / 4).";
        DISK_SIZE_LIMIT = "parallels.header.disk-size-limit", "parallels.rst", "Header", Error,
            "nb_sectors * 512 is at most QEMU's largest image length (INT64_MAX aligned down to 1 GiB); QEMU refuses larger disks.";
        BAT_COVERS_DISK = "parallels.header.bat-covers-disk", "parallels.rst", "Header", Violation,
            "nb_bat_entries clusters cover nb_sectors.";
        NB_SECTORS_HIGH = "parallels.header.nb-sectors-high-zero", "parallels.rst", "Header", Violation,
            "For WithoutFreeSpace images the high 4 bytes of nb_sectors are zero.";
        IN_USE_OPEN = "parallels.header.closed", "parallels.rst", "Header", Corruption,
            "in_use is not 0x746F6E59 (opened read-write): the image was closed correctly.";
        IN_USE_VALUE = "parallels.header.in-use-value", "parallels.rst", "Header", Violation,
            "in_use is 0, 0x746F6E59 or 0x312e3276; other values are not allowed.";
        FLAGS_UNUSED = "parallels.header.flags-unused", "parallels.rst", "Header", Violation,
            "Bits 1-31 of flags are unused (zero).";
        EMPTY_IMAGE = "parallels.header.empty-image", "parallels.rst", "Header", Violation,
            "An image whose Empty Image flag (bit 0) says it is clear allocates no clusters.";
        DATA_OFF = "parallels.header.data-off", "parallels.rst", "Header", Corruption,
            "data_off is past the BAT and inside the file; for WithouFreSpacExt non-zero and cluster aligned.";
        BAT_BELOW_DATA = "parallels.bat.after-data-offset", "parallels.rst", "BAT", Corruption,
            "A BAT entry (or extension cluster) is not lower than the data offset.";
        BAT_INSIDE_FILE = "parallels.bat.inside-file", "parallels.rst", "BAT", Corruption,
            "A BAT entry's cluster lies inside the file.";
        BAT_UNIQUE = "parallels.bat.unique", "parallels.rst", "BAT", Corruption,
            "A BAT entry (or extension cluster) is unique among all of them.";
        BAT_ALIGNED = "parallels.bat.cluster-aligned", "parallels.rst", "BAT", Corruption,
            "(cluster offset - data offset) is aligned to the cluster size.";
        LEAK = "parallels.data.no-leak", "parallels.rst", "Data Area", Leak,
            "Every cluster of the data area is used by the BAT, ext_off or an extension.";
        EXT_PLACEMENT = "parallels.ext.inside-file", "parallels.rst", "Format Extension", Corruption,
            "The Format Extension cluster lies inside the file.";
        EXT_MAGIC = "parallels.ext.magic", "parallels.rst", "Format Extension", Corruption,
            "The Format Extension cluster starts with 0xAB234CEF23DCEA87.";
        EXT_CHECKSUM = "parallels.ext.checksum", "parallels.rst", "Format Extension", Corruption,
            "m_CheckSum is the MD5 of the extension cluster past its first 24 bytes.";
        EXT_FEATURES = "parallels.ext.features", "parallels.rst", "Format Extension", Corruption,
            "Features fit the cluster and the list ends with End of features.";
        EXT_UNKNOWN_FEATURE = "parallels.ext.unknown-feature", "parallels.rst", "Format Extension", Note,
            "A feature of unknown magic (NECESSARY ones forbid changing the image).";
        BITMAP_SIZE = "parallels.bitmap.size", "parallels.rst", "Dirty bitmaps feature", Violation,
            "A dirty bitmap's size equals the disk size in sectors.";
        BITMAP_GRANULARITY = "parallels.bitmap.granularity", "parallels.rst", "Dirty bitmaps feature", Corruption,
            "A dirty bitmap's granularity is a power of 2.";
        BITMAP_L1_ENTRY = "parallels.bitmap.l1-entry", "parallels.rst", "Dirty bitmaps feature", Corruption,
            "A dirty bitmap L1 entry is 0, 1 or the offset of a cluster that obeys the BAT rules.";
    }
}

/// Rules of docs/interop/qed_spec.rst.
pub mod qed {
    use super::*;
    rules! {
        MAGIC = "qed.header.magic", "qed_spec.rst", "Header", Error,
            "The header starts with the magic \"QED\\0\".";
        CLUSTER_SIZE = "qed.header.cluster-size", "qed_spec.rst", "Field descriptions:", Error,
            "cluster_size is a power of 2 in [2^12, 2^26].";
        TABLE_SIZE = "qed.header.table-size", "qed_spec.rst", "Field descriptions:", Error,
            "table_size is a power of 2 in [1, 16].";
        HEADER_SIZE = "qed.header.header-size", "qed_spec.rst", "Field descriptions:", Error,
            "header_size is at least one cluster.";
        FEATURES = "qed.header.unknown-features", "qed_spec.rst", "Field descriptions:", Error,
            "No unknown features bit is set: such an image must not be opened.";
        IMAGE_SIZE = "qed.header.image-size", "qed_spec.rst", "Field descriptions:", Error,
            "image_size is a multiple of 512 and at most TABLE_NOFFSETS^2 * cluster_size.";
        L1_OFFSET = "qed.header.l1-table-offset", "qed_spec.rst", "Field descriptions:", Error,
            "l1_table_offset is a multiple of cluster_size past the header clusters.";
        BACKING_NAME = "qed.header.backing-filename", "qed_spec.rst", "Field descriptions:", Error,
            "The backing file name lies within the first header_size clusters.";
        NEED_CHECK = "qed.header.need-check", "qed_spec.rst", "Feature bits:", Note,
            "QED_F_NEED_CHECK is set: the image needs a consistency check before use.";
        TABLE_OFFSET = "qed.table.offset-valid", "qed_spec.rst", "Tables", Corruption,
            "An L1 or L2 table is cluster aligned, past the header, and fits before the end of the file.";
        CLUSTER_OFFSET = "qed.table.cluster-offset-valid", "qed_spec.rst", "Tables", Corruption,
            "A data cluster offset is aligned (low bits zero), past the header and inside the file.";
        REFERENCED_ONCE = "qed.cluster.referenced-once", "qed_spec.rst", "Tables", Corruption,
            "Each cluster is referenced by at most one table entry.";
        LEAK = "qed.cluster.no-leak", "qed_spec.rst", "Tables", Leak,
            "Every cluster past the header is referenced.";
    }
}

/// qconform's path policy for the names an image carries (backing file,
/// external data file) and for the image itself: untrusted input, never
/// followed outside the image's directory unless the user asked.
pub mod policy {
    use super::*;
    rules! {
        REGULAR_FILE = "input.regular-file", "qconform", "Path policy", Error,
            "An image, and every file it names, is a regular file (never a FIFO, device, directory or socket).";
        NAME_PROTOCOL = "policy.name.protocol", "qconform", "Path policy", Violation,
            "A backing or data file name is a file name, not a protocol (json:, file:, nbd:, any proto:).";
        NAME_ABSOLUTE = "policy.name.absolute", "qconform", "Path policy", Violation,
            "A backing or data file name is relative (absolute names are followed only with --backing follow).";
        NAME_ESCAPES = "policy.name.escapes", "qconform", "Path policy", Violation,
            "A backing or data file name resolves, after .. and symlinks, inside the image's directory.";
        NAME_SPECIAL = "policy.name.special-file", "qconform", "Path policy", Violation,
            "A backing or data file name names a regular file.";
        NAME_MALFORMED = "policy.name.malformed", "qconform", "Path policy", Violation,
            "A backing or data file name is non-empty UTF-8 without NUL bytes.";
        NOT_OPENED = "policy.file-not-opened", "qconform", "Path policy", Error,
            "A read that needs the external data file is refused when --backing ignore opens no other file.";
        BACKING_DEPTH = "limits.backing-depth", "qconform", "Limits", Error,
            "A backing chain is at most Limits::max_backing_depth images deep.";
        BACKING_CYCLE = "input.backing-chain-acyclic", "qconform", "Path policy", Error,
            "A backing chain never names a file already in the chain.";
        VIRTUAL_SIZE = "input.virtual-size", "qconform", "Input", Error,
            "The virtual size is at most QEMU's BDRV_MAX_LENGTH (2^63 - 2^30 bytes).";
    }
}

/// qconform's upload policy (`check --policy upload`, module `upload`):
/// what an image from an untrusted source must not carry. Off under the
/// default policy; a policy file turns each on or off, re-grades it, and
/// sets the caps.
pub mod upload {
    use super::*;
    rules! {
        BACKING_FILE = "upload.backing-file", "qconform", "Upload policy", Corruption,
            "An uploaded image names no backing file (QEMU would open another host file).";
        DATA_FILE = "upload.data-file", "qconform", "Upload policy", Corruption,
            "An uploaded image keeps its data in itself, not in an external data file.";
        ENCRYPTION = "upload.encryption", "qconform", "Upload policy", Corruption,
            "An uploaded image is not encrypted (its contents can be inspected).";
        FEATURE_UNKNOWN = "upload.feature-unknown", "qconform", "Upload policy", Corruption,
            "No incompatible or autoclear feature bit (Parallels: NECESSARY extension) the spec does not define is set.";
        FORMAT_DECLARED = "upload.format-declared", "qconform", "Upload policy", Corruption,
            "The image is in the format declared with -f.";
        POLYGLOT = "upload.polyglot", "qconform", "Upload policy", Corruption,
            "The file parses as no other format: no other format's probe and no VDI, MBR, GPT or ISO 9660 magic past offset 0.";
        VIRTUAL_SIZE = "upload.virtual-size", "qconform", "Upload policy", Corruption,
            "The virtual size is at most the policy's virtual-size cap.";
        COMPRESSION_RATIO = "upload.compression-ratio", "qconform", "Upload policy", Corruption,
            "Compressed clusters decompress to at most compression-ratio times the file's length.";
        SNAPSHOT_COUNT = "upload.snapshot-count", "qconform", "Upload policy", Corruption,
            "The image has at most the policy's snapshots cap of internal snapshots.";
        BITMAP_COUNT = "upload.bitmap-count", "qconform", "Upload policy", Corruption,
            "The image has at most the policy's bitmaps cap of persistent dirty bitmaps.";
    }
}

/// Every rule of the registry.
pub fn all() -> impl Iterator<Item = &'static Rule> {
    general::ALL
        .iter()
        .chain(qcow2::ALL.iter())
        .chain(vhost_user::ALL.iter())
        .chain(virtio::ALL.iter())
        .chain(parallels::ALL.iter())
        .chain(qed::ALL.iter())
        .chain(policy::ALL.iter())
        .chain(upload::ALL.iter())
        .copied()
}

/// Looks a rule up by its id.
pub fn by_id(id: &str) -> Option<&'static Rule> {
    all().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_dotted() {
        let mut seen = HashSet::new();
        for r in all() {
            assert!(seen.insert(r.id), "duplicate rule id {}", r.id);
            assert!(r.id.split('.').count() >= 2, "{} is not dotted", r.id);
            assert!(r
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'));
            assert!(!r.summary.is_empty());
        }
    }

    #[test]
    fn every_section_is_a_heading_of_its_spec() {
        let specs: [(&str, &[&Rule]); 4] = [
            (include_str!("../../specs/upstream/qcow2.rst"), qcow2::ALL),
            (
                include_str!("../../specs/upstream/vhost-user.rst"),
                vhost_user::ALL,
            ),
            (
                include_str!("../../specs/upstream/parallels.rst"),
                parallels::ALL,
            ),
            (include_str!("../../specs/upstream/qed_spec.rst"), qed::ALL),
        ];
        for (spec, rules) in specs {
            for r in rules {
                let heading = format!("\n{}\n", r.section);
                assert!(
                    spec.contains(&heading),
                    "{}: no section {:?} in {}",
                    r.id,
                    r.section,
                    r.spec
                );
            }
        }
    }
}
