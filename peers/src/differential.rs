//! The differential bodies: one generated input through a peer and through
//! our reader, and what counts as a finding.
//!
//! Our side decides validity: an image is valid when our checker, strict,
//! reports no check error, corruption or violation, names included (a leak does not change
//! what the guest reads) and our reader (`VirtualDisk`, `verify: true`,
//! `NoFiles`, backing ignored) reads all of it. Findings: the peer panics or
//! hangs (on any image); the peer errors on a valid image; the peer's bytes
//! differ from ours on a valid image. A peer that reads an image we call
//! corrupt is not a finding here (qemu-img's accepts-corrupt oracle is
//! elsewhere): a reader need not check everything.

use crate::generate::{generate, Generated};
use crate::{run, Bounds, Impl, Outcome};
use qconform_core::disk::{Backing, NoFiles, OpenOptions, VirtualDisk};
use qconform_core::{qcow2, Limits};
use std::fmt;

/// What kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    Panic,
    Hang,
    /// The peer errors on an image we call valid.
    RejectsValid,
    /// The peer reads other bytes than ours from an image we call valid.
    Differs,
}

impl FindingKind {
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Panic => "panic",
            FindingKind::Hang => "hang",
            FindingKind::RejectsValid => "rejects-valid",
            FindingKind::Differs => "differs",
        }
    }
}

/// One finding, with what is needed to report and reproduce it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub imp: Impl,
    pub kind: FindingKind,
    /// The peer's message (panic, error) or the first differing offset.
    pub detail: String,
    /// Our verdict on the image: "valid", or why not (the rules).
    pub ours: String,
    /// The rules the mutations break, from the mutators.
    pub rules: Vec<&'static str>,
    /// The generated input, in one line.
    pub summary: String,
    /// The image the peer read.
    pub image: Vec<u8>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {} (ours: {}; mutation rules: {:?}; input: {})",
            self.imp.name(),
            self.imp.version(),
            self.kind.name(),
            self.detail,
            self.ours,
            self.rules,
            self.summary
        )
    }
}

/// A finding that is known and accepted, and why (BoGo-style: what a peer
/// does not support is listed here, never skipped silently).
pub struct Known {
    pub imp: Impl,
    pub kind: FindingKind,
    /// Whether a finding is this one.
    pub matches: fn(&Finding) -> bool,
    pub why: &'static str,
}

/// The image's incompatible feature bits (0 for version 2 or a short header).
pub fn incompatible_features(image: &[u8]) -> u64 {
    let version = image
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes);
    match (version, image.get(72..80).and_then(|b| b.try_into().ok())) {
        (Some(3..), Some(b)) => u64::from_be_bytes(b),
        _ => 0,
    }
}

/// A refusal at open naming unrecognized incompatible features, on an image
/// that sets `bit`.
fn refuses_feature(f: &Finding, bit: u32) -> bool {
    f.detail.contains("Unrecognized incompatible feature")
        && incompatible_features(&f.image) & (1 << bit) != 0
}

/// The findings accepted as known. Both peers refuse, at open, every
/// incompatible feature they do not implement: a refusal there is correct
/// behaviour, not a misread.
pub const KNOWN: &[Known] = &[
    Known {
        imp: Impl::Imago,
        kind: FindingKind::RejectsValid,
        matches: |f| refuses_feature(f, 3),
        why: "imago 0.2.6 implements deflate only: an image with a compression type (zstd) is refused at open",
    },
    Known {
        imp: Impl::Imago,
        kind: FindingKind::RejectsValid,
        matches: |f| refuses_feature(f, 4),
        why: "imago 0.2.6 has no extended L2 entries (subclusters): refused at open",
    },
    Known {
        imp: Impl::Qcow2Rs,
        kind: FindingKind::RejectsValid,
        matches: |f| refuses_feature(f, 3),
        why: "qcow2-rs 0.1.6 implements deflate only: an image with a compression type (zstd) is refused at open",
    },
    Known {
        imp: Impl::Qcow2Rs,
        kind: FindingKind::RejectsValid,
        matches: |f| refuses_feature(f, 4),
        why: "qcow2-rs 0.1.6 has no extended L2 entries (its source: 'todo: support extended l2 descriptor'): refused at open",
    },
];

/// The KNOWN entry `f` matches, if any.
pub fn known(f: &Finding) -> Option<&'static Known> {
    KNOWN
        .iter()
        .find(|k| k.imp == f.imp && k.kind == f.kind && (k.matches)(f))
}

/// Peer bugs recorded in corpus/peers/<impl>/FINDINGS.md: a part of their
/// signature (see [`crate::campaign::signature`]). The fuzz body and the
/// fixed-seed loop of peers/tests both accept them, so a campaign stops
/// only on new ones.
pub const RECORDED: &[(Impl, &str)] = &[
    // cluster_bits < 12: `cluster_shift - l2_slice_bits` underflows.
    (Impl::Qcow2Rs, "src/dev.rs:105:60:"),
    // refcount_order over 255: `try_into().unwrap()`.
    (Impl::Qcow2Rs, "src/dev.rs:69:64:"),
    // A version 2 header parsed as version 3 (header_length, feature bits).
    (
        Impl::Qcow2Rs,
        "rejects-valid open: Qcow2Error { description: \"Header extensions exceed",
    ),
    (
        Impl::Qcow2Rs,
        "rejects-valid open: Qcow2Error { description: \"Unrecognized incompatible feature",
    ),
    // A read crossing the end of a disk not a multiple of 512 bytes.
    (Impl::Qcow2Rs, "rejects-valid short read"),
    // No end marker before the backing file name: QEMU stops at
    // backing_file_offset, imago reads on.
    (
        Impl::Imago,
        "rejects-valid open: Header extensions exceed the first cluster",
    ),
];

