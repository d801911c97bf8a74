//! A fixed-seed loop of generated and mutated inputs through each
//! differential body: every finding must be a known one (the library's
//! KNOWN for unsupported features, or one recorded below and in the
//! corpus folder's FINDINGS.md).

use qconform_peers::campaign::campaign;
use qconform_peers::Impl;

/// Findings recorded in corpus/peers/<impl>/FINDINGS.md, by the start of
/// their signature (see `campaign::signature`).
const RECORDED: &[(Impl, &str)] = &[
    // cluster_bits < 12: `cluster_shift - l2_slice_bits` underflows.
    (Impl::Qcow2Rs, "qcow2-rs panic panicked at "),
    // A version 2 header parsed as version 3 (header_length, feature bits).
    (Impl::Qcow2Rs, "qcow2-rs rejects-valid open: Qcow2Error { description: \"Header extensions exceed"),
    (Impl::Qcow2Rs, "qcow2-rs rejects-valid open: Qcow2Error { description: \"Unrecognized incompatible feature"),
    // A read crossing the end of a disk not a multiple of 512 bytes.
    (Impl::Qcow2Rs, "qcow2-rs rejects-valid short read"),
];

fn loop_is_clean(imp: Impl) {
    let groups = campaign(imp, 300, 7);
    let unknown: Vec<String> = groups
        .iter()
        .filter(|g| g.known.is_none())
        .filter(|g| {
            !RECORDED
                .iter()
                .any(|(i, p)| *i == imp && g.signature.starts_with(p))
        })
        .map(|g| format!("x{} {}", g.count, g.first))
        .collect();
    assert!(unknown.is_empty(), "new findings:\n{}", unknown.join("\n"));
}

#[test]
fn imago_fixed_seed_loop_has_only_known_findings() {
    loop_is_clean(Impl::Imago)
}

#[test]
fn qcow2rs_fixed_seed_loop_has_only_known_findings() {
    loop_is_clean(Impl::Qcow2Rs)
}
