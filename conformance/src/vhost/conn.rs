//! A vhost-user connection: whole messages over a Unix stream socket with
//! file descriptors as SCM_RIGHTS, every read bounded by a deadline, every
//! payload bounded by the protocol's maximum (a peer claiming 4 GiB gets a
//! finding, not an allocation).

use qconform_core::vhost_user::transcript::FdInfo;
use qconform_core::vhost_user::wire::{Header, HEADER_SIZE, MAX_FDS};
use qconform_core::Limits;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// File descriptors accepted with one message before the kernel truncates
/// (see [`Limits::vhost_max_fds`]); more than MAX_FDS is already a finding,
/// this only sizes the buffer.
const RECV_FDS: usize = Limits::DEFAULT.vhost_max_fds;
/// A claimed payload larger than this is not read (see [`Limits::vhost_max_payload`]).
const MAX_PAYLOAD: u32 = Limits::DEFAULT.vhost_max_payload;

/// A message as received.
pub struct Received {
    pub header: Header,
    /// The payload (empty when `oversize`).
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// `size` was larger than the protocol allows; the payload was not read
    /// and the connection can no longer be framed.
    pub oversize: bool,
}

/// Why no message arrived.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the connection (before a header, or within a message).
    Closed {
        mid_message: bool,
    },
    /// The deadline passed.
    Timeout,
    Io(std::io::Error),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Closed { mid_message: false } => write!(f, "the peer closed the connection"),
            RecvError::Closed { mid_message: true } => write!(
                f,
                "the peer closed the connection in the middle of a message"
            ),
            RecvError::Timeout => write!(f, "no message before the deadline"),
            RecvError::Io(e) => write!(f, "{e}"),
        }
    }
}

pub struct Conn {
    pub stream: UnixStream,
}

/// How long a send may block on a peer that stopped reading (its socket
/// buffer full): every message is at most a header and 4 KiB, so a peer
/// that takes longer is hung, and a send must not wait for it forever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

impl Conn {
    /// Connects within 2 seconds.
    pub fn connect(path: &Path) -> std::io::Result<Conn> {
        Self::connect_timeout(path, Duration::from_secs(2))
    }

