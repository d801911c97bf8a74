//! Fuzz target bodies. Each target under fuzz_targets/ is one line calling a
//! function here, so the same code runs under libFuzzer (`cargo fuzz run`),
//! as a plain binary replaying files (`cargo run -p qconform-fuzz --bin T
//! FILE...`), and in `cargo test` over the seeds and regressions.

pub mod mutator;
pub mod seeds;
pub mod structured;

pub use structured::{structured_image, structured_qed_parallels};

/// differential_imago and differential_qcow2rs: a writer-made qcow2 image
/// (every cluster kind), with zero or more mutations, through the peer and
/// through our checker and reader (peers/src/differential.rs). A finding
/// neither KNOWN nor RECORDED there panics; known peer panics are caught on
/// the peer's thread and never reach libFuzzer's hook.
pub use qconform_peers::{differential_imago, differential_qcow2rs};

use qconform_core::Limits;

/// Limits for fuzzing: small enough that no input takes more than a few
/// milliseconds, so libFuzzer finds hangs as our limits, not as timeouts.
/// A legitimate image needs about one table entry per 8 bytes of file
/// (8 Ki entries for a [`seeds::MAX_SEED`] input); 2^17 leaves 16 times
/// that, and stops at once a table of 2 MiB clusters (2^18 entries), whose
/// zero-padded reads past the end of the file cost 35 ms each under ASan.
/// 256 header extensions fit in a 4 KiB cluster 0, so the fuzzer reaches
/// that limit too.
///
/// Four findings per rule keep their text (users get 32): libFuzzer never
/// reads it, every rule's text is still built for its first findings (so
/// a panic in formatting one is still reached), and formatting the kept
/// findings of inputs with thousands of them was a sixth of a run.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_entries_visited: 1 << 17,
        max_header_extensions: 256,
        max_findings_per_rule: 4,
        ..Limits::default()
    }
}

/// Whether `rule` is one of the registry's (by address: the rules are
/// statics, and comparing ids as strings teaches libFuzzer's CMP tracing
/// to put rule ids into the inputs).
/// A set of addresses built once: a linear scan of the ~200 rules per
/// finding was ~14,000 traced comparisons on an input with 70 findings.
pub fn is_registered(rule: &'static qconform_core::rules::Rule) -> bool {
    use std::collections::HashSet;
    use std::sync::OnceLock;
    static REGISTERED: OnceLock<HashSet<usize>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            qconform_core::rules::all()
                .map(|r| r as *const _ as usize)
                .collect()
        })
        .contains(&(rule as *const _ as usize))
}

/// The name of the raw-bytes target of a registered format: `<name>_check`.
pub fn check_target(format: &str) -> String {
    format!("{format}_check")
}

/// A format's raw-bytes target: any bytes through its checker (a report for
/// every input, every finding a rule of the registry), its metadata parser
/// and the reader, all reached through the format registry.
fn format_check(name: &str, data: &[u8]) {
    let f = qconform_core::formats::by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in qconform_core::formats::FORMATS"));
    let limits = fuzz_limits();
    let report = f.check(&data, "fuzz", &limits);
    assert!((0..=3).contains(&report.exit_code(false)));
    for finding in &report.findings {
        assert!(
            is_registered(finding.rule),
            "{} is not registered",
            finding.rule
        );
    }
    let info = f.info(&data, "fuzz", &limits).ok();
    let names = f.named_files(&data);
    if let Some(info) = &info {
        agree(&report, info, &names);
    }
    // The oracle of a clean check holds for an image that needs no other
    // file (the reader here opens none): it names none, and it is not a
    // qcow2 image whose data file the user must name.
    let clean = names.is_empty()
        && report.check_errors == 0
        && report.corruptions == 0
        && !report.has(&qconform_core::rules::qcow2::DATA_FILE_UNNAMED);
    judge_names(names);
    read_and_compare(
        data,
        clean,
        Some(&Shared {
            report: &report,
            info: info.as_ref(),
        }),
    );
}

/// What check and info say that the reader must agree with.
struct Shared<'a> {
    report: &'a qconform_core::Report,
    info: Option<&'a qconform_core::formats::Info>,
}

