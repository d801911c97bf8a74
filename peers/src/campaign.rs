//! Fixed-seed campaigns through the differential bodies: inputs from a
//! small deterministic generator, findings grouped by a signature, each
//! group's first input minimised.

use crate::differential::{find, known, Finding};
use crate::Impl;

/// The campaign's generator: a fixed seed gives the same inputs on every machine.
pub struct Rng(qconform_core::rng::SplitMix64);

impl Rng {
    /// The stream that starts at `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(qconform_core::rng::SplitMix64::new(seed))
    }
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// One input: 16 to 79 bytes (the generator reads at most that many).
    pub fn input(&mut self) -> Vec<u8> {
        let n = 16 + (self.next_u64() % 64) as usize;
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// What groups findings: the kind and the peer's message with numbers
/// blanked (one bug at many offsets is one group).
pub fn signature(f: &Finding) -> String {
    // Offsets and lengths vary within one bug; feature bit numbers and
    // other short numbers tell bugs apart.
    let mut s = String::new();
    for word in f.detail.split(' ') {
        let digits = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let numeric = digits.starts_with("0x")
            || (digits.len() >= 3 && digits.chars().all(|c| c.is_ascii_digit()));
        s.push_str(if numeric { "N" } else { word });
        s.push(' ');
    }
    format!("{} {} {}", f.imp.name(), f.kind.name(), s.trim_end())
}

/// Shrinks `data` while `imp` still gives a finding of the same signature:
/// drops trailing bytes, then zeroes bytes one at a time (0 is what a
/// missing byte reads as, so zeros are the generator's defaults).
pub fn minimise(imp: Impl, data: &[u8], sig: &str) -> Vec<u8> {
    let same = |d: &[u8]| find(imp, d).is_some_and(|f| signature(&f) == sig);
    let mut cur = data.to_vec();
    while !cur.is_empty() {
        let shorter = &cur[..cur.len() - 1];
        if same(shorter) {
            cur.pop();
        } else {
            break;
        }
    }
    for i in 0..cur.len() {
        if cur[i] != 0 {
            let mut t = cur.clone();
            t[i] = 0;
            if same(&t) {
                cur = t;
            }
        }
    }
    cur
}

/// One group of findings.
pub struct Group {
    pub signature: String,
    pub count: u64,
    pub first: Finding,
    pub input: Vec<u8>,
    pub known: Option<&'static str>,
}

/// Runs `runs` inputs from `seed` through `imp`'s differential body.
pub fn campaign(imp: Impl, runs: u64, seed: u64) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let mut groups: Vec<Group> = Vec::new();
    let slow = std::env::var_os("QCONFORM_PEERS_SLOW").is_some();
    for _ in 0..runs {
        let input = rng.input();
        let t = std::time::Instant::now();
        let found = find(imp, &input);
        if slow && t.elapsed().as_millis() > 200 {
            // Where a campaign spends its time, for tuning the generator.
            let g = crate::generate::generate(&input).map(|g| g.summary());
            eprintln!("slow {:?}: {g:?}", t.elapsed());
        }
        let Some(f) = found else {
            continue;
        };
        let sig = signature(&f);
        match groups.iter_mut().find(|g| g.signature == sig) {
            Some(g) => g.count += 1,
            None => groups.push(Group {
                signature: sig,
                count: 1,
                known: known(&f).map(|k| k.why),
                first: f,
                input,
            }),
        }
    }
    groups
}

/// The seed corpus of the differential fuzz targets: from the fixed stream
/// of seed 1, each input that exercises a [`Generated::features`] name no
/// earlier seed did, until `scan` inputs were looked at. An input that
/// gives either peer a finding the fuzz body would stop on is passed over
/// (a seed must replay cleanly). Inputs are at most 79 bytes (see
/// [`Rng::input`]), so the corpus is a few KiB.
///
/// [`Generated::features`]: crate::generate::Generated::features
pub fn seed_inputs(scan: u64) -> Vec<Vec<u8>> {
    use crate::differential::accepted;
    use std::collections::BTreeSet;
    let mut rng = Rng::new(1);
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for _ in 0..scan {
        let input = rng.input();
        let Some(g) = crate::generate::generate(&input) else {
            continue;
        };
        let new: Vec<String> = g
            .features()
            .into_iter()
            .filter(|f| !covered.contains(f))
            .collect();
        if new.is_empty() {
            continue;
        }
        let clean = Impl::ALL
            .iter()
            .all(|&imp| find(imp, &input).is_none_or(|f| accepted(&f)));
        if clean {
            covered.extend(new);
            out.push(input);
        }
    }
    out
}
