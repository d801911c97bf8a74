//! The `arbitrary` feature: descriptions drawn from any bytes write images
//! the checker calls clean, and mutations drawn from them that apply are
//! caught with the rules they name. A few thousand inputs per format from a
//! fixed SplitMix64 seed, so a failure names its input.

use arbitrary::{Arbitrary, Unstructured};
use qconform_core::report::Report;
use qconform_core::rng::SplitMix64;
use qconform_core::rules::Rule;
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

/// One format's run: `(description, mutation)` drawn from each input, the
/// written image clean (and under 1 MiB), the applied mutation caught
/// (and, when `fails`, the exit code non-zero). Returns the kinds applied.
fn format_run<D, M>(
    seed: u64,
    write: impl Fn(&D) -> Result<Vec<u8>, String>,
    check: impl Fn(&[u8]) -> Report,
    apply: impl Fn(M, &mut Vec<u8>) -> Option<&'static [&'static Rule]>,
    fails: bool,
) -> BTreeSet<String>
where
    D: for<'a> Arbitrary<'a> + std::fmt::Debug,
    M: for<'a> Arbitrary<'a> + std::fmt::Debug + Copy,
{
    run(seed, |data| {
        let Ok((d, m)) = <(D, M)>::arbitrary(&mut Unstructured::new(data)) else {
            return Ok(None);
        };
        let mut img = write(&d).map_err(|e| format!("{d:?}: {e}"))?;
        if img.len() > 1 << 20 {
            return Err(format!("{} bytes written", img.len()));
        }
        oracle::clean(&check(&img), img.len()).map_err(|e| format!("{d:?}: {e}"))?;
        let Some(rules) = apply(m, &mut img) else {
            return Ok(None);
        };
        let r = check(&img);
        oracle::caught(&m, rules, &r)?;
        if fails && r.exit_code(false) == 0 {
            return Err(format!("{m:?} left the image clean"));
        }
        Ok(Some(format!("{m:?}")))
    })
}

#[test]
fn qcow2_arbitrary_descriptions_are_clean_and_mutations_caught() {
    let applied = format_run(
        0x5eed_0001,
        |d| {
            qcow2::write::write(d)
                .map(|w| w.image)
                .map_err(|e| e.to_string())
        },
        |img| qcow2::check(&img, "arbitrary", &Limits::default()),
        |m, img| qcow2::mutate::apply(m, img),
        true,
    );
    assert_eq!(
        applied.len(),
        qcow2::mutate::KINDS,
        "only {applied:?} applied"
    );
}

#[test]
fn qed_arbitrary_descriptions_are_clean_and_mutations_caught() {
    let applied = format_run(
        0x5eed_0002,
        |d| qed::write::write(d).map_err(|e| e.to_string()),
        |img| qed::check(&img, "arbitrary", &Limits::default()),
        qed::mutate::apply,
        false,
    );
    assert_eq!(
        applied.len(),
        qed::mutate::KINDS,
        "only {applied:?} applied"
    );
}

#[test]
fn parallels_arbitrary_descriptions_are_clean_and_mutations_caught() {
    let applied = format_run(
        0x5eed_0003,
        |d| parallels::write::write(d).map_err(|e| e.to_string()),
        |img| parallels::check(&img, "arbitrary", &Limits::default()),
        parallels::mutate::apply,
        false,
    );
    assert_eq!(
        applied.len(),
        parallels::mutate::KINDS,
        "only {applied:?} applied"
    );
}
