//! A fixed-seed loop of generated and mutated inputs through each
//! differential body: every finding must be a known one (the library's
//! KNOWN for unsupported features, or one recorded below and in the
//! corpus folder's FINDINGS.md).

use qconform_peers::campaign::campaign;
use qconform_peers::Impl;

/// Findings recorded in corpus/peers/<impl>/FINDINGS.md: a part of their
/// signature (see `campaign::signature`).
const RECORDED: &[(Impl, &str)] = &[
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

fn loop_is_clean(imp: Impl) {
    let groups = campaign(imp, 300, 7);
    let unknown: Vec<String> = groups
        .iter()
        .filter(|g| g.known.is_none())
        .filter(|g| {
            !RECORDED
                .iter()
                .any(|(i, p)| *i == imp && g.signature.contains(p))
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

/// Every committed reproducer still gives its finding (the images with any
/// build; the inputs with this generator).
#[test]
fn committed_reproducers_reproduce() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/peers");
    let mut n = 0;
    for (imp, dir) in [(Impl::Imago, "imago"), (Impl::Qcow2Rs, "qcow2-rs")] {
        let entries = std::fs::read_dir(format!("{root}/{dir}")).expect("corpus folder");
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("input") {
                continue;
            }
            let data = std::fs::read(&path).expect("read input");
            let f = qconform_peers::find(imp, &data)
                .unwrap_or_else(|| panic!("{}: no finding any more", path.display()));
            let image = std::fs::read(path.with_extension("qcow2")).expect("read image");
            assert_eq!(
                f.image,
                image,
                "{}: the input makes another image",
                path.display()
            );
            n += 1;
        }
    }
    assert!(n >= 7, "only {n} reproducers");
}
