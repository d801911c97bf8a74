//! SARIF 2.1.0 (OASIS): one run of the tool "qconform" whose driver lists
//! every rule of the registry (id, summary, the spec section as help text,
//! the default level), and one result per finding, located by file and byte
//! offset (images) or by message index (vhost-user conversations).

use super::{Location, Result};
use qconform_core::Severity;
use serde_json::{json, Value};

/// SARIF's level of a finding of `severity`: what stops the image from
/// being used is an error, spec breaks and leaks are warnings.
pub fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error | Severity::Corruption => "error",
        Severity::Leak | Severity::Violation => "warning",
        Severity::Note => "note",
    }
}

/// The SARIF log of `results`, pretty JSON.
pub fn render(results: &[Result]) -> String {
    let rules: Vec<&'static qconform_core::rules::Rule> = qconform_core::rules::all().collect();
    let descriptors: Vec<Value> = rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "shortDescription": { "text": r.summary },
                "help": { "text": format!("{} §{}", r.spec, r.section) },
                "defaultConfiguration": { "level": level(r.severity) },
                "properties": { "spec": r.spec, "section": r.section },
            })
        })
        .collect();
    let results: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut v = json!({
                "ruleId": r.rule.id,
                "level": level(r.severity),
                "message": { "text": if r.message.is_empty() { r.rule.summary } else { r.message.as_str() } },
                "locations": [location(&r.location)],
            });
            if let Some(i) = rules.iter().position(|x| x.id == r.rule.id) {
                v["ruleIndex"] = json!(i);
            }
            v
        })
        .collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "qconform",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": descriptors,
            }},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&log).unwrap_or_default()
}

fn location(l: &Location) -> Value {
    match l {
        Location::Byte { file, offset } => {
            let mut physical = json!({ "artifactLocation": { "uri": uri(file) } });
            if let Some(o) = offset {
                physical["region"] = json!({ "byteOffset": o });
            }
            json!({ "physicalLocation": physical })
        }
        Location::Message { file, index } => {
            let mut v = json!({ "physicalLocation": { "artifactLocation": { "uri": uri(file) } } });
            if let Some(i) = index {
                v["logicalLocations"] = json!([{
                    "name": format!("message {i}"),
                    "fullyQualifiedName": format!("{file}/message[{i}]"),
                    "kind": "element",
                }]);
                v["message"] = json!({ "text": format!("message {i} of the conversation") });
            }
            v
        }
    }
}

/// A path as a URI reference: relative paths stay relative (SARIF consumers
/// resolve them against the checkout), absolute ones become file:// URIs;
/// everything but unreserved characters and '/' is percent-encoded.
pub fn uri(path: &str) -> String {
    let mut s = String::new();
    if path.starts_with('/') {
        s.push_str("file://");
    }
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}
