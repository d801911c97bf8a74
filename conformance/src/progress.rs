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

/// A spinner for one `check`: the image's metadata bytes read so far, the
/// rate and the time taken. A check reads only what the image's tables
/// reach, which no header says in advance, so there is no total and no
/// ETA to show. Hidden when `quiet` or when stderr is not a terminal.
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

/// A byte source that counts what is read from it on a progress bar.
pub struct Counted<'a> {
    /// The source read.
    pub inner: &'a dyn qconform_core::source::ReadAt,
    /// Where the bytes read are counted.
    pub bar: &'a ProgressBar,
}

impl qconform_core::source::ReadAt for Counted<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        self.bar.inc(buf.len() as u64);
        self.inner.read_exact_at(buf, offset)
    }
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        self.bar.inc(buf.len() as u64);
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
