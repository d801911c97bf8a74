//! vhost-user over real sockets: connections with SCM_RIGHTS ([`conn`]),
//! the probing front-end ([`probe`]), the reference back-end ([`serve`]),
//! and the offline transcript check ([`check`]).

pub mod backend;
pub mod check;
pub mod conn;
pub mod corpus;
pub mod datapath;
pub mod fuzz;
pub mod matrix;
pub mod probe;
pub mod record;
pub mod replay;
pub mod serve;
pub mod tap;

/// QEMU (as unpacked by `cargo xtask peers` under `qemu_root`) as a
/// vhost-user-blk front-end on `socket`: TCG, 128 MiB of shared memfd guest
/// RAM, SeaBIOS, no display. SeaBIOS drives the virtio-blk device, so the
/// whole start sequence happens; SIGTERM makes QEMU stop the rings.
pub fn qemu_blk_front_end(
    qemu_root: &std::path::Path,
    socket: &std::path::Path,
) -> std::process::Command {
    qemu_front_end(
        qemu_root,
        socket,
        "vhost-user-blk-pci,chardev=vu0,num-queues=1",
    )
}

/// QEMU as the front-end of `device` (which names chardev vu0) on `socket`.
pub fn qemu_front_end(
    qemu_root: &std::path::Path,
    socket: &std::path::Path,
    device: &str,
) -> std::process::Command {
    let mut c = std::process::Command::new(qemu_root.join("usr/bin/qemu-system-x86_64"));
    c.arg("-L")
        .arg(qemu_root.join("usr/share/qemu"))
        .arg("-L")
        .arg(qemu_root.join("usr/share/seabios"))
        .args([
            "-M",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "128",
            "-object",
            "memory-backend-memfd,id=mem,size=128M,share=on",
            "-numa",
            "node,memdev=mem",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=vu0,path={}", socket.display()))
        .args([
            "-device",
            device,
            "-display",
            "none",
            "-monitor",
            "none",
            "-nodefaults",
            "-serial",
            "none",
        ]);
    c
}
