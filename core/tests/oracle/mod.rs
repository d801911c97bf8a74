//! The oracles the property tests share (writer.rs, qed_parallels.rs,
//! structured.rs): what "a written image is clean" and "a mutation is
//! caught" mean.

use qconform_core::report::Report;
use qconform_core::rules::Rule;

/// A written image checks clean: no finding at all (even counting
/// violations), exit code 0, and every byte of the file owned.
pub fn clean(report: &Report, image_len: usize) -> Result<(), String> {
    if !report.findings.is_empty() {
        return Err(format!(
            "findings on a written image: {:#?}",
            report.findings
        ));
    }
    if report.exit_code(true) != 0 {
        return Err(format!(
            "exit code {} on a clean image",
            report.exit_code(true)
        ));
    }
    let end = report.stats.as_ref().and_then(|s| s.image_end_offset);
    if end != Some(image_len as u64) {
        return Err(format!("image end {end:?}, the file is {image_len} bytes"));
    }
    Ok(())
}

/// Every rule a mutation names is reported on the mutated image.
pub fn caught(
    what: &dyn std::fmt::Debug,
    expected: &[&Rule],
    report: &Report,
) -> Result<(), String> {
    for rule in expected {
        if !report.findings.iter().any(|f| f.rule.id == rule.id) {
            let got: Vec<&str> = report.findings.iter().map(|f| f.rule.id).collect();
            return Err(format!("{what:?}: {rule} not reported; got {got:?}"));
        }
    }
    Ok(())
}
