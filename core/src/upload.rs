//! The upload policy: what an image from an untrusted source (a Glance or
//! Cinder upload, a vendor download) must not carry, judged on top of the
//! format's own check.
//!
//! The consistency check answers "is this image well formed?"; an upload
//! scanner also asks "is this well-formed image safe to hand to QEMU?". A
//! qcow2 image naming a backing file or an external data file makes QEMU
//! open another host file (OpenStack's OSSA-2024-001); an encrypted image
//! cannot be inspected; unknown incompatible features mean nobody knows what
//! QEMU will do; a file that is also a valid ISO, GPT disk or VMDK
//! (a polyglot) is read differently by whichever tool probes it next. The
//! rules of [`crate::rules::upload`] name each refusal; a [`Policy`] says
//! which of them are on, re-grades or silences any rule of the registry, and
//! holds the caps of the size rules.
//!
//! Not to be confused with [`crate::disk::policy`], the path policy for the
//! names an image carries.

use crate::formats::{self, Info};
use crate::report::Report;
use crate::rules::{self, upload as rule, Rule, Severity};
use crate::source::ReadAt;
use std::collections::BTreeMap;

/// The limits of the size rules. The defaults suit a cloud image store:
/// far above any real guest image, far below what exhausts a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Largest virtual size accepted, in bytes (`upload.virtual-size`).
    pub virtual_size: u64,
    /// Largest ratio of the compressed clusters' decompressed bytes to the
    /// file's length (`upload.compression-ratio`).
    pub compression_ratio: u64,
    /// Most internal snapshots accepted (`upload.snapshot-count`).
    pub snapshots: u64,
    /// Most persistent dirty bitmaps accepted (`upload.bitmap-count`).
    pub bitmaps: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            // 16 TiB: more than any cloud flavour's disk, and a sparse image
            // claiming more is a zip bomb for whoever converts it to raw.
            virtual_size: 16 << 40,
            // Real compressed images shrink by 2-10x; deflate's best case
            // on one byte repeated is ~1000x. 100x leaves room for mostly
            // empty filesystems and still catches a decompression bomb.
            compression_ratio: 100,
            snapshots: 16,
            bitmaps: 16,
        }
    }
}

/// What a policy does with one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Evaluate the rule (an upload rule the base policy leaves off) at its
    /// registered severity.
    On,
    /// Drop the rule's findings (an upload rule is not evaluated).
    Off,
    /// Evaluate the rule and count its findings under this severity.
    Grade(Severity),
}

/// A policy: which upload rules are evaluated, what happens to any rule's
/// findings, and the caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whether every upload rule is on unless an action turns it off
    /// (`upload`), or off unless an action turns it on (`default`).
    pub upload: bool,
    /// Per-rule actions, by rule id.
    actions: BTreeMap<&'static str, Action>,
    /// The caps of the size rules.
    pub caps: Caps,
}

/// What the policy judges: the image, what the user declared, and what the
/// format's parser made of it.
pub struct Input<'a> {
    /// The image file.
    pub src: &'a dyn ReadAt,
    /// The format the user declared (`-f`), if any.
    pub declared: Option<&'a str>,
    /// The format's metadata, when it parsed.
    pub info: Option<&'a Info>,
}

impl Policy {
    /// Today's behaviour: no upload rule, no re-grade.
    pub fn default_policy() -> Policy {
        Policy {
            upload: false,
            actions: BTreeMap::new(),
            caps: Caps::default(),
        }
    }

    /// Every upload rule on, default caps.
    pub fn upload() -> Policy {
        Policy {
            upload: true,
            ..Policy::default_policy()
        }
    }

    /// A built-in policy by name: `default` or `upload`.
    pub fn by_name(name: &str) -> Option<Policy> {
        match name {
            "default" => Some(Policy::default_policy()),
            "upload" => Some(Policy::upload()),
            _ => None,
        }
    }

    /// Sets what happens to `rule` (any rule of the registry).
    pub fn set(&mut self, rule: &'static Rule, action: Action) {
        self.actions.insert(rule.id, action);
    }

    /// Whether an upload rule is evaluated under this policy.
    pub fn evaluates(&self, rule: &Rule) -> bool {
        match self.actions.get(rule.id) {
            Some(Action::Off) => false,
            Some(_) => true,
            None => self.upload,
        }
    }

