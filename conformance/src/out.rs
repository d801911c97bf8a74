//! Everything qconform prints to stdout goes through here. A closed stdout
//! (`qconform check ... | head -1`) ends the program quietly with exit 0:
//! what was written was read, and the reader wants no more. `println!`
//! would panic instead (Rust ignores SIGPIPE, so a write fails with EPIPE).

use std::io::Write;

/// Writes to stdout; on EPIPE exits 0, on any other write error exits 1.
pub fn print(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        exit_on_write_error(&e);
    }
}

/// What a failed write to stdout means: a closed pipe ends the program
/// quietly (exit 0), anything else (a full disk) is an error (exit 1).
/// For code that writes raw bytes to stdout itself (`cat`).
pub fn exit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("qconform: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// A safety net for code that still prints with `println!`: its panic on a
/// closed stdout ("failed printing to stdout: Broken pipe") becomes a quiet
/// exit 0; every other panic reaches the default hook unchanged.
pub fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// `print!` through [`print`]: a closed stdout exits 0 instead of panicking.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::out::print(format_args!($($t)*)) };
}

/// `println!` through [`print`].
#[macro_export]
macro_rules! outln {
    () => { $crate::out::print(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::print(format_args!("{}\n", format_args!($($t)*))) };
}
