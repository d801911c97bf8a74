//! The `arbitrary` feature for vhost-user: conversations drawn from any
//! bytes survive their stream encoding, their valid messages decode and
//! encode back through the payload codecs, the session engine judges every
//! one without a panic (each finding a registered rule), and a mutation the
//! spec forbids in any state is reported. Inputs from a fixed SplitMix64
//! seed, so a failure names its input.

use arbitrary::{Arbitrary, Unstructured};
use qconform_core::rng::SplitMix64;
use qconform_core::rules::{self, vhost_user as rule};
use qconform_core::vhost_user::arbitrary::{layout, Conversation, Mutation, Step};
use qconform_core::vhost_user::payload;
use qconform_core::vhost_user::request;
use qconform_core::vhost_user::session::{Profile, Session};
use qconform_core::vhost_user::wire::FLAG_REPLY;
use std::collections::BTreeSet;

const INPUTS: usize = 3000;

fn conversations(seed: u64) -> impl Iterator<Item = (usize, Conversation)> {
    let mut rng = SplitMix64::new(seed);
    (0..INPUTS).filter_map(move |i| {
        let len = (rng.next_u64() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        Conversation::arbitrary(&mut Unstructured::new(&data))
            .ok()
            .map(|c| (i, c))
    })
}

fn judge(c: &Conversation, lenient: bool) -> Session {
    let mut s = Session::new("arbitrary", Profile { lenient });
    c.feed(&mut s);
    s
}

#[test]
fn conversations_survive_their_stream_encoding() {
    let mut steps = 0;
    for (i, c) in conversations(0x5eed_0101) {
        let back = Conversation::from_stream(&c.to_stream());
        assert_eq!(back.steps, c.steps, "input {i}");
        steps += c.steps.len();
    }
    assert!(steps > INPUTS, "only {steps} steps drawn");
}

#[test]
fn valid_messages_decode_and_encode_back_through_their_codec() {
    let mut kinds = BTreeSet::new();
    for (i, c) in conversations(0x5eed_0102) {
        let mutated: BTreeSet<usize> = c.mutations.iter().map(|(s, _)| *s).collect();
        for (k, step) in c.steps.iter().enumerate() {
            let Step::Message {
                channel,
                header,
                payload: bytes,
                ..
            } = step
            else {
                continue;
            };
            if mutated.contains(&k) {
                continue;
            }
            let info = request::lookup(*channel, header.request).unwrap_or_else(|| {
                panic!(
                    "input {i} step {k}: request {} not in the table",
                    header.request
                )
            });
            assert_eq!(header.size as usize, bytes.len(), "input {i} step {k}");
            let kind = layout(info, header.flags & FLAG_REPLY != 0);
            let p = payload::decode(kind, bytes, false).unwrap_or_else(|e| {
                panic!(
                    "input {i} step {k} ({}): {kind:?} does not decode: {e:?}",
                    info.name
                )
            });
            assert_eq!(&payload::encode(&p), bytes, "input {i} step {k}: {kind:?}");
            kinds.insert(format!("{kind:?}"));
        }
    }
    // Every layout a request or reply of the tables has is drawn.
    let mut all = BTreeSet::new();
    for ch in [request::Channel::Main, request::Channel::Backend] {
        for info in request::table(ch) {
            all.insert(format!("{:?}", layout(info, false)));
            all.insert(format!("{:?}", layout(info, true)));
        }
    }
    let missing: Vec<_> = all.difference(&kinds).collect();
    assert!(missing.is_empty(), "never drawn valid: {missing:?}");
}

#[test]
fn the_session_judges_every_conversation_and_reports_forbidden_flags() {
    let registered: BTreeSet<usize> = rules::all().map(|r| r as *const _ as usize).collect();
    let mut kinds = BTreeSet::new();
    let mut reserved_first = 0;
    for (i, c) in conversations(0x5eed_0103) {
        for lenient in [false, true] {
            let s = judge(&c, lenient);
            for f in &s.report().findings {
                assert!(
                    registered.contains(&(f.rule as *const _ as usize)),
                    "input {i}: {} is not registered",
                    f.rule
                );
            }
            // A reserved header flag (bits 4-31) is a violation in any
            // state; the first message is judged before anything else.
            if let Some((0, Mutation::Flags(bit))) = c.mutations.first() {
                if *bit >= 1 << 4 {
                    reserved_first += 1;
                    assert!(
                        s.report().has(&rule::HEADER_RESERVED),
                        "input {i}: reserved flag {bit:#x} not reported: {:?}",
                        s.report().findings
                    );
                }
            }
        }
        for (_, m) in &c.mutations {
            kinds.insert(format!("{m:?}").split('(').next().unwrap_or("").to_string());
        }
    }
    assert!(
        reserved_first > 10,
        "only {reserved_first} reserved-flag first messages"
    );
    assert_eq!(kinds.len(), 6, "mutation kinds drawn: {kinds:?}");
}
