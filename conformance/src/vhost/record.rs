//! `qconform vhost-user record`: a transparent proxy between a front-end and
//! a back-end. Every message is forwarded unchanged with its file
//! descriptors (the same open files reach the other side), judged live by
//! the rule engine, and appended to the transcript as it passes, so a
//! conversation that ends badly is still on disk up to its last byte. The
//! back-end channel is recorded too: SET_BACKEND_REQ_FD's socket is
//! replaced by one end of a socket pair we forward.

use super::conn::{fd_info, Conn, RecvError};
use crate::Output;
use qconform_core::vhost_user::request::{Channel, FrontEnd};
use qconform_core::vhost_user::session::{Direction, Message, Profile, Session};
use qconform_core::vhost_user::transcript::{self, Entry, Event};
use qconform_core::vhost_user::wire::Header;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Options {
    pub listen: PathBuf,
    pub connect: PathBuf,
    pub out: PathBuf,
    /// How long to wait for the front-end, and for a reply that is due.
    pub idle_timeout: Duration,
    /// How long a message may take once it has begun.
    pub message_timeout: Duration,
    pub profile: Profile,
    pub description: String,
}

/// The judged, written record of one conversation, shared by the forwarding threads.
pub struct Recorder {
    session: Session,
    out: Box<dyn Write + Send>,
    start: Instant,
    /// The main channel has ended (the first end is the one recorded).
    ended: bool,
    write_error: Option<String>,
}

impl Recorder {
    pub fn new(
        name: &str,
        profile: Profile,
        mut out: Box<dyn Write + Send>,
        description: &str,
    ) -> Recorder {
        let pre = transcript::Preamble {
            format: transcript::FORMAT.into(),
            version: transcript::VERSION,
            description: description.into(),
        };
        let mut write_error = None;
        if let Err(e) = writeln!(out, "{}", serde_json::to_string(&pre).unwrap_or_default())
            .and_then(|_| out.flush())
        {
            write_error = Some(e.to_string());
        }
        Recorder {
            session: Session::new(name, profile),
            out,
            start: Instant::now(),
            ended: false,
            write_error,
        }
    }

    /// Appends one line. Lines are flushed whenever the proxy is about to
    /// wait (and at the end): a peer that dies or hangs never holds back
    /// what was said before, and a busy conversation costs no write per message.
    fn line(&mut self, e: &Entry) {
        let r = serde_json::to_string(e)
            .map_err(std::io::Error::other)
            .and_then(|l| writeln!(self.out, "{l}"));
        if let (Err(e), None) = (r, &self.write_error) {
            self.write_error = Some(e.to_string());
        }
    }

    fn flush(&mut self) {
        if let (Err(e), None) = (self.out.flush(), &self.write_error) {
            self.write_error = Some(e.to_string());
        }
    }

    fn message(
        &mut self,
        channel: Channel,
        dir: Direction,
        header: Header,
        payload: &[u8],
        fds: &[OwnedFd],
    ) {
        let infos = fds.iter().map(|f| fd_info(f.as_fd())).collect();
        let e = Entry::message(
            self.session.messages(),
            self.start.elapsed().as_nanos() as u64,
            channel,
            dir,
            header,
            payload,
            infos,
        );
        self.line(&e);
        self.session.on_message(Message {
            channel,
            dir,
            header,
            payload,
            fds: fds.len(),
        });
    }

    /// Records how the main channel ended (once).
    fn end(&mut self, event: Event) {
        if self.ended {
            return;
        }
        self.ended = true;
        let e = Entry::event(
            self.session.messages(),
            self.start.elapsed().as_nanos() as u64,
            event.clone(),
        );
        self.line(&e);
        self.flush();
        match event {
            Event::Closed { by, expected } => self.session.on_close(by, expected),
            Event::Timeout { waited_ms } => self.session.on_timeout(waited_ms),
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::FrontToBack => Direction::BackToFront,
        Direction::BackToFront => Direction::FrontToBack,
    }
}

/// How long the proxy polls for the next message before it sleeps in the
/// kernel. Request and reply usually follow each other within
/// microseconds; sleeping costs a scheduler wake-up per message (tens of
/// microseconds on a virtual machine), a short poll does not.
const SPIN: Duration = Duration::from_micros(50);

/// One direction of one channel: messages read from `from` go to `to`.
struct Link {
    from: Conn,
    to: Conn,
    channel: Channel,
    /// The direction of what `from` sends.
    dir: Direction,
}

/// Waits until one of `links` is readable (or hung up): a short spin, then
/// a sleep of at most `idle`. Returns the readable links' indices.
fn wait(links: &[Link], idle: Duration, rec: &mut Recorder) -> Vec<usize> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let start = Instant::now();
    loop {
        let spinning = start.elapsed() < SPIN;
        let left = idle.saturating_sub(start.elapsed());
        let timeout = if spinning {
            Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }
        } else {
            Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            }
        };
        let mut fds: Vec<PollFd<'_>> = links
            .iter()
            .map(|l| PollFd::new(&l.from.stream, PollFlags::IN))
            .collect();
        let n = poll(&mut fds, Some(&timeout)).unwrap_or(0);
        if n > 0 {
            return fds
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(i, _)| i)
                .collect();
        }
        if !spinning {
            return Vec::new();
        }
        if start.elapsed() >= SPIN {
            // About to sleep: what was said so far goes to disk first.
            rec.flush();
        }
        std::hint::spin_loop();
    }
}

