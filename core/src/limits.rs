//! Explicit caps on the work and memory a check may spend.
//!
//! Tables are already bounded by the length of the file they sit in; these
//! limits bound what the file length alone cannot (a small file whose tables
//! all point at one another, a multi-terabyte sparse file).

/// The most header extensions a qcow2 cluster 0 can hold: 8 bytes each in
/// the largest cluster (2 MiB).
pub const MAX_CLUSTER_0_EXTENSIONS: usize = (2 << 20) / 8;

/// Caps a checker honours; exceeding one ends the check with a check error
/// naming the `limits.*` rule, never with a hang or an allocation failure.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest table (L1, refcount table, snapshot table, bitmap directory)
    /// read into memory at once. QEMU's own caps are 32 MiB (L1) and 8 MiB
    /// (refcount table); we accept more but not without bound.
    pub max_table_bytes: u64,
    /// Table entries (L1, L2, bitmap table) visited in one check, summed over
    /// every L1 table. Legitimate images need about one per 8 bytes of file;
    /// this stops a small file whose snapshots all share one huge L1.
    pub max_entries_visited: u64,
    /// Findings kept per rule; the counts stay exact beyond it.
    pub max_findings_per_rule: usize,
    /// Header extensions parsed (each is at least 8 bytes of cluster 0, so
    /// a 2 MiB cluster holds at most 262144 of them). Parsing is bounded by
    /// cluster 0 anyway, so the default is that bound: no spec-valid image
    /// is refused; a lower value is a policy choice.
    pub max_header_extensions: usize,
    /// Images below the top one in a backing chain. QEMU has no fixed
    /// limit and real chains of 50-200 snapshots exist; each layer holds one
    /// open file, so the cap stays well inside the usual 1024 descriptors.
    pub max_backing_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_table_bytes: 256 << 20,
            max_entries_visited: 1 << 30,
            max_findings_per_rule: 32,
            max_header_extensions: MAX_CLUSTER_0_EXTENSIONS,
            max_backing_depth: 512,
        }
    }
}
