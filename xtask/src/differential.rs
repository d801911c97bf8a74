//! `cargo xtask fuzz --differential`: replays the corpora of the raw-format
//! targets (`<fmt>_check`) through qemu-img with `qconform fuzz
//! differential` (conformance/src/fuzz/differential.rs, run in-process)
//! and fails on a disagreement that corpus/peers/qemu-img/expected.txt
//! does not explain.
//!
//! fuzz --differential [--target T]... [--corpus DIR]... [--generate N --seed S]
//!
//! Without --corpus a target replays corpus/fuzz/T, corpus/regressions/T
//! and, when present, fuzz/corpus/T (what libFuzzer grew here).

use crate::{root, DynError};
use qconform::fuzz::differential::{self, Options};
use qconform::fuzz::generate::GenFormat;
use std::path::PathBuf;

/// The expectations file of known qemu-img faults.
const EXPECT: &str = "corpus/peers/qemu-img/expected.txt";

/// What `--differential` was given.
pub struct Args {
    pub targets: Vec<String>,
    pub corpus: Vec<PathBuf>,
    pub generate: u64,
    pub seed: u64,
}

/// The format a raw-format target reads (`qcow2_check` -> qcow2).
fn format_of(target: &str) -> Option<GenFormat> {
    match target.strip_suffix("_check")? {
        "qcow2" => Some(GenFormat::Qcow2),
        "qed" => Some(GenFormat::Qed),
        "parallels" => Some(GenFormat::Parallels),
        _ => None,
    }
}

/// Runs the campaign per target; Err when one has an unexpected disagreement.
pub fn run(a: &Args) -> Result<(), DynError> {
    let root = root();
    let targets: Vec<&String> = a
        .targets
        .iter()
        .filter(|t| format_of(t).is_some())
        .collect();
    if targets.is_empty() {
        return Err(
            "--differential needs a raw-format target (qcow2_check, qed_check, parallels_check)"
                .into(),
        );
    }
    let mut failed = Vec::new();
    for t in targets {
        let Some(format) = format_of(t) else { continue };
        let corpus = if a.corpus.is_empty() {
            [
                root.join("corpus/fuzz").join(t),
                root.join("corpus/regressions").join(t),
                root.join("fuzz/corpus").join(t),
            ]
            .into_iter()
            .filter(|p| p.is_dir())
            .collect()
        } else {
            a.corpus.clone()
        };
        let o = Options {
            corpus,
            generate: a.generate,
            seed: a.seed,
            expect: Some(root.join(EXPECT)),
            ..Options::new(format)
        };
        println!("== {t}");
        if differential::run(&o, qconform::Output::Human) != 0 {
            failed.push(t.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "unexplained disagreements with qemu-img in {} (see above; explain them in {EXPECT} or fix the checker)",
            failed.join(", ")
        )
        .into())
    }
}