    /// Connects, giving up at the deadline: a blocking connect to a back-end
    /// whose listen backlog is full would wait forever.
    pub fn connect_timeout(path: &Path, timeout: Duration) -> std::io::Result<Conn> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let addr = SocketAddrUnix::new(path)?;
        let deadline = Instant::now() + timeout;
        loop {
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )?;
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => {
                    let stream = UnixStream::from(fd);
                    stream.set_nonblocking(false)?;
                    stream.set_write_timeout(Some(SEND_TIMEOUT))?;
                    return Ok(Conn { stream });
                }
                Err(e) if e == rustix::io::Errno::AGAIN && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the back-end does not accept connections (listen backlog full)",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn from_stream(stream: UnixStream) -> Conn {
        // Only fails for a zero duration; a stream we cannot bound still
        // has its reads bounded by their deadlines.
        let _ = stream.set_write_timeout(Some(SEND_TIMEOUT));
        Conn { stream }
    }

    /// Sends header and payload in one sendmsg, with `fds` attached to the
    /// first byte of the header, as the spec asks.
    pub fn send(
        &self,
        header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let mut all = Vec::with_capacity(HEADER_SIZE + payload.len());
        all.extend_from_slice(&header.encode());
        all.extend_from_slice(payload);
        self.send_bytes(&all, fds)
    }

    /// Sends `bytes` (a message, or the start of one) with `fds` attached
    /// to the first byte.
    pub fn send_bytes(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(std::io::Error::other(
                "too many file descriptors for one message",
            ));
        }
        let iov = [IoSlice::new(bytes)];
        let mut sent =
            rustix::net::sendmsg(self.stream.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)?;
        // A short send (large payloads) continues without the fds.
        while sent < bytes.len() {
            let rest = bytes.get(sent..).unwrap_or_default();
            let n = rustix::net::send(self.stream.as_fd(), rest, SendFlags::NOSIGNAL)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "peer stopped reading",
                ));
            }
            sent += n;
        }
        Ok(())
    }

    /// Reads one whole message, or fails at `deadline`.
    pub fn recv(&self, deadline: Instant) -> Result<Received, RecvError> {
        self.recv_idle(deadline, None)
    }

    /// Waits until `idle` for a message to begin; once its first bytes are
    /// in, the rest must come within `per_message` (a peer may be quiet for
    /// long between messages, but not stop in the middle of one).
    pub fn recv_idle(
        &self,
        idle: Instant,
        per_message: Option<Duration>,
    ) -> Result<Received, RecvError> {
        let mut head = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let mut got = 0;
        let mut deadline = idle;
        while got < HEADER_SIZE {
            let n = self.recv_some(&mut head[got..], &mut fds, deadline, got > 0)?;
            if got == 0 {
                if let Some(d) = per_message {
                    deadline = Instant::now() + d;
                }
            }
            got += n;
        }
        let header = Header::parse(&head);
        if header.size > MAX_PAYLOAD {
            return Ok(Received {
                header,
                payload: Vec::new(),
                fds,
                oversize: true,
            });
        }
        let mut payload = vec![0u8; header.size as usize];
        let mut got = 0;
        while got < payload.len() {
            got += self.recv_some(&mut payload[got..], &mut fds, deadline, true)?;
        }
        Ok(Received {
            header,
            payload,
            fds,
            oversize: false,
        })
    }

    /// Reads one message from a socket that poll() says is readable, in as
    /// few system calls as possible: a peek at the header, then header and
    /// payload (with their descriptors) in one read. Anything unusual (a
    /// header not yet whole, an oversize claim, a short read) continues on
    /// the ordinary path with `per_message` as its deadline.
    pub fn recv_ready(&self, per_message: Duration) -> Result<Received, RecvError> {
        let deadline = Instant::now() + per_message;
        let mut head = [0u8; HEADER_SIZE];
        let peeked = rustix::net::recv(
            self.stream.as_fd(),
            &mut head,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        );
        let header = match peeked {
            Ok((n, _)) if n == HEADER_SIZE => Header::parse(&head),
            _ => return self.recv_idle(deadline, Some(per_message)),
        };
        if header.size > MAX_PAYLOAD {
            return self.recv_idle(deadline, Some(per_message));
        }
        let mut payload = vec![0u8; header.size as usize];
        let mut fds = Vec::new();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut head), IoSliceMut::new(&mut payload)];
        let got = match rustix::net::recvmsg(
            self.stream.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(m) => m.bytes,
            Err(e) => return Err(RecvError::Io(e.into())),
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        // The peek saw the whole header, so the read returned at least that.
        let mut done = got.saturating_sub(HEADER_SIZE);
        while done < payload.len() {
            done += self.recv_some(&mut payload[done..], &mut fds, deadline, true)?;
        }
        Ok(Received {
            header,
            payload,
            fds,
            oversize: false,
        })
    }

    fn recv_some(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        deadline: Instant,
        mid: bool,
    ) -> Result<usize, RecvError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RecvError::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(RecvError::Io)?;
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        let r = rustix::net::recvmsg(
            self.stream.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        match r {
            Ok(m) if m.bytes == 0 => Err(RecvError::Closed { mid_message: mid }),
            Ok(m) => {
                for msg in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = msg {
                        fds.extend(rights);
                    }
                }
                Ok(m.bytes)
            }
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::WOULDBLOCK => {
                Err(RecvError::Timeout)
            }
            Err(e) if e == rustix::io::Errno::CONNRESET => {
                Err(RecvError::Closed { mid_message: mid })
            }
            Err(e) => Err(RecvError::Io(e.into())),
        }
    }
}

/// What kind of object a received or sent descriptor is, for transcripts.
pub fn fd_info(fd: BorrowedFd<'_>) -> FdInfo {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let kind = if link.starts_with("/memfd:") {
        "memfd"
    } else if link.contains("[eventfd]") {
        "eventfd"
    } else if link.starts_with("socket:") {
        "socket"
    } else if link.starts_with("pipe:") {
        "pipe"
    } else if link.starts_with('/') {
        "file"
    } else {
        "unknown"
    };
    let size = (kind == "memfd" || kind == "file")
        .then(|| rustix::fs::fstat(fd).map(|s| s.st_size as u64).ok())
        .flatten();
    FdInfo {
        kind: kind.to_string(),
        size,
    }
}

/// A memfd of `size` bytes (guest memory for the peer to map).
pub fn memfd(name: &str, size: u64) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, size)?;
    Ok(fd)
}

/// A non-blocking eventfd (kick, call or err notifier).
pub fn eventfd() -> std::io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?)
}

/// Most descriptors we attach to one message ourselves (probes may exceed
/// MAX_FDS on purpose).
pub const MAX_SEND_FDS: usize = RECV_FDS;
const _: () = assert!(MAX_FDS <= MAX_SEND_FDS);
