//! Progress bars for long work (`cat -o`, `check`, `golden`, `conform`): drawn on
//! stderr only when stderr is a terminal, so pipes, logs and CI output get
//! no progress bytes; `-q` turns them off everywhere.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// What a bar counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Images or cases done.
    Items,
    /// Bytes of a virtual disk.
    Bytes,
}

/// A bar of `len` units, hidden when `quiet` or when stderr is not a terminal.
pub fn bar(len: u64, unit: Unit, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = match unit {
        Unit::Items => "{bar:40} {pos}/{len} {msg} ({per_sec}, ETA {eta})",
        Unit::Bytes => "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

/// A spinner for one `check` while its format is not known yet: the
/// image's metadata bytes read so far, the rate and the time taken.
/// [`with_total`] turns it into a bar with an ETA once the header says
/// about how much the check reads. Hidden when `quiet` or when stderr is
/// not a terminal.
pub fn reading(name: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{spinner} checking {msg}: {bytes} of metadata read ({bytes_per_sec}, {elapsed})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(name.to_owned());
    bar.tick();
    bar
}

/// Gives a check's bar its total: about the metadata bytes the check reads
/// (`ImageFormat::metadata_size`: the top-level tables and what they name;
/// snapshots' tables come on top, so the total grows with the reads when
/// they pass it).
pub fn with_total(bar: &ProgressBar, total: u64) {
    if bar.is_hidden() {
        return;
    }
    let style = ProgressStyle::with_template(
        "{bar:30} checking {msg}: {bytes}/{total_bytes} of metadata ({bytes_per_sec}, ETA {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_length(total.max(bar.position()));
    bar.set_style(style);
    bar.tick();
}

/// A byte source that counts what is read from it on a progress bar.
pub struct Counted<'a> {
    /// The source read.
    pub inner: &'a dyn qconform_core::source::ReadAt,
    /// Where the bytes read are counted.
    pub bar: &'a ProgressBar,
}

impl Counted<'_> {
    /// Counts `n` bytes read; a total passed grows with them.
    fn count(&self, n: u64) {
        self.bar.inc(n);
        if let Some(len) = self.bar.length() {
            if self.bar.position() > len {
                self.bar.set_length(self.bar.position());
            }
        }
    }
}

impl qconform_core::source::ReadAt for Counted<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        self.count(buf.len() as u64);
        self.inner.read_exact_at(buf, offset)
    }
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        self.count(buf.len() as u64);
        self.inner.read_zero_padded(buf, offset)
    }
    fn extent(&self, offset: u64) -> Option<(bool, u64)> {
        self.inner.extent(offset)
    }
    fn allocated_size(&self) -> Option<u64> {
        self.inner.allocated_size()
    }
    fn contains(&self, offset: u64, len: u64) -> bool {
        self.inner.contains(offset, len)
    }
}
