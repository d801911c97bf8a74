//! `qconform vhost-user check FILE`: the rule engine over a transcript.

use crate::Output;
use qconform_core::vhost_user::session::Profile;
use qconform_core::vhost_user::transcript;
use qconform_core::Location;
use std::path::Path;

/// Checks a transcript file; exit 0 conforming, 1 unreadable, 2 findings.
pub fn run(path: &Path, output: Output, profile: Profile) -> i32 {
    let name = path.display().to_string();
    // Bounded read: a transcript larger than this is not one we made.
    const MAX_TRANSCRIPT: u64 = 512 << 20;
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_TRANSCRIPT => {
            eprintln!(
                "qconform: {name}: {} bytes; transcripts are at most {MAX_TRANSCRIPT}",
                m.len()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("qconform: cannot read {name}: {e}");
            return 1;
        }
        _ => {}
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("qconform: cannot read {name}: {e}");
            return 1;
        }
    };
    let entries = match transcript::parse(&text) {
        Ok((_, e)) => e,
        Err(e) => {
            eprintln!("qconform: {name}: {e}");
            return 1;
        }
    };
    let session = transcript::check(&name, &entries, profile);
    print_report(&name, session.messages(), session.report(), output);
    if session.report().violations > 0 {
        2
    } else {
        0
    }
}

/// Prints a conversation's findings.
pub fn print_report(name: &str, messages: u64, report: &qconform_core::Report, output: Output) {
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "conversation": name,
                "messages": messages,
                "violations": report.violations,
                "findings": report.findings,
                "findings-omitted": report.findings_omitted(),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Human => {
            for f in &report.findings {
                let sev = format!("{:?}", f.severity).to_uppercase();
                let at = match f.location {
                    Some(Location::Message(i) | Location::Byte(i)) => format!(" at message {i}"),
                    None => String::new(),
                };
                println!(
                    "{name}: {sev} [{}]{at}: {} ({} §{})",
                    f.rule.id, f.detail, f.rule.spec, f.rule.section
                );
            }
            println!(
                "{name}: {messages} messages, {} violations",
                report.violations
            );
        }
    }
}
