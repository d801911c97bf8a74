//! The committed seeds of the raw-format targets: small, built from code,
//! and together reaching every image rule of the registry.

use qconform_fuzz::seeds::{self, MAX_SEED, UNREACHABLE};
use std::path::Path;

fn committed(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/fuzz")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            let p = e.path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn targets() -> Vec<String> {
    qconform_core::formats::FORMATS
        .iter()
        .map(|f| qconform_fuzz::check_target(f.name()))
        .collect()
}

/// Every committed seed of the raw-format targets, as (target, bytes).
fn all_committed() -> Vec<(String, Vec<u8>)> {
    targets()
        .iter()
        .flat_map(|t| committed(t).into_iter().map(move |(_, b)| (t.clone(), b)))
        .collect()
}

#[test]
fn committed_seeds_reach_every_image_rule() {
    let all = all_committed();
    let missed = seeds::rules_missed(all.iter().map(|(t, b)| (t.as_str(), b.as_slice())));
    assert!(
        missed.is_empty(),
        "no committed seed reaches these rules (add a seed to fuzz/src/seeds.rs and run \
         `cargo xtask fuzz --seeds`, or name the rule in seeds::UNREACHABLE with the reason): {missed:#?}"
    );
}

#[test]
fn unreachable_rules_are_really_unreached() {
    // An exception that a seed reaches after all is stale.
    let all = all_committed();
    for (t, b) in &all {
        let format = t.trim_end_matches("_check");
        for r in seeds::rules_reached(format, b) {
            assert!(
                !UNREACHABLE.iter().any(|(u, _)| std::ptr::eq(*u, r)),
                "{} is in seeds::UNREACHABLE but a {t} seed reaches it",
                r.id
            );
        }
    }
}

#[test]
fn committed_seeds_are_small_and_what_the_code_builds() {
    let built = seeds::image_seeds();
    for t in targets() {
        let have = committed(&t);
        for (name, bytes) in &have {
            assert!(
                bytes.len() <= MAX_SEED,
                "corpus/fuzz/{t}/{name} is {} bytes (max {MAX_SEED})",
                bytes.len()
            );
        }
        let mut want: Vec<(String, Vec<u8>)> = built
            .iter()
            .filter(|s| s.target == t)
            .map(|s| (s.name.clone(), s.bytes.clone()))
            .collect();
        want.sort();
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert!(
            have == want,
            "corpus/fuzz/{t} differs from qconform_fuzz::seeds (run `cargo xtask fuzz --seeds`): \
             committed {:?}, built {:?}",
            names(&have),
            names(&want)
        );
    }
}

#[test]
fn every_target_has_options_and_its_dictionary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (t, _) in qconform_fuzz::TARGETS {
        let path = root.join("options").join(format!("{t}.options"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains("[libfuzzer]"), "{t}.options");
        for key in ["max_len", "timeout", "rss_limit_mb"] {
            assert!(
                text.contains(&format!("{key} = ")),
                "{t}.options has no {key}"
            );
        }
        if let Some(dict) = text.lines().find_map(|l| l.strip_prefix("dict = ")) {
            let d = std::fs::read_to_string(root.join("dictionaries").join(dict.trim()))
                .unwrap_or_else(|e| panic!("{t}: dictionary {dict}: {e}"));
            // Rule ids are never fuzzing vocabulary.
            for r in qconform_core::rules::all() {
                assert!(!d.contains(r.id), "{dict} holds the rule id {}", r.id);
            }
        }
        let max_len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("max_len = "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let seeds = root.parent().unwrap().join("corpus/fuzz").join(t);
        for e in std::fs::read_dir(&seeds).unwrap().flatten() {
            let len = e.metadata().unwrap().len() as usize;
            assert!(
                len <= max_len,
                "{} is longer than {t}'s max_len {max_len}",
                e.path().display()
            );
        }
    }
}

/// The differential targets' seeds are what `seeds::differential_seeds`
/// builds, small, and together give every shape the peers generator has,
/// every cluster kind, the optional structures, and unmutated, mutated and
/// byte-flipped images.
#[test]
fn differential_seeds_are_built_and_cover_every_cluster_kind() {
    let built = seeds::differential_seeds();
    let mut features = std::collections::BTreeSet::new();
    for t in seeds::DIFFERENTIAL_TARGETS {
        let have = committed(t);
        let mut want: Vec<(String, Vec<u8>)> = built
            .iter()
            .filter(|s| s.target == t)
            .map(|s| (s.name.clone(), s.bytes.clone()))
            .collect();
        want.sort();
        assert!(
            have == want,
            "corpus/fuzz/{t} differs from seeds::differential_seeds (run `cargo xtask fuzz --seeds`)"
        );
        for (name, bytes) in &have {
            assert!(bytes.len() <= 256, "corpus/fuzz/{t}/{name} is over max_len");
            let g = qconform_peers::generate::generate(bytes)
                .unwrap_or_else(|| panic!("corpus/fuzz/{t}/{name}: the writer refuses it"));
            features.extend(g.features());
        }
    }
    let mut need: Vec<String> = [
        (16, false),
        (9, false),
        (12, false),
        (14, true),
        (16, true),
        (18, false),
        (10, false),
        (15, false),
    ]
    .iter()
    .map(|(cb, ext)| format!("cluster_bits {cb} extended_l2 {ext}"))
    .collect();
    need.extend(
        [
            "cluster data",
            "cluster zero",
            "cluster compressed",
            "cluster subclusters",
            "version 2",
            "version 3",
            "compression zstd",
            "lazy refcounts",
            "snapshots",
            "bitmap",
            "backing",
            "backing format",
            "size whole clusters",
            "size whole sectors",
            "size not whole sectors",
            "mutations 0",
            "mutations 1",
            "mutations 2",
            "byte flips",
        ]
        .map(String::from),
    );
    let missing: Vec<&String> = need.iter().filter(|n| !features.contains(*n)).collect();
    assert!(missing.is_empty(), "no differential seed gives {missing:?}");
}