/// Whether a finding of `imp` with this signature is a [`RECORDED`] one.
pub fn recorded(imp: Impl, signature: &str) -> bool {
    RECORDED
        .iter()
        .any(|(i, p)| *i == imp && signature.contains(p))
}

/// Limits for our side: small, so no generated input takes long.
fn limits() -> Limits {
    Limits {
        max_entries_visited: 1 << 22,
        ..Limits::default()
    }
}

/// Our verdict: the guest's bytes when the image is valid, else why not.
pub fn ours(image: &[u8], bounds: &Bounds) -> Result<Vec<u8>, String> {
    let limits = limits();
    let mut report = qcow2::check(&image, "peer-input", &limits);
    // As `qconform check` does: names inside the image the path policy
    // refuses (empty, not UTF-8, a protocol) are violations too.
    let names = qconform_core::disk::named_files(&image);
    qconform_core::disk::policy::audit(&mut report, std::path::Path::new("peer-input"), &names);
    if report.check_errors > 0 || report.corruptions > 0 || report.violations > 0 {
        let rules: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.severity != qconform_core::Severity::Leak)
            .filter(|f| f.severity != qconform_core::Severity::Note)
            .map(|f| f.rule.id)
            .collect();
        return Err(format!("check: {}", rules.join(",")));
    }
    let opts = OpenOptions {
        backing: Backing::Ignore,
        limits,
        verify: true,
        ..OpenOptions::default()
    };
    let mut disk = VirtualDisk::open(Box::new(image.to_vec()), &NoFiles, &opts)
        .map_err(|e| format!("open: {e}"))?;
    let size = disk.size();
    if size > bounds.max_virtual_size {
        return Err(format!("virtual size {size} over the cap"));
    }
    let len = usize::try_from(size).map_err(|_| "size does not fit".to_string())?;
    let mut out = vec![0u8; len];
    disk.read_at(0, &mut out)
        .map_err(|e| format!("read: {e}"))?;
    Ok(out)
}

/// The first offset where `a` and `b` differ (or where one ends).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Judges a peer's outcome on `g` against our verdict.
pub fn judge(
    imp: Impl,
    g: &Generated,
    peer: Outcome,
    ours: &Result<Vec<u8>, String>,
) -> Option<Finding> {
    let verdict = match ours {
        Ok(_) => "valid".to_string(),
        Err(e) => e.clone(),
    };
    let (kind, detail) = match (peer, ours) {
        (Outcome::Panic(m), _) => (FindingKind::Panic, m),
        (Outcome::Hang, _) => (FindingKind::Hang, "no result within the timeout".into()),
        (Outcome::Error(e), Ok(_)) => (FindingKind::RejectsValid, e),
        (Outcome::Read(theirs), Ok(mine)) => {
            let at = first_difference(&theirs, mine)?;
            let (t, m) = (theirs.get(at).copied(), mine.get(at).copied());
            (
                FindingKind::Differs,
                format!(
                    "guest offset {at:#x}: peer {t:?}, ours {m:?} (peer {} bytes, ours {})",
                    theirs.len(),
                    mine.len()
                ),
            )
        }
        _ => return None,
    };
    Some(Finding {
        imp,
        kind,
        detail,
        ours: verdict,
        rules: g.rules(),
        summary: g.summary(),
        image: g.image.clone(),
    })
}

/// The finding of `imp` on the input `data` describes, if any (known ones
/// included: see [`known`]).
pub fn find(imp: Impl, data: &[u8]) -> Option<Finding> {
    find_with(imp, data, run)
}

/// [`find`] with the peer read by `peer` (the guarded [`run`] in a
/// campaign; a stand-in in the tests of the classification).
pub fn find_with(
    imp: Impl,
    data: &[u8],
    peer: impl FnOnce(Impl, &[u8], &Bounds) -> Outcome,
) -> Option<Finding> {
    let g = generate(data)?;
    let bounds = Bounds::default();
    let ours = ours(&g.image, &bounds);
    let outcome = peer(imp, &g.image, &bounds);
    judge(imp, &g, outcome, &ours)
}

/// Whether a campaign goes on after `f`: it is a [`KNOWN`] limitation or a
/// [`RECORDED`] peer bug.
pub fn accepted(f: &Finding) -> bool {
    known(f).is_some() || recorded(f.imp, &crate::campaign::signature(f))
}

/// The fuzz body: panics on a finding neither in [`KNOWN`] nor [`RECORDED`]
/// (the loop peers/tests runs accepts the same ones).
pub fn differential(imp: Impl, data: &[u8]) {
    differential_with(imp, data, run)
}

/// [`differential`] with the peer read by `peer`.
pub fn differential_with(
    imp: Impl,
    data: &[u8],
    peer: impl FnOnce(Impl, &[u8], &Bounds) -> Outcome,
) {
    if let Some(f) = find_with(imp, data, peer) {
        if !accepted(&f) {
            panic!("new finding: {f}");
        }
    }
}

/// differential_imago: writer-made, then mutated, images through imago and
/// our reader.
pub fn differential_imago(data: &[u8]) {
    differential(Impl::Imago, data)
}

/// differential_qcow2rs: the same through qcow2-rs.
pub fn differential_qcow2rs(data: &[u8]) {
    differential(Impl::Qcow2Rs, data)
}
