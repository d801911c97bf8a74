//! Explicit caps on the work and memory a check or a vhost-user session
//! may spend: every such number is a named field here, read from the
//! [`Limits`] value the checker or session was given (the vhost-user code
//! reads them through [`Session::limits`](crate::vhost_user::Session::limits)
//! or, off a session, [`Limits::default`]).
//!
//! Tables are already bounded by the length of the file they sit in; these
//! limits bound what the file length alone cannot (a small file whose tables
//! all point at one another, a multi-terabyte sparse file). A vhost-user
//! peer is bounded by nothing but these: every count and size in its
//! messages is untrusted.

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
    /// vhost-user: the largest payload a message may claim. A larger claim
    /// is a finding (vhost-user.header.size-limit) and is never read or
    /// allocated. The largest payload of the current spec is 2056 bytes
    /// (GET_SHMEM_CONFIG); one page, as rust-vmm accepts, leaves room for
    /// config spaces.
    pub vhost_max_payload: u32,
    /// vhost-user: file descriptors received with one message (the
    /// SCM_RIGHTS buffer; the kernel closes any beyond it), and the most we
    /// attach to one. The spec allows 8 (more is vhost-user.fds.max); room
    /// for 32 lets a peer that sends too many be counted rather than cut,
    /// and lets probes send more than 8 on purpose.
    pub vhost_max_fds: usize,
    /// vhost-user: live memory regions the engine tracks. QEMU's largest
    /// slot count is 509 (its GET_MAX_MEM_SLOTS answer); a table beyond it
    /// is still judged, its extra regions are not remembered.
    pub vhost_max_regions: usize,
    /// vhost-user: rings tracked per connection. A ring index in a message
    /// is untrusted (u32): state grows only for the first rings named.
    /// Devices have at most a few hundred queues (DPDK reports 128).
    pub vhost_max_rings: usize,
    /// vhost-user: replies awaited at once. A front-end pipelining more
    /// requests than this before reading is not tracked further.
    pub vhost_max_pending: usize,
    /// vhost-user: the largest ring `serve` holds (it refuses a larger
    /// SET_VRING_NUM). QEMU's vhost-user-blk asks for 128; the probe starts
    /// at 256, the usual virtio maximum of real back-ends.
    pub vhost_max_ring_size: u32,
    /// vhost-user: memory slots `serve` offers (GET_MAX_MEM_SLOTS); 32 is
    /// what libvhost-user offered before it raised its limit to 509.
    pub vhost_mem_slots: u64,
    /// vhost-user: rings the probe sets up at most. A back-end may report
    /// many queues (DPDK says 128); eight exercise every ring rule while
    /// keeping a conversation short.
    pub vhost_probe_rings: u64,
    /// vhost-user: the largest memfd a replay creates for a recorded
    /// region. memfds are sparse, so only the back-end's touches cost
    /// memory; a transcript claiming more is capped, not obeyed.
    pub vhost_max_memfd: u64,
}

impl Limits {
    /// The defaults, as a constant: code that needs a cap at compile time
    /// (a buffer's size) reads it here, so every number has one home.
    pub const DEFAULT: Limits = Limits {
        max_table_bytes: 256 << 20,
        max_entries_visited: 1 << 30,
        max_findings_per_rule: 32,
        max_header_extensions: MAX_CLUSTER_0_EXTENSIONS,
        max_backing_depth: 512,
        vhost_max_payload: 4096,
        vhost_max_fds: 32,
        vhost_max_regions: 512,
        vhost_max_rings: 1024,
        vhost_max_pending: 256,
        vhost_max_ring_size: 256,
        vhost_mem_slots: 32,
        vhost_probe_rings: 8,
        vhost_max_memfd: 64 << 30,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
