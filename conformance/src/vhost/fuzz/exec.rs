//! One run of a vhost-user campaign: a fresh back-end (its own process
//! group, killed afterwards), one connection, the input's messages sent
//! through the rule engine, every read bounded by the timeout, and a
//! verdict on how the back-end came through.

use super::generate::{build, Body, Fd, Input, Msg, When};
use super::Kind;
use crate::fuzz::campaign::Verdict;
use crate::vhost::backend::{signal_name, Backend};
use crate::vhost::conn::{eventfd, memfd, RecvError};
use crate::vhost::tap::Tap;
use qconform_core::report::Severity;
use qconform_core::rules::vhost_user as rule;
use qconform_core::vhost_user::features::{self as feat, ProtocolFeature as PF};
use qconform_core::vhost_user::request::FrontEnd as Fe;
use qconform_core::vhost_user::session::{Direction, Profile, ReplyOutcome, Session};
use qconform_core::vhost_user::wire::{Header, FLAG_NEED_REPLY};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a back-end may take to open its socket.
const START: Duration = Duration::from_secs(5);
/// stderr kept of a run.
const TAIL: u64 = 4096;

/// What one run saw: the verdict and the conversation as a transcript
/// (`qconform vhost-user replay` plays it again).
pub struct Run {
    pub verdict: Option<Verdict<Kind>>,
    pub transcript: String,
}

/// How the conversation ended, before the process is looked at.
enum End {
    /// Every message went out and the back-end still answered.
    Done,
    /// The back-end closed the connection (or a write found it gone).
    Closed,
    /// We cut a message short and shut our side.
    Cut,
    /// A reply that was due did not come (the request's name).
    Hang(String),
    /// It stopped answering a GET_FEATURES sent after the input.
    Unresponsive,
}

fn applies(when: When, s: &Session) -> bool {
    let bit30 = s
        .offered_features()
        .is_some_and(|f| f >> feat::F_PROTOCOL_FEATURES & 1 == 1);
    match when {
        When::Always => true,
        When::Bit30 => bit30,
        When::Negotiated(f) => feat::has(s.protocol_features(), f),
        When::NotNegotiated(f) => !feat::has(s.protocol_features(), f),
    }
}

fn body(b: &Body, s: &Session) -> Vec<u8> {
    match b {
        Body::Bytes(b) => b.clone(),
        Body::Features { mask, extra } => ((s.offered_features().unwrap_or(0) & mask) | extra)
            .to_ne_bytes()
            .to_vec(),
        Body::Protocol { mask, extra } => ((s.offered_protocol_features().unwrap_or(0) & mask)
            | extra)
            .to_ne_bytes()
            .to_vec(),
    }
}

