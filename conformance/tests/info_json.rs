//! `qconform info --output json` against `qemu-img info --output=json`,
//! for every option family of qcow2 and every format: equal field by
//! field, except the fields named in [`DIFFERING`].

use qconform_testkit::tools;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Fields allowed to differ, each with why.
const DIFFERING: &[(&str, &str)] = &[(
    "format-specific.data.encrypt",
    "qemu-img adds the LUKS header's details (cipher, hash, slots, uuid, \
     iterations), which qconform does not parse: only `format` is compared",
)];

/// `qemu-img` in `dir` with whitespace-separated `args`, through the
/// testkit runner (hang guard, loud failure).
fn qemu_img(dir: &Path, args: &str) {
    tools::qemu_img(dir, &args.split_whitespace().collect::<Vec<_>>())
}

fn json_of(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Every difference between `a` (qemu-img) and `b` (qconform) below `path`.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if DIFFERING.iter().any(|(p, _)| *p == path) {
        // Only the part qconform knows is compared.
        if a.get("format") != b.get("format") {
            out.push(format!("{path}.format: {} vs {}", a["format"], b["format"]));
        }
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(u, v, &p, out),
                    (Some(u), None) => out.push(format!("{p}: only qemu-img has {u}")),
                    (None, Some(v)) => out.push(format!("{p}: only qconform has {v}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff(u, v, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: qemu-img {a}, qconform {b}")),
        _ => {}
    }
}

/// Both tools' info of `image` (a path relative to `dir`, as both are
/// given it) equal but for [`DIFFERING`]; qconform's header dump present.
fn same_info(dir: &Path, image: &str) -> Value {
    let theirs =
        json_of(
            Command::new("qemu-img")
                .current_dir(dir)
                .args(["info", "--output=json", image]),
        );
    let mut ours = json_of(
        Command::new(env!("CARGO_BIN_EXE_qconform"))
            .current_dir(dir)
            .args(["info", "--output", "json", image]),
    );
    let extras = ours.as_object_mut().and_then(|o| o.remove("qconform"));
    assert!(
        extras.is_some_and(|e| e.get("header").is_some()),
        "{image}: no qconform header dump"
    );
    let mut d = Vec::new();
    diff(&theirs, &ours, "", &mut d);
    assert!(d.is_empty(), "{image}:\n  {}", d.join("\n  "));
    theirs
}

fn create(dir: &Path, fmt: &str, name: &str, opts: &str, size: &str) {
    let opts = if opts.is_empty() {
        String::new()
    } else {
        format!("-o {opts}")
    };
    qemu_img(dir, &format!("create -q -f {fmt} {opts} {name} {size}"));
}

#[test]
fn qcow2_option_families_match_qemu_img() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let cases: &[(&str, &str)] = &[
        ("v2.qcow2", "compat=0.10"),
        ("v3.qcow2", "compat=1.1"),
        ("lazy.qcow2", "lazy_refcounts=on"),
        ("rc1.qcow2", "refcount_bits=1"),
        ("rc2.qcow2", "refcount_bits=2"),
        ("rc4.qcow2", "refcount_bits=4"),
        ("rc8.qcow2", "refcount_bits=8"),
        ("rc32.qcow2", "refcount_bits=32"),
        ("rc64.qcow2", "refcount_bits=64"),
        ("extl2.qcow2", "extended_l2=on"),
        ("zstd.qcow2", "compression_type=zstd"),
        ("c512.qcow2", "cluster_size=512"),
        ("c4k.qcow2", "cluster_size=4096"),
        ("c2m.qcow2", "cluster_size=2M"),
        ("df.qcow2", "data_file=df.raw"),
        ("dfraw.qcow2", "data_file=dfraw.raw,data_file_raw=on"),
    ];
    for (name, opts) in cases {
        create(d, "qcow2", name, opts, "3M");
        let v = same_info(d, name);
        assert_eq!(v["format"], "qcow2", "{name}");
    }
    // Checked on what qemu-img said, so the comparison above is not vacuous.
    let v = same_info(d, "rc64.qcow2");
    assert_eq!(v["format-specific"]["data"]["refcount-bits"], 64);
    let v = same_info(d, "dfraw.qcow2");
    assert_eq!(v["format-specific"]["data"]["data-file-raw"], true);
    assert_eq!(same_info(d, "c2m.qcow2")["cluster-size"], 2 << 20);
}

