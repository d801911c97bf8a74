//! `qconform check` over many images at once checks them side by side on
//! every core, yet prints, in input order, exactly what checking each image
//! alone prints, and exits with the most severe of their exit codes
//! (corruptions 2 > could not check 1 > leaks only 3 > clean 0). The images
//! are real: made by qemu-img create and qemu-io writes, some corrupted by
//! the mutators, some unreadable.

use qconform_core::{parallels, qcow2, qed};
use std::path::{Path, PathBuf};
use std::process::Command;

fn qconform() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qconform"))
}

fn run(tool: &str, args: &[&str], dir: &Path) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool} must be installed (qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image qemu-img creates with data qemu-io writes.
fn made(dir: &Path, name: &str, fmt: &str, opts: &str, writes: &[&str]) -> PathBuf {
    let mut create = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        create.extend(["-o", opts]);
    }
    create.extend([name, "8M"]);
    run("qemu-img", &create, dir);
    let mut io = vec!["-f", fmt];
    for w in writes {
        io.extend(["-c", w]);
    }
    io.push(name);
    run("qemu-io", &io, dir);
    dir.join(name)
}

/// A copy of `from` with one corruption applied by `mutate`.
fn corrupted(from: &Path, name: &str, mutate: impl FnOnce(&mut Vec<u8>) -> bool) -> PathBuf {
    let mut img = std::fs::read(from).unwrap();
    assert!(
        mutate(&mut img),
        "{name}: the mutation found nothing to corrupt"
    );
    let to = from.with_file_name(name);
    std::fs::write(&to, img).unwrap();
    to
}

/// Every kind of verdict: clean, leaks only, corruptions, and files that
/// cannot be checked (missing, not an image, a directory).
fn images(dir: &Path) -> Vec<PathBuf> {
    let writes = ["write -P 0x11 0 64k", "write -P 0x22 1M 128k"];
    let q = made(dir, "a.qcow2", "qcow2", "cluster_size=4096", &writes);
    let e = made(dir, "a.qed", "qed", "cluster_size=4096", &writes);
    let p = made(dir, "a.parallels", "parallels", "", &writes);
    let q_leak = corrupted(&q, "leak.qcow2", |i| {
        qcow2::mutate::apply(qcow2::mutate::Mutation::RefcountUp { nth: 3 }, i).is_some()
    });
    let q_bad = corrupted(&q, "bad.qcow2", |i| {
        qcow2::mutate::apply(qcow2::mutate::Mutation::RefcountZero { nth: 1 }, i).is_some()
    });
    let e_bad = corrupted(&e, "bad.qed", |i| {
        qed::mutate::apply(qed::mutate::Mutation::DuplicateData { nth: 2 }, i).is_some()
    });
    let e_leak = corrupted(&e, "leak.qed", |i| {
        qed::mutate::apply(qed::mutate::Mutation::Leak, i).is_some()
    });
    let p_bad = corrupted(&p, "bad.parallels", |i| {
        parallels::mutate::apply(parallels::mutate::Mutation::BatDuplicate { nth: 1 }, i).is_some()
    });
    let p_leak = corrupted(&p, "leak.parallels", |i| {
        parallels::mutate::apply(parallels::mutate::Mutation::Leak, i).is_some()
    });
    let garbage = dir.join("garbage.img");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    let folder = dir.join("folder.qcow2");
    std::fs::create_dir(&folder).unwrap();
    vec![
        q,
        e,
        p,
        q_leak,
        q_bad,
        e_bad,
        e_leak,
        p_bad,
        p_leak,
        garbage,
        folder,
        dir.join("missing.qcow2"),
    ]
}

