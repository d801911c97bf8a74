//! The structured targets' committed seeds: what `seeds` builds from code,
//! holding together every feature (each mutation kind applied, each cluster
//! kind, shape and other file), and each passing every oracle.
//!
//! After a change to the input layout (core's Arbitrary impls), rewrite
//! them with `QCONFORM_WRITE_SEEDS=1 cargo test -p qconform-fuzz --test structured`.

use qconform_fuzz::structured::{features, input_features, seeds};
use std::collections::BTreeSet;
use std::path::PathBuf;

const TARGETS: [&str; 2] = ["structured_image", "structured_qed_parallels"];

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/fuzz")
        .join(target)
}

fn committed(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(target))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn committed_seeds_are_the_generated_ones() {
    for t in TARGETS {
        let generated = seeds(t);
        if std::env::var_os("QCONFORM_WRITE_SEEDS").is_some() {
            for e in std::fs::read_dir(dir(t)).unwrap().flatten() {
                std::fs::remove_file(e.path()).unwrap();
            }
            for (i, s) in generated.iter().enumerate() {
                std::fs::write(dir(t).join(format!("seed-{i:02}")), s).unwrap();
            }
        }
        assert!(
            committed(t) == generated,
            "corpus/fuzz/{t} differs from structured::seeds (rewrite with QCONFORM_WRITE_SEEDS=1)"
        );
    }
}

#[test]
fn committed_seeds_hold_every_feature_and_stay_small() {
    if std::env::var_os("QCONFORM_WRITE_SEEDS").is_some() {
        return; // the other test is rewriting them
    }
    for t in TARGETS {
        let seeds = committed(t);
        let mut held = BTreeSet::new();
        for s in &seeds {
            assert!(s.len() <= 1024, "{t}: a seed of {} bytes", s.len());
            held.extend(input_features(t, s));
        }
        let missing: Vec<String> = features(t)
            .into_iter()
            .filter(|f| !held.contains(f))
            .collect();
        assert!(missing.is_empty(), "{t}: no seed holds {missing:?}");
    }
}
