//! CI reports of `vhost-user check` and `vhost-user probe`, made beside
//! the commands (which print their own output): the transcript is judged
//! once more by the same rule engine under the same profile, which gives
//! the findings with their message indexes. For `probe`, that transcript is
//! the main conversation; each robustness probe (a connection of its own)
//! is a test case of its own, its findings SARIF results located at
//! "<socket> robustness <probe>", message N of that connection.

use super::{Case, Outcome, Targets};
use qconform_core::vhost_user::session::Profile;
use qconform_core::vhost_user::transcript;
use std::path::Path;

/// Transcripts larger than this are not judged again (`vhost-user check`
/// refuses them too).
const MAX_TRANSCRIPT: u64 = 512 << 20;

/// The findings of the transcript at `path`, or why it cannot be read.
fn judge(path: &Path, label: &str, profile: Profile) -> Result<Vec<super::Result>, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_TRANSCRIPT {
        return Err(format!(
            "{len} bytes; transcripts are at most {MAX_TRANSCRIPT}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (_, entries) = transcript::parse(&text).map_err(|e| e.to_string())?;
    let s = transcript::check(label, &entries, profile);
    Ok(super::results(&s.report().findings, label))
}

/// Writes the reports of a conversation judged with exit code `code`
/// (0 conforming, 1 could not run, 2 findings) from its transcript.
pub fn write(
    title: &str,
    label: &str,
    transcript: &Path,
    profile: Profile,
    code: i32,
    robustness: &[(&str, Vec<qconform_core::report::Finding>)],
    targets: &Targets,
) -> i32 {
    let judged = judge(transcript, label, profile);
    let detail = |r: &[super::Result]| {
        r.iter()
            .map(|f| format!("{:?} [{}]: {}", f.severity, f.rule.id, f.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Findings that fail a case: what probe's exit code counts.
    let failing = |f: &[qconform_core::report::Finding]| {
        f.iter()
            .any(|f| f.severity == qconform_core::Severity::Violation)
    };
    let outcome = match (&judged, code) {
        (_, 0) => Outcome::Pass,
        // Only the robustness probes found something.
        (Ok(r), 2) if r.is_empty() && robustness.iter().any(|(_, f)| failing(f)) => Outcome::Pass,
        (Ok(r), 2) => Outcome::Fail {
            message: "the conversation breaks vhost-user rules".into(),
            detail: detail(r),
        },
        (Ok(r), _) => Outcome::Error {
            message: "the conversation could not be completed".into(),
            detail: detail(r),
        },
        (Err(e), _) => Outcome::Error {
            message: "could not run".into(),
            detail: e.clone(),
        },
    };
    let mut cases = vec![Case {
        suite: title.to_owned(),
        name: label.to_owned(),
        outcome,
    }];
    let mut results = judged.unwrap_or_default();
    for (probe, findings) in robustness {
        let at = format!("{label} robustness {probe}");
        let found = super::results(findings, &at);
        cases.push(Case {
            suite: title.to_owned(),
            name: at,
            outcome: if failing(findings) {
                Outcome::Fail {
                    message: "the back-end mishandled an invalid message".into(),
                    detail: detail(&found),
                }
            } else {
                Outcome::Pass
            },
        });
        results.extend(found);
    }
    targets.write_or_fail(title, &cases, &results, code)
}
