//! qconform-peer-read: exit 0 with the guest's bytes, 1 on the peer's
//! error, SIGABRT on the peer's panic.

use qconform_core::qcow2::write::{write, ClusterData, Description};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn peer_read(imp: &str, image: &[u8]) -> (std::process::ExitStatus, Vec<u8>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, out) = (dir.path().join("in.qcow2"), dir.path().join("out.raw"));
    std::fs::write(&img, image).expect("write input");
    let o = Command::new(env!("CARGO_BIN_EXE_qconform-peer-read"))
        .args(["--impl", imp])
        .arg(&img)
        .arg(&out)
        .output()
        .expect("run qconform-peer-read");
    let bytes = std::fs::read(&out).unwrap_or_default();
    (
        o.status,
        bytes,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn reads_writes_errors_and_aborts() {
    let mut d = Description::new(1 << 20, 16);
    d.clusters.insert(2, ClusterData::Data(vec![0xa5; 1 << 16]));
    let img = write(&d).expect("writer").image;
    for imp in ["imago", "qcow2-rs"] {
        let (st, bytes, _) = peer_read(imp, &img);
        assert_eq!(st.code(), Some(0), "{imp}");
        assert_eq!(bytes, d.guest_bytes(), "{imp}");
        let (st, _, err) = peer_read(imp, b"not an image at all, not even close.............................................................................");
        assert_eq!(st.code(), Some(1), "{imp}: {err}");
    }
    // 512-byte clusters: qcow2-rs 0.1.6 panics (corpus/peers/qcow2-rs).
    let mut d = Description::new(1 << 16, 9);
    d.clusters.insert(1, ClusterData::Data(vec![1; 512]));
    let img = write(&d).expect("writer").image;
    let (st, _, err) = peer_read("qcow2-rs", &img);
    assert_eq!(st.signal(), Some(6), "{err}");
    assert!(err.contains("peer panicked"), "{err}");
    let (st, _, _) = peer_read("nobody", &img);
    assert_eq!(st.code(), Some(2));
}

#[test]
fn follows_a_backing_file_inside_the_image_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cs = 1u64 << 16;
    // The base: raw, or qcow2 with every cluster allocated.
    let base_bytes = vec![0xccu8; 4 * cs as usize];
    std::fs::write(dir.path().join("base.raw"), &base_bytes).expect("write base");
    let mut b = Description::new(4 * cs, 16);
    for k in 0..4 {
        b.clusters
            .insert(k, ClusterData::Data(vec![0xcc; cs as usize]));
    }
    std::fs::write(
        dir.path().join("base.qcow2"),
        write(&b).expect("writer").image,
    )
    .expect("write base");
    let mut want = base_bytes.clone();
    want[..cs as usize].fill(0x11);
    for (name, format, qcow2rs_reads) in [("base.raw", "raw", false), ("base.qcow2", "qcow2", true)]
    {
        let mut d = Description::new(4 * cs, 16);
        d.clusters
            .insert(0, ClusterData::Data(vec![0x11; cs as usize]));
        d.backing = Some((name.into(), Some(format.into())));
        let top = dir.path().join("top.qcow2");
        std::fs::write(&top, write(&d).expect("writer").image).expect("write top");
        for imp in ["imago", "qcow2-rs"] {
            let out = dir.path().join("out.raw");
            let _ = std::fs::remove_file(&out);
            let st = Command::new(env!("CARGO_BIN_EXE_qconform-peer-read"))
                .args(["--impl", imp])
                .arg(&top)
                .arg(&out)
                .status()
                .expect("run");
            if imp == "qcow2-rs" && !qcow2rs_reads {
                // qcow2-rs's backing device is qcow2 only.
                assert_eq!(st.code(), Some(1), "{imp} {name}");
                continue;
            }
            assert_eq!(st.code(), Some(0), "{imp} {name}");
            assert_eq!(
                std::fs::read(&out).unwrap_or_default(),
                want,
                "{imp} {name}"
            );
        }
    }
}
