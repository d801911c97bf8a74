//! `qconform-peer-read --impl imago|qcow2-rs IMAGE OUT`: reads IMAGE with
//! that implementation and writes the guest's bytes to OUT, for campaigns
//! (`qconform fuzz image --oracle read --target '... {image} {out}'`).
//!
//! A backing file the image names is followed when qconform's default path
//! policy allows it (relative, inside the image's directory; see
//! `qconform_peers::backing`); one that is absent reads as zeros.
//!
//! Exit 0 with OUT written; 1 when the peer returns an error (the message
//! on stderr); 2 on bad usage. A panic of the peer is reported on stderr
//! and the process aborts (SIGABRT), so the campaign sees a crash; a hang
//! is the campaign's timeout to find.

use qconform_peers::{Bounds, Impl};
use std::path::Path;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: qconform-peer-read --impl imago|qcow2-rs IMAGE OUT");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (imp, image, out) = match args.as_slice() {
        [flag, name, image, out] if flag == "--impl" => match Impl::parse(name) {
            Some(i) => (i, image, out),
            None => return usage(),
        },
        _ => return usage(),
    };
    let bounds = Bounds::default();
    let path = Path::new(image);
    // A panic is not caught: the default hook prints it, then we abort so
    // that the exit is a signal, whatever the panic strategy of the build.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("qconform-peer-read: peer panicked: {info}");
        std::process::abort();
    }));
    let read = std::fs::read(path)
        .map_err(|e| format!("{image}: {e}"))
        .and_then(|data| qconform_peers::backing::locate(path, &data))
        .and_then(|backing| match imp {
            Impl::Imago => {
                qconform_peers::imago_peer::read_path_with(path, backing.as_ref(), &bounds)
            }
            Impl::Qcow2Rs => {
                qconform_peers::qcow2rs_peer::read_path_with(path, backing.as_ref(), &bounds)
            }
        });
    match read {
        Ok(bytes) => match std::fs::write(out, bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qconform-peer-read: {out}: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("qconform-peer-read: {} {}: {e}", imp.name(), imp.version());
            ExitCode::from(1)
        }
    }
}
