//! Differential tests against qemu-img check (qemu-utils 10.0.2 is on every
//! project machine; a missing qemu-img fails these tests loudly).
//!
//! Every corpus recipe is rebuilt in a temporary directory, then a matrix of
//! option families (cluster sizes 512 B..2 MiB, refcount widths 1..64, v2/v3,
//! compression, snapshots, bitmaps, extended L2, data files, backing files,
//! preallocation) with byte-edit corruptions on top. For every image
//! `qconform check` must give qemu-img's exit code and, where the case says
//! the two agree, the same counts. Deliberate differences are named in the
//! recipe with the spec sentence.

use qconform::corpus::{self, Case, Edit, Image, Oracle};
use qconform_core::Limits;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

struct Qemu {
    exit: i32,
    json: Option<Value>,
}

fn qemu_img_check(dir: &Path, file: &str) -> Qemu {
    let mut cmd = Command::new("qemu-img");
    if file.starts_with("luks") {
        // qemu-img needs the passphrase to open a LUKS image at all.
        cmd.args([
            "check",
            "--output=json",
            "--object",
            corpus::LUKS_SECRET,
            "--image-opts",
        ])
        .arg(format!(
            "driver=qcow2,file.filename={file},encrypt.key-secret=sec0"
        ));
    } else {
        cmd.args(["check", "-f", "qcow2", "--output=json", file]);
    }
    let out = cmd
        .current_dir(dir)
        .output()
        .expect("qemu-img must be installed (qemu-utils); these tests do not skip");
    Qemu {
        exit: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).ok(),
    }
}

/// Corruption rules qemu-img check does not look at, with the spec sentence
/// that makes them corruptions. Their counts are left out when comparing.
const QEMU_IMG_DOES_NOT_CHECK: &[(&str, &str)] = &[(
    "qcow2.data-file.offset-is-guest-offset",
    "qcow2.rst, incompatible bit 2: 'The offset field in the Standard Cluster Descriptor must match the guest offset'",
)];

fn ours(path: &Path) -> (i32, Value) {
    let report = qconform::check::check_file(path, None, &Limits::default());
    let mut v = serde_json::to_value(&report).unwrap();
    let blind: u64 = QEMU_IMG_DOES_NOT_CHECK
        .iter()
        .map(|(id, _)| report.count(id))
        .sum();
    v["corruptions"] = (report.corruptions - blind).into();
    (report.exit_code(false), v)
}

fn rule_ids(report: &Value) -> String {
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["rule"].as_str())
        .collect();
    let mut uniq = ids.clone();
    uniq.dedup();
    format!("{} findings, rules {:?}", ids.len(), uniq)
}

const COUNTED: [&str; 7] = [
    "corruptions",
    "leaks",
    "image-end-offset",
    "total-clusters",
    "allocated-clusters",
    "fragmented-clusters",
    "compressed-clusters",
];

/// Compares one image; returns a description of the disagreement, if any.
fn compare(dir: &Path, name: &str, oracle: Oracle) -> Option<String> {
    let file = format!("{name}.qcow2");
    let q = qemu_img_check(dir, &file);
    let (exit, report) = ours(&dir.join(&file));
    match oracle {
        Oracle::Differs(why) => {
            if exit == q.exit {
                return Some(format!(
                    "{name}: expected a deliberate difference ({why}) but both exit {exit}"
                ));
            }
            None
        }
        Oracle::SameExit(_) | Oracle::Agrees => {
            if exit != q.exit {
                return Some(format!(
                    "{name}: exit code {exit}, qemu-img {}; findings {}",
                    q.exit,
                    rule_ids(&report)
                ));
            }
            if let (Oracle::Agrees, Some(qj)) = (oracle, &q.json) {
                for k in COUNTED {
                    // qemu-img omits zero-valued optional fields.
                    let theirs = qj.get(k).and_then(Value::as_u64).unwrap_or(0);
                    let mine = report.get(k).and_then(Value::as_u64).unwrap_or(0);
                    if theirs != mine {
                        return Some(format!(
                            "{name}: {k} is {mine}, qemu-img says {theirs}; findings {}",
                            rule_ids(&report)
                        ));
                    }
                }
            }
            None
        }
    }
}

#[test]
fn corpus_recipes_agree_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let cases = corpus::cases();
    for case in &cases {
        corpus::build(case, dir.path()).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let path = dir.path().join(format!("{}.qcow2", case.name));
        let report = qconform::check::check_file(&path, None, &Limits::default());
        if report.exit_code(false) != case.exit {
            failures.push(format!(
                "{}: exit {} but the recipe says {}; findings {:?}",
                case.name,
                report.exit_code(false),
                case.exit,
                report
                    .findings
                    .iter()
                    .map(|f| f.rule.id)
                    .collect::<Vec<_>>()
            ));
        }
        for rule in case.expect {
            if !report.findings.iter().any(|f| f.rule.id == rule.id) {
                failures.push(format!("{}: rule {rule} not reported", case.name));
            }
        }
        if let Some(f) = compare(dir.path(), case.name, case.oracle) {
            failures.push(f);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "differential: {} corpus recipes agree with qemu-img",
        cases.len()
    );
}

