//! Replays every committed seed (corpus/fuzz/<target>/) and every minimised
//! crash (corpus/regressions/<target>/) through its target's body.

use std::path::Path;

#[test]
fn seeds_and_regressions_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for (target, body) in qconform_fuzz::TARGETS {
        let mut seeds = 0;
        for dir in ["corpus/fuzz", "corpus/regressions"] {
            let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                {
                    let data = std::fs::read(&p).unwrap();
                    let outcome = std::panic::catch_unwind(|| body(&data));
                    assert!(outcome.is_ok(), "{target} panics on {}", p.display());
                    if dir == "corpus/fuzz" {
                        seeds += 1;
                    }
                }
            }
        }
        assert!(
            seeds > 0,
            "{target} has no seeds under corpus/fuzz/{target}"
        );
    }
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
