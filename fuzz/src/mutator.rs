//! The custom mutator of the raw image targets (qcow2_check, qed_check,
//! parallels_check; hooked with `fuzz_mutator!` in their fuzz_targets/
//! files): it reads the input's header through the format's field table,
//! lists the fields and the first entries of the tables they name (qcow2
//! L1, L2, refcount table and first snapshot's L1 fields, header
//! extension headers; QED L1 and L2; the Parallels BAT and Format
//! Extension fields), picks one and sets it to a value a parser must
//! survive: 0, 1, the file size, a neighbour's value, past the end of the
//! file, the value ±1, a bit flipped, the value doubled, all ones. After an
//! edit of a Parallels Format Extension cluster its MD5 checksum is
//! repaired, so the edit reaches the extension's parser instead of its
//! checksum rule. One call in eight, and whenever nothing parses, it is
//! libFuzzer's own byte mutation instead.
//!
//! Deterministic from the seed libFuzzer passes; work is bounded by
//! [`MAX_SLOTS`] whatever the header claims, and the input never grows.

use md5::{Digest, Md5};
use qconform_core::field::{read, write, Endian};
use qconform_core::rng::SplitMix64;
use qconform_core::{parallels, qcow2, qed};

/// Most table entries listed per table.
pub const MAX_ENTRIES: usize = 64;
/// Most slots listed per input.
pub const MAX_SLOTS: usize = 512;

/// The formats the mutator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// qcow2 (big endian).
    Qcow2,
    /// QED (little endian).
    Qed,
    /// Parallels (little endian).
    Parallels,
}

/// One integer of the input the mutator may set.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: usize,
    width: usize,
}

fn get(b: &[u8], s: Slot, e: Endian) -> u64 {
    match s.width {
        1 => read::<u8>(b, s.at, e) as u64,
        2 => read::<u16>(b, s.at, e) as u64,
        4 => read::<u32>(b, s.at, e) as u64,
        _ => read::<u64>(b, s.at, e),
    }
}

fn put(b: &mut [u8], s: Slot, e: Endian, v: u64) {
    match s.width {
        1 => write(b, s.at, e, v as u8),
        2 => write(b, s.at, e, v as u16),
        4 => write(b, s.at, e, v as u32),
        _ => write(b, s.at, e, v),
    }
}

/// The slots of an input: header fields, then table entries.
struct Slots {
    list: Vec<Slot>,
    len: usize,
}

impl Slots {
    fn add(&mut self, at: usize, width: usize) {
        if self.list.len() < MAX_SLOTS && at.checked_add(width).is_some_and(|end| end <= self.len) {
            self.list.push(Slot { at, width });
        }
    }
    fn fields(&mut self, base: usize, table: &[&dyn qconform_core::field::AnyField]) {
        for f in table {
            self.add(base + f.offset(), f.width());
        }
    }
    /// `n` entries of `width` bytes from `at` (at most [`MAX_ENTRIES`]).
    fn table(&mut self, at: u64, n: u64, width: usize) {
        let Ok(at) = usize::try_from(at) else { return };
        for i in 0..(n.min(MAX_ENTRIES as u64) as usize) {
            self.add(at.saturating_add(i * width), width);
        }
    }
}

fn qcow2_slots(b: &[u8], s: &mut Slots) -> u64 {
    use qcow2::header::field as f;
    s.fields(0, qcow2::header::field::ALL);
    let e = Endian::Big;
    let cs = 1u64 << f::CLUSTER_BITS.get(b).clamp(9, 21);
    let l1 = f::L1_TABLE_OFFSET.get(b);
    s.table(l1, f::L1_SIZE.get(b) as u64, 8);
    // The first L2 tables the L1 names.
    for i in 0..(f::L1_SIZE.get(b).min(4) as u64) {
        let l2 = read::<u64>(b, l1.saturating_add(8 * i) as usize, e) & 0x00ff_ffff_ffff_fe00;
        if l2 != 0 {
            s.table(l2, cs / 8, 8);
        }
    }
    let rt = f::REFCOUNT_TABLE_OFFSET.get(b);
    s.table(rt, f::REFCOUNT_TABLE_CLUSTERS.get(b) as u64 * cs / 8, 8);
    if let Some(rb) = usize::try_from(read::<u64>(b, rt as usize, e))
        .ok()
        .filter(|&o| o != 0)
    {
        s.table(rb as u64, cs / 2, 2);
    }
    // The first snapshot's l1_table_offset and l1_size.
    let snap = f::SNAPSHOTS_OFFSET.get(b);
    if f::NB_SNAPSHOTS.get(b) > 0 {
        s.table(snap, 1, 8);
        s.add((snap as usize).saturating_add(8), 4);
    }
    // Header extensions: type and length of each, up to the first cluster.
    let mut at = f::HEADER_LENGTH.get(b).max(72) as usize;
    if f::VERSION.get(b) < 3 {
        at = 72;
    }
    for _ in 0..16 {
        s.add(at, 4);
        s.add(at.saturating_add(4), 4);
        let kind = read::<u32>(b, at, e);
        let len = read::<u32>(b, at.saturating_add(4), e) as usize;
        if kind == 0 || at as u64 >= cs {
            break;
        }
        at = at.saturating_add(8 + len.next_multiple_of(8));
    }
    cs
}

