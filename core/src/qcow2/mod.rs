//! qcow2 (docs/interop/qcow2.rst): parsing of every on-disk structure and the
//! reference checker.
//!
//! Module map, named after the spec's sections: [`header`] (Header,
//! Additional fields, Header padding), [`ext`] (Header extensions),
//! [`mapping`] (Cluster mapping, Extended L2 Entries), [`refcount`] (Host
//! cluster management), [`snapshot`] (Snapshots), [`bitmap`] (Bitmaps), and
//! [`check()`], which ties them together the way `qemu-img check` does.

pub mod bitmap;
pub mod check;
pub mod ext;
pub mod header;
pub mod l2_scan;
pub mod mapping;
pub mod mutate;
pub mod read;
pub mod refcount;
pub mod repair;
pub mod snapshot;
pub mod write;

pub use check::check;
pub use header::Header;

/// "QFI\xfb"
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// QEMU's implementation limits, which the spec names.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Smallest cluster_bits (512-byte clusters; spec "Header", bytes 20-23).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest L1 table QEMU opens, in bytes (32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU opens, in bytes (8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU opens (nb_snapshots).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest extra_data_size of a snapshot table entry QEMU opens, in bytes.
pub const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;
/// QEMU refuses a snapshot table larger than 1 KiB per possible snapshot.
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 1024 * MAX_SNAPSHOTS as u64;
/// Most bitmaps in the bitmaps extension (nb_bitmaps).
pub const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU opens, in bytes (1 KiB per possible bitmap).
pub const MAX_BITMAP_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
