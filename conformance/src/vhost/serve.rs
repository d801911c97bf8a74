//! `qconform vhost-user serve`: a reference back-end. It answers every
//! request the way the spec says (features configurable), acknowledges
//! need_reply with 0 or, for a request the rule engine found invalid, 1, and
//! judges the front-end connected to it with the same engine; the findings
//! are printed when the front-end disconnects.

use super::conn::{Conn, Received, RecvError};
use super::tap::Tap;
use crate::Output;
use qconform_core::vhost_user::features::{self as feat, ProtocolFeature as PF};
use qconform_core::vhost_user::payload::{self, encode, Payload};
use qconform_core::vhost_user::request::{self, Channel, FrontEnd, Reply};
pub use qconform_core::vhost_user::session::Caps;
use qconform_core::vhost_user::session::{Direction, Profile, Session};
use qconform_core::vhost_user::wire::Header;
use qconform_core::Limits;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Options {
    pub socket: PathBuf,
    pub once: bool,
    /// What this back-end offers and holds; the rule engine judging the
    /// front-end knows them too.
    pub caps: Caps,
    /// The device's config space (GET_CONFIG reads from it).
    pub config: Vec<u8>,
    /// How long a connection may stay silent, and how long to wait for one.
    pub idle_timeout: Duration,
    pub profile: Profile,
    pub transcript: Option<PathBuf>,
}

/// A virtio-blk config space for a 1 MiB disk with one queue: capacity 2048
/// sectors, seg_max 126, blk_size 512, num_queues at byte 34. Little-endian
/// whatever the host: it is virtio's config space (VERSION_1), carried
/// opaquely by vhost-user, not a vhost-user number.
pub fn blk_config(queues: u16) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&2048u64.to_le_bytes());
    c[12..16].copy_from_slice(&126u32.to_le_bytes());
    c[20..24].copy_from_slice(&512u32.to_le_bytes());
    c[34..36].copy_from_slice(&queues.to_le_bytes());
    c
}

/// Default virtio features: VERSION_1, protocol features, indirect
/// descriptors, event idx, and virtio-blk SEG_MAX (2) and BLK_SIZE (6).
pub const DEFAULT_FEATURES: u64 =
    1 << feat::F_VERSION_1 | 1 << feat::F_PROTOCOL_FEATURES | 1 << 28 | 1 << 29 | 1 << 2 | 1 << 6;

/// The largest ring the reference back-end holds by default (see
/// [`Limits::vhost_max_ring_size`]).
pub const DEFAULT_MAX_RING_SIZE: u32 = Limits::DEFAULT.vhost_max_ring_size;

impl Options {
    /// The reference virtio-blk back-end with `queues` queues and the
    /// default features, serving one connection on `socket`.
    pub fn reference(socket: PathBuf, queues: u64) -> Options {
        Options {
            socket,
            once: true,
            caps: Caps {
                features: DEFAULT_FEATURES,
                protocol_features: default_protocol_features(),
                queues,
                max_mem_slots: Limits::DEFAULT.vhost_mem_slots,
                max_ring_size: DEFAULT_MAX_RING_SIZE,
            },
            config: blk_config(queues.min(u16::MAX as u64) as u16),
            idle_timeout: Duration::from_secs(10),
            profile: Profile::default(),
            transcript: None,
        }
    }
}

pub fn default_protocol_features() -> u64 {
    [
        PF::Mq,
        PF::ReplyAck,
        PF::Config,
        PF::ConfigureMemSlots,
        PF::Status,
        PF::ResetDevice,
    ]
    .iter()
    .fold(0, |a, f| a | f.bit())
}

struct Device<'a> {
    opts: &'a Options,
    status: u64,
}

