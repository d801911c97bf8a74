//! Other Rust qcow2 implementations, read through small bounded adapters and
//! compared with qconform's reader.
//!
//! Each adapter ([`imago_peer`], [`qcow2rs_peer`]) opens a qcow2 image and
//! reads its whole virtual disk, with no backing or data file opened. The
//! adapters are bounded before the peer sees the image ([`precheck`]: a
//! virtual size or a header-claimed table over [`Bounds`] is refused, so a
//! peer never allocates a size an image claims), and [`run`] runs them on a
//! thread of their own, catching a panic and giving up after a timeout.
//! [`differential`] builds the inputs (writer-made images, then mutated, see
//! [`generate`]) and decides what is a finding.

pub mod backing;
pub mod campaign;
pub mod differential;
pub mod generate;
pub mod imago_peer;
pub mod qcow2rs_peer;

pub use differential::{differential_imago, differential_qcow2rs, find, Finding, FindingKind};

use std::cell::{Cell, RefCell};
use std::sync::{mpsc, Once};
use std::time::Duration;

/// One peer implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    Imago,
    Qcow2Rs,
}

impl Impl {
    pub const ALL: [Impl; 2] = [Impl::Imago, Impl::Qcow2Rs];

    /// The name the CLI and the corpus folders use.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Imago => "imago",
            Impl::Qcow2Rs => "qcow2-rs",
        }
    }

    /// The crate version this build links (kept with Cargo.toml's pins).
    pub fn version(self) -> &'static str {
        match self {
            Impl::Imago => "0.2.6",
            Impl::Qcow2Rs => "0.1.6",
        }
    }

    /// Parses `imago`, `qcow2-rs` or `qcow2rs`.
    pub fn parse(s: &str) -> Option<Impl> {
        match s {
            "imago" => Some(Impl::Imago),
            "qcow2-rs" | "qcow2rs" | "qcow2_rs" => Some(Impl::Qcow2Rs),
            _ => None,
        }
    }

    /// The unguarded adapter: bounded by [`precheck`], but a panic or a
    /// hang of the peer is the caller's.
    pub fn read(self, data: &[u8], bounds: &Bounds) -> Result<Vec<u8>, String> {
        match self {
            Impl::Imago => imago_peer::read(data, bounds),
            Impl::Qcow2Rs => qcow2rs_peer::read(data, bounds),
        }
    }
}

/// What an adapter may cost.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Largest virtual size read (our inputs are small; a larger claim is
    /// refused before the peer could allocate it).
    pub max_virtual_size: u64,
    /// Largest table (L1, refcount table) a header may claim.
    pub max_table_bytes: u64,
    /// Wall-clock time the peer gets before it counts as hung.
    pub timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_virtual_size: 256 << 20,
            max_table_bytes: 32 << 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// How a guarded peer read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest's bytes.
    Read(Vec<u8>),
    /// The peer returned an error.
    Error(String),
    /// Not given to the peer: the header claims more than [`Bounds`] allows.
    Refused(String),
    /// The peer panicked (the message).
    Panic(String),
    /// The peer did not finish within [`Bounds::timeout`].
    Hang,
}

