//! Back-ends started for a probe or a replay: a command (whitespace-
//! separated words), the socket it opens, and how it ended.

use super::conn::Conn;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A back-end we started, if any.
pub struct Backend {
    child: Option<Child>,
}

impl Backend {
    /// A back-end someone else runs.
    pub fn none() -> Backend {
        Backend { child: None }
    }

    pub fn start(cmd: Option<&str>, socket: &Path, wait: Duration) -> Result<Backend, String> {
        let Some(cmd) = cmd else {
            return Ok(Backend::none());
        };
        let _ = std::fs::remove_file(socket);
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let (prog, args) = words.split_first().ok_or("empty --backend-cmd")?;
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {prog}: {e}"))?;
        let deadline = Instant::now() + wait;
        // Wait for the socket file, not for a test connection: single-shot
        // back-ends (virtiofsd) serve exactly one front-end and would take
        // the test connection as theirs.
        while Instant::now() < deadline {
            if socket.exists() {
                return Ok(Backend { child: Some(child) });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut b = Backend { child: Some(child) };
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
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }

    /// If the process died by a signal, which one.
    pub fn crashed(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let child = self.child.as_mut()?;
        // Give a dying process a moment to be reaped.
        for _ in 0..20 {
            if let Ok(Some(st)) = child.try_wait() {
                return st.signal().map(|s| {
                    format!(
                        "killed by signal {s}{}",
                        if s == 11 {
                            " (SIGSEGV)"
                        } else if s == 6 {
                            " (SIGABRT)"
                        } else {
                            ""
                        }
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}
