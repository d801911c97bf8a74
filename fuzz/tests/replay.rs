//! Replays every committed seed (corpus/fuzz/<target>/) and every minimised
//! crash (corpus/regressions/<target>/) through its target's body.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The input files of a folder (README.md and dotfiles are not inputs).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file() && name != "README.md" && !name.starts_with('.')
        })
        .collect();
    out.sort();
    out
}

/// A regression must finish well inside libFuzzer's -timeout=10 even in
/// an unoptimised build on a loaded machine.
const REGRESSION_BUDGET: Duration = Duration::from_secs(5);

#[test]
fn seeds_and_regressions_replay_cleanly() {
    for (target, body) in qconform_fuzz::TARGETS {
        let seeds = inputs(&root().join("corpus/fuzz").join(target));
        assert!(
            !seeds.is_empty(),
            "{target} has no seeds under corpus/fuzz/{target}"
        );
        let regressions = root().join("corpus/regressions").join(target);
        assert!(
            regressions.join("README.md").is_file(),
            "corpus/regressions/{target}/README.md is missing (every target has the folder)"
        );
        for p in seeds.iter().chain(&inputs(&regressions)) {
            let data = std::fs::read(p).unwrap();
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", p.display());
            if p.starts_with(&regressions) {
                let took = start.elapsed();
                assert!(
                    took < REGRESSION_BUDGET,
                    "{target} took {took:?} on {} (budget {REGRESSION_BUDGET:?})",
                    p.display()
                );
            }
        }
    }
}

/// The first regression: a 2 KiB qcow2 file with 512-byte clusters that
/// claims a 128 GiB disk made the map walk the disk one cluster at a time.
/// It (and its QED and Parallels kin) must be committed, and open and map
/// to the end.
#[test]
fn claimed_disk_regressions_are_committed_and_map_completes() {
    use qconform_core::disk::{Backing, NoFiles, OpenOptions, VirtualDisk};
    for s in qconform_fuzz::seeds::regressions() {
        let path = root()
            .join("corpus/regressions")
            .join(s.target)
            .join(&s.name);
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask fuzz --seeds`)", path.display()));
        assert!(
            committed == s.bytes,
            "{} differs from its recipe",
            path.display()
        );
    }
    let qcow2 =
        std::fs::read(root().join("corpus/regressions/qcow2_check/map-128g-claim-cluster-bits-9"))
            .unwrap();
    assert_eq!(qcow2.len(), 2048);
    let opts = OpenOptions {
        backing: Backing::Ignore,
        limits: qconform_fuzz::fuzz_limits(),
        verify: false,
        ..OpenOptions::default()
    };
    let start = Instant::now();
    let mut disk = VirtualDisk::open(Box::new(qcow2), &NoFiles, &opts).expect("opens");
    assert_eq!(disk.size(), 128 << 30);
    let mut end = 0;
    disk.map_each(|e| {
        end = e.start + e.length;
        Ok(())
    })
    .expect("the map completes within the fuzz limits");
    assert_eq!(end, 128 << 30, "the map covers the whole claimed disk");
    assert!(start.elapsed() < REGRESSION_BUDGET);
}

#[test]
fn every_registered_format_has_a_check_target() {
    for f in qconform_core::formats::FORMATS {
        let target = qconform_fuzz::check_target(f.name());
        assert!(
            qconform_fuzz::TARGETS.iter().any(|(t, _)| *t == target),
            "{} has no fuzz target {target} in qconform_fuzz::TARGETS",
            f.name()
        );
        let manifest = include_str!("../Cargo.toml");
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
}
