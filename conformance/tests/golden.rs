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
        "qcow2.header.data-file-unnamed",
        "conformance/tests/paths.rs: a_data_file_bit_without_a_name_checks_with_a_note_and_is_not_read",
    ),
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
        "limits.table-bytes",
        "core/tests/hostile_bounds.rs: qcow2_tables_above_max_table_bytes_are_refused_under_limits_table_bytes",
    ),
    (
        "parallels.header.disk-size-limit",
        "core/tests/hostile_bounds.rs: parallels_disk_size_is_capped_like_qemu",
    ),
    (
        "limits.header-extensions",
        "core/tests/hostile_bounds.rs: qcow2_100000_header_extensions_are_valid_and_capped_under_their_own_rule",
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
        "core/src/disk/chain.rs: sizes_above_bdrv_max_length_are_refused",
    ),    (
        "upload.backing-file",
        "conformance/tests/upload_policy.rs: backing_files_are_refused",
    ),
    (
        "upload.data-file",
        "conformance/tests/upload_policy.rs: external_data_files_are_refused",
    ),
    (
        "upload.encryption",
        "conformance/tests/upload_policy.rs: encryption_is_refused",
    ),
    (
        "upload.feature-unknown",
        "conformance/tests/upload_policy.rs: unknown_incompatible_and_autoclear_features_are_refused",
    ),
    (
        "upload.format-declared",
        "conformance/tests/upload_policy.rs: a_format_other_than_the_declared_one_is_refused",
    ),
    (
        "upload.polyglot",
        "conformance/tests/upload_policy.rs: a_polyglot_is_refused",
    ),
    (
        "upload.virtual-size",
        "conformance/tests/upload_policy.rs: a_virtual_size_above_the_cap_is_refused",
    ),
    (
        "upload.compression-ratio",
        "conformance/tests/upload_policy.rs: a_compression_bomb_is_refused",
    ),
    (
        "upload.snapshot-count",
        "conformance/tests/upload_policy.rs: snapshot_and_bitmap_counts_above_the_caps_are_refused",
    ),
    (
        "upload.bitmap-count",
        "conformance/tests/upload_policy.rs: snapshot_and_bitmap_counts_above_the_caps_are_refused",
    ),    (
        "vhost-user.ring.stopped-not-processed",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "vhost-user.ring.get-base-is-next-avail",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "vhost-user.ring.call-fires",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.used.id-posted",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.used.len-within-buffer",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.used.index-counts-returned",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.device.writes-only-writable-buffers",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.used.request-completed",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.blk.status",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.blk.read-after-write",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.blk.get-id",
        "conformance/tests/vhost_datapath.rs: each_broken_ring_rule_is_reported_under_its_id",
    ),
    (
        "virtio.rng.fills-buffer",
        "conformance/tests/vhost_datapath.rs: an_entropy_device_returning_empty_buffers_is_reported",
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

/// The golden body (JSON) of one image, or None when the file is missing.
fn golden(dir: &str, name: &str) -> Option<serde_json::Value> {
    let body = qconform::golden::read_snap(&root().join(dir).join(format!("{name}.snap")))?;
    serde_json::from_str(&body).ok()
}

#[test]
fn every_corpus_image_of_a_registered_format_is_listed_and_has_golden_files() {
    let root = root();
    let listed: Vec<PathBuf> = corpus_images(&root).into_iter().map(|(_, p)| p).collect();
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("corpus/images"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files {
        let src = qconform_core::source::FileSource::open(&path).unwrap();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let by_magic = qconform_core::formats::probe(&src);
        let by_ext = qconform_core::formats::FORMATS
            .iter()
            .find(|f| f.extension() == ext);
        if let Some(f) = by_magic {
            if by_ext.is_none() {
                problems.push(format!(
                    "{}: a {} image not named .{}",
                    path.display(),
                    f.name(),
                    f.extension()
                ));
            }
        }
        if by_magic.is_none() && by_ext.is_none() {
            continue; // raw data files of qcow2 images
        }
        if !listed.contains(&path) {
            problems.push(format!("{}: not listed as a corpus image", path.display()));
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        for dir in ["golden/check", "golden/info", "golden/map"] {
            if golden(dir, name).is_none() {
                problems.push(format!("{name}: no {dir}/{name}.snap"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn goldens_record_no_error_for_an_image_check_can_read() {
    let root = root();
    let limits = qconform_core::Limits::default();
    let mut problems = Vec::new();
    let mut info_ok = std::collections::BTreeMap::new();
    for (name, path) in corpus_images(&root) {
        let report = qconform::check::check_file(&path, None, &limits);
        let code = report.exit_code(false);
        let (Some(check), Some(info), Some(map)) = (
            golden("golden/check", &name),
            golden("golden/info", &name),
            golden("golden/map", &name),
        ) else {
            continue; // the test above names missing golden files
        };
        if code == 1 {
            continue;
        }
        if check["check-errors"] != 0 {
            problems.push(format!(
                "{name}: check reads it, golden/check records check errors"
            ));
        }
        if let Some(e) = info.get("error") {
            problems.push(format!(
                "{name}: check reads it (exit {code}), golden/info records {e}"
            ));
        } else {
            *info_ok.entry(report.format.clone()).or_insert(0) += 1;
        }
        // A corrupt image may be refused by map (as qemu-img map refuses it);
        // a clean or leaking one must map, unless it is encrypted (never
        // decrypted) or names a file the path policy refuses (check reports
        // that rule too: the refusal is the point).
        let encrypted = info["header"]["crypt_method"].as_u64().unwrap_or(0) != 0;
        let refused_by_policy = map.get("error").and_then(|e| e.as_str()).is_some_and(|e| {
            report
                .findings
                .iter()
                .any(|f| f.rule.id.starts_with("policy.") && e.contains(f.rule.id))
        });
        if let (Some(e), 0 | 3, false, false) =
            (map.get("error"), code, encrypted, refused_by_policy)
        {
            problems.push(format!(
                "{name}: check exits {code}, golden/map records {e}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    for f in qconform_core::formats::FORMATS {
        assert!(
            info_ok.get(f.name()).is_some_and(|&n| n >= 2),
            "too few {} images with an info golden: {info_ok:?}",
            f.name()
        );
    }
}