    /// Whether the policy changes nothing of a check's report.
    pub fn is_default(&self) -> bool {
        *self == Policy::default_policy()
    }

    /// Adds the refusals of the upload rules this policy evaluates to
    /// `report`, then applies every re-grade and silence: the report a
    /// scanner acts on.
    pub fn apply(&self, report: &mut Report, input: &Input<'_>) {
        let mut refusals = Vec::new();
        declared_format(input, &mut refusals);
        polyglot(input.src, &mut refusals);
        unknown_features(report, input.info, &mut refusals);
        if let Some(info) = input.info {
            metadata(info, &self.caps, &mut refusals);
            compression(info, report, input.src.size(), &self.caps, &mut refusals);
        }
        for (r, offset, detail) in refusals {
            if self.evaluates(r) {
                report.add(r, offset, detail);
            }
        }
        for (id, action) in &self.actions {
            let Some(r) = rules::by_id(id) else { continue };
            match action {
                Action::On => {}
                Action::Off => report.regrade(r, None),
                Action::Grade(s) => report.regrade(r, Some(*s)),
            }
        }
    }

    /// The exit code of a report this policy was applied to: 2 when an
    /// upload rule graded Corruption (or, with `strict`, Violation)
    /// refused the image — even if the check could not complete, since a
    /// scanner must tell "refused" from "could not look" only to say why —
    /// otherwise [`Report::exit_code`].
    pub fn exit_code(&self, report: &Report, strict: bool) -> i32 {
        let refused = report.findings.iter().any(|f| {
            rule::ALL.iter().any(|r| r.id == f.rule.id)
                && (f.severity == Severity::Corruption
                    || (strict && f.severity == Severity::Violation))
        });
        if refused {
            2
        } else {
            report.exit_code(strict)
        }
    }
}

/// A refusal before the policy decides whether it counts.
type Refusal = (&'static Rule, Option<u64>, String);

/// `-f` named a format the file's magic contradicts.
fn declared_format(input: &Input<'_>, out: &mut Vec<Refusal>) {
    let Some(declared) = input.declared else {
        return;
    };
    let found = formats::probe(input.src)
        .map(|f| f.name())
        .or_else(|| foreign_at_start(input.src));
    if found != Some(declared) {
        out.push((
            &rule::FORMAT_DECLARED,
            Some(0),
            format!(
                "declared {declared}, but the file is {}",
                found.unwrap_or("in no format qconform or the upload policy knows")
            ),
        ));
    }
}

/// A format qconform does not read, identified by its magic at offset 0:
/// what a mismatch names when the file is none of ours. These magics
/// cannot coexist with ours (which also sit at offset 0), so they never
/// make a polyglot.
fn foreign_at_start(src: &dyn ReadAt) -> Option<&'static str> {
    const AT_START: &[(&[u8], &str)] = &[
        (b"KDMV", "vmdk"),
        (b"# Disk DescriptorFile", "vmdk (descriptor)"),
        (b"conectix", "vpc (VHD)"),
        (b"vhdxfile", "vhdx"),
        (b"LUKS\xba\xbe", "luks"),
    ];
    let mut head = [0u8; 32];
    src.read_zero_padded(&mut head, 0).ok()?;
    AT_START
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, n)| *n)
}

/// Magics other formats keep away from offset 0, where a file of ours can
/// carry them in bytes its own format ignores (cluster 0 past the header
/// for qcow2 and QED): whoever probes for them reads the file as that
/// format. The set is what QEMU's probes and OpenStack's format_inspector
/// look for past offset 0.
const POLYGLOT_MAGICS: &[(u64, &[u8], &str)] = &[
    // VDI: QEMU's vdi_probe looks only at the signature (u32 LE 0xbeda107f).
    (0x40, &[0x7f, 0x10, 0xda, 0xbe], "a VDI signature"),
    // MBR boot signature: a raw disk with a partition table to any
    // firmware or partition prober (format_inspector's GPT check starts here).
    (0x1fe, &[0x55, 0xaa], "an MBR boot signature"),
    (0x200, b"EFI PART", "a GPT header"),
    // ISO 9660: a volume descriptor at sectors 16, 17 or 18 of 2048 bytes.
    (0x8001, b"CD001", "an ISO 9660 volume descriptor"),
    (0x8801, b"CD001", "an ISO 9660 volume descriptor"),
    (0x9001, b"CD001", "an ISO 9660 volume descriptor"),
];