impl Device<'_> {
    /// The reply body for a request, if it has one.
    fn body(&mut self, r: &Received) -> Option<Payload> {
        let value = r
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or(0);
        Some(match FrontEnd::from_id(r.header.request)? {
            FrontEnd::GetFeatures => Payload::U64(payload::U64 {
                value: self.opts.caps.features,
            }),
            FrontEnd::GetProtocolFeatures => Payload::U64(payload::U64 {
                value: self.opts.caps.protocol_features,
            }),
            FrontEnd::GetQueueNum => Payload::U64(payload::U64 {
                value: self.opts.caps.queues,
            }),
            FrontEnd::GetMaxMemSlots => Payload::U64(payload::U64 {
                value: self.opts.caps.max_mem_slots,
            }),
            FrontEnd::GetStatus => Payload::U64(payload::U64 { value: self.status }),
            FrontEnd::GetVringBase | FrontEnd::GetVringBaseSkipDrain => {
                let index = r
                    .payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
                    .unwrap_or(0);
                Payload::VringState(payload::VringState { index, num: 0 })
            }
            FrontEnd::GetConfig => {
                match payload::decode(payload::PayloadKind::Config, &r.payload, false) {
                    Ok(Payload::Config(payload::Config {
                        offset,
                        size,
                        flags,
                        ..
                    })) => {
                        let data = self
                            .opts
                            .config
                            .get(offset as usize..(offset as usize).saturating_add(size as usize));
                        match data {
                            Some(d) => Payload::Config(payload::Config {
                                offset,
                                size,
                                flags,
                                data: d.to_vec(),
                            }),
                            None => return Some(Payload::Empty), // the spec's error form: no payload
                        }
                    }
                    _ => Payload::Empty,
                }
            }
            FrontEnd::SetStatus => {
                self.status = value;
                return None;
            }
            _ => return None,
        })
    }
}

fn serve_connection(opts: &Options, conn: Conn, n: usize) -> (Tap, String) {
    let mut tap = Tap::with_session(
        conn,
        Session::with_caps(
            &format!("front-end connection {n}"),
            opts.profile,
            opts.caps,
        ),
        Direction::BackToFront,
    );
    let mut dev = Device { opts, status: 0 };
    let end = loop {
        let (r, _) = match tap.recv(Instant::now() + opts.idle_timeout) {
            Ok(x) => x,
            Err(RecvError::Closed { .. }) => {
                tap.closed(Some(Direction::FrontToBack), false);
                break "the front-end closed the connection".to_string();
            }
            Err(RecvError::Timeout) => {
                tap.closed(None, false);
                break format!("idle for {} ms", opts.idle_timeout.as_millis());
            }
            Err(RecvError::Io(e)) => break format!("read error: {e}"),
        };
        if r.oversize {
            tap.closed(Some(Direction::BackToFront), true);
            break format!(
                "request {} claims {} bytes; closing",
                r.header.request, r.header.size
            );
        }
        // Must we refuse it (the engine, which saw the request in recv,
        // found it invalid, or it is beyond our caps)? Then it gets a
        // failure ack.
        let refusal = tap.session.refusal().map(String::from);
        let invalid = refusal.is_some();
        let info = request::lookup(Channel::Main, r.header.request);
        let negotiated = tap.session.protocol_features();
        let body = dev.body(&r);
        let has_body = info.is_some_and(|i| match i.reply {
            Reply::Always(_) => true,
            Reply::IfFeature(f, _) => feat::has(negotiated, f),
            Reply::None => false,
        });
        let can_ack = r.header.need_reply() && feat::has(negotiated, PF::ReplyAck) && !has_body;
        if invalid && !can_ack {
            // No way to say "failed": close, as the spec allows on error.
            tap.closed(Some(Direction::BackToFront), true);
            break format!(
                "refused request {} ({}); closed the connection",
                r.header.request,
                refusal.unwrap_or_default()
            );
        }
        let reply = if has_body {
            Some(body.unwrap_or(Payload::Empty))
        } else if can_ack {
            Some(Payload::U64(payload::U64 {
                value: invalid as u64,
            }))
        } else {
            None
        };
        if let Some(p) = reply {
            let bytes = encode(&p);
            if let Err(e) = tap.send(
                Header::reply(r.header.request, bytes.len() as u32),
                &bytes,
                &[],
            ) {
                break format!("write error: {e}");
            }
        }
    };
    (tap, end)
}

