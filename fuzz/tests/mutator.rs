//! The raw targets' custom mutator (src/mutator.rs) over every committed
//! seed of qcow2_check, qed_check and parallels_check, with fixed seeds:
//! it never panics, never grows an input past max_size, always changes the
//! bytes, and the edits it makes are ones the checker notices.

use qconform_core::{formats, Limits};
use qconform_fuzz::mutator::{mutate, Format};
use std::path::Path;

/// Mutations per committed seed.
const N: u32 = 40;

/// The test's stand-in for libFuzzer's byte mutation: one byte flipped.
fn flip(data: &mut [u8], size: usize, _max: usize) -> usize {
    if let Some(b) = data.get_mut(size / 2) {
        *b ^= 0x55;
    }
    size
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/fuzz")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// (mutated inputs of clean seeds, those with a finding), over one target.
fn run(name: &str, format: Format) -> (usize, usize) {
    let f = formats::by_name(name).unwrap();
    let limits = Limits::default();
    let (mut total, mut found) = (0, 0);
    for (i, seed) in seeds(&format!("{name}_check")).iter().enumerate() {
        let clean = f
            .check(&seed.as_slice(), "seed", &limits)
            .findings
            .is_empty();
        for k in 0..N {
            let max = seed.len() + 64;
            let mut data = seed.clone();
            data.resize(max, 0);
            let n = mutate(
                format,
                &mut data,
                seed.len(),
                max,
                k * 7919 + i as u32,
                flip,
            );
            assert!(n <= max, "{name} seed {i} mutation {k}: size {n} > {max}");
            data.truncate(n);
            assert!(
                data != *seed,
                "{name} seed {i} mutation {k}: nothing changed"
            );
            if clean {
                total += 1;
                if !f
                    .check(&data.as_slice(), "mutated", &limits)
                    .findings
                    .is_empty()
                {
                    found += 1;
                }
            }
        }
    }
    (total, found)
}

#[test]
fn mutations_of_every_seed_are_bounded_and_noticed() {
    for (name, format, share) in [
        // Measured at 40 mutations per seed: qcow2 443 of 720 (61.5 %),
        // QED 276 of 320 (86.2 %), Parallels 123 of 160 (76.9 %).
        ("qcow2", Format::Qcow2, 0.50),
        ("qed", Format::Qed, 0.75),
        ("parallels", Format::Parallels, 0.65),
    ] {
        let (total, found) = run(name, format);
        let got = found as f64 / total.max(1) as f64;
        eprintln!(
            "{name}: {found} of {total} mutated clean seeds have a finding ({:.1} %)",
            got * 100.0
        );
        assert!(total > 0, "{name}: no clean seed");
        assert!(
            got >= share,
            "{name}: only {:.1} % of mutated clean seeds have a finding",
            got * 100.0
        );
    }
}

/// An edit inside a Parallels Format Extension cluster repairs its MD5: on
/// a seed whose checksum is right, no field edit that falls inside the
/// cluster brings parallels.ext.checksum (an edit of ext_off or tracks
/// moves the cluster, and then the checksum rule is the right finding).
#[test]
fn parallels_extension_checksum_is_repaired() {
    use qconform_core::parallels::header::field as f;
    use qconform_core::rules::parallels::EXT_CHECKSUM;
    let limits = Limits::default();
    let mut edits = 0;
    for (i, seed) in seeds("parallels_check").iter().enumerate() {
        let before = qconform_core::parallels::check(&seed.as_slice(), "seed", &limits);
        let ext = f::EXT_OFF.get(seed) as usize * 512;
        let cs = f::TRACKS.get(seed) as usize * 512;
        if before.has(&EXT_CHECKSUM) || ext == 0 || ext + cs > seed.len() {
            continue;
        }
        for k in 0..400 {
            let mut data = seed.clone();
            // No fallback: only field edits are judged.
            let n = mutate(
                Format::Parallels,
                &mut data,
                seed.len(),
                seed.len(),
                k,
                |_, s, _| s,
            );
            data.truncate(n);
            let Some(at) = data.iter().zip(seed).position(|(a, b)| a != b) else {
                continue;
            };
            if !(ext..ext + cs).contains(&at) {
                continue;
            }
            edits += 1;
            let r = qconform_core::parallels::check(&data.as_slice(), "mutated", &limits);
            assert!(
                !r.has(&EXT_CHECKSUM),
                "seed {i} mutation {k} at {at:#x}: checksum not repaired"
            );
        }
    }
    assert!(edits > 20, "only {edits} edits inside an extension cluster");
}

/// Hostile inputs: no panic and no growth on garbage, empty and short
/// inputs that start like each format.
#[test]
fn mutations_of_hostile_inputs_do_not_panic() {
    let mut rng = qconform_core::rng::SplitMix64::new(0x6d75_7461);
    let magics: [&[u8]; 3] = [b"QFI\xfb", b"QED\0", b"WithoutFreeSpace"];
    for format in [Format::Qcow2, Format::Qed, Format::Parallels] {
        for (k, magic) in magics.iter().enumerate() {
            for len in [0usize, 1, 4, 16, 64, 100, 512, 4096] {
                let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                let m = magic.len().min(len);
                data[..m].copy_from_slice(&magic[..m]);
                for seed in 0..64 {
                    let mut d = data.clone();
                    let n = mutate(format, &mut d, len, len, seed * 31 + k as u32, flip);
                    assert!(n <= len);
                }
            }
        }
    }
}

/// vhost_user_session's mutator over its committed seeds: bounded, the
/// same bytes for the same seed, every result a stream the target reads
/// without a panic, the lenient bit of the first byte kept, and step-level
/// edits that byte flips rarely make: fresh valid requests inserted (new
/// request ids appear) and the number of steps changed.
#[test]
fn session_mutations_are_bounded_deterministic_and_change_steps() {
    use qconform_core::vhost_user::arbitrary::Conversation;
    use qconform_fuzz::mutator::mutate_session;
    use std::collections::BTreeSet;
    let seeds = seeds("vhost_user_session");
    assert!(!seeds.is_empty());
    let requests = |c: &Conversation| -> BTreeSet<u32> {
        c.steps
            .iter()
            .filter_map(|s| s.message().map(|m| m.header.request))
            .collect()
    };
    let (mut new_requests, mut step_changes, mut fallbacks) = (BTreeSet::new(), 0, 0);
    for (i, seed) in seeds.iter().enumerate() {
        let before = Conversation::from_stream(seed);
        let known = requests(&before);
        for k in 0..N {
            let max = seed.len() + 4096;
            let run = || {
                let mut data = seed.clone();
                data.resize(max, 0);
                let n = mutate_session(&mut data, seed.len(), max, k * 7919 + i as u32, flip);
                assert!(n <= max, "seed {i} mutation {k}: size {n} > {max}");
                data.truncate(n);
                data
            };
            let data = run();
            assert_eq!(data, run(), "seed {i} mutation {k} is not deterministic");
            qconform_fuzz::vhost_user_session(&data);
            if let (Some(a), Some(b)) = (seed.first(), data.first()) {
                assert_eq!(
                    a & 0x40,
                    b & 0x40,
                    "seed {i} mutation {k}: lenient bit lost"
                );
            }
            let after = Conversation::from_stream(&data);
            if after.steps.len() != before.steps.len() {
                step_changes += 1;
            }
            // `flip`, the stand-in for libFuzzer's mutation, was called.
            let mut flipped = seed.clone();
            flip(&mut flipped, seed.len(), max);
            if data == flipped {
                fallbacks += 1;
            }
            new_requests.extend(requests(&after).difference(&known).copied());
        }
    }
    let total = seeds.len() * N as usize;
    assert!(
        new_requests.len() >= 10,
        "only {new_requests:?} new request ids"
    );
    assert!(
        step_changes * 8 >= total,
        "{step_changes} of {total} changed the step count"
    );
    assert!(
        fallbacks * 2 <= total,
        "{fallbacks} of {total} were byte mutations"
    );
}
