//! The transcript corpus: clean conversations recorded from real peers, and
//! edited copies that each break one rule (the recipe names it). The
//! generator (`cargo xtask corpus`) writes them to corpus/vhost-user/.

use qconform_core::vhost_user::request::{Channel, FrontEnd};
use qconform_core::vhost_user::session::Direction;
use qconform_core::vhost_user::transcript::{self, to_hex, Entry, Event, FdInfo};
use qconform_core::vhost_user::wire::Header;

pub const DIR: &str = "corpus/vhost-user";
/// The clean recording every edit starts from: our probe against our serve.
pub const BASE: &str = "probe-vs-serve";

pub type Edit = fn(&mut Vec<Entry>);

/// One edited transcript.
pub struct Case {
    pub name: &'static str,
    pub edit: Edit,
    /// Rules `vhost-user check` must report.
    pub expect: &'static [&'static str],
}

const F2B: Direction = Direction::FrontToBack;
const B2F: Direction = Direction::BackToFront;

/// Whether `x` is front-end request `r` (or its reply) going `dir`.
fn is(x: &Entry, dir: Direction, r: FrontEnd) -> bool {
    x.dir == Some(dir) && x.channel == Some(Channel::Main) && x.request == Some(r.id())
}
fn find(e: &[Entry], dir: Direction, r: FrontEnd) -> usize {
    e.iter()
        .position(|x| is(x, dir, r))
        .unwrap_or_else(|| panic!("no {} ({dir:?}) in the base transcript", r.name()))
}
fn find_last(e: &[Entry], dir: Direction, r: FrontEnd) -> usize {
    e.iter()
        .rposition(|x| is(x, dir, r))
        .unwrap_or_else(|| panic!("no {} ({dir:?}) in the base transcript", r.name()))
}
/// The reply that follows request `i`.
fn reply_after(e: &[Entry], i: usize) -> usize {
    e.iter()
        .skip(i + 1)
        .position(|x| x.dir == Some(B2F))
        .map(|p| p + i + 1)
        .unwrap_or_else(|| panic!("no reply after entry {i}"))
}
fn msg(
    channel: Channel,
    dir: Direction,
    request: u32,
    flags: u32,
    payload: &[u8],
    fds: usize,
) -> Entry {
    let h = Header {
        request,
        flags,
        size: payload.len() as u32,
    };
    Entry::message(
        0,
        0,
        channel,
        dir,
        h,
        payload,
        vec![
            FdInfo {
                kind: "eventfd".into(),
                size: None
            };
            fds
        ],
    )
}
fn set_payload(e: &mut Entry, payload: &[u8]) {
    e.size = Some(payload.len() as u32);
    e.payload_hex = Some(to_hex(payload));
    e.decoded = None;
}
fn payload(e: &Entry) -> Vec<u8> {
    e.payload_hex
        .as_deref()
        .and_then(transcript::from_hex)
        .unwrap_or_default()
}
fn u64_of(e: &Entry) -> u64 {
    payload(e)
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}
fn set_u64(e: &mut Entry, v: u64) {
    set_payload(e, &v.to_ne_bytes());
}
fn set_u32_at(e: &mut Entry, at: usize, v: u32) {
    let mut p = payload(e);
    if let Some(s) = p.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
    set_payload(e, &p);
}
fn state(index: u32, num: u32) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&num.to_ne_bytes());
    p
}
/// Inserts before the final close event.
fn insert_before_end(e: &mut Vec<Entry>, new: Vec<Entry>) {
    let at = e.iter().rposition(|x| x.event.is_some()).unwrap_or(e.len());
    for (k, n) in new.into_iter().enumerate() {
        e.insert(at + k, n);
    }
}

