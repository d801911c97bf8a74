//! What a repair writes, for every format: a [`Plan`] of writes and a new
//! length, computed from the image without writing it. The caller applies
//! the plan to a copy (`qconform check -r … --repair-out NEW`): the image
//! checked is never the image written, since a repair that fails half way
//! in place (as qemu-img repairs) can lose data.

use crate::report::Report;
use crate::rules::Rule;
use crate::source::ReadAt;

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

    /// This plan followed by `later`, which was computed from the image as
    /// this plan leaves it ([`Plan::overlay`]); their writes must not
    /// overlap.
    pub fn then(mut self, later: Plan) -> Plan {
        self.writes.extend(later.writes);
        self.set_len = later.set_len.or(self.set_len);
        self.fixed.extend(later.fixed);
        self.sorted()
    }

    /// The image as it reads once this plan's writes are applied, without
    /// writing it: a repair in two steps (the qcow2 snapshot table rewritten,
    /// then the refcounts rebuilt around it) checks the first step's result.
    /// Each read looks at every write: meant for plans of a few writes.
    pub fn overlay<'a>(&'a self, base: &'a dyn ReadAt) -> Overlay<'a> {
        Overlay { base, plan: self }
    }
}

/// An image with a [`Plan`] applied in memory ([`Plan::overlay`]).
pub struct Overlay<'a> {
    base: &'a dyn ReadAt,
    plan: &'a Plan,
}

impl Overlay<'_> {
    fn len_of(p: &Patch) -> u64 {
        match p {
            Patch::Bytes(b) => b.len() as u64,
            Patch::Copy { len, .. } => *len,
        }
    }
}

impl ReadAt for Overlay<'_> {
    fn size(&self) -> u64 {
        self.plan.set_len.unwrap_or_else(|| {
            self.plan
                .writes
                .iter()
                .map(|(at, p)| at.saturating_add(Overlay::len_of(p)))
                .fold(self.base.size(), u64::max)
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size() {
            return Err(crate::Error::OutOfBounds {
                offset,
                len: buf.len() as u64,
                source_len: self.size(),
            });
        }
        // What the base holds, zeros where the plan extends the file.
        self.base.read_zero_padded(buf, offset)?;
        for (at, p) in &self.plan.writes {
            let w_end = at.saturating_add(Overlay::len_of(p));
            let (from, to) = ((*at).max(offset), w_end.min(end));
            if from >= to {
                continue;
            }
            let dst = (from - offset) as usize..(to - offset) as usize;
            let Some(out) = buf.get_mut(dst) else {
                continue;
            };
            match p {
                Patch::Bytes(b) => {
                    if let Some(src) = b.get((from - at) as usize..(to - at) as usize) {
                        out.copy_from_slice(src);
                    }
                }
                Patch::Copy { from: f, .. } => self.base.read_zero_padded(out, f + (from - at))?,
            }
        }
        Ok(())
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
