//! The `arbitrary` feature: descriptions drawn from any bytes write images
//! the checker calls clean, and mutations drawn from them that apply are
//! caught with the rules they name. A few thousand inputs per format from a
//! fixed SplitMix64 seed, so a failure names its input.

use arbitrary::{Arbitrary, Unstructured};
use qconform_core::rng::SplitMix64;
use qconform_core::{parallels, qcow2, qed, Limits};
use std::collections::BTreeSet;

mod oracle;

const INPUTS: usize = 3000;

/// Input `i` of the run: up to 1 KiB of SplitMix64 bytes.
fn input(rng: &mut SplitMix64) -> Vec<u8> {
    let len = (rng.next_u64() % 1024) as usize;
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Runs `one` over the inputs; returns the mutation kinds (Debug names up
/// to the first brace) that applied at least once.
fn run(
    seed: u64,
    mut one: impl FnMut(&[u8]) -> Result<Option<String>, String>,
) -> BTreeSet<String> {
    let mut rng = SplitMix64::new(seed);
    let mut applied = BTreeSet::new();
    for i in 0..INPUTS {
        let data = input(&mut rng);
        match one(&data) {
            Ok(Some(kind)) => {
                applied.insert(kind.split([' ', '{']).next().unwrap_or("").to_string());
            }
            Ok(None) => {}
            Err(e) => panic!("input {i} of seed {seed:#x} ({} bytes): {e}", data.len()),
        }
    }
    applied
}

#[test]
fn qcow2_arbitrary_descriptions_are_clean_and_mutations_caught() {
    let limits = Limits::default();
    let applied = run(0x5eed_0001, |data| {
        let mut u = Unstructured::new(data);
        let Ok((d, m)) = <(qcow2::write::Description, qcow2::mutate::Mutation)>::arbitrary(&mut u)
        else {
            return Ok(None);
        };
        let w = qcow2::write::write(&d).map_err(|e| format!("{d:?}: {e}"))?;
        if w.image.len() > 1 << 20 {
            return Err(format!("{} bytes written", w.image.len()));
        }
        let r = qcow2::check(&w.image.as_slice(), "arbitrary", &limits);
        oracle::clean(&r, w.image.len()).map_err(|e| format!("{d:?}: {e}"))?;
        let mut img = w.image;
        let Some(rules) = qcow2::mutate::apply(m, &mut img) else {
            return Ok(None);
        };
        let r = qcow2::check(&img.as_slice(), "mutated", &limits);
        oracle::caught(&m, rules, &r)?;
        if r.exit_code(false) == 0 {
            return Err(format!("{m:?} left the image clean"));
        }
        Ok(Some(format!("{m:?}")))
    });
    assert!(
        applied.len() >= qcow2::mutate::KINDS - 1,
        "only {applied:?} applied"
    );
}

#[test]
fn qed_arbitrary_descriptions_are_clean_and_mutations_caught() {
    let limits = Limits::default();
    let applied = run(0x5eed_0002, |data| {
        let mut u = Unstructured::new(data);
        let Ok((d, m)) = <(qed::write::Description, qed::mutate::Mutation)>::arbitrary(&mut u)
        else {
            return Ok(None);
        };
        let mut img = qed::write::write(&d).map_err(|e| format!("{d:?}: {e}"))?;
        if img.len() > 1 << 20 {
            return Err(format!("{} bytes written", img.len()));
        }
        let r = qed::check(&img.as_slice(), "arbitrary", &limits);
        oracle::clean(&r, img.len()).map_err(|e| format!("{d:?}: {e}"))?;
        let Some(rules) = qed::mutate::apply(m, &mut img) else {
            return Ok(None);
        };
        let r = qed::check(&img.as_slice(), "mutated", &limits);
        oracle::caught(&m, rules, &r)?;
        Ok(Some(format!("{m:?}")))
    });
    assert_eq!(
        applied.len(),
        qed::mutate::KINDS,
        "only {applied:?} applied"
    );
}

#[test]
fn parallels_arbitrary_descriptions_are_clean_and_mutations_caught() {
    let limits = Limits::default();
    let applied = run(0x5eed_0003, |data| {
        let mut u = Unstructured::new(data);
        let Ok((d, m)) =
            <(parallels::write::Description, parallels::mutate::Mutation)>::arbitrary(&mut u)
        else {
            return Ok(None);
        };
        let mut img = parallels::write::write(&d).map_err(|e| format!("{d:?}: {e}"))?;
        if img.len() > 1 << 20 {
            return Err(format!("{} bytes written", img.len()));
        }
        let r = parallels::check(&img.as_slice(), "arbitrary", &limits);
        oracle::clean(&r, img.len()).map_err(|e| format!("{d:?}: {e}"))?;
        let Some(rules) = parallels::mutate::apply(m, &mut img) else {
            return Ok(None);
        };
        let r = parallels::check(&img.as_slice(), "mutated", &limits);
        oracle::caught(&m, rules, &r)?;
        Ok(Some(format!("{m:?}")))
    });
    assert_eq!(
        applied.len(),
        parallels::mutate::KINDS,
        "only {applied:?} applied"
    );
}