/// Every edited transcript of the corpus.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "bad-version",
            expect: &["vhost-user.header.version"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::GetFeatures);
                e[i].flags = Some(0x2);
            },
        },
        Case {
            name: "reply-without-reply-flag",
            expect: &["vhost-user.header.reply-flag"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetFeatures);
                e[i].flags = Some(0x1);
            },
        },
        Case {
            name: "reserved-flags",
            expect: &["vhost-user.header.reserved-flags"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetOwner);
                e[i].flags = Some(0x21);
            },
        },
        Case {
            name: "need-reply-on-reply",
            expect: &["vhost-user.header.need-reply-on-reply"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetFeatures);
                e[i].flags = Some(0xd);
            },
        },
        Case {
            name: "unknown-request",
            expect: &["vhost-user.header.known-request"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetOwner);
                e[i].request = Some(99);
                e[i].flags = Some(1);
                e[i].name = None;
            },
        },
        Case {
            name: "wrong-size",
            expect: &["vhost-user.header.size"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetFeatures);
                let p = payload(&e[i]);
                set_payload(&mut e[i], &p[..4]);
            },
        },
        Case {
            name: "oversize-claim",
            expect: &["vhost-user.header.size-limit"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetFeatures);
                e[i].size = Some(0xffff_fff0);
                e[i].payload_hex = Some(String::new());
            },
        },
        Case {
            name: "config-size-too-large",
            expect: &["vhost-user.payload.valid"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::GetConfig);
                set_u32_at(&mut e[i], 4, 1000);
            },
        },
        Case {
            name: "reply-wrong-request",
            expect: &["vhost-user.reply.request-echo"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetFeatures);
                e[i].request = Some(15);
            },
        },
        Case {
            name: "reply-missing",
            expect: &["vhost-user.reply.missing"],
            edit: |e| {
                let i = find_last(e, B2F, FrontEnd::GetVringBase);
                e.remove(i);
            },
        },
        Case {
            name: "closed-with-reply-due",
            // One close, one finding: the reply that never came is named in it.
            expect: &["vhost-user.peer.closed-valid-conversation"],
            edit: |e| {
                let i = find_last(e, B2F, FrontEnd::GetVringBase);
                e.remove(i);
                // The back-end closed the connection instead of replying.
                let last = e.len() - 1;
                e[last].event = Some(Event::Closed {
                    by: Some(B2F),
                    expected: false,
                });
            },
        },
        Case {
            name: "reply-unexpected",
            expect: &["vhost-user.reply.unexpected"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetOwner);
                e.insert(
                    i + 1,
                    msg(Channel::Main, B2F, 3, 0x5, &0u64.to_ne_bytes(), 0),
                );
                // SET_OWNER was sent with need_reply in the base: drop it so no ack is due.
                e[i].flags = Some(1);
                if let Some(j) = e
                    .iter()
                    .skip(i + 2)
                    .position(|x| x.dir == Some(B2F) && x.request == Some(FrontEnd::SetOwner.id()))
                {
                    e.remove(i + 2 + j);
                }
            },
        },
        Case {
            name: "ack-not-u64",
            expect: &["vhost-user.reply-ack.u64"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetFeatures);
                let r = reply_after(e, i);
                set_payload(&mut e[r], &[0, 0, 0, 0]);
            },
        },
        Case {
            name: "ack-without-reply-ack",
            expect: &["vhost-user.reply-ack.negotiated"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetProtocolFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v & !(1 << 3));
            },
        },
        Case {
            name: "protocol-features-not-offered",
            expect: &["vhost-user.negotiation.protocol-features-offered"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v & !(1 << 30));
            },
        },
        Case {
            name: "features-not-offered",
            expect: &["vhost-user.negotiation.features-subset"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v | 1 << 40);
            },
        },
        Case {
            name: "protocol-features-not-subset",
            expect: &["vhost-user.negotiation.protocol-features-subset"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetProtocolFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v | 1 << 22);
            },
        },
        Case {
            name: "gated-request",
            expect: &["vhost-user.negotiation.gated-request"],
            edit: |e| {
                insert_before_end(
                    e,
                    vec![msg(
                        Channel::Main,
                        F2B,
                        19,
                        1,
                        &0x0000_5254_0012_3456u64.to_ne_bytes(),
                        0,
                    )],
                );
            },
        },
        Case {
            name: "inband-without-requirements",
            expect: &["vhost-user.negotiation.inband-notifications-requires"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetProtocolFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], (v | 1 << 14) & !(1 << 3));
            },
        },
        Case {
            name: "skip-drain-without-requirements",
            expect: &["vhost-user.negotiation.skip-drain-requires"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetProtocolFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v | 1 << 23);
            },
        },
        Case {
            name: "vring-enable-without-bit-30",
            expect: &["vhost-user.negotiation.vring-enable-needs-protocol-features"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v & !(1 << 30));
            },
        },
        Case {
            name: "max-mem-slots-decrease",
            expect: &["vhost-user.negotiation.max-mem-slots-never-decreases"],
            edit: |e| {
                insert_before_end(
                    e,
                    vec![
                        msg(Channel::Main, F2B, 36, 1, &[], 0),
                        msg(Channel::Main, B2F, 36, 5, &4u64.to_ne_bytes(), 0),
                    ],
                );
            },
        },
        Case {
            name: "postcopy-with-mem-slots",
            expect: &["vhost-user.negotiation.no-postcopy-with-mem-slots"],
            edit: |e| {
                insert_before_end(e, vec![msg(Channel::Main, F2B, 29, 1, &[], 0)]);
            },
        },
        Case {
            name: "unknown-protocol-feature-offered",
            expect: &["vhost-user.negotiation.unknown-protocol-features"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetProtocolFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v | 1 << 40);
            },
        },
        Case {
            name: "kick-without-fd",
            expect: &["vhost-user.fds.count"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetVringKick);
                e[i].fds.clear();
            },
        },
        Case {
            name: "nine-fds",
            expect: &["vhost-user.fds.max"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetVringCall);
                e[i].fds = vec![
                    FdInfo {
                        kind: "eventfd".into(),
                        size: None
                    };
                    9
                ];
            },
        },
        Case {
            name: "fd-on-reply",
            expect: &["vhost-user.fds.reply"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetFeatures);
                e[i].fds = vec![FdInfo {
                    kind: "memfd".into(),
                    size: Some(4096),
                }];
            },
        },
        Case {
            name: "mem-table-nine-regions",
            expect: &["vhost-user.memory.table-max-regions"],
            edit: |e| {
                let mut p = 9u32.to_ne_bytes().to_vec();
                p.resize(8 + 9 * 32, 0);
                insert_before_end(e, vec![msg(Channel::Main, F2B, 5, 1, &p, 9)]);
            },
        },
        Case {
            name: "overlapping-regions",
            expect: &["vhost-user.memory.no-overlap"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::AddMemReg);
                let mut dup = e[i].clone();
                dup.flags = Some(1);
                e.insert(i + 2, dup);
            },
        },
        Case {
            name: "remove-unknown-region",
            expect: &["vhost-user.memory.remove-live-region"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::RemMemReg);
                let mut p = payload(&e[i]);
                p[8..16].copy_from_slice(&0x4000_0000u64.to_ne_bytes());
                set_payload(&mut e[i], &p);
            },
        },
        Case {
            name: "gpa-addresses-user-address",
            expect: &["vhost-user.memory.gpa-addresses"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetProtocolFeatures);
                let v = u64_of(&e[i]);
                set_u64(&mut e[i], v | 1 << 21);
                let j = find(e, F2B, FrontEnd::SetProtocolFeatures);
                let w = u64_of(&e[j]);
                set_u64(&mut e[j], w | 1 << 21);
            },
        },
        Case {
            name: "mem-slots-exceeded",
            expect: &["vhost-user.memory.slots-limit"],
            edit: |e| {
                let i = find(e, B2F, FrontEnd::GetMaxMemSlots);
                set_u64(&mut e[i], 0);
            },
        },
        Case {
            name: "ring-index-out-of-range",
            expect: &["vhost-user.ring.index-in-range"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetVringNum);
                set_u32_at(&mut e[i], 0, 5);
            },
        },
        Case {
            name: "get-vring-base-num-nonzero",
            expect: &["vhost-user.ring.reserved-zero"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::GetVringBase);
                set_payload(&mut e[i], &state(0, 7));
            },
        },
        Case {
            name: "vring-enable-two",
            expect: &["vhost-user.ring.enable-value"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetVringEnable);
                set_payload(&mut e[i], &state(0, 2));
            },
        },
        Case {
            name: "stop-unstarted-ring",
            expect: &["vhost-user.ring.stopped-ring"],
            edit: |e| {
                let i = find(e, F2B, FrontEnd::SetVringKick);
                e.remove(i);
            },
        },
        Case {
            name: "backend-channel-not-negotiated",
            expect: &["vhost-user.backend.channel-negotiated"],
            edit: |e| {
                insert_before_end(e, vec![msg(Channel::Backend, B2F, 2, 1, &[], 0)]);
            },
        },
        Case {
            name: "backend-fd-without-send-fd",
            expect: &["vhost-user.backend.send-fd-negotiated"],
            edit: |e| {
                let mut area = 0x100u64.to_ne_bytes().to_vec();
                area.extend_from_slice(&4096u64.to_ne_bytes());
                area.extend_from_slice(&0u64.to_ne_bytes());
                insert_before_end(e, vec![msg(Channel::Backend, B2F, 3, 1, &area, 1)]);
            },
        },
        Case {
            name: "reply-timeout",
            expect: &["vhost-user.robustness.no-hang"],
            edit: |e| {
                let n = e.len() as u64;
                insert_before_end(
                    e,
                    vec![
                        msg(Channel::Main, F2B, 1, 1, &[], 0),
                        Entry::event(n, 0, Event::Timeout { waited_ms: 2000 }),
                    ],
                );
            },
        },
    ]
}

/// Applies a case to the base transcript text and renumbers the lines.
pub fn build(base: &str, case: &Case) -> Result<String, String> {
    let (pre, mut entries) = transcript::parse(base).map_err(|e| e.to_string())?;
    (case.edit)(&mut entries);
    let mut out = serde_json::to_string(&transcript::Preamble {
        description: format!("{} edited: {}", pre.description, case.name),
        ..pre
    })
    .map_err(|e| e.to_string())?;
    out.push('\n');
    for (seq, mut e) in entries.into_iter().enumerate() {
        e.seq = seq as u64;
        out.push_str(&serde_json::to_string(&e).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    Ok(out)
}