#[test]
fn qcow2_backing_snapshots_bitmaps_dirt_and_encryption_match_qemu_img() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    create(d, "qcow2", "base.qcow2", "", "1M");
    qemu_img(d, "create -q -f qcow2 -b base.qcow2 -F qcow2 over.qcow2");
    let v = same_info(d, "over.qcow2");
    assert_eq!(v["backing-filename-format"], "qcow2");
    // A relative path given from elsewhere: full-backing-filename is
    // resolved against the image's own path.
    std::fs::create_dir(d.join("sub")).unwrap();
    qemu_img(
        d,
        "create -q -f qcow2 -b ../base.qcow2 -F qcow2 sub/o.qcow2",
    );
    assert_eq!(
        same_info(d, "sub/o.qcow2")["full-backing-filename"],
        "sub/../base.qcow2"
    );
    let abs = d.join("over.qcow2").display().to_string();
    same_info(d, &abs);
    // Without -F: qemu-img 10 refuses to create that, qconform's writer
    // makes it (no backing format extension).
    let mut desc = qconform_core::qcow2::write::Description::new(1 << 20, 16);
    desc.backing = Some(("base.qcow2".into(), None));
    let img = qconform_core::qcow2::write::write(&desc).unwrap().image;
    std::fs::write(d.join("nof.qcow2"), img).unwrap();
    let v = same_info(d, "nof.qcow2");
    assert_eq!(v["backing-filename"], "base.qcow2");
    assert!(v.get("backing-filename-format").is_none());

    std::fs::copy(d.join("base.qcow2"), d.join("snaps.qcow2")).unwrap();
    for i in 0..3 {
        qemu_img(d, &format!("snapshot -c s{i} snaps.qcow2"));
    }
    assert_eq!(
        same_info(d, "snaps.qcow2")["snapshots"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    // v2 snapshots carry no extra data, hence no icount.
    create(d, "qcow2", "v2s.qcow2", "compat=0.10", "1M");
    qemu_img(d, "snapshot -c old v2s.qcow2");
    same_info(d, "v2s.qcow2");

    std::fs::copy(d.join("base.qcow2"), d.join("bm.qcow2")).unwrap();
    qemu_img(d, "bitmap --add bm.qcow2 b0");
    qemu_img(d, "bitmap --add -g 4096 bm.qcow2 b1");
    qemu_img(d, "bitmap --add --disable bm.qcow2 b2");
    let v = same_info(d, "bm.qcow2");
    assert_eq!(
        v["format-specific"]["data"]["bitmaps"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    // The dirty bit (incompatible bit 0, byte 79), as a crashed writer
    // with lazy refcounts leaves it.
    create(d, "qcow2", "dirty.qcow2", "lazy_refcounts=on", "1M");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("dirty.qcow2"))
            .unwrap();
        f.write_all_at(&[1], 79).unwrap();
    }
    assert_eq!(same_info(d, "dirty.qcow2")["dirty-flag"], true);

    qemu_img(d, "create -q -f qcow2 --object secret,id=s0,data=x -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 enc.qcow2 1M");
    assert_eq!(same_info(d, "enc.qcow2")["encrypted"], true);
}

#[test]
fn qed_and_parallels_match_qemu_img() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    create(d, "qed", "plain.qed", "", "3M");
    create(d, "qed", "c4k.qed", "cluster_size=4096", "3M");
    qemu_img(d, "create -q -f qed -b plain.qed -F qed over.qed");
    // -F raw sets QED_F_BACKING_FORMAT_NO_PROBE: the one format QED records.
    qemu_img(d, "create -q -f raw base.raw 1M");
    qemu_img(d, "create -q -f qed -b base.raw -F raw raw.qed");
    for name in ["plain.qed", "c4k.qed", "over.qed", "raw.qed"] {
        assert_eq!(same_info(d, name)["format"], "qed");
    }
    assert!(same_info(d, "over.qed")
        .get("backing-filename-format")
        .is_none());
    assert_eq!(same_info(d, "raw.qed")["backing-filename-format"], "raw");
    create(d, "parallels", "p.parallels", "", "3M");
    create(d, "parallels", "c1m.parallels", "cluster_size=1M", "3M");
    for name in ["p.parallels", "c1m.parallels"] {
        assert_eq!(same_info(d, name)["format"], "parallels");
    }
}
