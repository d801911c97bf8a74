//! Running a target command once: in its own process group, stdin closed,
//! in a scratch directory, with a wall-clock timeout and an address-space
//! limit, and classifying how it ended.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output kept of a run (the tail of stdout and stderr).
const TAIL: usize = 4096;

/// How one run of the target ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// It ran past the timeout (and its process group was killed).
    pub timed_out: bool,
    pub stderr_tail: String,
    pub stdout_tail: String,
}

impl Outcome {
    /// A sanitizer or runtime report on stderr (a crash that exits).
    pub fn sanitizer_report(&self) -> bool {
        sanitizer_report(&self.stderr_tail)
    }
    /// The address-space limit was hit.
    pub fn out_of_memory(&self) -> bool {
        [
            "Cannot allocate memory",
            "memory allocation of",
            "out of memory",
            "std::bad_alloc",
        ]
        .iter()
        .any(|m| self.stderr_tail.contains(m))
    }
}

/// Whether `stderr` holds a sanitizer or runtime report (a crash that
/// exits instead of dying by a signal: ASan, UBSan, a Rust panic).
pub fn sanitizer_report(stderr: &str) -> bool {
    [
        "AddressSanitizer",
        "UndefinedBehaviorSanitizer",
        "runtime error:",
        "panicked at",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Quotes `s` for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn tail(b: &[u8]) -> String {
    let start = b.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

/// Runs `command` (a shell command line, placeholders already replaced) in
/// `dir`. `memory_mb` 0 sets no limit (ASan needs a vast address space).
pub fn run(
    command: &str,
    dir: &Path,
    timeout: Duration,
    memory_mb: u64,
) -> std::io::Result<Outcome> {
    let line = if memory_mb > 0 {
        format!("ulimit -v {} 2>/dev/null; exec {command}", memory_mb * 1024)
    } else {
        format!("exec {command}")
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
    let read = |p: Option<std::process::ChildStdout>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut p) = p {
                let _ = std::io::Read::read_to_end(&mut p, &mut b);
            }
            b
        })
    };
    let out_t = read(out_pipe);
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut p) = err_pipe {
            let _ = std::io::Read::read_to_end(&mut p, &mut b);
        }
        b
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Outcome {
        code: status.code(),
        signal: if timed_out { None } else { status.signal() },
        timed_out,
        stderr_tail: tail(&stderr),
        stdout_tail: tail(&stdout),
    })
}
