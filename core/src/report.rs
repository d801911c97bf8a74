//! Findings and the report of one check.
//!
//! The counters keep the meaning of `qemu-img check`'s ImageCheck fields so a
//! user can read both side by side; `findings` adds what each one is about.

use crate::limits::Limits;
use crate::rules::Rule;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

pub use crate::rules::Severity;

/// One thing the checker found, at one place of the file.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(serialize_with = "rule_id")]
    /// The rule the finding is about (serialized as its id).
    pub rule: &'static Rule,
    /// The severity the finding counts under (the rule's default).
    pub severity: Severity,
    /// Byte offset in the image file of the structure the finding is about.
    pub offset: Option<u64>,
    /// What was seen, in words (values found, the limit they break).
    pub detail: String,
}

fn rule_id<S: Serializer>(rule: &&'static Rule, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(rule.id)
}

/// The result of checking one image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// The name of the image checked, as given by the caller.
    pub filename: String,
    /// The format name ("qcow2", "qed", "parallels", "vhost-user").
    pub format: String,
    /// Findings of severity Error: checks that could not run (qemu-img's check-errors).
    pub check_errors: u64,
    /// Findings of severity Corruption (qemu-img's corruptions).
    pub corruptions: u64,
    /// Findings of severity Leak: clusters allocated but unreferenced (qemu-img's leaks).
    pub leaks: u64,
    /// Findings of severity Violation: spec rules broken that qemu-img does not count.
    pub violations: u64,
    /// Byte offset where the image's last used cluster ends, as qemu-img check
    /// reports it; None when not computed.
    pub image_end_offset: Option<u64>,
    /// Clusters of the virtual disk (virtual size / cluster size, rounded up;
    /// Parallels: BAT entries), when known.
    pub total_clusters: Option<u64>,
    /// Guest clusters that are allocated, when known.
    pub allocated_clusters: Option<u64>,
    /// Allocated clusters not contiguous with the previous one in the file, when known.
    pub fragmented_clusters: Option<u64>,
    /// Compressed clusters, when known.
    pub compressed_clusters: Option<u64>,
    /// The findings kept, at most `Limits::max_findings_per_rule` per rule.
    pub findings: Vec<Finding>,
    /// Findings left out of `findings` per rule once a rule reached
    /// `Limits::max_findings_per_rule`; the counters include them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub findings_omitted: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    max_findings_per_rule: usize,
    /// Per rule: occurrences (including omitted findings and repetitions)
    /// and findings kept. One map, so a finding costs one lookup.
    #[serde(skip)]
    per_rule: BTreeMap<&'static str, RuleTally>,
}

#[derive(Debug, Clone, Copy, Default)]
struct RuleTally {
    count: u64,
    kept: usize,
}

impl Report {
    /// An empty report for `filename` of `format`, keeping at most `limits.max_findings_per_rule` findings per rule.
    pub fn new(filename: &str, format: &str, limits: &Limits) -> Self {
        Report {
            filename: filename.to_owned(),
            format: format.to_owned(),
            check_errors: 0,
            corruptions: 0,
            leaks: 0,
            violations: 0,
            image_end_offset: None,
            total_clusters: None,
            allocated_clusters: None,
            fragmented_clusters: None,
            compressed_clusters: None,
            findings: Vec::new(),
            findings_omitted: BTreeMap::new(),
            max_findings_per_rule: limits.max_findings_per_rule,
            per_rule: BTreeMap::new(),
        }
    }

    /// Records a finding of `rule` at its default severity.
    pub fn add(&mut self, rule: &'static Rule, offset: Option<u64>, detail: impl Into<String>) {
        self.add_times(rule, offset, 1, detail);
    }

    /// Records a finding that occurred `times` times (one structure reached
    /// through several references); the counters grow by `times`, as
    /// qemu-img's do, the finding list by one.
    pub fn add_times(
        &mut self,
        rule: &'static Rule,
        offset: Option<u64>,
        times: u64,
        detail: impl Into<String>,
    ) {
        self.add_with(rule, offset, times, || detail.into());
    }

