//! Running the QEMU tools (qemu-img, qemu-io) and qconform itself from a
//! test: one helper per kind of run, so every test starts them the same
//! way, fails loudly when a tool is missing, and never hangs.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long a command may run before the test calls it a hang.
const HANG: Duration = Duration::from_secs(20);

/// Runs `cmd` with stdin closed and returns (exit code, stdout, stderr);
/// -1 for a process killed by a signal. A run past 20 s is a hang: the
/// process is killed and the test fails.
pub fn run(cmd: &mut Command) -> (i32, Vec<u8>, String) {
    let out = output(cmd);
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run`], returning the whole output (its status says how it ended).
pub fn output(cmd: &mut Command) -> Output {
    output_within(cmd, HANG)
}

/// [`output`] with another hang limit (a fuzz campaign runs for a while).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?} (is it installed? qemu-utils): {e}"));
    let pid = child.id();
    // Output is drained by wait_with_output on another thread, so a full
    // pipe never looks like a hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(limit) else {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("{cmd:?} hung (killed after {} s)", limit.as_secs());
    };
    out.expect("output")
}

/// Runs `prog args` in `dir` and requires it to succeed (an image made by a
/// tool, a qemu-io write).
pub fn tool(dir: &Path, prog: &str, args: &[&str]) {
    let out = output(Command::new(prog).args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img ARGS` in `dir`, required to succeed.
pub fn qemu_img(dir: &Path, args: &[&str]) {
    tool(dir, "qemu-img", args)
}

/// `qemu-io -c C1 -c C2 ... IMAGE` in `dir`, required to succeed.
pub fn qemu_io(dir: &Path, image: &str, commands: &[&str]) {
    let mut args: Vec<&str> = commands.iter().flat_map(|c| ["-c", c]).collect();
    args.push(image);
    tool(dir, "qemu-io", &args)
}

/// Whether `qemu-img convert -f FMT -O raw` reads `img` without an error.
pub fn qemu_convert_ok(fmt: &str, img: &Path) -> bool {
    let out = tempfile::NamedTempFile::new().expect("temporary file");
    output(
        Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(img)
            .arg(out.path()),
    )
    .status
    .success()
}

/// The guest bytes `qemu-img convert EXTRA -O raw FILE` writes (run in
/// `dir`, which relative names resolve against, and which receives the
/// output file for the moment); it must succeed.
pub fn qemu_convert(dir: &Path, file: &str, extra: &[&str]) -> Vec<u8> {
    let base = Path::new(file)
        .file_name()
        .map_or("image".into(), |n| n.to_string_lossy().into_owned());
    let out = dir.join(format!("{base}.qemu.raw"));
    let target = out.display().to_string();
    let mut args = vec!["convert"];
    args.extend_from_slice(extra);
    args.extend(["-O", "raw", file, &target]);
    tool(dir, "qemu-img", &args);
    let b = std::fs::read(&out).expect("qemu-img's output");
    let _ = std::fs::remove_file(out);
    b
}

/// `qemu-img map --output=json EXTRA FILE` in `dir`, parsed (Null when
/// qemu-img printed no JSON).
pub fn qemu_map(dir: &Path, file: &str, extra: &[&str]) -> serde_json::Value {
    let (_, out, _) = run(Command::new("qemu-img")
        .args(["map", "--output=json"])
        .args(extra)
        .arg(file)
        .current_dir(dir));
    serde_json::from_slice(&out).unwrap_or_default()
}

/// Runs `cmd` (a qconform command with `--output json`, a campaign of up
/// to a few minutes on a loaded machine) and parses its stdout: (exit
/// code, the JSON). Output that is not JSON fails the test.
pub fn run_json(cmd: &mut Command) -> (i32, serde_json::Value) {
    let out = output_within(cmd, Duration::from_secs(300));
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// The `findings` of a fuzz campaign's JSON summary.
pub fn findings(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    v["findings"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Whether a campaign finding names `rule`.
pub fn has_rule(f: &serde_json::Value, rule: &str) -> bool {
    f["rules"]
        .as_array()
        .is_some_and(|r| r.iter().any(|x| x == rule))
}

/// The qemu-storage-daemon command exporting a fresh 64 MiB raw disk
/// (`dir`/disk.img, made by qemu-img) as vhost-user-blk with two queues on
/// `sock`; fails loudly when either tool is missing.
pub fn qsd_cmd(dir: &Path, sock: &Path) -> String {
    let disk = dir.join("disk.img");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("qemu-img must be installed (qemu-utils)");
    assert!(st.success());
    assert!(
        Command::new("qemu-storage-daemon")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-storage-daemon must be installed (qemu-utils 10.0.2)"
    );
    format!(
        "qemu-storage-daemon --blockdev driver=file,node-name=file0,filename={} --export type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues=2",
        disk.display(),
        sock.display()
    )
}
