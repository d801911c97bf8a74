//! `qconform rules`: the registry, with the corpus cases that trigger each rule.

use crate::Output;
use qconform_core::rules;

pub fn run(output: Output) -> i32 {
    let triggers = crate::golden::triggers(std::path::Path::new("."));
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> = rules::all()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["corpus_cases"] =
                        serde_json::json!(triggers.get(r.id).cloned().unwrap_or_default());
                    v
                })
                .collect();
            crate::outln!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
        }
        Output::Human => {
            for r in rules::all() {
                let cases = triggers.get(r.id).map_or(0, |c| c.len());
                crate::outln!(
                    "{:<48} {:<10} {} §{} [{cases} corpus cases]\n    {}",
                    r.id,
                    format!("{:?}", r.severity).to_lowercase(),
                    r.spec,
                    r.section,
                    r.summary
                );
            }
        }
    }
    0
}