    /// Like [`Report::add_times`], with the detail built only if the
    /// finding is kept: past `max_findings_per_rule` a finding costs a
    /// count, not a formatted string. Hot paths (one finding per table
    /// entry of a hostile image) use this.
    pub fn add_with(
        &mut self,
        rule: &'static Rule,
        offset: Option<u64>,
        times: u64,
        detail: impl FnOnce() -> String,
    ) {
        match rule.severity {
            Severity::Error => self.check_errors += times,
            Severity::Corruption => self.corruptions += times,
            Severity::Leak => self.leaks += times,
            Severity::Violation => self.violations += times,
            Severity::Note => {}
        }
        let tally = self.per_rule.entry(rule.id).or_default();
        tally.count += times;
        if tally.kept < self.max_findings_per_rule {
            tally.kept += 1;
            let mut detail = detail();
            if times > 1 {
                detail.push_str(&format!(" ({times} times)"));
            }
            self.findings.push(Finding {
                rule,
                severity: rule.severity,
                offset,
                detail,
            });
        } else {
            *self.findings_omitted.entry(rule.id).or_insert(0) += times;
        }
    }

    /// Moves every finding of `rule` (and its count, omitted ones
    /// included) to `severity`, or drops them all with None: what a policy
    /// re-grading or silencing a rule does to a finished report.
    pub fn regrade(&mut self, rule: &Rule, severity: Option<Severity>) {
        let Some(count) = self.per_rule.get(rule.id).map(|t| t.count) else {
            return;
        };
        let now = self
            .findings
            .iter()
            .find(|f| f.rule.id == rule.id)
            .map_or(rule.severity, |f| f.severity);
        if let Some(c) = self.counter(now) {
            *c = c.saturating_sub(count);
        }
        match severity {
            Some(s) => {
                if let Some(c) = self.counter(s) {
                    *c += count;
                }
                for f in self.findings.iter_mut().filter(|f| f.rule.id == rule.id) {
                    f.severity = s;
                }
            }
            None => {
                self.findings.retain(|f| f.rule.id != rule.id);
                self.findings_omitted.remove(rule.id);
                self.per_rule.remove(rule.id);
            }
        }
    }

    fn counter(&mut self, severity: Severity) -> Option<&mut u64> {
        match severity {
            Severity::Error => Some(&mut self.check_errors),
            Severity::Corruption => Some(&mut self.corruptions),
            Severity::Leak => Some(&mut self.leaks),
            Severity::Violation => Some(&mut self.violations),
            Severity::Note => None,
        }
    }

    /// How often `rule` was violated (counting repetitions and omitted findings).
    pub fn count(&self, rule_id: &str) -> u64 {
        self.per_rule.get(rule_id).map_or(0, |t| t.count)
    }

    /// Whether any finding of `rule` was recorded.
    pub fn has(&self, rule: &Rule) -> bool {
        self.per_rule.contains_key(rule.id)
    }

    /// Why parsing stopped, as the crate's error: the first check error
    /// (else the first finding) with its rule and offset.
    #[cold]
    pub fn into_error(self) -> crate::Error {
        let f = self
            .findings
            .iter()
            .find(|f| f.severity == Severity::Error)
            .or(self.findings.first());
        match f {
            Some(f) => crate::Error::rule(f.rule, f.offset, f.detail.clone()),
            None => crate::Error::Unsupported(format!("{}: unreadable", self.filename)),
        }
    }

    /// Exit code with qemu-img check's meaning: 0 clean, 1 check not
    /// completed, 2 corruptions, 3 leaks only. `strict` counts violations as
    /// corruptions.
    pub fn exit_code(&self, strict: bool) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 || (strict && self.violations > 0) {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}