/// Byte-edit corruptions applied across the option matrix.
fn matrix_edits() -> Vec<(&'static str, Option<Edit>, i32)> {
    fn refcount(i: &mut Image, v: u64) {
        let k = i.data_cluster(0) / i.cluster_size();
        i.set_refcount(k, v);
    }
    vec![
        ("clean", None, 0),
        ("refcount-up", Some(|i: &mut Image| refcount(i, 2)), 2),
        ("refcount-zero", Some(|i: &mut Image| refcount(i, 0)), 2),
        (
            "leak",
            Some(|i: &mut Image| {
                let cs = i.cluster_size();
                let end = (i.bytes.len() as u64).next_multiple_of(cs);
                i.put(end, &vec![0u8; cs as usize]);
                i.set_refcount(end / cs, 1);
            }),
            3,
        ),
        (
            "l2-misaligned",
            Some(|i: &mut Image| {
                let at = i.l2_entry(0);
                let e = i.get64(at);
                i.put64(at, e + 512);
            }),
            2,
        ),
        (
            "l2-duplicate",
            Some(|i: &mut Image| {
                let e = i.get64(i.l2_entry(0));
                let at = i.l2_entry(1);
                i.put64(at, e);
            }),
            2,
        ),
        (
            "l1-copied-cleared",
            Some(|i: &mut Image| {
                let at = i.l1_entry(0);
                let e = i.get64(at);
                i.put64(at, e & !(1 << 63));
            }),
            2,
        ),
    ]
}