/// The file also parses as another format: another of ours by its probe,
/// or a foreign magic past offset 0.
fn polyglot(src: &dyn ReadAt, out: &mut Vec<Refusal>) {
    let probed: Vec<&str> = formats::FORMATS
        .iter()
        .filter(|f| f.probe(src))
        .map(|f| f.name())
        .collect();
    if probed.len() > 1 {
        out.push((
            &rule::POLYGLOT,
            Some(0),
            format!("the file passes the probes of {}", probed.join(" and ")),
        ));
    }
    if probed.is_empty() {
        // A file of no format of ours is refused by the check itself; a
        // raw disk legitimately carries an MBR or GPT.
        return;
    }
    for (offset, magic, what) in POLYGLOT_MAGICS {
        let mut buf = [0u8; 8];
        let buf = &mut buf[..magic.len()];
        // Only bytes inside the file: zero padding never matches a magic.
        if offset.saturating_add(magic.len() as u64) > src.size() {
            continue;
        }
        if src.read_exact_at(buf, *offset).is_ok() && buf == *magic {
            out.push((
                &rule::POLYGLOT,
                Some(*offset),
                format!(
                    "the file also holds {what} at {offset:#x}: another prober reads it as that format"
                ),
            ));
        }
    }
}

/// Unknown incompatible and autoclear feature bits, as the format's check
/// found them: its header parser stops at an unknown incompatible bit, so
/// for exactly these files there is no parsed metadata to look at. QED
/// defines no autoclear bit and its check ignores them: they come from
/// the metadata.
fn unknown_features(report: &Report, info: Option<&Info>, out: &mut Vec<Refusal>) {
    let found = [
        &rules::qcow2::INCOMPATIBLE_UNKNOWN,
        &rules::qcow2::AUTOCLEAR_RESERVED,
        &rules::qed::FEATURES,
    ];
    for f in &report.findings {
        if found.iter().any(|r| r.id == f.rule.id) {
            out.push((&rule::FEATURE_UNKNOWN, f.offset(), f.detail.clone()));
        }
    }
    if let Some(Info::Qed(i)) = info {
        if !i.autoclear_feature_bits.is_empty() {
            out.push((
                &rule::FEATURE_UNKNOWN,
                Some(32),
                format!(
                    "unknown autoclear feature bits {:?}",
                    i.autoclear_feature_bits
                ),
            ));
        }
    }
}

/// Refusals read from the parsed metadata: backing and data files,
/// encryption, Parallels NECESSARY extensions, and the count caps.
fn metadata(info: &Info, caps: &Caps, out: &mut Vec<Refusal>) {
    let (size, snapshots, bitmaps) = match info {
        Info::Qcow2(i) => {
            let h = &i.header;
            if let Some(b) = &i.backing_file {
                out.push((
                    &rule::BACKING_FILE,
                    Some(h.backing_file_offset),
                    format!("the image names the backing file {b:?}"),
                ));
            }
            if h.has_data_file() || i.extensions.data_file.is_some() {
                out.push((
                    &rule::DATA_FILE,
                    Some(72),
                    format!(
                        "the image keeps its data in the external file {:?}",
                        i.extensions.data_file.as_deref().unwrap_or("")
                    ),
                ));
            }
            if h.crypt_method != 0 {
                let how = if h.crypt_method == 1 { "AES" } else { "LUKS" };
                out.push((
                    &rule::ENCRYPTION,
                    Some(32),
                    format!("the image is encrypted ({how}): its contents cannot be inspected"),
                ));
            }
            (
                h.size,
                i.snapshots.snapshots.len() as u64,
                i.bitmaps.len() as u64,
            )
        }
        Info::Qed(i) => {
            if let Some(b) = &i.backing_file {
                out.push((
                    &rule::BACKING_FILE,
                    Some(56),
                    format!("the image names the backing file {b:?}"),
                ));
            }
            (i.image_size, 0, 0)
        }
        Info::Parallels(i) => {
            let ext = i.extension.as_ref();
            for (magic, flags) in ext.map_or(&[][..], |x| &x.unknown) {
                if flags & 1 != 0 {
                    out.push((
                        &rule::FEATURE_UNKNOWN,
                        Some(i.header.ext_off.saturating_mul(512)),
                        format!("unknown Format Extension feature {magic:#018x} marked NECESSARY"),
                    ));
                }
            }
            let bitmaps = ext.map_or(0, |x| x.bitmaps.len() as u64);
            (i.header.disk_size(), 0, bitmaps)
        }
    };
    let mut over = |r: &'static Rule, what: &str, n: u64, cap: u64| {
        if n > cap {
            out.push((r, None, format!("{what} {n} is above the cap of {cap}")));
        }
    };
    over(&rule::VIRTUAL_SIZE, "virtual size", size, caps.virtual_size);
    over(
        &rule::SNAPSHOT_COUNT,
        "snapshot count",
        snapshots,
        caps.snapshots,
    );
    over(&rule::BITMAP_COUNT, "bitmap count", bitmaps, caps.bitmaps);
}