fn qed_slots(b: &[u8], s: &mut Slots) -> u64 {
    use qed::header::field as f;
    s.fields(0, qed::header::field::ALL);
    let cs = (f::CLUSTER_SIZE.get(b) as u64).clamp(4096, 1 << 26);
    let per = (f::TABLE_SIZE.get(b) as u64).clamp(1, 16) * cs / 8;
    let l1 = f::L1_TABLE_OFFSET.get(b);
    s.table(l1, per, 8);
    for i in 0..4 {
        let l2 = read::<u64>(b, l1.saturating_add(8 * i) as usize, Endian::Little);
        if l2 != 0 {
            s.table(l2, per, 8);
        }
    }
    cs
}

/// The Parallels Format Extension cluster: (offset, length), when the
/// header names one inside the input.
fn parallels_ext(b: &[u8]) -> Option<(usize, usize)> {
    use parallels::header::field as f;
    let cs = (f::TRACKS.get(b) as usize).clamp(1, 1 << 16) * 512;
    let at = usize::try_from(f::EXT_OFF.get(b)).ok()?.checked_mul(512)?;
    (at != 0 && at.checked_add(cs)? <= b.len()).then_some((at, cs))
}

fn parallels_slots(b: &[u8], s: &mut Slots) -> u64 {
    use parallels::ext::{bitmap_field, feature_field, field as ext};
    use parallels::header::field as f;
    s.fields(0, parallels::header::field::ALL);
    s.table(64, f::NB_BAT_ENTRIES.get(b) as u64, 4);
    if let Some((at, _)) = parallels_ext(b) {
        s.fields(at, ext::ALL);
        let feature = at + ext::FEATURES;
        s.fields(feature, feature_field::ALL);
        let data = feature + feature_field::DATA;
        s.fields(data, bitmap_field::ALL);
        s.table((data + bitmap_field::L1) as u64, 8, 8);
    }
    (f::TRACKS.get(b) as u64).max(1) * 512
}

/// The value to store in `slot`: one of the interesting ones.
fn value(rng: &mut SplitMix64, b: &[u8], slots: &[Slot], s: Slot, e: Endian, cs: u64) -> u64 {
    let old = get(b, s, e);
    let size = b.len() as u64;
    let bits = s.width as u32 * 8;
    match rng.next_u64() % 11 {
        0 => 0,
        1 => 1,
        2 => size,
        3 => {
            let n = slots[(rng.next_u64() % slots.len() as u64) as usize];
            get(b, n, e)
        }
        4 => size.next_multiple_of(cs).saturating_add(cs),
        5 => old.wrapping_add(1),
        6 => old.wrapping_sub(1),
        7 => old ^ 1 << (rng.next_u64() % bits as u64),
        8 => old.wrapping_mul(2),
        9 => u64::MAX,
        // A cluster boundary near the value, off by one.
        _ => (old / cs * cs).wrapping_add(if rng.next_u64() & 1 == 0 { 1 } else { cs - 1 }),
    }
}

/// Repairs what a checksum covers after an edit at `at`: the MD5 of a
/// Parallels Format Extension cluster the edit falls in.
fn repair(format: Format, b: &mut [u8], at: usize) {
    use parallels::ext::field::CHECKSUM;
    if format != Format::Parallels {
        return;
    }
    let Some((ext, len)) = parallels_ext(b) else {
        return;
    };
    if !(ext..ext + len).contains(&at) {
        return;
    }
    let c = &mut b[ext..ext + len];
    let sum = Md5::digest(&c[CHECKSUM.end..]);
    c[CHECKSUM].copy_from_slice(&sum);
}