/// The oracle "check, info and named_files never disagree about what they
/// share": the guest clusters check counted are those of info's virtual
/// size (Parallels: its BAT), and the backing file check judged is the one
/// info shows.
pub fn agree(
    report: &qconform_core::Report,
    info: &qconform_core::formats::Info,
    names: &[qconform_core::disk::NamedFile],
) {
    use qconform_core::disk::Role;
    if let Some(total) = report.stats.as_ref().and_then(|s| s.total_clusters) {
        assert_eq!(
            total,
            info.guest_clusters(),
            "check counts {total} guest clusters, info's virtual size {} in clusters of {} says {}",
            info.virtual_size(),
            info.cluster_size(),
            info.guest_clusters()
        );
    }
    let named = names
        .iter()
        .find(|n| n.role == Role::BackingFile)
        .map(|n| n.name.as_str());
    assert_eq!(
        named,
        info.backing_file(),
        "the backing file check judges and the one info shows differ"
    );
}

/// Judges the backing and data file names an image carries under the
/// default path policy, as `check` does (nothing is opened); returns the
/// rules of the names it refuses.
pub fn judge_names(
    names: Vec<qconform_core::disk::NamedFile>,
) -> Vec<&'static qconform_core::rules::Rule> {
    use qconform_core::disk::{policy, Backing};
    names
        .iter()
        .filter_map(|n| policy::judge_name(&n.name, n.role, Backing::Confined).err())
        .map(|r| r.rule)
        .collect()
}

/// qcow2_check: raw bytes as a qcow2 image.
pub fn qcow2_check(data: &[u8]) {
    format_check("qcow2", data)
}

/// A target's body: what it does with one input.
pub type Body = fn(&[u8]);

/// All targets by name, for the replay test and `main` of a plain build.
pub const TARGETS: &[(&str, Body)] = &[
    ("qcow2_check", qcow2_check),
    ("vhost_user_decode", vhost_user_decode),
    ("vhost_user_session", vhost_user_session),
    ("structured_image", structured_image),
    ("parallels_check", parallels_check),
    ("qed_check", qed_check),
    ("structured_qed_parallels", structured_qed_parallels),
    ("differential_imago", differential_imago),
    ("differential_qcow2rs", differential_qcow2rs),
];

/// qed_check: raw bytes as a QED image.
pub fn qed_check(data: &[u8]) {
    format_check("qed", data)
}

/// parallels_check: raw bytes as a Parallels image.
pub fn parallels_check(data: &[u8]) {
    format_check("parallels", data)
}

/// The bytes of the input being read, shared with the virtual disk that
/// reads them. [`VirtualDisk::open`](qconform_core::disk::VirtualDisk::open)
/// takes an owned `Box<dyn ReadAt>`, so the input is copied once into a
/// buffer kept for the whole fuzzing run instead of a fresh allocation per
/// execution (a 64 KiB allocation and free per run costs more under ASan
/// than the copy).
struct InputBytes(std::rc::Rc<Vec<u8>>);

impl qconform_core::ReadAt for InputBytes {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> qconform_core::Result<()> {
        self.0.as_slice().read_exact_at(buf, offset)
    }
}

thread_local! {
    static INPUT: std::cell::RefCell<std::rc::Rc<Vec<u8>>> = Default::default();
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 4096]);
}

/// Whether a read error of an image the checker called clean is one the
/// checker does not promise to prevent: an encrypted image (refused, not
/// decrypted), a compressed stream (check judges where a cluster lies, not
/// whether it inflates), or one of our own limits.
fn excused(e: &qconform_core::Error) -> bool {
    use qconform_core::Error;
    match e {
        Error::Encrypted | Error::Decompress { .. } => true,
        Error::Rule { rule, .. } => rule.id.starts_with("limits."),
        _ => false,
    }
}

/// Opens `data` as a virtual disk (no other files) and reads its first
/// clusters and its map: the map is bounded by the tables the file holds,
/// whatever disk size it claims. When the checker found the image `clean`
/// (no error, no corruption), the oracle: it opens, reads and maps without
/// an error, and every range the map calls zero reads as zeros.
fn read_some(data: &[u8], clean: bool) {
    read_and_compare(data, clean, None)
}

