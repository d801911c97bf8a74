//! One side of a connection whose every message, in both directions, goes
//! through the rule engine and into a transcript.

use super::conn::{fd_info, Conn, Received, RecvError};
use qconform_core::vhost_user::request::Channel;
use qconform_core::vhost_user::session::{Direction, Message, Profile, ReplyOutcome, Session};
use qconform_core::vhost_user::transcript::{self, Entry, Event, FdInfo};
use qconform_core::vhost_user::wire::{self, Header};
use rustix::fd::BorrowedFd;
use std::time::Instant;

pub struct Tap {
    pub conn: Conn,
    pub session: Session,
    pub entries: Vec<Entry>,
    /// The direction of what we send.
    ours: Direction,
    start: Instant,
}

impl Tap {
    pub fn new(conn: Conn, name: &str, profile: Profile, ours: Direction) -> Tap {
        Tap::with_session(conn, Session::new(name, profile), ours)
    }

    pub fn with_session(conn: Conn, session: Session, ours: Direction) -> Tap {
        Tap {
            conn,
            session,
            entries: Vec::new(),
            ours,
            start: Instant::now(),
        }
    }

    fn t_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn theirs(&self) -> Direction {
        match self.ours {
            Direction::FrontToBack => Direction::BackToFront,
            Direction::BackToFront => Direction::FrontToBack,
        }
    }

    /// Sends a message exactly as given (probes may break rules on purpose)
    /// and records it.
    pub fn send(
        &mut self,
        header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        self.record_ours(header, payload, fds);
        self.conn.send(header, payload, fds)
    }

    /// Records a message we send (the payload bytes that go out) in the
    /// transcript and the engine.
    fn record_ours(&mut self, header: Header, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let infos: Vec<FdInfo> = fds.iter().map(|fd| fd_info(*fd)).collect();
        let seq = self.session.messages();
        self.entries.push(Entry::message(
            seq,
            self.t_ns(),
            Channel::Main,
            self.ours,
            header,
            payload,
            infos,
        ));
        self.session.on_message(Message {
            channel: Channel::Main,
            dir: self.ours,
            header,
            payload,
            fds: fds.len(),
        });
    }

    /// Sends only the first `cut` bytes of the message (header included),
    /// as a front-end that stops mid-message would, and records what was
    /// sent: the header (whole or not, as it claims) and the payload bytes
    /// that went out.
    pub fn send_cut(
        &mut self,
        header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        cut: usize,
    ) -> std::io::Result<()> {
        let sent = payload
            .get(..cut.saturating_sub(wire::HEADER_SIZE).min(payload.len()))
            .unwrap_or_default();
        self.record_ours(header, sent, fds);
        let mut all = header.encode().to_vec();
        all.extend_from_slice(payload);
        all.truncate(cut);
        self.conn.send_bytes(&all, fds)
    }

    /// Receives one message (or the reason none came) and records it.
    pub fn recv(
        &mut self,
        deadline: Instant,
    ) -> Result<(Received, Option<ReplyOutcome>), RecvError> {
        let r = self.conn.recv(deadline)?;
        let infos: Vec<FdInfo> = r
            .fds
            .iter()
            .map(|fd| fd_info(rustix::fd::AsFd::as_fd(fd)))
            .collect();
        let seq = self.session.messages();
        let dir = self.theirs();
        self.entries.push(Entry::message(
            seq,
            self.t_ns(),
            Channel::Main,
            dir,
            r.header,
            &r.payload,
            infos,
        ));
        // An oversize claim: the payload was not read; the engine sees the header only.
        let outcome = self.session.on_message(Message {
            channel: Channel::Main,
            dir,
            header: r.header,
            payload: &r.payload,
            fds: r.fds.len(),
        });
        Ok((r, outcome))
    }

    pub fn closed(&mut self, by: Option<Direction>, expected: bool) {
        let seq = self.session.messages();
        self.entries.push(Entry::event(
            seq,
            self.t_ns(),
            Event::Closed { by, expected },
        ));
        self.session.on_close(by, expected);
    }

    pub fn timed_out(&mut self, waited_ms: u64) {
        let seq = self.session.messages();
        self.entries
            .push(Entry::event(seq, self.t_ns(), Event::Timeout { waited_ms }));
        self.session.on_timeout(waited_ms);
    }

    /// The transcript as JSON Lines.
    pub fn transcript(&self, description: &str) -> String {
        let mut out = serde_json::to_string(&transcript::Preamble {
            format: transcript::FORMAT.into(),
            version: transcript::VERSION,
            description: description.into(),
        })
        .unwrap_or_default();
        out.push('\n');
        for e in &self.entries {
            out.push_str(&serde_json::to_string(e).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}
