//! Reports read back from their JSON: locations, image statistics, omitted
//! findings, rule ids resolved through the registry, and every golden check
//! file of the repository unchanged through a deserialize-serialize round trip.

use qconform_core::report::{ImageStats, Location};
use qconform_core::rules::{qcow2, vhost_user};
use qconform_core::{Finding, Limits, Report};
use std::path::Path;

fn limits(max: usize) -> Limits {
    Limits {
        max_findings_per_rule: max,
        ..Limits::default()
    }
}

#[test]
fn locations_serialize_as_offset_or_message() {
    let mut r = Report::new("c", "vhost-user", &limits(4));
    let rule = &vhost_user::REPLY_ACK_FORMAT;
    r.add_at(rule, Some(Location::Message(7)), 1, || "m".into());
    r.add(rule, Some(0x40), "b");
    r.add(rule, None, "n");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["findings"][0]["message"], 7);
    assert!(v["findings"][0].get("offset").is_none());
    assert_eq!(v["findings"][1]["offset"], 0x40);
    assert!(v["findings"][1].get("message").is_none());
    assert!(v["findings"][2]["offset"].is_null());
    // A conversation's report has no image statistics at all.
    assert!(v.get("image-end-offset").is_none());
    let back: Report = serde_json::from_value(v).unwrap();
    assert_eq!(back.findings, r.findings);
    assert_eq!(back.stats, None);
    assert_eq!(back.findings[0].offset(), None);
    assert_eq!(back.findings[1].offset(), Some(0x40));
}

#[test]
fn omitted_findings_are_tallied_by_rule_and_read_back() {
    let mut r = Report::for_image("i", "qcow2", &limits(1));
    for i in 0..5 {
        r.add_times(&qcow2::REFCOUNT_LEAK, Some(i), 2, "leak");
    }
    r.add(&qcow2::MAGIC, Some(0), "magic");
    assert_eq!(r.findings.len(), 2);
    assert_eq!(r.findings[0].detail, "leak (2 times)");
    assert_eq!(r.leaks, 10);
    assert_eq!(r.count(qcow2::REFCOUNT_LEAK.id), 10);
    assert_eq!(r.findings_omitted().get(qcow2::REFCOUNT_LEAK.id), Some(&8));
    assert!(r.has(&qcow2::MAGIC) && !r.has(&qcow2::VERSION));
    let json = serde_json::to_string(&r).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.findings_omitted(), r.findings_omitted());
    assert_eq!(back.stats, Some(ImageStats::default()));
    assert_eq!(back.exit_code(false), r.exit_code(false));
    // The kept finding stood for 2; read back, it counts once.
    assert_eq!(back.count(qcow2::REFCOUNT_LEAK.id), 9);
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

#[test]
fn unknown_rule_ids_and_double_locations_are_errors() {
    let f = r#"{"rule":"qcow2.no-such-rule","severity":"error","offset":0,"detail":""}"#;
    let e = serde_json::from_str::<Finding>(f).unwrap_err().to_string();
    assert!(e.contains("unknown rule id"), "{e}");
    let f =
        r#"{"rule":"qcow2.header.magic","severity":"error","offset":0,"message":1,"detail":""}"#;
    assert!(serde_json::from_str::<Finding>(f).is_err());
    let f = r#"{"rule":"qcow2.header.magic","severity":"error","offset":0,"detail":""}"#;
    let f: Finding = serde_json::from_str(f).unwrap();
    assert!(std::ptr::eq(f.rule, &qcow2::MAGIC));
    let r = r#"{"filename":"f","format":"qcow2","check-errors":0,"corruptions":0,"leaks":0,
        "violations":0,"findings":[],"findings-omitted":{"nope":1}}"#;
    let e = serde_json::from_str::<Report>(r).unwrap_err().to_string();
    assert!(e.contains("unknown rule id"), "{e}");
}

/// serialize(deserialize(golden)) == golden for every check golden: the
/// typed report holds everything `qconform check --output json` prints.
#[test]
fn every_golden_check_report_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/check");
    let mut n = 0;
    let mut with_stats = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // insta's header ("---\nsource: ...\n---\n"), then the JSON.
        let json = text
            .splitn(3, "---\n")
            .nth(2)
            .unwrap_or_else(|| panic!("{}: no insta header", path.display()))
            .trim_end();
        let report: Report =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        with_stats += report.stats.is_some() as usize;
        let again = serde_json::to_string_pretty(&report).unwrap();
        assert_eq!(again, json, "{} changed in the round trip", path.display());
        n += 1;
    }
    assert!(n >= 100, "only {n} golden check files in {}", dir.display());
    assert_eq!(with_stats, n, "every image report carries its statistics");
}
