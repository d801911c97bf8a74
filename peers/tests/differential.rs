//! A fixed-seed loop of generated and mutated inputs through each
//! differential body: every finding must be a known one (the library's
//! KNOWN for unsupported features, or one of its RECORDED peer bugs, in
//! the corpus folder's FINDINGS.md) — what the fuzz body also accepts.

use qconform_peers::campaign::campaign;
use qconform_peers::differential::recorded;
use qconform_peers::Impl;

fn loop_is_clean(imp: Impl) {
    let groups = campaign(imp, 300, 7);
    let unknown: Vec<String> = groups
        .iter()
        .filter(|g| g.known.is_none())
        .filter(|g| !recorded(imp, &g.signature))
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
            // The fuzz body accepts every recorded finding (it panics on new ones only).
            qconform_peers::differential::differential(imp, &data);
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
