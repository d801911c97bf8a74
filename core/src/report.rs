//! Findings and the report of one check.
//!
//! The counters keep the meaning of `qemu-img check`'s ImageCheck fields so a
//! user can read both side by side; `findings` adds what each one is about.
//! A report reads back from its own JSON ([`Deserialize`]): rule ids become
//! the registry's rules again, so a consumer of `qconform check
//! --output=json` works with the same types the checker does.

use crate::hash::FastMap;
use crate::limits::Limits;
use crate::rules::{self, Rule};
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

pub use crate::rules::Severity;

/// Where a finding is: a place in a file or a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Byte offset in the image file of the structure the finding is about
    /// (JSON `"offset"`).
    Byte(u64),
    /// Number of the vhost-user message the finding is about, counted from
    /// 0 in the order the conversation carried them (JSON `"message"`).
    Message(u64),
}

/// One thing the checker found, at one place of the file or conversation.
///
/// JSON: `{"rule", "severity", "offset" | "message", "detail"}`; a finding
/// without a location says `"offset": null`, as image findings always did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule the finding is about (serialized as its id).
    pub rule: &'static Rule,
    /// The severity the finding counts under (the rule's default).
    pub severity: Severity,
    /// Where the finding is, when it is about one place.
    pub location: Option<Location>,
    /// What was seen, in words (values found, the limit they break).
    pub detail: String,
}

impl Finding {
    /// The byte offset in the image file, for a finding located by one.
    pub fn offset(&self) -> Option<u64> {
        match self.location {
            Some(Location::Byte(o)) => Some(o),
            _ => None,
        }
    }
}

impl Serialize for Finding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("rule", self.rule.id)?;
        m.serialize_entry("severity", &self.severity)?;
        match self.location {
            Some(Location::Message(i)) => m.serialize_entry("message", &i)?,
            Some(Location::Byte(o)) => m.serialize_entry("offset", &o)?,
            None => m.serialize_entry("offset", &None::<u64>)?,
        }
        m.serialize_entry("detail", &self.detail)?;
        m.end()
    }
}

/// A finding as JSON holds it, before its rule is looked up.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingJson {
    rule: String,
    severity: Severity,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    message: Option<u64>,
    detail: String,
}

impl<'de> Deserialize<'de> for Finding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = FindingJson::deserialize(d)?;
        let location = match (f.offset, f.message) {
            (Some(_), Some(_)) => {
                return Err(D::Error::custom(
                    "a finding has an offset or a message number, not both",
                ))
            }
            (Some(o), None) => Some(Location::Byte(o)),
            (None, Some(i)) => Some(Location::Message(i)),
            (None, None) => None,
        };
        Ok(Finding {
            rule: registered::<D::Error>(&f.rule)?,
            severity: f.severity,
            location,
            detail: f.detail,
        })
    }
}

/// The registry's rule of `id`; an id the registry lacks is an error (a
/// report from another version of qconform, or not a report at all).
fn registered<E: serde::de::Error>(id: &str) -> Result<&'static Rule, E> {
    rules::by_id(id).ok_or_else(|| E::custom(format!("unknown rule id {id:?}")))
}

/// What an image check measures of the image as a whole, with the names
/// and meaning of qemu-img check's ImageCheck fields. `None` where the check
/// stopped before it could count (serialized as `null`).
///
/// Deserializing needs all five keys, so a report without them (a
/// conversation's) reads back without statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageStats {
    /// Byte offset where the image's last used cluster ends.
    #[serde(deserialize_with = "required")]
    pub image_end_offset: Option<u64>,
    /// Clusters of the virtual disk (virtual size / cluster size, rounded
    /// up; Parallels: BAT entries).
    #[serde(deserialize_with = "required")]
    pub total_clusters: Option<u64>,
    /// Guest clusters that are allocated.
    #[serde(deserialize_with = "required")]
    pub allocated_clusters: Option<u64>,
    /// Allocated clusters not contiguous with the previous one in the file.
    #[serde(deserialize_with = "required")]
    pub fragmented_clusters: Option<u64>,
    /// Compressed clusters.
    #[serde(deserialize_with = "required")]
    pub compressed_clusters: Option<u64>,
}

/// A field that must be present, though it may be `null` (serde lets a
/// missing `Option` field default to `None`; a `deserialize_with` one not).
fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)
}

