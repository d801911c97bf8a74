//! Golden snapshots of `check --output json` for every corpus image (insta;
//! `INSTA_UPDATE=always cargo test` or `qconform golden update` rewrite them),
//! and the proof that every rule of the registry is triggered by a corpus case.

use qconform::golden::{
    corpus_cases, corpus_images, info_json, map_json, report_json, transcript_json, triggers, Kind,
};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn info_and_map_match_golden_snapshots() {
    let root = root();
    for (dir, f) in [
        ("golden/info", info_json as fn(&Path) -> String),
        ("golden/map", map_json),
    ] {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(root.join(dir));
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| {
            for (name, path) in corpus_images(&root) {
                insta::assert_snapshot!(name.as_str(), f(&path));
            }
        });
    }
}

#[test]
fn transcript_reports_match_golden_snapshots() {
    let root = root();
    let cases: Vec<_> = corpus_cases(&root)
        .into_iter()
        .filter(|c| c.kind == Kind::Transcript)
        .collect();
    assert!(cases.len() >= 40, "corpus/vhost-user is missing transcripts ({} found); run `cargo xtask corpus --only vhost-user`", cases.len());
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root.join("golden/vhost-user"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        for c in &cases {
            insta::assert_snapshot!(c.name.as_str(), transcript_json(&root, &c.path));
        }
    });
}

#[test]
fn corpus_reports_match_golden_snapshots() {
    let root = root();
    let images = corpus_images(&root);
    assert!(
        images.len() >= 90,
        "corpus/images is missing cases ({} found); run `cargo xtask corpus`",
        images.len()
    );
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root.join("golden/check"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        for (name, path) in &images {
            insta::assert_snapshot!(name.as_str(), report_json(&root, name, path));
        }
    });
}

/// Rules no corpus image can trigger, and the test that triggers each.
const TRIGGERED_BY_TESTS: &[(&str, &str)] = &[
    (
        "qed.header.magic",
        "conformance/tests/qed.rs: forced_qed_on_other_bytes_names_the_magic_rule",
    ),
    (
        "parallels.header.magic",
        "conformance/tests/parallels.rs: other_formats_are_not_ours",
    ),
    (
        "vhost-user.robustness.no-crash",
        "conformance/tests/vhost_user.rs: probe_finds_qsd_crash_on_ring_index_100000",
    ),
    (
        "vhost-user.robustness.rejects-invalid",
        "conformance/tests/vhost_user.rs: probe_finds_qsd_crash_on_ring_index_100000",
    ),
    (
        "vhost-user.robustness.tester-policy",
        "conformance/tests/vhost_user.rs: tester_policy_is_a_note_and_a_false_success_ack_a_violation",
    ),
    (
        "input.readable",
        "conformance/tests/cli.rs: missing_file_is_a_check_error",
    ),
    (
        "qcow2.header.magic",
        "conformance/tests/cli.rs: forced_format_on_other_bytes_names_the_magic_rule",
    ),
    (
        "limits.entries-visited",
        "core/tests/hostile.rs: snapshots_sharing_one_l1_hit_the_work_limit",
    ),
    (
        "qcow2.snapshot.table-readable",
        "core/tests/hostile.rs: snapshot_table_over_64_mib_is_refused",
    ),
    // The path policy's file-system rules: a checkout cannot hold a FIFO,
    // and reads (not check) raise the rest.
    (
        "input.regular-file",
        "conformance/tests/paths.rs: fifos_are_never_opened_as_backing_file_data_file_or_image",
    ),
    (
        "policy.name.special-file",
        "conformance/tests/paths.rs: fifos_are_never_opened_as_backing_file_data_file_or_image",
    ),
    (
        "policy.file-not-opened",
        "conformance/tests/paths.rs: fifos_are_never_opened_as_backing_file_data_file_or_image",
    ),
    (
        "policy.name.malformed",
        "core/src/disk/policy.rs: names_are_judged_as_qemu_would_open_them",
    ),
    (
        "input.backing-chain-acyclic",
        "conformance/tests/paths.rs: deep_chains_are_read_and_cycles_are_refused_at_once",
    ),
    (
        "limits.backing-depth",
        "core/tests/hostile.rs: backing_chains_deeper_than_the_cap_are_refused",
    ),
    (
        "input.virtual-size",
        "core/tests/hostile.rs: parallels_with_a_huge_claimed_disk_maps_in_bounded_time",
    ),
];

#[test]
fn every_rule_is_triggered_by_a_corpus_case() {
    let triggered = triggers(&root());
    let mut missing = Vec::new();
    for rule in qconform_core::rules::all() {
        let by_test = TRIGGERED_BY_TESTS.iter().any(|(id, _)| *id == rule.id);
        match (triggered.contains_key(rule.id), by_test) {
            (false, false) => missing.push(rule.id),
            (true, true) => panic!(
                "{} is now triggered by a corpus case; drop it from TRIGGERED_BY_TESTS",
                rule.id
            ),
            _ => {}
        }
    }
    assert!(
        missing.is_empty(),
        "rules no corpus case triggers: {missing:?}"
    );
    for id in triggered.keys() {
        assert!(
            qconform_core::rules::by_id(id).is_some(),
            "golden files name unknown rule {id}"
        );
    }
}
