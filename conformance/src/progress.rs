//! Progress bars for long work (`cat -o`, `golden`, `conform`): drawn on
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
