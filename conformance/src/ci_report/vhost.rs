//! CI reports of `vhost-user check` and `vhost-user probe`, made beside
//! the commands (which print their own output): the transcript is judged
//! once more by the same rule engine under the same profile, which gives
//! the findings with their message indexes. For `probe`, that transcript is
//! the main conversation (robustness probes run on connections of their
//! own and show in the JUnit verdict through the exit code only).

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
    targets: &Targets,
) -> i32 {
    let judged = judge(transcript, label, profile);
    let detail = |r: &[super::Result]| {
        r.iter()
            .map(|f| format!("{:?} [{}]: {}", f.severity, f.rule.id, f.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let outcome = match (&judged, code) {
        (_, 0) => Outcome::Pass,
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
    let case = Case {
        suite: title.to_owned(),
        name: label.to_owned(),
        outcome,
    };
    let results = judged.unwrap_or_default();
    targets.write_or_fail(title, &[case], &results, code)
}