/// [`read_some`], and with what check and info said, the oracle that the
/// reader agrees with them: the disk has info's virtual size, and on a
/// clean image every cluster map shows allocated in the image itself is
/// one check counted as allocated (map may show fewer: check also counts
/// the entries of the last table past the end of the disk, as qemu-img
/// does).
fn read_and_compare(data: &[u8], clean: bool, shared: Option<&Shared>) {
    use qconform_core::disk::{Backing, NoFiles, OpenOptions, VirtualDisk};
    use qconform_core::formats::Info;
    use qconform_core::ReadAt;
    // Best effort (no check first): the reader itself must hold on
    // whatever metadata the checker would refuse.
    let opts = OpenOptions {
        backing: Backing::Ignore,
        limits: fuzz_limits(),
        verify: false,
        ..OpenOptions::default()
    };
    let src = INPUT.with_borrow_mut(|rc| {
        // The disk of the previous run is gone, so the buffer is ours again.
        if std::rc::Rc::get_mut(rc).is_none() {
            *rc = Default::default();
        }
        if let Some(v) = std::rc::Rc::get_mut(rc) {
            v.clear();
            v.extend_from_slice(data);
        }
        InputBytes(rc.clone())
    });
    debug_assert_eq!(src.size(), data.len() as u64);
    let mut disk = match VirtualDisk::open(Box::new(src), &NoFiles, &opts) {
        Ok(disk) => disk,
        Err(e) => {
            assert!(!clean || excused(&e), "a clean image does not open: {e}");
            return;
        }
    };
    let info = shared.and_then(|s| s.info);
    if let Some(info) = info {
        assert_eq!(
            disk.size(),
            info.virtual_size(),
            "the reader's disk size and info's virtual size differ"
        );
    }
    // Clusters map shows allocated in the image itself, counted where one
    // map entry covers whole clusters (not with qcow2 subclusters).
    let whole_clusters =
        info.is_some_and(|i| !matches!(i, Info::Qcow2(q) if q.header.extended_l2()));
    let cs = info.map_or(1, |i| i.cluster_size().max(1));
    let mut mapped_clusters = 0u64;
    READ_BUF.with_borrow_mut(|buf| {
        let read = disk.read_at(0, buf);
        let window = buf.len() as u64;
        let mapped = disk.map_each(|e| {
            if e.depth == 0 && (e.data || e.compressed || (e.zero && e.offset.is_some())) {
                let end = e.start.saturating_add(e.length);
                mapped_clusters += end.div_ceil(cs) - e.start / cs;
            }
            if clean && read.is_ok() && e.zero && e.start < window {
                let end = (e.start + e.length).min(window) as usize;
                let bytes = buf.get(e.start as usize..end).unwrap_or(&[]);
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "map calls {:#x}+{:#x} zero, the read has data there",
                    e.start,
                    e.length
                );
            }
            Ok(())
        });
        if clean {
            for r in [&read, &mapped] {
                if let Err(e) = r {
                    assert!(excused(e), "a clean image does not read or map: {e}");
                }
            }
            let counted = shared
                .and_then(|s| s.report.stats.as_ref())
                .and_then(|s| s.allocated_clusters);
            if let (true, Ok(()), Some(counted)) = (whole_clusters, &mapped, counted) {
                assert!(
                    mapped_clusters <= counted,
                    "map shows {mapped_clusters} allocated clusters, check counted {counted}"
                );
            }
        }
    });
}

/// `main` of a target built without libFuzzer: runs the body on every file
/// named on the command line (directories are walked one level deep).
/// With `QCONFORM_REPLAY_TIMES` set it prints each input's time in
/// microseconds, to find the inputs that slow a campaign down.
pub fn replay_main(body: fn(&[u8])) {
    let timed = std::env::var_os("QCONFORM_REPLAY_TIMES").is_some();
    let mut n = 0;
    for arg in std::env::args().skip(1) {
        let path = std::path::PathBuf::from(&arg);
        let files: Vec<_> = if path.is_dir() {
            std::fs::read_dir(&path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![path]
        };
        for f in files {
            match std::fs::read(&f) {
                Ok(data) => {
                    let t = std::time::Instant::now();
                    body(&data);
                    if timed {
                        println!("{} {}", t.elapsed().as_micros(), f.display());
                    }
                    n += 1;
                }
                Err(e) => eprintln!("{}: {e}", f.display()),
            }
        }
    }
    eprintln!("replayed {n} inputs");
}

use qconform_core::vhost_user::payload::{self, PayloadKind};
use qconform_core::vhost_user::request::{self, Channel};
use qconform_core::vhost_user::session::{Direction, Message, Profile, Session};
use qconform_core::vhost_user::transcript::{self, Entry, Event};
use qconform_core::vhost_user::wire::{Header, HEADER_SIZE};

/// vhost_user_decode: byte 0 picks a request of either channel, the rest is
/// its payload. Decoding never panics, and whatever decodes encodes back to
/// the same bytes.
pub fn vhost_user_decode(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let channel = if pick & 0x80 != 0 {
        Channel::Backend
    } else {
        Channel::Main
    };
    // Bits 0-5 pick a row of the channel's table (ids past the table's end
    // are left out: they have no payload kind to decode).
    let Some(info) = request::table(channel).get((pick & 0x3f) as usize) else {
        return;
    };
    for kind in [
        info.payload,
        PayloadKind::U64,
        PayloadKind::Config,
        PayloadKind::MemTable,
    ] {
        let _ = payload::expected_size(kind, rest, pick & 0x40 != 0);
        if let Ok(p) = payload::decode(kind, rest, false) {
            // Padding is not part of the decoded value, so the round trip is
            // on values: encode, decode again, same payload.
            let again = payload::encode(&p);
            assert_eq!(
                payload::decode(kind, &again, false).as_ref(),
                Ok(&p),
                "{kind:?} does not round-trip"
            );
        }
    }
    if let Some(h) = rest
        .get(..HEADER_SIZE)
        .and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok())
    {
        let h = Header::parse(h);
        assert_eq!(Header::parse(&h.encode()), h);
    }
}

