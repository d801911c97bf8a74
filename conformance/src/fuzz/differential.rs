//! `qconform fuzz differential`: replays raw images — a fuzz target's
//! corpus, or images generated from the writers and mutators — through
//! `qemu-img check`, `map` and `convert -O raw`, and compares each with
//! our checker and reader: exit codes and counts, the allocation map, the
//! guest bytes. Every disagreement not explained by a known qemu-img fault
//! (an expectations file, rustls' BoGo model, shared with `fuzz image`) is
//! printed; the campaign exits 2 when there is one.
//!
//! Inputs are hostile: each is copied into a private scratch directory
//! (qemu-img never sees the corpus file, and we never pass `-r`), qemu-img
//! runs through [`super::target::run`] (own process group, timeout,
//! address-space limit) and opens the copy through a `json:` filename that
//! names the driver (no probing), sets `"backing": null` and, for a qcow2
//! image with the external-data-file bit, a `null-co` data file: a name
//! inside the image (`/etc/passwd`, `nbd://…`) is never opened. Our reader
//! opens the same copy with [`Backing::Ignore`] for the same reason.

use super::campaign;
use super::generate::{self, GenFormat, Rng};
use super::target::{self, shell_quote, Outcome};
use crate::Output;
use qconform_core::disk::Backing;
use qconform_core::report::Report;
use qconform_core::Limits;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A differential campaign's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: GenFormat,
    /// Files and folders of raw inputs (a folder: its files, README.md
    /// and dot files excepted).
    pub corpus: Vec<PathBuf>,
    /// Also this many inputs generated from the writers and mutators.
    pub generate: u64,
    /// Seed of the generated inputs (run i's input depends on (seed, i) only).
    pub seed: u64,
    /// Known qemu-img faults: `KIND [RULE]` per line, `# why`.
    pub expect: Option<PathBuf>,
    /// Wall-clock limit of each qemu-img run.
    pub timeout: Duration,
    /// Address-space limit of each qemu-img run in MiB.
    pub memory_mb: u64,
    /// Guest bytes are compared only for virtual disks up to this size
    /// (a claimed 128 GiB disk would be read in full by both sides).
    pub max_read: u64,
    /// Copy each unexpected disagreement's input here (`CLASS-NAME`).
    pub out: Option<PathBuf>,
}

impl Options {
    /// The settings `xtask` and the tests use for `format`: no inputs yet,
    /// qemu-img limited to 10 s and 2 GiB, bytes compared up to 64 MiB.
    pub fn new(format: GenFormat) -> Options {
        Options {
            format,
            corpus: Vec::new(),
            generate: 0,
            seed: 0,
            expect: None,
            timeout: Duration::from_secs(10),
            memory_mb: 2048,
            max_read: 64 << 20,
            out: None,
        }
    }
}

/// What kind of disagreement: also the word an expectations file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// qemu-img died by a signal or a sanitizer report.
    Crash,
    /// qemu-img ran past the timeout.
    Hang,
    /// qemu-img hit the address-space limit.
    Memory,
    /// `qemu-img check` exits with another code than `qconform check`.
    Exit,
    /// Same exit code, another count (corruptions, leaks, clusters).
    Count,
    /// `qemu-img map` differs from our map, or fails where we map.
    Map,
    /// `qemu-img convert -O raw` gives other guest bytes, or fails where we read.
    Bytes,
}

impl campaign::FindingKind for Class {
    fn name(self) -> &'static str {
        match self {
            Class::Crash => "crash",
            Class::Hang => "hang",
            Class::Memory => "memory",
            Class::Exit => "exit",
            Class::Count => "count",
            Class::Map => "map",
            Class::Bytes => "bytes",
        }
    }
}

/// One disagreement between qemu-img and qconform on one input.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    /// The input: a corpus file's path, or `generated seed S run I`.
    pub input: String,
    pub class: Class,
    /// Which qemu-img command (`check`, `map`, `convert`).
    pub command: &'static str,
    /// What differs, in one line.
    pub detail: String,
    /// The rules our checker reports on the input (what expectations match).
    pub rules: Vec<&'static str>,
    /// Explained by a line of the expectations file.
    pub expected: bool,
    /// Where the input was saved (--out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
}

