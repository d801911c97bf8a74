//! Structure-aware fuzz inputs (feature `arbitrary`): [`arbitrary::Arbitrary`]
//! for the writer descriptions and the mutations of every format, so a
//! fuzz target draws a valid image and one corruption of it from the raw
//! bytes, instead of hoping random bytes parse.
//!
//! Every description drawn is one the writer accepts and the checker calls
//! clean: at most 256 guest clusters (and 256 KiB of guest) and 16
//! allocated ones, clusters of 512 B to 16 KiB (qcow2, Parallels) or
//! 4-8 KiB (QED), so an image stays well under 1 MiB and a fuzz target can
//! read the whole guest back on every run. A mutation that applies returns the rules the checker
//! must then report.
//!
//! A user's cargo-fuzz target (with `qconform-core = { features =
//! ["arbitrary"] }` and `libfuzzer-sys` in its Cargo.toml):
//!
//! ```
//! use arbitrary::{Arbitrary, Unstructured};
//! use qconform_core::{qcow2, Limits};
//!
//! // The body of `libfuzzer_sys::fuzz_target!(|data: &[u8]| { ... })`.
//! fn fuzz_one(data: &[u8]) -> arbitrary::Result<()> {
//!     let mut u = Unstructured::new(data);
//!     let (desc, m) = <(qcow2::write::Description, qcow2::mutate::Mutation)>::arbitrary(&mut u)?;
//!     let Ok(written) = qcow2::write::write(&desc) else {
//!         panic!("an arbitrary description must be writable");
//!     };
//!     let mut img = written.image;
//!     if let Some(rules) = qcow2::mutate::apply(m, &mut img) {
//!         let report = qcow2::check(&img.as_slice(), "fuzz", &Limits::default());
//!         for rule in rules {
//!             assert!(report.findings.iter().any(|f| f.rule.id == rule.id), "{m:?}: {rule} missed");
//!         }
//!     }
//!     Ok(())
//! }
//! # fuzz_one(&[7; 256]).unwrap();
//! ```
//!
//! QED and Parallels are the same with `qed::write::Description`,
//! `qed::mutate::Mutation` (`write` returns the image bytes) and their
//! `parallels::` counterparts.

use crate::rng::SplitMix64;
use arbitrary::{Result, Unstructured};

/// Most allocated clusters of a drawn description.
pub const MAX_ALLOCATED: usize = 16;
/// Most guest clusters of a drawn description.
pub const MAX_GUEST_CLUSTERS: u64 = 256;
/// Most guest bytes of a drawn description: 256 clusters of 1 KiB, or 16
/// of 16 KiB. A larger sparse guest reaches no other structure (one L2
/// table of 4 KiB clusters already maps 2 MiB) and only costs the reads
/// and comparisons of its zeros.
pub const MAX_GUEST_BYTES: u64 = 256 << 10;

/// One cluster of contents from 8 bytes of input: runs of 64 equal bytes
/// (compressible, as real data is, yet not constant), so a 16 KiB cluster
/// costs the fuzzer 8 bytes, not 16,384.
pub(crate) fn contents(u: &mut Unstructured, len: usize) -> Result<Vec<u8>> {
    let mut rng = SplitMix64::new(u.arbitrary()?);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = 64.min(len - out.len());
        out.resize(out.len() + run, rng.next_u64() as u8);
    }
    Ok(out)
}

/// A guest size of `1..=max_clusters` clusters of `cs` bytes, the last one
/// cut short by whole sectors (sizes stay multiples of 512), and the number
/// of clusters it spans.
pub(crate) fn guest_size(u: &mut Unstructured, cs: u64, max_clusters: u64) -> Result<(u64, u64)> {
    let n = u.int_in_range(1..=max_clusters)?;
    let tail = u.int_in_range(0..=cs / 512 - 1)?;
    Ok((n * cs - tail * 512, n))
}

/// Up to [`MAX_ALLOCATED`] distinct guest cluster indexes below `n`, each
/// with what `f` draws for it.
pub(crate) fn allocate<T>(
    u: &mut Unstructured,
    n: u64,
    mut f: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<std::collections::BTreeMap<u64, T>> {
    let count = u.int_in_range(0..=MAX_ALLOCATED)?;
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..count {
        let k = u.int_in_range(0..=n - 1)?;
        let v = f(u)?;
        out.insert(k, v);
    }
    Ok(out)
}

/// A selector for `from_parts`: kind, candidate index, bit.
pub(crate) fn parts(u: &mut Unstructured, kinds: usize) -> Result<(usize, usize, u8)> {
    Ok((
        u.choose_index(kinds)?,
        u.arbitrary::<u16>()? as usize,
        u.arbitrary()?,
    ))
}