/// (exit code, stdout) of `qconform check` on `paths` with `threads` rayon threads.
fn check(paths: &[PathBuf], json: bool, threads: usize) -> (i32, String) {
    let mut cmd = qconform();
    cmd.args(["check", "-q"])
        .env("RAYON_NUM_THREADS", threads.to_string());
    if json {
        cmd.args(["--output", "json"]);
    }
    let out = cmd.args(paths).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// The exit-code order of several images: corruptions > could not check > leaks only > clean.
fn worst(codes: impl IntoIterator<Item = i32>) -> i32 {
    let rank = |c: i32| [0, 3, 1, 2].iter().position(|&x| x == c).unwrap();
    codes.into_iter().max_by_key(|&c| rank(c)).unwrap()
}

/// A fixed shuffle of `n` picks among `kinds` images: every kind several
/// times, in no sorted order, long enough that both cores take turns.
fn list(kinds: &[PathBuf], n: usize) -> Vec<PathBuf> {
    let mut x = 0x2545_f491_u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            kinds[(x % kinds.len() as u64) as usize].clone()
        })
        .collect()
}

#[test]
fn many_images_print_and_exit_as_each_checked_alone_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = images(dir.path());
    // Each image alone: the verdicts the combined run must reproduce.
    let alone: Vec<(i32, serde_json::Value, String)> = kinds
        .iter()
        .map(|k| {
            let (code, json) = check(std::slice::from_ref(k), true, 1);
            let (human_code, human) = check(std::slice::from_ref(k), false, 1);
            assert_eq!(code, human_code, "{}", k.display());
            (code, serde_json::from_str(&json).unwrap(), human)
        })
        .collect();
    let codes: Vec<i32> = alone.iter().map(|a| a.0).collect();
    // The set covers every verdict, or the test proves less than it says.
    for want in [0, 1, 2, 3] {
        assert!(codes.contains(&want), "no image exits {want}: {codes:?}");
    }
    let paths = list(&kinds, 120);
    let index = |p: &PathBuf| kinds.iter().position(|k| k == p).unwrap();
    let expected_json: Vec<serde_json::Value> =
        paths.iter().map(|p| alone[index(p)].1.clone()).collect();
    let expected_human: String = paths.iter().map(|p| alone[index(p)].2.as_str()).collect();
    let expected_code = worst(paths.iter().map(|p| alone[index(p)].0));
    assert_eq!(expected_code, 2);
    for threads in [1, 2, 4] {
        let (code, json) = check(&paths, true, threads);
        assert_eq!(code, expected_code, "{threads} threads, JSON");
        let got: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            got,
            serde_json::Value::Array(expected_json.clone()),
            "{threads} threads: the JSON reports differ from those of each image alone, in input order"
        );
        let (code, human) = check(&paths, false, threads);
        assert_eq!(code, expected_code, "{threads} threads, text");
        assert_eq!(human, expected_human, "{threads} threads: text output");
    }
}

#[test]
fn the_exit_code_of_many_images_is_the_most_severe_whatever_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = images(dir.path());
    let alone: Vec<i32> = kinds
        .iter()
        .map(|k| check(std::slice::from_ref(k), true, 1).0)
        .collect();
    let of = |code: i32| -> Vec<PathBuf> {
        kinds
            .iter()
            .zip(&alone)
            .filter(|(_, &c)| c == code)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let (clean, unreadable, bad, leaky) = (of(0), of(1), of(2), of(3));
    // Mixes whose worst verdict sits first, last and among many others.
    let cases: Vec<(Vec<PathBuf>, i32)> = vec![
        ([clean.clone(), clean.clone()].concat(), 0),
        ([leaky.clone(), clean.clone()].concat(), 3),
        ([clean.clone(), leaky.clone()].concat(), 3),
        (
            [clean.clone(), unreadable.clone(), leaky.clone()].concat(),
            1,
        ),
        (
            [leaky.clone(), clean.clone(), unreadable.clone()].concat(),
            1,
        ),
        (
            [unreadable.clone(), bad[..1].to_vec(), leaky.clone()].concat(),
            2,
        ),
        (
            [clean.clone(), leaky.clone(), bad[..1].to_vec()].concat(),
            2,
        ),
    ];
    for (paths, want) in cases {
        for threads in [1, 2, 4] {
            assert_eq!(
                check(&paths, true, threads).0,
                want,
                "{threads} threads: {paths:?}"
            );
        }
    }
}