/// A campaign's result.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub format: &'static str,
    pub inputs: u64,
    pub seconds: f64,
    /// Inputs per pair of verdicts, `qconform EXIT / qemu-img EXIT|crash|hang|memory`.
    pub verdicts: BTreeMap<String, u64>,
    /// Inputs whose guest bytes and map were compared (our reader opened them).
    pub read: u64,
    /// Disagreements per class: (unexpected, expected).
    pub classes: BTreeMap<&'static str, (u64, u64)>,
    pub disagreements: Vec<Disagreement>,
}

impl Summary {
    /// 2 when a disagreement is not expected, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.disagreements.iter().any(|d| !d.expected) {
            2
        } else {
            0
        }
    }

    /// The unexpected disagreements, one line each (test failure messages).
    pub fn unexpected(&self) -> Vec<String> {
        self.disagreements
            .iter()
            .filter(|d| !d.expected)
            .map(line)
            .collect()
    }

    fn print_human(&self) {
        crate::outln!(
            "{}: {} inputs in {:.1} s, {} read and mapped by both",
            self.format,
            self.inputs,
            self.seconds,
            self.read
        );
        for (v, n) in &self.verdicts {
            crate::outln!("  {n:>6}  {v}");
        }
        for (c, (new, known)) in &self.classes {
            crate::outln!("  {c}: {new} unexpected, {known} expected");
        }
        for d in self.disagreements.iter().filter(|d| !d.expected) {
            crate::outln!("{}", line(d));
        }
    }
}

fn line(d: &Disagreement) -> String {
    format!(
        "{} ({}) {}: {} [{}]{}",
        campaign::FindingKind::name(d.class),
        d.command,
        d.input,
        d.detail,
        d.rules.join(", "),
        d.saved
            .as_ref()
            .map_or(String::new(), |s| format!(" -> {s}"))
    )
}

/// One input: its name and bytes.
struct Input {
    name: String,
    bytes: Vec<u8>,
}

/// The files of the corpus paths, sorted within each folder.
fn corpus_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    f.is_file() && name != "README.md" && !name.starts_with('.')
                })
                .collect();
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: not a file or folder", p.display()));
        }
    }
    Ok(out)
}

/// The `json:` filename qemu-img opens `image` through: the driver named,
/// no backing file, and a null data file when the image asks for one.
fn qemu_spec(format: GenFormat, image: &Path, bytes: &[u8]) -> String {
    let mut spec = serde_json::json!({
        "driver": format.name(),
        "file": {"driver": "file", "filename": image.display().to_string()},
        "backing": null,
    });
    if format == GenFormat::Qcow2 && qcow2_data_file_bit(bytes) {
        spec["data-file"] = serde_json::json!({"driver": "null-co"});
    }
    format!("json:{spec}")
}

/// Whether a qcow2 header sets incompatible bit 2 (external data file):
/// qemu-img then opens the file the image names unless given another.
fn qcow2_data_file_bit(bytes: &[u8]) -> bool {
    let mut head = [0u8; qconform_core::qcow2::header::KNOWN_HEADER_LENGTH as usize];
    let n = head.len().min(bytes.len());
    head[..n].copy_from_slice(&bytes[..n]);
    qconform_core::qcow2::header::decode(&head).has_data_file()
}

/// Whether a known qemu-img fault applies to an input of a format.
type Recognise = fn(GenFormat, &[u8]) -> bool;

/// Known qemu-img faults that no rule of ours names, because the image is
/// valid: each is recognised from the input's bytes and then matched by
/// name in the expectations file, which says why it is a fault.
const QEMU_IMG_FAULTS: &[(&str, Recognise)] = &[
    ("qemu-img.qed.table-size-1", qed_table_size_one),
    ("qemu-img.parallels.ext-leaked", parallels_format_extension),
    ("qemu-img.parallels.bat-claim", parallels_bat_past_eof),
    ("qemu-img.parallels.file-length-rounded-up", partial_sector),
];

