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

/// The classification the fuzz body stops on, with the peer's outcome
/// stood in for: on a valid image (the generator's all-defaults input), a
/// peer that reads one byte wrong, hangs, panics somewhere new or refuses
/// the image is a new finding and the body panics (libFuzzer's crash, and a
/// failing replay of corpus/regressions in `cargo test`); the same bytes
/// are no finding; a panic at a RECORDED location and a KNOWN refusal go on.
#[test]
fn the_fuzz_body_stops_on_new_findings_only() {
    use qconform_peers::differential::{accepted, differential_with, find_with, ours};
    use qconform_peers::generate::generate;
    use qconform_peers::{Bounds, FindingKind, Outcome};
    use std::panic::{catch_unwind, AssertUnwindSafe};

    let input: &[u8] = &[];
    let g = generate(input).expect("the writer makes the all-defaults description");
    assert!(g.mutations.is_empty() && g.patches.is_empty());
    let mine = ours(&g.image, &Bounds::default()).expect("we call the image valid");
    assert!(mine.len() > 0x1234);

    let stops = |imp: Impl, outcome: Outcome| {
        let peer = |_: Impl, _: &[u8], _: &Bounds| outcome.clone();
        let f = find_with(imp, input, peer);
        let body = catch_unwind(AssertUnwindSafe(|| differential_with(imp, input, peer)));
        // The body panics exactly when the finding is not accepted.
        assert_eq!(
            body.is_err(),
            f.as_ref().is_some_and(|f| !accepted(f)),
            "{f:?}"
        );
        (f.map(|f| f.kind), body.is_err())
    };

    let mut wrong = mine.clone();
    wrong[0x1234] ^= 0x40;
    assert_eq!(
        stops(Impl::Imago, Outcome::Read(wrong)),
        (Some(FindingKind::Differs), true)
    );
    let mut short = mine.clone();
    short.pop();
    assert_eq!(
        stops(Impl::Imago, Outcome::Read(short)),
        (Some(FindingKind::Differs), true)
    );
    assert_eq!(
        stops(Impl::Imago, Outcome::Read(mine.clone())),
        (None, false)
    );
    assert_eq!(
        stops(Impl::Qcow2Rs, Outcome::Hang),
        (Some(FindingKind::Hang), true)
    );
    assert_eq!(
        stops(Impl::Imago, Outcome::Error("open: something new".into())),
        (Some(FindingKind::RejectsValid), true)
    );
    // Refused before the peer saw it: not the peer's finding.
    assert_eq!(
        stops(Impl::Imago, Outcome::Refused("over the cap".into())),
        (None, false)
    );
    // qcow2-rs's recorded cluster_bits panic goes on; the same panic at
    // another place, or from the other peer, stops.
    let recorded = "panicked at /registry/qcow2-rs-0.1.6/src/dev.rs:105:60:\nattempt to subtract with overflow";
    assert_eq!(
        stops(Impl::Qcow2Rs, Outcome::Panic(recorded.into())),
        (Some(FindingKind::Panic), false)
    );
    assert_eq!(
        stops(Impl::Imago, Outcome::Panic(recorded.into())),
        (Some(FindingKind::Panic), true)
    );
    let elsewhere = recorded.replace("dev.rs:105:60", "dev.rs:106:1");
    assert_eq!(
        stops(Impl::Qcow2Rs, Outcome::Panic(elsewhere)),
        (Some(FindingKind::Panic), true)
    );
}

/// A KNOWN refusal is accepted only on an image that sets the feature it
/// names: the same refusal of an image without it stops the body.
#[test]
fn a_known_refusal_is_accepted_only_where_it_applies() {
    use qconform_peers::differential::{accepted, find_with, incompatible_features};
    use qconform_peers::{Bounds, Outcome};
    let refuse = |_: Impl, _: &[u8], _: &Bounds| {
        Outcome::Error("open: Unrecognized incompatible feature(s) 3".into())
    };
    // The first inputs of a fixed stream with and without zstd (bit 3).
    let mut rng = qconform_peers::campaign::Rng::new(5);
    let (mut with, mut without) = (None, None);
    for _ in 0..2000 {
        let input = rng.input();
        let Some(f) = find_with(Impl::Imago, &input, refuse) else {
            continue;
        };
        if f.ours != "valid" {
            continue;
        }
        let slot = if incompatible_features(&f.image) & 1 << 3 != 0 {
            &mut with
        } else {
            &mut without
        };
        slot.get_or_insert(f);
        if with.is_some() && without.is_some() {
            break;
        }
    }
    let (with, without) = (
        with.expect("a zstd image"),
        without.expect("a deflate image"),
    );
    assert!(accepted(&with), "{with}");
    assert!(!accepted(&without), "{without}");
}