/// Handles one connection to the end and prints its report; returns
/// whether the front-end broke a rule.
fn handle(
    opts: &Options,
    stream: std::os::unix::net::UnixStream,
    n: usize,
    output: Option<Output>,
) -> bool {
    let (tap, end) = serve_connection(opts, Conn::from_stream(stream), n);
    if let Some(path) = &opts.transcript {
        let _ = std::fs::write(
            path,
            tap.transcript(&format!(
                "qconform serve on {}: {end}",
                opts.socket.display()
            )),
        );
    }
    let report = tap.session.report();
    // Our own replies are judged too: a finding about them is a qconform bug, shown like the rest.
    if let Some(output) = output {
        let _out = std::io::stdout().lock();
        super::check::print_report(
            &format!("front-end connection {n} ({end})"),
            tap.session.messages(),
            report,
            output,
        );
    }
    report.violations > 0
}

/// Serves front-ends, each connection on its own thread (a front-end may
/// hold one connection while opening another); exit 0 conforming, 1 could
/// not run, 2 findings.
pub fn run(opts: &Options, output: Output) -> i32 {
    run_with(opts, Some(output))
}

/// Serves one front-end on `socket` on a new thread, printing nothing: the
/// reference back-end of replays, golden files and the matrix. The socket
/// exists when this returns.
pub fn spawn_quiet(socket: &std::path::Path, queues: u64) -> std::thread::JoinHandle<i32> {
    let opts = Options::reference(socket.to_path_buf(), queues);
    let _ = std::fs::remove_file(socket);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let code = run_with(&opts, None);
        let _ = tx.send(());
        code
    });
    // run_with binds before it waits: poll for the socket file.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline && rx.try_recv().is_err() {
        std::thread::sleep(Duration::from_millis(2));
    }
    handle
}

/// [`run`], printing each connection's report to `output` if given.
pub fn run_with(opts: &Options, output: Option<Output>) -> i32 {
    let _ = std::fs::remove_file(&opts.socket);
    // Bound (and listening) under another name, then renamed: a socket file
    // at opts.socket always accepts connections (between bind and listen a
    // connect is refused, and callers poll for the file).
    let staging = opts.socket.with_extension("new");
    let _ = std::fs::remove_file(&staging);
    let bound = UnixListener::bind(&staging)
        .and_then(|l| std::fs::rename(&staging, &opts.socket).map(|()| l));
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qconform: cannot listen on {}: {e}", opts.socket.display());
            return 1;
        }
    };
    if listener.set_nonblocking(true).is_err() {
        return 1;
    }
    let bad = std::sync::atomic::AtomicBool::new(false);
    let served = std::thread::scope(|scope| {
        let mut n = 0;
        loop {
            // accept with a deadline: poll the non-blocking listener.
            let deadline = Instant::now() + opts.idle_timeout;
            let stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break Some(s),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break None,
                }
            };
            let Some(stream) = stream else {
                eprintln!(
                    "qconform: no further front-end connected within {} ms",
                    opts.idle_timeout.as_millis()
                );
                return n;
            };
            if stream.set_nonblocking(false).is_err() {
                continue;
            }
            n += 1;
            if opts.once {
                if handle(opts, stream, n, output) {
                    bad.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return n;
            }
            let bad = &bad;
            scope.spawn(move || {
                if handle(opts, stream, n, output) {
                    bad.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let _ = std::fs::remove_file(&opts.socket);
    if served == 0 {
        1
    } else if bad.load(std::sync::atomic::Ordering::Relaxed) {
        2
    } else {
        0
    }
}
