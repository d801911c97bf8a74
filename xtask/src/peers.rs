//! `cargo xtask peers`: fetches the real vhost-user peers the tests run
//! against, into a cache directory ($QCONFORM_PEERS, default
//! ~/.cache/qconform) so CI builds them once per machine:
//!
//! - QEMU 7.2 (Debian's qemu-system-x86 and its data, plus SeaBIOS) as a
//!   front-end, unpacked with `dpkg -x` and never installed: installing
//!   qemu-system-* would replace the machine's qemu-utils 10.0.2. Only its
//!   runtime libraries are installed.
//! - virtiofsd from its crate (needs libseccomp-dev and libcap-ng-dev) as a
//!   second back-end beside qemu-storage-daemon.
//! - vhost-device-rng and vhost-device-vsock (rust-vmm) from their crates,
//!   built together so they share their dependencies (about 5 minutes on
//!   two cores, once per machine).

use std::path::PathBuf;
use std::process::Command;

pub fn cache_dir() -> PathBuf {
    qconform::vhost::matrix::peers_dir()
}

fn run(cmd: &mut Command) -> Result<(), super::DynError> {
    println!("+ {cmd:?}");
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({st})").into())
    }
}

const QEMU_PACKAGES: [&str; 4] = [
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];
/// Shared libraries qemu-system-x86_64 7.2 needs beyond the base image.
const QEMU_LIBS: [&str; 7] = [
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "librdmacm1",
    "libibverbs1",
    "libslirp0",
    "libvdeplug2",
];
/// rust-vmm vhost-user back-ends from the crate registry.
const RUST_VMM_DEVICES: [&str; 2] = ["vhost-device-rng", "vhost-device-vsock"];
const VIRTIOFSD_BUILD_DEPS: [&str; 3] = ["libseccomp-dev", "libcap-ng-dev", "pkg-config"];

pub fn run_peers() -> Result<(), super::DynError> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let mut apt_updated = false;
    let apt_update = |done: &mut bool| -> Result<(), super::DynError> {
        if !*done {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            *done = true;
        }
        Ok(())
    };
    let qemu_dir = cache.join("qemu-7.2");
    let qemu = qemu_dir.join("usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        apt_update(&mut apt_updated)?;
        let dl = cache.join("debs");
        std::fs::create_dir_all(&dl)?;
        run(Command::new("apt-get")
            .arg("download")
            .args(QEMU_PACKAGES)
            .current_dir(&dl))?;
        for e in std::fs::read_dir(&dl)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                run(Command::new("dpkg").arg("-x").arg(&p).arg(&qemu_dir))?;
            }
        }
    }
    // Libraries only (none of them touches qemu-utils); cheap when present.
    let missing_libs = Command::new("ldd")
        .arg(&qemu)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("not found"))
        .unwrap_or(true);
    if missing_libs {
        apt_update(&mut apt_updated)?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(QEMU_LIBS))?;
    }
    run(Command::new(&qemu).arg("--version"))?;
    let virtiofsd = cache.join("virtiofsd/bin/virtiofsd");
    if !virtiofsd.exists() {
        apt_update(&mut apt_updated)?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(VIRTIOFSD_BUILD_DEPS))?;
        run(Command::new("cargo")
            .args(["install", "--locked", "virtiofsd", "--root"])
            .arg(cache.join("virtiofsd")))?;
    }
    run(Command::new(&virtiofsd).arg("--version"))?;
    let rust_vmm = cache.join("rust-vmm");
    let devices = RUST_VMM_DEVICES.map(|d| rust_vmm.join("bin").join(d));
    if devices.iter().any(|d| !d.exists()) {
        run(Command::new("cargo")
            .args(["install", "--locked", "--root"])
            .arg(&rust_vmm)
            .args(RUST_VMM_DEVICES)
            .env("CARGO_TARGET_DIR", rust_vmm.join("target")))?;
        // The build tree is not needed once the binaries are there.
        let _ = std::fs::remove_dir_all(rust_vmm.join("target"));
    }
    for d in &devices {
        run(Command::new(d).arg("--version"))?;
    }
    println!("peers ready under {}", cache.display());
    Ok(())
}
