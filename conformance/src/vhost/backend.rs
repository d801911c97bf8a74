//! Back-ends started for a probe, a replay or a fuzz run: a command
//! (whitespace-separated words), the socket it opens, and how it ended.
//! Each runs in its own process group, so stopping it stops whatever it
//! started too.

use super::conn::Conn;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A back-end we started, if any.
pub struct Backend {
    child: Option<Child>,
}

/// "signal 11 (SIGSEGV)": a signal number with its name when it is a
/// common crash signal.
pub fn signal_name(s: i32) -> String {
    let name = match s {
        4 => " (SIGILL)",
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        8 => " (SIGFPE)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        _ => "",
    };
    format!("signal {s}{name}")
}

impl Backend {
    /// A back-end someone else runs.
    pub fn none() -> Backend {
        Backend { child: None }
    }

    /// Starts `cmd` (if given) with its output discarded and waits until
    /// `socket` exists.
    pub fn start(cmd: Option<&str>, socket: &Path, wait: Duration) -> Result<Backend, String> {
        match cmd {
            None => Ok(Backend::none()),
            Some(cmd) => Backend::start_logged(cmd, socket, wait, Stdio::null()),
        }
    }

    /// Starts `cmd` ({socket} replaced by `socket`) in its own process
    /// group, stdin closed, its stderr to `stderr`, and waits until `socket`
    /// exists.
    pub fn start_logged(
        cmd: &str,
        socket: &Path,
        wait: Duration,
        stderr: Stdio,
    ) -> Result<Backend, String> {
        let _ = std::fs::remove_file(socket);
        // Every caller's {socket} is the socket waited on (the probe's
        // --backend-cmd said so in its help and did not do it).
        let cmd = cmd.replace("{socket}", &socket.display().to_string());
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let (prog, args) = words.split_first().ok_or("empty --backend-cmd")?;
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {prog}: {e}"))?;
        let mut b = Backend { child: Some(child) };
        let deadline = Instant::now() + wait;
        // Wait for the socket file, not for a test connection: single-shot
        // back-ends (virtiofsd) serve exactly one front-end and would take
        // the test connection as theirs.
        while Instant::now() < deadline {
            if socket.exists() {
                return Ok(b);
            }
            if let Some(st) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                b.child = None;
                return Err(format!(
                    "{prog} ended ({}) before it opened {}",
                    describe(st),
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        b.stop();
        Err(format!(
            "{prog} did not open {} within {} ms",
            socket.display(),
            wait.as_millis()
        ))
    }

    /// Connects to the back-end on `socket`. A process we just started may
    /// have bound its socket (the file exists) but not yet listen()ed:
    /// a refused connection is retried until the deadline. A back-end we
    /// did not start gets one try, so a refusal still says it is gone.
    pub fn connect(&self, socket: &Path) -> std::io::Result<Conn> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match Conn::connect(socket) {
                Err(e)
                    if self.child.is_some()
                        && e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => return r,
            }
        }
    }

    /// How the process ended, waiting up to `wait` for it (a process that
    /// just closed its socket may not have been reaped yet). None: still
    /// running, or not ours.
    pub fn ended(&mut self, wait: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// If the process died by a signal, which one.
    pub fn crashed(&mut self) -> Option<String> {
        let st = self.ended(Duration::from_millis(200))?;
        st.signal().map(|s| format!("killed by {}", signal_name(s)))
    }

    /// Kills the process group and reaps the process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Only while the leader is unreaped: its pid (= the group id)
            // cannot be reused until then, so the group is still ours. Once
            // reaped, another job's back-end may have that pid as its group.
            if matches!(c.try_wait(), Ok(None)) {
                if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// "exit code 1", "signal 11 (SIGSEGV)".
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => signal_name(s),
        _ => "ended".into(),
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}