#[test]
fn option_matrix_agrees_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let mut families: Vec<(String, String, Vec<String>)> = Vec::new();
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for bits in [1u32, 2, 4, 8, 16, 32, 64] {
            let opts = format!("cluster_size={cs},refcount_bits={bits}");
            families.push((
                format!("cs{cs}-rb{bits}"),
                opts,
                vec![
                    format!("write -P 0x5a 0 {}", cs * 2),
                    format!("write -P 0x6b {} {}", cs * 4, cs),
                ],
            ));
        }
    }
    for (label, opts, io) in [
        (
            "v2",
            "compat=0.10,cluster_size=4096",
            vec!["write -P 1 0 12k"],
        ),
        (
            "zlib",
            "cluster_size=65536",
            vec![
                "write -P 3 0 128k",
                "write -c -P 1 128k 64k",
                "write -c -P 2 192k 64k",
            ],
        ),
        (
            "zstd",
            "cluster_size=65536,compression_type=zstd",
            vec!["write -P 3 0 128k", "write -c -P 1 128k 128k"],
        ),
        (
            "extl2",
            "cluster_size=65536,extended_l2=on",
            vec!["write -P 1 0 4k", "write -P 2 64k 64k", "write -z 8k 2k"],
        ),
        (
            "extl2-2m",
            "cluster_size=2M,extended_l2=on",
            vec!["write -P 1 0 64k"],
        ),
        (
            "lazy",
            "cluster_size=4096,lazy_refcounts=on",
            vec!["write -P 1 0 16k"],
        ),
        (
            "prealloc",
            "cluster_size=65536,preallocation=metadata",
            vec![],
        ),
        (
            "zero-discard",
            "cluster_size=4096",
            vec![
                "write -P 1 0 64k",
                "write -z 8k 8k",
                "discard 16k 16k",
                "write -z -u 40k 4k",
            ],
        ),
    ] {
        families.push((
            label.to_string(),
            opts.to_string(),
            io.into_iter().map(String::from).collect(),
        ));
    }
    let mut failures = Vec::new();
    let mut total = 0;
    for (label, opts, io) in &families {
        for (edit_name, edit, want) in matrix_edits() {
            let name = format!("{label}-{edit_name}");
            let create = vec![
                "qemu-img".to_string(),
                "create".into(),
                "-q".into(),
                "-f".into(),
                "qcow2".into(),
                "-o".into(),
                opts.clone(),
                "{img}".into(),
                "16M".into(),
            ];
            let mut io_step = vec!["qemu-io".to_string()];
            for c in io {
                io_step.push("-c".into());
                io_step.push(c.clone());
            }
            io_step.push("{img}".into());
            let steps_owned: Vec<Vec<String>> = if io.is_empty() {
                vec![create]
            } else {
                vec![create, io_step]
            };
            let refs: Vec<Vec<&str>> = steps_owned
                .iter()
                .map(|s| s.iter().map(String::as_str).collect())
                .collect();
            let steps: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
            // Preallocated images: L2 entry 0/1 both point at data; edits work the same.
            if let Err(e) = corpus::build_steps(&name, &steps, edit, dir.path()) {
                panic!("{name}: {e}");
            }
            total += 1;
            let (exit, _) = ours(&dir.path().join(format!("{name}.qcow2")));
            if exit != want && !(label == "lazy" || label == "prealloc") {
                failures.push(format!("{name}: exit {exit}, expected {want}"));
            }
            if let Some(f) = compare(dir.path(), &name, Oracle::Agrees) {
                failures.push(f);
            }
            let _ = std::fs::remove_file(dir.path().join(format!("{name}.qcow2")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} matrix images disagree with qemu-img:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("differential: {total}/{total} matrix images agree with qemu-img");
}

#[allow(dead_code)]
fn _case_type_check(_: &Case) {}

/// xorshift64*: a tiny deterministic generator, so a failure names its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random byte edits (1-12 bit flips or byte writes anywhere in the file) on
/// valid corpus images: exit codes must equal qemu-img's, and so must the
/// corruption and leak counts and the image end offset whenever qemu-img
/// completes its check. This is how the I/O-error semantics of refcount
/// blocks beyond 2^63 and the alignment of an empty snapshot table were
/// found. QCONFORM_DIFF_CASES raises the count (default 300).
#[test]
fn random_edits_agree_with_qemu_img() {
    let cases: u64 = std::env::var("QCONFORM_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("corpus/images");
    let bases = [
        "v3-data",
        "v2-data",
        "snapshots",
        "bitmaps",
        "compressed-zlib",
        "extended-l2",
        "refcount-bits-1",
        "refcount-bits-64",
        "zero-and-discard",
        "prealloc-metadata",
        "data-file",
    ];
    // Not LUKS: an edit inside its key material makes qemu-img unable to open
    // the image, which no structural check (without the passphrase) can see.
    let images: Vec<(&str, Vec<u8>)> = bases
        .iter()
        .map(|b| (*b, std::fs::read(root.join(format!("{b}.qcow2"))).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // The data file recipe needs its companion next to the copy.
    std::fs::copy(
        root.join("data-file.data"),
        dir.path().join("data-file.data"),
    )
    .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut failures = Vec::new();
    for case in 0..cases {
        let (base, bytes) = &images[rng.below(images.len() as u64) as usize];
        let mut data = bytes.clone();
        for _ in 0..1 + rng.below(12) {
            let mut at = rng.below(data.len() as u64) as usize;
            if *base == "data-file" && at < 4096 {
                // Not the header cluster: an edit of the data file's name makes
                // qemu-img fail to open a file that does not exist, which says
                // nothing about the image's structure.
                at += 4096;
            }
            let at = at.min(data.len() - 1);
            let v = rng.next();
            if v & 1 == 0 {
                data[at] ^= 1 << ((v >> 8) % 8);
            } else {
                data[at] = (v >> 16) as u8;
            }
        }
        // Keep the companion-file naming: data-file images refer to data-file.data.
        let name = if *base == "data-file" {
            "data-file".to_string()
        } else {
            format!("r{case}")
        };
        std::fs::write(dir.path().join(format!("{name}.qcow2")), &data).unwrap();
        if let Some(f) = compare(dir.path(), &name, Oracle::Agrees) {
            let keep = std::env::temp_dir().join(format!("qconform-diff-{case}-{base}.qcow2"));
            let _ = std::fs::write(&keep, &data);
            failures.push(format!(
                "case {case} (edit of {base}, kept at {}): {f}",
                keep.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} random edits disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("differential: {cases}/{cases} random edits agree with qemu-img");
}

/// Images cut short after writes (a crashed copy, a truncated upload):
/// clusters and L2 tables past the end of the file. qemu-img counts one
/// corruption per reference past EOF and reads the refcounts of those
/// clusters from their (still present) refcount blocks, so COPIED agrees
/// with them; exit codes and every count must equal qemu-img's.
#[test]
fn truncated_images_agree_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    for (cs, bits) in [(65536u64, 16u32), (512, 16), (4096, 2), (65536, 64)] {
        let opts = format!("cluster_size={cs},refcount_bits={bits}");
        let write = format!("write -P 0x5a 0 {}", cs * 32);
        let rewrite = format!("write -P 0x6b 0 {}", cs * 2);
        let steps: [&[&str]; 4] = [
            &[
                "qemu-img", "create", "-q", "-f", "qcow2", "-o", &opts, "{img}", "64M",
            ],
            &["qemu-io", "-c", &write, "{img}"],
            &["qemu-img", "snapshot", "-c", "s1", "{img}"],
            &["qemu-io", "-c", &rewrite, "{img}"],
        ];
        let name = format!("trunc-cs{cs}-rb{bits}");
        corpus::build_steps(&name, &steps, None, dir.path())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let full = std::fs::read(dir.path().join(format!("{name}.qcow2"))).unwrap();
        // Cut points: the reported case (0x60000 with 64 KiB clusters),
        // a third and two thirds of the file, one byte into a cluster.
        let len = full.len() as u64;
        for cut in [6 * cs, len / 3, 2 * len / 3 + 1, len - cs] {
            let cut_name = format!("{name}-cut{cut:x}");
            let path = dir.path().join(format!("{cut_name}.qcow2"));
            std::fs::write(&path, &full[..cut.min(len) as usize]).unwrap();
            total += 1;
            if let Some(f) = compare(dir.path(), &cut_name, Oracle::Agrees) {
                failures.push(f);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} truncated images disagree with qemu-img:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
