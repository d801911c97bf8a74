//! Runs .clusterfuzzlite/build.sh as the OSS-Fuzz base-builder image does
//! ($SRC holding the checkout, an empty $OUT, the base image's nightly as
//! the toolchain) and checks that every fuzz target lands in $OUT with its
//! options, its dictionary and its seed corpus.
//!
//! The build is a real `cargo fuzz build -O --debug-assertions` (ASan,
//! release) into target/cflite, kept between runs: a nested cargo in the
//! workspace's own target dir would wait for the lock `cargo test` holds.

use std::path::Path;
use std::process::Command;

#[test]
fn build_sh_puts_every_target_with_its_options_and_dictionary_in_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root, src.path().join("qconform")).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join(".clusterfuzzlite/build.sh"))
        .env("SRC", src.path())
        .env("OUT", out.path())
        .env("WORK", work.path())
        .env("SANITIZER", "address")
        .env("FUZZING_ENGINE", "libfuzzer")
        .env("FUZZING_LANGUAGE", "rust")
        .env("ARCHITECTURE", "x86_64")
        .env("CARGO_TARGET_DIR", root.join("target/cflite"));
    // The base image's cargo is a nightly; here rustup's proxy picks it.
    // Nothing of this test's own (stable) cargo may leak into the build.
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUSTUP_TOOLCHAIN", "nightly");
    let result = cmd.output().expect("bash runs build.sh");
    assert!(
        result.status.success(),
        "build.sh failed (cargo-fuzz and a nightly toolchain are needed: \
         `cargo install --locked cargo-fuzz`):\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    for (t, _) in qconform_fuzz::TARGETS {
        let bin = out.path().join(t);
        let meta = std::fs::metadata(&bin).unwrap_or_else(|e| panic!("$OUT/{t}: {e}"));
        assert!(meta.len() > 0, "$OUT/{t} is empty");
        let help = Command::new(&bin).arg("-help=1").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stderr).contains("libFuzzer"),
            "$OUT/{t} is not a libFuzzer binary"
        );
        let options = std::fs::read_to_string(out.path().join(format!("{t}.options")))
            .unwrap_or_else(|e| panic!("$OUT/{t}.options: {e}"));
        assert_eq!(
            options,
            std::fs::read_to_string(root.join("fuzz/options").join(format!("{t}.options")))
                .unwrap()
        );
        if let Some(dict) = options.lines().find_map(|l| l.strip_prefix("dict = ")) {
            assert!(
                out.path().join(dict.trim()).is_file(),
                "$OUT/{dict} (named by {t}.options) is missing"
            );
        }
        let zip = out.path().join(format!("{t}_seed_corpus.zip"));
        assert!(zip.is_file(), "$OUT/{t}_seed_corpus.zip is missing");
    }
}