/// A Parallels header naming a Format Extension cluster (ext_off != 0).
fn parallels_format_extension(format: GenFormat, bytes: &[u8]) -> bool {
    use qconform_core::parallels::header::field;
    format == GenFormat::Parallels && field::EXT_OFF.get(bytes) != 0
}

/// A Parallels BAT claimed to reach past the end of the file.
fn parallels_bat_past_eof(format: GenFormat, bytes: &[u8]) -> bool {
    use qconform_core::parallels::header::{field, HEADER_SIZE};
    let bat_end = u64::from(field::NB_BAT_ENTRIES.get(bytes)) * 4 + HEADER_SIZE;
    format == GenFormat::Parallels && bat_end > bytes.len() as u64
}

/// A Parallels file whose length is not a whole number of 512-byte sectors.
fn partial_sector(format: GenFormat, bytes: &[u8]) -> bool {
    format == GenFormat::Parallels && !bytes.len().is_multiple_of(512)
}

/// A QED header whose table_size is 1.
fn qed_table_size_one(format: GenFormat, bytes: &[u8]) -> bool {
    use qconform_core::qed::header::{field, MAGIC};
    format == GenFormat::Qed && bytes.starts_with(&MAGIC) && field::TABLE_SIZE.get(bytes) == 1
}

/// How a qemu-img run ended when it did not exit normally.
fn fault(r: &Outcome, o: &Options) -> Option<(Class, String)> {
    let last = r
        .stderr_tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    if r.timed_out {
        Some((
            Class::Hang,
            format!("no exit within {} ms", o.timeout.as_millis()),
        ))
    } else if r.out_of_memory() {
        Some((
            Class::Memory,
            format!("address-space limit of {} MiB: {last}", o.memory_mb),
        ))
    } else if let Some(s) = r.signal {
        Some((Class::Crash, format!("killed by signal {s}: {last}")))
    } else if r.sanitizer_report() {
        Some((Class::Crash, format!("sanitizer report: {last}")))
    } else {
        None
    }
}

/// qemu-img's error message: the first line on stderr naming an error,
/// else its first line (the kept tail may start mid-line).
fn first_error(r: &Outcome) -> String {
    let mut lines = r
        .stderr_tail
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("warning:"));
    let first = lines.clone().next();
    lines
        .find(|l| l.contains("ERROR") || l.contains("qemu-img:"))
        .or(first)
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The counts of `qemu-img check --output=json` compared, per format, on
/// images both call clean or merely leaking (exit 0 or 3). Not compared:
/// corruptions and check-errors — qconform counts one per finding of a
/// Corruption or Error rule, including rules qemu-img does not check,
/// qemu-img one per failed test of its own, so on a corrupt image the two
/// numbers measure different things (the exit code is compared instead);
/// and the cluster statistics of QED and Parallels, which qemu-img's
/// drivers do not fill in (BlockFragInfo stays zero and is not printed).
fn counted(format: GenFormat) -> &'static [&'static str] {
    match format {
        GenFormat::Qcow2 => &[
            "leaks",
            "image-end-offset",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
        ],
        // qemu-img's QED check does not say where the image ends.
        GenFormat::Qed => &["leaks", "total-clusters"],
        GenFormat::Parallels => &["leaks", "image-end-offset", "total-clusters"],
    }
}

