//! What a repair writes, for every format: a [`Plan`] of writes and a new
//! length, computed from the image without writing it. The caller applies
//! the plan to a copy (`qconform check -r … --repair-out NEW`): the image
//! checked is never the image written, since a repair that fails half way
//! in place (as qemu-img repairs) can lose data.

use crate::report::Report;
use crate::rules::Rule;

/// What `-r` repairs, as `qemu-img check -r leaks|all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Leaked space only.
    Leaks,
    /// Leaks and the corruptions qemu-img repairs.
    All,
}

/// One write of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` bytes read from the image at `from` (a data cluster copied, so
    /// the plan does not hold guest data in memory).
    Copy {
        /// Byte offset in the image read.
        from: u64,
        /// Bytes to copy.
        len: u64,
    },
}

/// A repair: writes at file offsets, in offset order and non-overlapping,
/// then the file's new length, and what was fixed (one line per kind).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (file offset, what to write there).
    pub writes: Vec<(u64, Patch)>,
    /// Truncate (or extend) the file to this length after the writes.
    pub set_len: Option<u64>,
    /// What the plan fixes, for the user ("3 leaked clusters: refcounts
    /// lowered to the references").
    pub fixed: Vec<String>,
}

impl Plan {
    /// Adds bytes to write at `at`.
    pub fn write(&mut self, at: u64, bytes: Vec<u8>) {
        self.writes.push((at, Patch::Bytes(bytes)));
    }

    /// Sorts the writes by offset (the formats add them as they find them).
    pub fn sorted(mut self) -> Self {
        self.writes.sort_by_key(|w| w.0);
        self
    }
}

/// The first finding of `report` at `severity` corruption, leak or error
/// whose rule is not one of `repairable`, as the error that refuses the
/// repair: a repair that cannot make the image clean writes nothing.
pub fn refuse_unrepairable(
    report: &Report,
    mode: Mode,
    repairable: &[&'static Rule],
) -> crate::Result<()> {
    use crate::report::Severity;
    let bad = report.findings.iter().find(|f| {
        matches!(
            f.severity,
            Severity::Corruption | Severity::Error | Severity::Leak
        ) && !repairable.iter().any(|r| std::ptr::eq(*r, f.rule))
    });
    match bad {
        None => Ok(()),
        Some(f) => Err(crate::Error::rule(
            f.rule,
            f.offset(),
            format!(
                "{}: -r {} does not repair this ({})",
                report.filename,
                match mode {
                    Mode::Leaks => "leaks",
                    Mode::All => "all",
                },
                f.detail
            ),
        )),
    }
}

/// The image's header (parsed by `parse`, for the fields a repair writes)
/// and its check report; refuses an image whose header does not parse or
/// whose check could not complete: its structure is not all known.
pub fn header_and_check<H>(
    filename: &str,
    format: &str,
    limits: &crate::limits::Limits,
    parse: impl FnOnce(&mut Report) -> Option<H>,
    check: impl FnOnce() -> Report,
) -> crate::Result<(H, Report)> {
    let mut h_report = Report::new(filename, format, limits);
    let Some(h) = parse(&mut h_report) else {
        return Err(h_report.into_error());
    };
    let report = check();
    if report.check_errors > 0 {
        return Err(report.into_error());
    }
    Ok((h, report))
}