/// The result of checking one image or one conversation.
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
    /// The image's statistics, for the report of an image ([`Report::for_image`]);
    /// `None` for a conversation. Their keys sit among the counters in JSON,
    /// where qemu-img check puts them.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ImageStats>,
    /// The findings kept, at most `Limits::max_findings_per_rule` per rule.
    pub findings: Vec<Finding>,
    /// Per rule, findings left out of `findings` once the rule reached
    /// `Limits::max_findings_per_rule` (the counters include them); JSON
    /// `"findings-omitted": {id: count}` in id order, absent when none.
    #[serde(
        rename = "findings-omitted",
        serialize_with = "omitted_by_id",
        skip_serializing_if = "Tallies::none_omitted"
    )]
    tallies: Tallies,
    #[serde(skip)]
    max_findings_per_rule: usize,
}

/// Per rule: occurrences (including omitted findings and repetitions),
/// findings kept and findings omitted, keyed by the rule's address. The
/// rules are statics, so the address is the identity: one multiply to hash,
/// no string compared per finding (a compare a fuzzer's CMP tracing would
/// also turn into dictionary entries).
#[derive(Debug, Clone, Default)]
struct Tallies(FastMap<usize, RuleTally>);

#[derive(Debug, Clone, Copy)]
struct RuleTally {
    rule: &'static Rule,
    count: u64,
    kept: usize,
    omitted: u64,
}

impl Tallies {
    fn of(&mut self, rule: &'static Rule) -> &mut RuleTally {
        self.0.entry(address(rule)).or_insert(RuleTally {
            rule,
            count: 0,
            kept: 0,
            omitted: 0,
        })
    }

    fn get(&self, rule: &Rule) -> Option<&RuleTally> {
        self.0.get(&address(rule))
    }

    fn omitted(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .values()
            .filter(|t| t.omitted > 0)
            .map(|t| (t.rule.id, t.omitted))
            .collect()
    }

    fn none_omitted(&self) -> bool {
        self.0.values().all(|t| t.omitted == 0)
    }
}

fn address(rule: &Rule) -> usize {
    rule as *const Rule as usize
}

fn omitted_by_id<S: Serializer>(t: &Tallies, s: S) -> Result<S::Ok, S::Error> {
    t.omitted().serialize(s)
}

/// A finding's detail text, built only if the finding is kept: pass
/// `format_args!(..)` rather than `format!(..)`, so that the thousands of
/// findings a hostile table yields past `max_findings_per_rule` cost a
/// count each, not a formatted string (formatting was a third of the
/// qcow2 checker's time on such images).
pub trait Detail {
    /// The text.
    fn into_detail(self) -> String;
}

impl Detail for String {
    fn into_detail(self) -> String {
        self
    }
}

impl Detail for &str {
    fn into_detail(self) -> String {
        self.to_owned()
    }
}

impl Detail for &String {
    fn into_detail(self) -> String {
        self.clone()
    }
}

impl Detail for std::fmt::Arguments<'_> {
    fn into_detail(self) -> String {
        // A literal without arguments needs no formatting machinery.
        match self.as_str() {
            Some(s) => s.to_owned(),
            None => std::fmt::format(self),
        }
    }
}

impl Report {
    /// An empty report for `filename` of `format` without image statistics
    /// (a conversation's), keeping at most `limits.max_findings_per_rule`
    /// findings per rule.
    pub fn new(filename: &str, format: &str, limits: &Limits) -> Self {
        Report {
            filename: filename.to_owned(),
            format: format.to_owned(),
            check_errors: 0,
            corruptions: 0,
            leaks: 0,
            violations: 0,
            stats: None,
            findings: Vec::new(),
            tallies: Tallies::default(),
            max_findings_per_rule: limits.max_findings_per_rule,
        }
    }

    /// An empty report of an image check: like [`Report::new`], with image
    /// statistics not yet counted (`null` until the checker sets them).
    pub fn for_image(filename: &str, format: &str, limits: &Limits) -> Self {
        Report {
            stats: Some(ImageStats::default()),
            ..Report::new(filename, format, limits)
        }
    }

    /// The image statistics, to be filled in (added if the report had none).
    pub fn image_stats(&mut self) -> &mut ImageStats {
        self.stats.get_or_insert_with(ImageStats::default)
    }