/// One input's comparison, as the campaign records it.
struct Compared {
    verdict: String,
    read: bool,
    found: Vec<(Class, &'static str, String)>,
    rules: Vec<&'static str>,
}

/// The JSON qemu-img printed is read up to this size (a map of a hostile
/// image can be long; past this it is not compared).
const MAX_JSON: u64 = 64 << 20;

/// Runs `qemu-img ARGS SPEC [EXTRA]` in `dir`, stdout to the file
/// `stdout.json` there (a map can be longer than the tail [`Outcome`]
/// keeps); Err when qemu-img cannot run. Returns how it ended and its
/// stdout parsed as JSON, if it is.
fn qemu_img(
    o: &Options,
    dir: &Path,
    args: &str,
    spec: &str,
    extra: &str,
) -> Result<(Outcome, Option<Value>), String> {
    let stdout = dir.join("stdout.json");
    let cmd = format!(
        "qemu-img {args} {} {extra} >{}",
        shell_quote(spec),
        shell_quote(&stdout.display().to_string())
    );
    let r = target::run(&cmd, dir, o.timeout, o.memory_mb).map_err(|e| e.to_string())?;
    if matches!(r.code, Some(126 | 127)) {
        return Err(format!(
            "qemu-img cannot run (exit {}): {} (install qemu-utils)",
            r.code.unwrap_or(0),
            r.stderr_tail.trim()
        ));
    }
    let json = std::fs::File::open(&stdout).ok().and_then(|f| {
        let mut text = Vec::new();
        f.take(MAX_JSON).read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    });
    let _ = std::fs::remove_file(&stdout);
    Ok((r, json))
}

/// Compares qemu-img and qconform on one input, written into `dir`.
fn compare(o: &Options, input: &Input, dir: &Path) -> Result<Compared, String> {
    campaign::clear(dir);
    let image = dir.join(format!("image.{}", o.format.name()));
    std::fs::write(&image, &input.bytes).map_err(|e| format!("{}: {e}", image.display()))?;
    let spec = qemu_spec(o.format, &image, &input.bytes);
    let ours = crate::check::check_file(&image, Some(o.format.name()), &Limits::default());
    let mut rules: Vec<&'static str> = ours.findings.iter().map(|f| f.rule.id).collect();
    rules.extend(
        QEMU_IMG_FAULTS
            .iter()
            .filter(|(_, applies)| applies(o.format, &input.bytes))
            .map(|(name, _)| *name),
    );
    rules.sort_unstable();
    rules.dedup();
    let our_exit = ours.exit_code(false);
    let mut found = Vec::new();

    let (r, q) = qemu_img(o, dir, "check --output=json", &spec, "")?;
    // qemu-img validates some structures while opening the image and then
    // refuses it (exit 1, "Could not open"): map and convert would fail
    // the same way, so they are compared only on images it opens.
    let mut opened = true;
    let theirs = match fault(&r, o) {
        Some((class, detail)) => {
            let word = campaign::FindingKind::name(class);
            found.push((class, "check", detail));
            word.to_owned()
        }
        None => {
            let code = r.code.unwrap_or(-1);
            opened = !(code == 1 && r.stderr_tail.contains("Could not open"));
            // qconform's corruption is qemu-img's refusal to open the image
            // or to finish its check (exit 1): both reject the image, at
            // another granularity.
            let both_reject = our_exit == 2 && code == 1;
            if code != our_exit && !both_reject {
                found.push((
                    Class::Exit,
                    "check",
                    format!(
                        "qemu-img check exits {code} ({}), qconform check {our_exit}",
                        first_error(&r)
                    ),
                ));
            } else if let Some(q) = q.filter(|_| code == our_exit && matches!(code, 0 | 3)) {
                if let Some(d) = count_difference(o.format, &ours, &q) {
                    found.push((Class::Count, "check", d));
                }
            }
            code.to_string()
        }
    };
    let verdict = format!("qconform {our_exit} / qemu-img {theirs}");
    if !opened {
        return Ok(Compared {
            verdict,
            read: false,
            found,
            rules,
        });
    }

    // With the external data file bit, qemu-img reads a null-co stand-in
    // and our reader (backing and data files ignored) refuses the data:
    // nothing to compare.
    let data_file = o.format == GenFormat::Qcow2 && qcow2_data_file_bit(&input.bytes);
    let opts = crate::read::ReadOptions::new(Backing::Ignore);
    let disk = (!data_file)
        .then(|| crate::read::open(&image, &opts).ok())
        .flatten();
    let Some(mut disk) = disk else {
        return Ok(Compared {
            verdict,
            read: false,
            found,
            rules,
        });
    };
    if let Some(f) = compare_map(o, dir, &spec, &mut disk, our_exit)? {
        found.push(f);
    }
    if disk.size() <= o.max_read {
        if let Some(f) = compare_bytes(o, dir, &spec, &mut disk, our_exit)? {
            found.push(f);
        }
    }
    Ok(Compared {
        verdict,
        read: true,
        found,
        rules,
    })
}

/// The first count that differs between our report and qemu-img's JSON
/// (qemu-img leaves out counts that are zero).
fn count_difference(format: GenFormat, ours: &Report, q: &Value) -> Option<String> {
    let mine = serde_json::to_value(ours).ok()?;
    let differ: Vec<String> = counted(format)
        .iter()
        .filter_map(|k| {
            let theirs = q.get(k).and_then(Value::as_u64).unwrap_or(0);
            let us = mine.get(k).and_then(Value::as_u64).unwrap_or(0);
            (theirs != us).then(|| format!("{k} {us} (qemu-img {theirs})"))
        })
        .collect();
    (!differ.is_empty()).then(|| differ.join(", "))
}

type Found = (Class, &'static str, String);

/// `qemu-img map` against our map of the same disk.
fn compare_map(
    o: &Options,
    dir: &Path,
    spec: &str,
    disk: &mut qconform_core::disk::VirtualDisk,
    our_exit: i32,
) -> Result<Option<Found>, String> {
    let (r, theirs) = qemu_img(o, dir, "map --output=json", spec, "")?;
    // qemu-img prints an empty range for an empty disk; we print none.
    let theirs = theirs.map(|t| match t {
        Value::Array(v) => Value::Array(
            v.into_iter()
                .filter(|e| e.get("length").and_then(Value::as_u64) != Some(0))
                .collect(),
        ),
        other => other,
    });
    if let Some((class, detail)) = fault(&r, o) {
        return Ok(Some((class, "map", detail)));
    }
    let ours = disk.map().map_err(|e| e.to_string());
    Ok(match (ours, theirs, r.code) {
        (Ok(ours), Some(theirs), Some(0)) => {
            let ours = serde_json::to_value(&ours).unwrap_or_default();
            (ours != theirs).then(|| {
                (
                    Class::Map,
                    "map",
                    format!("first difference: {}", first_map_difference(&ours, &theirs)),
                )
            })
        }
        (Err(e), _, Some(0)) => Some((
            Class::Map,
            "map",
            format!("qemu-img maps, qconform map fails: {e}"),
        )),
        // A map longer than MAX_JSON: not compared.
        (Ok(_), None, Some(0)) => None,
        // qemu-img refuses to map an image we call corrupt: both reject it.
        (Ok(_), _, _) if our_exit == 2 => None,
        (Ok(_), _, code) => Some((
            Class::Map,
            "map",
            format!(
                "qemu-img map exits {} ({}) where qconform maps",
                code.unwrap_or(-1),
                first_error(&r)
            ),
        )),
        (Err(_), _, _) => None,
    })
}

/// The first entry where two maps (JSON arrays) differ, both sides shown.
fn first_map_difference(ours: &Value, theirs: &Value) -> String {
    let empty = Vec::new();
    let (a, b) = (
        ours.as_array().unwrap_or(&empty),
        theirs.as_array().unwrap_or(&empty),
    );
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        if x != y {
            let show = |v: Option<&Value>| v.map_or("none".to_owned(), Value::to_string);
            return format!("entry {i}: qconform {} / qemu-img {}", show(x), show(y));
        }
    }
    "none".into()
}

/// `qemu-img convert -O raw` against our reader's bytes, chunk by chunk.
fn compare_bytes(
    o: &Options,
    dir: &Path,
    spec: &str,
    disk: &mut qconform_core::disk::VirtualDisk,
    our_exit: i32,
) -> Result<Option<Found>, String> {
    let out = dir.join("out.raw");
    let (r, _) = qemu_img(
        o,
        dir,
        "convert -O raw",
        spec,
        &shell_quote(&out.display().to_string()),
    )?;
    if let Some((class, detail)) = fault(&r, o) {
        return Ok(Some((class, "convert", detail)));
    }
    // qemu-img refuses to read an image we call corrupt: both reject it.
    if r.code != Some(0) && our_exit == 2 {
        return Ok(None);
    }
    if r.code != Some(0) {
        return Ok(Some((
            Class::Bytes,
            "convert",
            format!(
                "qemu-img convert exits {} ({}) where qconform reads",
                r.code.unwrap_or(-1),
                first_error(&r)
            ),
        )));
    }
    let mut file = std::fs::File::open(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != disk.size() {
        return Ok(Some((
            Class::Bytes,
            "convert",
            format!(
                "qemu-img writes {len} bytes, qconform reads {}",
                disk.size()
            ),
        )));
    }
    const CHUNK: usize = 1 << 20;
    let (mut a, mut b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut at = 0u64;
    while at < len {
        let n = CHUNK.min((len - at) as usize);
        if let Err(e) = disk.read_at(at, &mut a[..n]) {
            return Ok(Some((
                Class::Bytes,
                "convert",
                format!("qemu-img reads, qconform fails at guest offset {at:#x}: {e}"),
            )));
        }
        file.read_exact(&mut b[..n]).map_err(|e| e.to_string())?;
        if a[..n] != b[..n] {
            let i = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y);
            let off = at + i.unwrap_or(0) as u64;
            return Ok(Some((
                Class::Bytes,
                "convert",
                format!("guest bytes differ from offset {off:#x}"),
            )));
        }
        at += n as u64;
    }
    Ok(None)
}

/// The inputs: the corpus files, then the generated ones.
fn inputs(o: &Options) -> Result<Vec<Input>, String> {
    let mut out = Vec::new();
    for f in corpus_files(&o.corpus)? {
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        out.push(Input {
            name: f.display().to_string(),
            bytes,
        });
    }
    for i in 0..o.generate {
        let input = generate::input(o.format, &mut Rng::for_run(o.seed, i));
        // A description the writer refuses gives no input.
        if let Some(built) = generate::build(&input) {
            out.push(Input {
                name: format!("generated seed {} run {i}", o.seed),
                bytes: built.image,
            });
        }
    }
    Ok(out)
}

/// Replays every input. Errors: an input cannot be read, or qemu-img cannot run.
pub fn replay(o: &Options) -> Result<Summary, String> {
    let expect = campaign::expectations(o.expect.as_deref())?;
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let started = Instant::now();
    let mut s = Summary {
        format: o.format.name(),
        inputs: 0,
        seconds: 0.0,
        verdicts: BTreeMap::new(),
        read: 0,
        classes: BTreeMap::new(),
        disagreements: Vec::new(),
    };
    for input in inputs(o)? {
        let c = compare(o, &input, scratch.path())?;
        s.inputs += 1;
        s.read += u64::from(c.read);
        *s.verdicts.entry(c.verdict).or_default() += 1;
        for (class, command, detail) in c.found {
            let expected = campaign::is_expected(&expect, class, &c.rules);
            let tally = s
                .classes
                .entry(campaign::FindingKind::name(class))
                .or_default();
            if expected {
                tally.1 += 1;
            } else {
                tally.0 += 1;
            }
            let saved = match (&o.out, expected) {
                (Some(out), false) => Some(save(out, class, &input)?),
                _ => None,
            };
            s.disagreements.push(Disagreement {
                input: input.name.clone(),
                class,
                command,
                detail,
                rules: c.rules.clone(),
                expected,
                saved,
            });
        }
    }
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}

/// Copies an input that disagrees into `out` as `CLASS-NAME`.
fn save(out: &Path, class: Class, input: &Input) -> Result<String, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let base: String = input
        .name
        .rsplit('/')
        .next()
        .unwrap_or("input")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = out.join(format!("{}-{base}", campaign::FindingKind::name(class)));
    std::fs::write(&path, &input.bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

/// `qconform fuzz differential`: exit 0 no unexpected disagreement, 2 some, 1 could not run.
pub fn run(o: &Options, output: Output) -> i32 {
    let s = match replay(o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qconform fuzz differential: {e}");
            return 1;
        }
    };
    match output {
        Output::Json => crate::outln!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
        Output::Human => s.print_human(),
    }
    s.exit_code()
}
