//! Fuzz target bodies. Each target under fuzz_targets/ is one line calling a
//! function here, so the same code runs under libFuzzer (`cargo fuzz run`),
//! as a plain binary replaying files (`cargo run -p qconform-fuzz --bin T
//! FILE...`), and in `cargo test` over the seeds and regressions.

use qconform_core::{qcow2, Limits};

/// Limits for fuzzing: small enough that no input takes more than a few
/// milliseconds, so libFuzzer finds hangs as our limits, not as timeouts.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_entries_visited: 1 << 22,
        ..Limits::default()
    }
}

/// qcow2_check: raw bytes as a qcow2 image through the full checker and the
/// metadata parser. The checker must return a report for any input.
pub fn qcow2_check(data: &[u8]) {
    let limits = fuzz_limits();
    let report = qcow2::check(&data, "fuzz", &limits);
    assert!((0..=3).contains(&report.exit_code(false)));
    // Every finding names a rule of the registry.
    for f in &report.findings {
        assert!(qconform_core::rules::by_id(f.rule.id).is_some());
    }
    let _ = qcow2::check::info(&data, "fuzz", &limits);
}

/// All targets by name, for the replay test and `main` of a plain build.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[("qcow2_check", qcow2_check)];

/// `main` of a target built without libFuzzer: runs the body on every file
/// named on the command line (directories are walked one level deep).
pub fn replay_main(body: fn(&[u8])) {
    let mut n = 0;
    for arg in std::env::args().skip(1) {
        let path = std::path::PathBuf::from(&arg);
        let files: Vec<_> = if path.is_dir() {
            std::fs::read_dir(&path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![path]
        };
        for f in files {
            match std::fs::read(&f) {
                Ok(data) => {
                    body(&data);
                    n += 1;
                }
                Err(e) => eprintln!("{}: {e}", f.display()),
            }
        }
    }
    eprintln!("replayed {n} inputs");
}