    /// Records a finding of `rule` at byte `offset`, at its default severity.
    pub fn add(&mut self, rule: &'static Rule, offset: Option<u64>, detail: impl Detail) {
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
        detail: impl Detail,
    ) {
        self.add_with(rule, offset, times, || detail.into_detail());
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
        self.add_at(rule, offset.map(Location::Byte), times, detail);
    }

    /// Records a finding at any kind of location (a message number for a
    /// conversation); otherwise as [`Report::add_with`].
    pub fn add_at(
        &mut self,
        rule: &'static Rule,
        location: Option<Location>,
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
        let tally = self.tallies.of(rule);
        tally.count += times;
        if tally.kept < self.max_findings_per_rule {
            tally.kept += 1;
            let mut detail = detail();
            if times > 1 {
                use std::fmt::Write;
                let _ = write!(detail, " ({times} times)");
            }
            self.findings.push(Finding {
                rule,
                severity: rule.severity,
                location,
                detail,
            });
        } else {
            tally.omitted += times;
        }
    }

    /// Moves every finding of `rule` (and its count, omitted ones
    /// included) to `severity`, or drops them all with None: what a policy
    /// re-grading or silencing a rule does to a finished report.
    pub fn regrade(&mut self, rule: &Rule, severity: Option<Severity>) {
        let Some(count) = self.tallies.get(rule).map(|t| t.count) else {
            return;
        };
        let now = self
            .findings
            .iter()
            .find(|f| std::ptr::eq(f.rule, rule))
            .map_or(rule.severity, |f| f.severity);
        if let Some(c) = self.counter(now) {
            *c = c.saturating_sub(count);
        }
        match severity {
            Some(s) => {
                if let Some(c) = self.counter(s) {
                    *c += count;
                }
                for f in self
                    .findings
                    .iter_mut()
                    .filter(|f| std::ptr::eq(f.rule, rule))
                {
                    f.severity = s;
                }
            }
            None => {
                self.findings.retain(|f| !std::ptr::eq(f.rule, rule));
                self.tallies.0.remove(&address(rule));
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

    /// How often the rule of id `rule_id` was violated (counting
    /// repetitions and omitted findings); 0 for an id the registry lacks.
    pub fn count(&self, rule_id: &str) -> u64 {
        rules::by_id(rule_id)
            .and_then(|r| self.tallies.get(r))
            .map_or(0, |t| t.count)
    }

    /// Whether any finding of `rule` was recorded.
    pub fn has(&self, rule: &Rule) -> bool {
        self.tallies.get(rule).is_some()
    }

    /// Per rule id, the findings left out of `findings` once the rule
    /// reached `Limits::max_findings_per_rule` (the counters include them).
    pub fn findings_omitted(&self) -> BTreeMap<&'static str, u64> {
        self.tallies.omitted()
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
            Some(f) => crate::Error::rule(f.rule, f.offset(), f.detail.clone()),
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

/// A report as JSON holds it.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ReportJson {
    filename: String,
    format: String,
    check_errors: u64,
    corruptions: u64,
    leaks: u64,
    violations: u64,
    #[serde(flatten)]
    stats: Option<ImageStats>,
    findings: Vec<Finding>,
    #[serde(default)]
    findings_omitted: BTreeMap<String, u64>,
}

/// Reads a report back. The per-rule tallies are rebuilt from the findings
/// and `findings-omitted`, so [`Report::count`] counts a finding that stood
/// for several occurrences ("(N times)") once; the counters are as written.
/// Findings are kept up to the default `Limits::max_findings_per_rule` if
/// more are added.
impl<'de> Deserialize<'de> for Report {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = ReportJson::deserialize(d)?;
        let mut tallies = Tallies::default();
        for f in &j.findings {
            let t = tallies.of(f.rule);
            t.count += 1;
            t.kept += 1;
        }
        for (id, n) in j.findings_omitted {
            let t = tallies.of(registered::<D::Error>(&id)?);
            t.count += n;
            t.omitted += n;
        }
        Ok(Report {
            filename: j.filename,
            format: j.format,
            check_errors: j.check_errors,
            corruptions: j.corruptions,
            leaks: j.leaks,
            violations: j.violations,
            stats: j.stats,
            findings: j.findings,
            tallies,
            max_findings_per_rule: Limits::default().max_findings_per_rule,
        })
    }
}