/// Compressed clusters each decompress to one cluster: their total against
/// the file's length bounds what converting the image writes per byte
/// uploaded.
fn compression(info: &Info, report: &Report, file_size: u64, caps: &Caps, out: &mut Vec<Refusal>) {
    let Info::Qcow2(i) = info else { return };
    let Some(n) = report
        .stats
        .as_ref()
        .and_then(|s| s.compressed_clusters)
        .filter(|&n| n > 0)
    else {
        return;
    };
    let expanded = n.saturating_mul(i.header.cluster_size());
    if expanded > file_size.saturating_mul(caps.compression_ratio) {
        out.push((
            &rule::COMPRESSION_RATIO,
            None,
            format!(
                "{n} compressed clusters expand to {expanded} bytes, {}x the file's {file_size} bytes (cap {}x)",
                expanded / file_size.max(1),
                caps.compression_ratio
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn qcow2_image() -> Vec<u8> {
        crate::qcow2::write::write(&crate::qcow2::write::Description::new(1 << 20, 16))
            .map(|w| w.image)
            .unwrap_or_default()
    }

    fn judged(policy: &Policy, img: &[u8], declared: Option<&str>) -> Report {
        let limits = Limits::default();
        let f = formats::probe(&img).unwrap_or(formats::FORMATS[0]);
        let mut report = f.check(&img, "t", &limits);
        let info = f.info(&img, "t", &limits).ok();
        let input = Input {
            src: &img,
            declared,
            info: info.as_ref(),
        };
        policy.apply(&mut report, &input);
        report
    }

    #[test]
    fn a_clean_image_passes_upload_and_a_wrong_declaration_is_refused() {
        let img = qcow2_image();
        let up = Policy::upload();
        let r = judged(&up, &img, Some("qcow2"));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        let r = judged(&up, &img, Some("qed"));
        assert!(r.has(&rule::FORMAT_DECLARED));
        assert_eq!(up.exit_code(&r, false), 2);
        // The default policy evaluates no upload rule.
        let r = judged(&Policy::default_policy(), &img, Some("qed"));
        assert!(!r.has(&rule::FORMAT_DECLARED));
    }

    #[test]
    fn polyglot_magics_are_found_only_inside_the_file() {
        let mut img = qcow2_image();
        let len = img.len();
        img.resize(len.max(0x9000), 0);
        img[0x8001..0x8006].copy_from_slice(b"CD001");
        let r = judged(&Policy::upload(), &img, None);
        assert_eq!(r.count(rule::POLYGLOT.id), 1, "{:?}", r.findings);
        // A magic cut by the end of the file is not there.
        let r = judged(&Policy::upload(), &img[..0x8003], None);
        assert_eq!(r.count(rule::POLYGLOT.id), 0);
    }

    #[test]
    fn actions_silence_regrade_and_enable() {
        let img = qcow2_image();
        let mut p = Policy::upload();
        p.set(&rule::FORMAT_DECLARED, Action::Grade(Severity::Note));
        let r = judged(&p, &img, Some("qed"));
        assert!(r.has(&rule::FORMAT_DECLARED));
        assert_eq!((r.corruptions, p.exit_code(&r, false)), (0, 0));
        p.set(&rule::FORMAT_DECLARED, Action::Off);
        assert!(!judged(&p, &img, Some("qed")).has(&rule::FORMAT_DECLARED));
        let mut d = Policy::default_policy();
        d.set(&rule::FORMAT_DECLARED, Action::On);
        assert!(judged(&d, &img, Some("qed")).has(&rule::FORMAT_DECLARED));
    }
}