/// Big-endian u32/u64 at `at`, None past the end.
fn be32(d: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 4] = d.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) as u64)
}
fn be64(d: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = d.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Refuses an image whose header claims more than `bounds` allows, before a
/// peer sees it: both peers allocate the L1 table (qcow2-rs: sized from the
/// virtual size) and the refcount table (from refcount_table_clusters) as
/// the header says, and the whole disk is read into memory here. A header
/// too short to hold these fields is left to the peer.
pub fn precheck(data: &[u8], bounds: &Bounds) -> Result<u64, String> {
    let Some(size) = be64(data, 24) else {
        return Ok(0);
    };
    if size > bounds.max_virtual_size {
        return Err(format!(
            "virtual size {size} is over the adapter's cap of {}",
            bounds.max_virtual_size
        ));
    }
    let cluster_bits = be32(data, 20).unwrap_or(0);
    let l1_bytes = be32(data, 36).unwrap_or(0) * 8;
    if l1_bytes > bounds.max_table_bytes {
        return Err(format!(
            "L1 table of {l1_bytes} bytes is over the adapter's cap"
        ));
    }
    let rt_clusters = be32(data, 56).unwrap_or(0);
    let rt_bytes = 1u64
        .checked_shl(cluster_bits as u32)
        .filter(|_| cluster_bits < 64)
        .and_then(|cs| cs.checked_mul(rt_clusters));
    match rt_bytes {
        Some(b) if b <= bounds.max_table_bytes => Ok(size),
        // A shift past 63 is the peer's to refuse (or to panic on) unless it
        // claims a table: 0 clusters claim nothing.
        None if rt_clusters == 0 => Ok(size),
        _ => Err(format!(
            "refcount table of {rt_clusters} clusters of 2^{cluster_bits} bytes is over the adapter's cap"
        )),
    }
}

thread_local! {
    /// Set on the threads [`run`] starts: their panics are caught and
    /// reported, not printed (nor turned into an abort by a fuzzer's hook).
    static IN_PEER: Cell<bool> = const { Cell::new(false) };
    /// The message of this peer thread's panic (the hook records it with
    /// its location; a payload need not be a string).
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Wraps whatever panic hook is installed first (libFuzzer's aborting one
/// under cargo-fuzz, the default one elsewhere) so that a panic on a peer
/// thread only records its message: otherwise under cargo-fuzz every peer
/// panic, known ones included, would abort before `catch_unwind` sees it.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_PEER.with(|p| p.get()) {
                LAST_PANIC.with(|l| *l.borrow_mut() = info.to_string());
            } else {
                previous(info)
            }
        }));
    });
}

/// Runs `imp` on `data` on a thread of its own: a panic becomes
/// [`Outcome::Panic`], and after `bounds.timeout` the read is given up as
/// [`Outcome::Hang`]. The hung thread cannot be stopped: it is left running
/// (it and its copy of the image leak until the process ends; a campaign
/// that meets many hangs should run out of process, through
/// `qconform-peer-read`).
pub fn run(imp: Impl, data: &[u8], bounds: &Bounds) -> Outcome {
    if let Err(why) = precheck(data, bounds) {
        return Outcome::Refused(why);
    }
    install_hook();
    let (tx, rx) = mpsc::channel();
    let owned = data.to_vec();
    let b = bounds.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("peer-{}", imp.name()))
        .spawn(move || {
            IN_PEER.with(|p| p.set(true));
            let r = std::panic::catch_unwind(|| imp.read(&owned, &b));
            let out = match r {
                Ok(Ok(bytes)) => Outcome::Read(bytes),
                Ok(Err(e)) => Outcome::Error(e),
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned());
                    let recorded = LAST_PANIC.with(|l| l.borrow().clone());
                    Outcome::Panic(if recorded.is_empty() {
                        msg.unwrap_or_else(|| "non-string panic payload".into())
                    } else {
                        recorded
                    })
                }
            };
            // The receiver is gone after a timeout: nothing to tell then.
            let _ = tx.send(out);
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => return Outcome::Error(format!("cannot start the peer's thread: {e}")),
    };
    match rx.recv_timeout(bounds.timeout) {
        // The thread has sent its last word; joining waits for its exit
        // (its thread-local destructors) to finish, so no thread outlives
        // the input: LeakSanitizer, which libFuzzer runs after an input
        // that allocated more than it freed, otherwise caught an exiting
        // thread's TLS destructor list as a leak.
        Ok(out) => {
            let _ = handle.join();
            out
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Outcome::Hang,
        // The thread ended without sending: only a panic in the panic
        // machinery itself gets here.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Outcome::Panic("peer thread ended without a result".into())
        }
    }
}

/// Reads a whole virtual disk through `read_at(offset, buf)` in chunks,
/// into a buffer of `size` bytes (the caller checked `size` against its cap).
pub(crate) fn read_all(
    size: u64,
    chunk: usize,
    mut read_at: impl FnMut(u64, &mut [u8]) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let len = usize::try_from(size).map_err(|_| format!("virtual size {size} does not fit"))?;
    let mut out = vec![0u8; len];
    let mut at = 0usize;
    for piece in out.chunks_mut(chunk.max(1)) {
        read_at(at as u64, piece)?;
        at += piece.len();
    }
    Ok(out)
}