/// Mutates the first `size` bytes of `data` (at most `max_size` long) for
/// `format`; returns the new size. `fallback` is libFuzzer's byte mutation
/// (`libfuzzer_sys::fuzzer_mutate`), used one call in eight and when no
/// field edit changes a byte.
pub fn mutate(
    format: Format,
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    fallback: fn(&mut [u8], usize, usize) -> usize,
) -> usize {
    let size = size.min(data.len());
    let mut rng = SplitMix64::new(seed as u64);
    if size == 0 || rng.next_u64().is_multiple_of(8) {
        return fallback(data, size, max_size);
    }
    let b = &mut data[..size];
    let mut slots = Slots {
        list: Vec::new(),
        len: size,
    };
    let (e, cs) = match format {
        Format::Qcow2 => (Endian::Big, qcow2_slots(b, &mut slots)),
        Format::Qed => (Endian::Little, qed_slots(b, &mut slots)),
        Format::Parallels => (Endian::Little, parallels_slots(b, &mut slots)),
    };
    let cs = cs.max(1);
    if !slots.list.is_empty() {
        // A value equal to the old one changes nothing: a few tries.
        for _ in 0..4 {
            let s = slots.list[(rng.next_u64() % slots.list.len() as u64) as usize];
            let old = get(b, s, e);
            let v = value(&mut rng, b, &slots.list, s, e, cs);
            put(b, s, e, v);
            if get(b, s, e) != old {
                repair(format, b, s.at);
                return size;
            }
        }
    }
    fallback(data, size, max_size)
}

/// The custom mutator of vhost_user_session (hooked with `fuzz_mutator!`):
/// the input is read as a conversation ([`Conversation::from_stream`], the
/// encoding the target decodes) and changed a step at a time, as a
/// front-end or back-end out of order would change it: a valid message
/// drawn through core's `Arbitrary` inserted (a request with its payload
/// laid out as the spec says, which byte mutations rarely produce), a
/// step dropped, repeated or moved, a header's flags, request id or fd
/// count changed, a payload bit flipped or its size claim made to differ
/// from the bytes that follow. Bit 6 of the first byte (the lenient
/// profile) is kept. One call in four, and whenever the result would not
/// fit `max_size`, it is libFuzzer's own byte mutation instead.
///
/// [`Conversation::from_stream`]: qconform_core::vhost_user::arbitrary::Conversation::from_stream
pub fn mutate_session(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    fallback: fn(&mut [u8], usize, usize) -> usize,
) -> usize {
    use arbitrary::{Arbitrary, Unstructured};
    use qconform_core::vhost_user::arbitrary::{Conversation, Step, MAX_STEPS};
    let size = size.min(data.len());
    let mut rng = SplitMix64::new(seed as u64);
    if rng.next_u64().is_multiple_of(4) {
        return fallback(data, size, max_size);
    }
    let lenient = data.first().is_some_and(|&t| t & 0x40 != 0);
    let mut c = Conversation::from_stream(data.get(..size).unwrap_or(&[]));
    let mut below = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let n = c.steps.len();
    match below(6) {
        // A valid step drawn from fresh bytes, inserted anywhere.
        0 | 1 if n < MAX_STEPS => {
            let mut bytes = [0u8; 96];
            for chunk in bytes.chunks_mut(8) {
                let r = (below(usize::MAX)) as u64;
                chunk.copy_from_slice(&r.to_le_bytes());
            }
            let drawn = Conversation::arbitrary(&mut Unstructured::new(&bytes)).unwrap_or_default();
            if let Some(step) = drawn.steps.into_iter().next() {
                let at = below(n + 1);
                c.steps.insert(at, step);
            }
        }
        2 if n > 0 => {
            c.steps.remove(below(n));
        }
        3 if n > 0 && n < MAX_STEPS => {
            let i = below(n);
            let step = c.steps.get(i).cloned();
            if let Some(step) = step {
                c.steps.insert(below(n + 1), step);
            }
        }
        4 if n > 1 => {
            let (a, b) = (below(n), below(n));
            c.steps.swap(a, b);
        }
        _ if n > 0 => {
            let i = below(n);
            let pick = below(5);
            let r = below(usize::MAX) as u64;
            if let Some(Step::Message {
                header,
                payload,
                fds,
                ..
            }) = c.steps.get_mut(i)
            {
                match pick {
                    0 => header.flags ^= 1 << (r % 32),
                    1 => header.request = (r % 64) as u32,
                    2 => *fds = (r % 4) as u8,
                    3 if !payload.is_empty() => {
                        let at = (r as usize) % payload.len();
                        if let Some(b) = payload.get_mut(at) {
                            *b ^= 1 << ((r >> 32) % 8);
                        }
                    }
                    // The size claim no longer that of the bytes: the
                    // next step is read from the wrong place.
                    _ => header.size = header.size.wrapping_add((r % 17) as u32).wrapping_sub(8),
                }
            }
        }
        _ => return fallback(data, size, max_size),
    }
    let mut out = c.to_stream();
    if let Some(first) = out.first_mut() {
        if lenient {
            *first |= 0x40;
        }
    }
    if out.is_empty() || out.len() > max_size || out.len() > data.len() {
        return fallback(data, size, max_size);
    }
    data[..out.len()].copy_from_slice(&out);
    out.len()
}