fn descriptors(fds: &[Fd]) -> Result<Vec<OwnedFd>, String> {
    fds.iter()
        .map(|f| match f {
            Fd::Memfd(size) => memfd("qconform-fuzz-guest", *size),
            Fd::Event => eventfd(),
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("cannot create descriptors: {e}"))
}

/// The last `TAIL` bytes of the back-end's stderr.
fn stderr_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut b = Vec::new();
    let _ = f.take(TAIL).read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

/// Sends the messages; returns how the conversation ended, the name of
/// the last request sent, and a success ack the back-end gave to a
/// request it cannot have carried out.
/// How a conversation went: how it ended, the last request sent, a false
/// success ack, and the findings (positions in the engine's list) about
/// answers to mutated requests, which are not held against the back-end
/// (no form is defined for the answer to a request it need not know).
struct Outcome {
    end: End,
    last: String,
    false_ack: Option<String>,
    excused: Vec<std::ops::Range<usize>>,
}

fn converse(
    tap: &mut Tap,
    msgs: &[Msg],
    altered: bool,
    timeout: Duration,
) -> Result<Outcome, String> {
    let mut excused = Vec::new();
    let (end, last, false_ack) = exchange(tap, msgs, altered, timeout, &mut excused)?;
    Ok(Outcome {
        end,
        last,
        false_ack,
        excused,
    })
}

fn exchange(
    tap: &mut Tap,
    msgs: &[Msg],
    altered: bool,
    timeout: Duration,
    excused: &mut Vec<std::ops::Range<usize>>,
) -> Result<(End, String, Option<String>), String> {
    let mut keep: Vec<OwnedFd> = Vec::new();
    // For an altered conversation a close is an answer, not a fault.
    let mutated = altered;
    let mut last = String::from("nothing");
    let mut false_ack = None;
    for m in msgs {
        if !applies(m.when, &tap.session) {
            continue;
        }
        let payload = body(&m.body, &tap.session);
        let ack = m.ack && feat::has(tap.session.protocol_features(), PF::ReplyAck);
        let header = Header {
            request: m.request,
            flags: m.flags | if ack { FLAG_NEED_REPLY } else { 0 },
            size: payload.len() as u32,
        };
        let fds = descriptors(&m.fds)?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        last = m.name();
        if let Some(cut) = m.cut {
            let _ = tap.send_cut(header, &payload, &borrowed, cut);
            let _ = tap.conn.stream.shutdown(std::net::Shutdown::Write);
            // The back-end may answer what it did get, or close: either is
            // fine (a few messages read, each within the timeout).
            for _ in 0..8 {
                if tap.recv(Instant::now() + timeout).is_err() {
                    break;
                }
            }
            return Ok((End::Cut, last, false_ack));
        }
        if tap.send(header, &payload, &borrowed).is_err() {
            tap.closed(Some(Direction::BackToFront), mutated);
            return Ok((End::Closed, last, false_ack));
        }
        drop(borrowed);
        keep.extend(fds);
        if !tap.session.awaiting_reply() {
            if m.probes.is_empty() {
                continue;
            }
            // Nothing is due for a mutated message: a GET_FEATURES round
            // trip (valid at any time) shows whether the back-end came
            // through it, so a crash or a hang is laid at its door.
            let h = Header::request(Fe::GetFeatures.id(), 0, false);
            if tap.send(h, &[], &[]).is_err() {
                tap.closed(Some(Direction::BackToFront), mutated);
                return Ok((End::Closed, last, false_ack));
            }
        }
        let before = tap.session.report().findings.len();
        let got = tap.recv(Instant::now() + timeout);
        if !m.probes.is_empty() {
            excused.push(before..tap.session.report().findings.len());
        }
        match got {
            Ok((r, _)) if r.oversize => return Ok((End::Closed, last, false_ack)),
            Ok((_, Some(ReplyOutcome::Ack(0))))
                if m.impossible && tap.session.refusal().is_some() =>
            {
                false_ack.get_or_insert(format!(
                    "back-end: acknowledged {last} as a success ({})",
                    tap.session.refusal().unwrap_or_default()
                ));
            }
            Ok(_) => {}
            Err(RecvError::Timeout) => {
                tap.timed_out(timeout.as_millis() as u64);
                return Ok((End::Hang(last.clone()), last, false_ack));
            }
            Err(_) => {
                tap.closed(Some(Direction::BackToFront), mutated);
                return Ok((End::Closed, last, false_ack));
            }
        }
    }
    // Still there? A request that is always answered says so.
    let h = Header::request(Fe::GetFeatures.id(), 0, false);
    if tap.send(h, &[], &[]).is_err() {
        tap.closed(Some(Direction::BackToFront), mutated);
        return Ok((End::Closed, last, false_ack));
    }
    let end = match tap.recv(Instant::now() + timeout) {
        Ok(_) => {
            tap.closed(Some(Direction::FrontToBack), mutated);
            End::Done
        }
        Err(RecvError::Timeout) => End::Unresponsive,
        Err(_) => {
            tap.closed(Some(Direction::BackToFront), mutated);
            End::Closed
        }
    };
    Ok((end, last, false_ack))
}

/// Whether the input is anything but the valid conversation. Then a close
/// is never held against the back-end, even before the first mutated
/// message: a reordered or dropped message makes the messages before it
/// invalid too (a ring enabled before its kick arrived).
fn altered(input: &Input) -> bool {
    !input.mutations.is_empty() || !input.dropped.is_empty()
}

/// Runs the back-end once on `input` in `dir`. Err: it cannot be started
/// or connected to at all.
pub fn execute(cmd: &str, input: &Input, dir: &Path, timeout: Duration) -> Result<Run, String> {
    let msgs = &build(input)[..];
    let socket = dir.join("vu.sock");
    let log = dir.join("backend.stderr");
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let cmd = cmd.replace("{socket}", &socket.display().to_string());
    let mut backend = Backend::start_logged(&cmd, &socket, START, stderr.into())?;
    let conn = backend
        .connect(&socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let mut tap = Tap::new(
        conn,
        "vhost-user fuzz",
        Profile { lenient: true },
        Direction::FrontToBack,
    );
    let Outcome {
        end,
        last,
        false_ack,
        excused,
    } = converse(&mut tap, msgs, altered(input), timeout)?;
    let transcript = tap.transcript(&format!("qconform vhost-user fuzz against {cmd}"));
    let report = tap.session.report().clone();
    // Closing our end may be what kills it: look at the process after.
    drop(tap);
    let status = backend.ended(Duration::from_millis(match end {
        End::Closed | End::Cut => 100,
        _ => 30,
    }));
    backend.stop();
    let tail = stderr_tail(&log);
    let probes: Vec<&'static str> = {
        let mut ids: Vec<&'static str> = msgs
            .iter()
            .flat_map(|m| m.probes.iter().map(|r| r.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let verdict = |kind, signal, detail: String, rules: Vec<&'static str>| {
        Some(Verdict {
            kind,
            signal,
            detail,
            stderr_tail: tail.clone(),
            rules,
        })
    };
    let signal = status.and_then(|s| s.signal());
    let verdict = if let Some(s) = signal {
        verdict(
            Kind::Crash,
            Some(s),
            format!("killed by {} after {last}", signal_name(s)),
            probes,
        )
    } else if crate::fuzz::target::sanitizer_report(&tail) {
        verdict(
            Kind::Crash,
            None,
            format!("sanitizer report after {last}"),
            probes,
        )
    } else if let End::Hang(name) = &end {
        verdict(
            Kind::Hang,
            None,
            format!("no reply to {name} within {} ms", timeout.as_millis()),
            probes,
        )
    } else if let End::Unresponsive = end {
        verdict(
            Kind::Hang,
            None,
            format!("stopped answering after {last}"),
            probes,
        )
    } else if let Some(d) = false_ack {
        verdict(
            Kind::Rule,
            None,
            format!("{}: {d}", rule::ROBUST_ACCEPTS.id),
            vec![rule::ROBUST_ACCEPTS.id],
        )
    } else {
        // What the back-end itself sent breaking a rule. Closes and missing
        // replies are judged above (a close after invalid input conforms).
        report
            .findings
            .iter()
            .enumerate()
            .filter(|(i, _)| !excused.iter().any(|r| r.contains(i)))
            .map(|(_, f)| f)
            .find(|f| {
                f.severity == Severity::Violation
                    && f.detail.starts_with("back-end:")
                    && ![rule::ROBUST_HANG.id, rule::REPLY_MISSING.id].contains(&f.rule.id)
            })
            .and_then(|f| {
                verdict(
                    Kind::Rule,
                    None,
                    format!("{}: {}", f.rule.id, f.detail),
                    vec![f.rule.id],
                )
            })
    };
    Ok(Run {
        verdict,
        transcript,
    })
}
