//! vhost-user over real sockets: connections with SCM_RIGHTS ([`conn`]),
//! the probing front-end ([`probe`]), the reference back-end ([`serve`]),
//! and the offline transcript check ([`check`]).

pub mod check;
pub mod conn;
pub mod corpus;
pub mod probe;
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
            "vhost-user-blk-pci,chardev=vu0,num-queues=1",
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
