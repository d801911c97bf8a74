//! The raw targets' agreement oracle fires when check, info and the names
//! disagree, and holds on images real tools wrote: a target whose oracle
//! could never fail would pass whatever the checker did.

use qconform_core::formats;
use qconform_core::Limits;
use std::path::Path;
use std::process::Command;

/// An image qemu-img writes, read back as bytes.
fn qemu_img_create(dir: &Path, format: &str, opts: &[&str]) -> Vec<u8> {
    let path = dir.join(format!("img.{format}"));
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .args(opts)
        .arg(&path)
        .arg("16M")
        .status()
        .expect("qemu-img is needed (the README's test command installs qemu-utils)");
    assert!(st.success(), "qemu-img create -f {format} failed");
    std::fs::read(&path).unwrap()
}

fn parts(
    data: &[u8],
) -> (
    qconform_core::Report,
    formats::Info,
    Vec<qconform_core::disk::NamedFile>,
) {
    let f = formats::probe(&data).expect("a format we know");
    let limits = Limits::default();
    let report = f.check(&data, "t", &limits);
    let info = f.info(&data, "t", &limits).expect("info reads it");
    (report, info, f.named_files(&data))
}

#[test]
fn agreement_holds_on_qemu_img_images_and_fires_on_a_disagreement() {
    let dir = tempfile::tempdir().unwrap();
    for (format, opts) in [
        (
            "qcow2",
            &["-o", "backing_file=base.raw,backing_fmt=raw"][..],
        ),
        ("qcow2", &[][..]),
        ("qed", &["-o", "backing_file=base.raw,backing_fmt=raw"][..]),
        ("parallels", &[][..]),
    ] {
        if !opts.is_empty() {
            std::fs::write(dir.path().join("base.raw"), vec![0u8; 16 << 20]).unwrap();
        }
        let data = qemu_img_create(dir.path(), format, opts);
        // The whole raw target, oracles included, holds on it.
        qconform_fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == qconform_fuzz::check_target(format))
            .map(|(_, body)| body(&data))
            .expect("a raw target per format");
        let (mut report, info, names) = parts(&data);
        qconform_fuzz::agree(&report, &info, &names);
        // One more guest cluster than info's virtual size gives: caught.
        let stats = report.stats.as_mut().expect("image statistics");
        stats.total_clusters = stats.total_clusters.map(|t| t + 1);
        let caught = std::panic::catch_unwind(|| qconform_fuzz::agree(&report, &info, &names));
        assert!(
            caught.is_err(),
            "{format}: a wrong cluster count passes the oracle"
        );
        // A backing name check would judge that info does not show: caught.
        if format != "parallels" {
            let (report, info, _) = parts(&data);
            let caught = std::panic::catch_unwind(|| qconform_fuzz::agree(&report, &info, &[]));
            assert!(
                caught.is_err() == info.backing_file().is_some(),
                "{format}: a missing backing name is not caught"
            );
        }
    }
}