/// Stream encoding of a conversation for vhost_user_session: per message a
/// tag byte (bit 0 direction back-to-front, bit 1 back-end channel, bit 7
/// event: bit 2 close by back-end / timeout; bit 6 of the first tag: the
/// lenient profile), an fd-count byte, a 12-byte header, then
/// min(size, 4096) payload bytes.
pub fn encode_stream(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match &e.event {
            Some(Event::Closed { by, .. }) => out.extend_from_slice(&[
                0x80 | if *by == Some(Direction::BackToFront) {
                    4
                } else {
                    0
                },
                0,
            ]),
            Some(Event::Timeout { .. }) => out.extend_from_slice(&[0x81, 0]),
            None => {
                let (Some(ch), Some(dir), Some(request), Some(flags), Some(size)) =
                    (e.channel, e.dir, e.request, e.flags, e.size)
                else {
                    continue;
                };
                let tag =
                    (dir == Direction::BackToFront) as u8 | ((ch == Channel::Backend) as u8) << 1;
                out.push(tag);
                out.push(e.fds.len() as u8);
                out.extend_from_slice(
                    &Header {
                        request,
                        flags,
                        size,
                    }
                    .encode(),
                );
                out.extend_from_slice(
                    &e.payload_hex
                        .as_deref()
                        .and_then(transcript::from_hex)
                        .unwrap_or_default(),
                );
            }
        }
    }
    out
}

/// vhost_user_session: a byte stream of messages (see [`encode_stream`])
/// through the rule engine, in the profile bit 6 of the first tag byte
/// picks (lenient when set). It must never panic, and every finding names a
/// registered rule.
///
/// One profile per input, not both: the fuzzer reaches the other by
/// flipping one bit, and each run costs half (the engine's work per message
/// is what a run costs).
pub fn vhost_user_session(data: &[u8]) {
    let lenient = data.first().is_some_and(|&t| t & 0x40 != 0);
    {
        let mut s = Session::new("fuzz", Profile { lenient });
        let mut rest = data;
        while let [tag, fds, tail @ ..] = rest {
            if tag & 0x80 != 0 {
                if tag & 1 != 0 {
                    s.on_timeout(1000);
                } else {
                    s.on_close(
                        Some(if tag & 4 != 0 {
                            Direction::BackToFront
                        } else {
                            Direction::FrontToBack
                        }),
                        tag & 8 != 0,
                    );
                }
                rest = tail;
                continue;
            }
            let Some((head, tail)) = tail.split_first_chunk::<HEADER_SIZE>() else {
                break;
            };
            let header = Header::parse(head);
            let take = (header
                .size
                .min(qconform_core::Limits::DEFAULT.vhost_max_payload)
                as usize)
                .min(tail.len());
            let (payload, tail) = tail.split_at(take);
            let dir = if tag & 1 != 0 {
                Direction::BackToFront
            } else {
                Direction::FrontToBack
            };
            let channel = if tag & 2 != 0 {
                Channel::Backend
            } else {
                Channel::Main
            };
            s.on_message(Message {
                channel,
                dir,
                header,
                payload,
                fds: *fds as usize,
            });
            rest = tail;
        }
        s.on_close(None, false);
        for f in &s.report().findings {
            assert!(is_registered(f.rule), "{} is not registered", f.rule);
        }
    }
}