/// Proxies one conversation between `front` (accepted) and `back`
/// (connected) on this thread, until it ends: a closed side, no reply
/// within `idle` of a request that needs one, or a message unfinished after
/// `per_message`.
pub fn proxy(
    front: UnixStream,
    back: UnixStream,
    rec: &mut Recorder,
    idle: Duration,
    per_message: Duration,
) {
    let (Ok(f2), Ok(b2)) = (front.try_clone(), back.try_clone()) else {
        return;
    };
    let mut links = vec![
        Link {
            from: Conn::from_stream(front),
            to: Conn::from_stream(b2),
            channel: Channel::Main,
            dir: Direction::FrontToBack,
        },
        Link {
            from: Conn::from_stream(back),
            to: Conn::from_stream(f2),
            channel: Channel::Main,
            dir: Direction::BackToFront,
        },
    ];
    loop {
        let ready = wait(&links, idle, rec);
        if ready.is_empty() {
            // Silence between messages is normal (a running guest sends
            // nothing for hours); silence while a reply is due is a hang.
            if rec.session.awaiting_reply() {
                rec.end(Event::Timeout {
                    waited_ms: idle.as_millis() as u64,
                });
                return;
            }
            continue;
        }
        let mut drop_backend = false;
        let mut added = Vec::new();
        for i in ready {
            let Some(l) = links.get(i) else { continue };
            let r = match l.from.recv_ready(per_message) {
                Ok(r) => r,
                Err(e) if l.channel == Channel::Main => {
                    rec.end(match e {
                        RecvError::Timeout => Event::Timeout {
                            waited_ms: per_message.as_millis() as u64,
                        },
                        _ => Event::Closed {
                            by: Some(l.dir),
                            expected: false,
                        },
                    });
                    return;
                }
                Err(_) => {
                    // The back-end channel ended; the main conversation goes on.
                    drop_backend = true;
                    continue;
                }
            };
            rec.message(l.channel, l.dir, r.header, &r.payload, &r.fds);
            if r.oversize {
                // The payload was not read: the stream cannot be framed any more.
                rec.end(Event::Closed {
                    by: Some(other(l.dir)),
                    expected: false,
                });
                return;
            }
            let mut fds = r.fds;
            let mut sent: Vec<OwnedFd> = Vec::new();
            if l.channel == Channel::Main
                && l.dir == Direction::FrontToBack
                // SET_BACKEND_REQ_FD: its descriptor is the back-end channel.
                && FrontEnd::from_id(r.header.request) == Some(FrontEnd::SetBackendReqFd)
                && !r.header.is_reply()
                && fds.len() == 1
            {
                // Interpose: the back-end gets one end of our pair, we
                // forward between its other end and the front-end's socket.
                if let (Some(front_side), Ok((ours, theirs))) = (fds.pop(), UnixStream::pair()) {
                    let front_side = UnixStream::from(front_side);
                    if let (Ok(f), Ok(o)) = (front_side.try_clone(), ours.try_clone()) {
                        added.push(Link {
                            from: Conn::from_stream(ours),
                            to: Conn::from_stream(front_side),
                            channel: Channel::Backend,
                            dir: Direction::BackToFront,
                        });
                        added.push(Link {
                            from: Conn::from_stream(f),
                            to: Conn::from_stream(o),
                            channel: Channel::Backend,
                            dir: Direction::FrontToBack,
                        });
                    }
                    sent.push(OwnedFd::from(theirs));
                }
            }
            sent.extend(fds);
            let borrowed: Vec<BorrowedFd<'_>> = sent.iter().map(|f| f.as_fd()).collect();
            let sent_ok = l.to.send(r.header, &r.payload, &borrowed).is_ok();
            if !sent_ok {
                if l.channel == Channel::Main {
                    rec.end(Event::Closed {
                        by: Some(other(l.dir)),
                        expected: false,
                    });
                    return;
                }
                drop_backend = true;
            }
        }
        if drop_backend {
            links.retain(|l| l.channel == Channel::Main);
        }
        links.extend(added);
    }
}

/// Accepts one front-end within `timeout`.
pub fn accept(listener: &UnixListener, timeout: Duration) -> Option<UnixStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => return s.set_nonblocking(false).ok().map(|_| s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

/// Listens, accepts one front-end, connects to the back-end, and records
/// the conversation to `opts.out` until it ends; returns the judged session.
pub fn record_once(opts: &Options) -> Result<Session, String> {
    let _ = std::fs::remove_file(&opts.listen);
    let listener = UnixListener::bind(&opts.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen.display()))?;
    let file =
        std::fs::File::create(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let front = accept(&listener, opts.idle_timeout).ok_or_else(|| {
        format!(
            "no front-end connected to {} within {} ms",
            opts.listen.display(),
            opts.idle_timeout.as_millis()
        )
    })?;
    let back = Conn::connect_timeout(&opts.connect, Duration::from_secs(5))
        .map_err(|e| {
            format!(
                "cannot connect to the back-end at {}: {e}",
                opts.connect.display()
            )
        })?
        .stream;
    let mut rec = Recorder::new(
        &format!("{} <-> {}", opts.listen.display(), opts.connect.display()),
        opts.profile,
        Box::new(std::io::BufWriter::with_capacity(1 << 18, file)),
        &opts.description,
    );
    proxy(
        front,
        back,
        &mut rec,
        opts.idle_timeout,
        opts.message_timeout,
    );
    let _ = std::fs::remove_file(&opts.listen);
    if let Some(e) = &rec.write_error {
        return Err(format!("writing {}: {e}", opts.out.display()));
    }
    Ok(rec.session)
}

/// Exit 0 conforming, 1 could not run, 2 findings.
pub fn run(opts: &Options, output: Output) -> i32 {
    match record_once(opts) {
        Ok(session) => {
            let report = session.report();
            super::check::print_report(
                &format!("recorded {}", opts.out.display()),
                session.messages(),
                report,
                output,
            );
            if report.violations > 0 {
                2
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("qconform: {e}");
            1
        }
    }
}
