//! `qconform cat` and `qconform map`: the virtual disk of a qcow2, QED or
//! Parallels image, through the path policy of `qconform_core::disk`.

use crate::Output;
use qconform_core::disk::{
    policy, Backing, FsResolver, MapEntry, OpenOptions, ReadError, VirtualDisk,
};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use qconform_core::source::FileSource as SparseFile;

/// How `cat` and `map` open an image.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Which files the names inside the image may reach.
    pub backing: Backing,
    /// Read this internal snapshot (id or name) instead of the active state.
    pub snapshot: Option<String>,
    /// Best effort: read images the checker calls corrupt.
    pub force: bool,
    /// Whether file holes count (as QEMU's file driver counts them).
    pub holes: bool,
    /// Where data file names are resolved; None: the working directory, as QEMU.
    pub data_dir: Option<PathBuf>,
}

impl ReadOptions {
    /// What `cat` and `map` use by default: the confined policy, holes counted.
    pub fn new(backing: Backing) -> ReadOptions {
        ReadOptions {
            backing,
            holes: true,
            ..ReadOptions::default()
        }
    }

    /// Golden maps: a checkout is dense (holes ignored), corrupt images are
    /// mapped best effort so the golden file shows what the metadata says,
    /// names stay confined, and data files are found beside the image, as
    /// when the corpus recipe ran qemu-img in the image's directory.
    pub fn golden(image: &Path) -> ReadOptions {
        ReadOptions {
            backing: Backing::Confined,
            snapshot: None,
            force: true,
            holes: false,
            data_dir: image.parent().map(Path::to_path_buf),
        }
    }
}

/// Opens the virtual disk of `path`: the image must be a regular file, and
/// every file it names goes through the path policy.
pub fn open(path: &Path, o: &ReadOptions) -> Result<VirtualDisk, ReadError> {
    let src = policy::open_image(path, o.holes)?;
    let resolver = FsResolver::for_image(path, o.backing, o.data_dir.as_deref(), o.holes)
        .map_err(|e| ReadError::Open(format!("{}: {e}", path.display())))?;
    let opts = OpenOptions {
        backing: o.backing,
        snapshot: o.snapshot.as_deref(),
        verify: !o.force,
        ..OpenOptions::default()
    };
    VirtualDisk::open(Box::new(src), &resolver, &opts)
}

/// Bytes copied per read.
const CHUNK: usize = 4 << 20;

/// Whether an I/O error is stdout closed by its reader (`| head`): the
/// program ends quietly, having written what it could.
fn closed_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// `qconform cat`: the virtual disk (qcow2, QED or Parallels, with its
/// backing chain) to stdout, or sparsely to a file (with a progress bar of
/// the bytes read on a terminal, unless `quiet`).
pub fn run_cat(path: &Path, o: &ReadOptions, out: Option<&Path>, quiet: bool) -> i32 {
    let mut disk = match open(path, o) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("qconform: {}: {e}", path.display());
            return 1;
        }
    };
    let r = match out {
        Some(o) => cat_to_file(&mut disk, o, quiet),
        None => cat_to(&mut disk, &mut std::io::stdout().lock()),
    };
    match r {
        Ok(()) => 0,
        Err(CatError::ClosedPipe) => 0,
        Err(CatError::Other(e)) => {
            eprintln!("qconform: {}: {e}", path.display());
            1
        }
    }
}

enum CatError {
    ClosedPipe,
    Other(String),
}

impl From<ReadError> for CatError {
    fn from(e: ReadError) -> Self {
        CatError::Other(e.to_string())
    }
}

impl From<std::io::Error> for CatError {
    fn from(e: std::io::Error) -> Self {
        if closed_pipe(&e) {
            CatError::ClosedPipe
        } else {
            CatError::Other(e.to_string())
        }
    }
}

fn cat_to(disk: &mut VirtualDisk, w: &mut dyn Write) -> Result<(), CatError> {
    let size = disk.size();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let n = ((size - pos) as usize).min(CHUNK);
        let chunk = &mut buf[..n];
        disk.read_at(pos, chunk)?;
        w.write_all(chunk)?;
        pos += n as u64;
    }
    Ok(w.flush()?)
}

/// sha256 of the guest bytes `cat` writes (lowercase hex) and how many
/// there are: the content digest of golden records.
pub fn digest(path: &Path, o: &ReadOptions) -> Result<(String, u64), String> {
    use sha2::Digest;
    struct Hasher(sha2::Sha256);
    impl Write for Hasher {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut disk = open(path, o).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Hasher(sha2::Sha256::new());
    match cat_to(&mut disk, &mut h) {
        Ok(()) => Ok((format!("{:x}", h.0.finalize()), disk.size())),
        Err(CatError::ClosedPipe) => Err(format!("{}: closed", path.display())),
        Err(CatError::Other(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes only the chunks that are not all zero; the file is sized first,
/// so the rest stays a hole.
fn cat_to_file(disk: &mut VirtualDisk, out: &Path, quiet: bool) -> Result<(), CatError> {
    let f = std::fs::File::create(out)
        .map_err(|e| CatError::Other(format!("{}: {e}", out.display())))?;
    let size = disk.size();
    f.set_len(size)?;
    // Only ranges the map says are not zero are read at all; the file was
    // sized first, so everything else stays a hole. The map is taken as a
    // list of ranges (merged: one per run of data), bounded by the map's
    // own step limit.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    disk.map_each(|e| {
        if !e.zero {
            match ranges.last_mut() {
                Some(last) if last.1 == e.start => last.1 = e.start + e.length,
                _ => ranges.push((e.start, e.start + e.length)),
            }
        }
        Ok(())
    })?;
    // The bar counts the bytes read: the data ranges, not the holes.
    let total = ranges.iter().map(|(a, b)| b - a).sum();
    let bar = crate::progress::bar(total, crate::progress::Unit::Bytes, quiet);
    // Two stages on two cores: this thread reads (and decompresses) the
    // virtual disk, a writer thread writes the non-zero runs. Two buffers
    // circulate between them.
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(u64, usize, Vec<u8>)>(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..2 {
            let _ = empty_tx.send(vec![0u8; CHUNK]);
        }
        let writer = scope.spawn(move || -> Result<(), String> {
            for (pos, n, buf) in full_rx {
                write_sparse(&f, pos, &buf[..n])?;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        let mut result = Ok(());
        'ranges: for (start, end) in ranges {
            let mut pos = start;
            while pos < end {
                let Ok(mut buf) = empty_rx.recv() else {
                    break 'ranges;
                };
                let n = ((end - pos) as usize).min(CHUNK);
                if let Err(e) = disk.read_at(pos, &mut buf[..n]) {
                    result = Err(CatError::from(e));
                    break 'ranges;
                }
                if full_tx.send((pos, n, buf)).is_err() {
                    break 'ranges;
                }
                pos += n as u64;
                bar.inc(n as u64);
            }
        }
        drop(full_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the writer thread failed".into()))
            .map_err(CatError::Other);
        bar.finish_and_clear();
        result.and(written)
    })
}

/// Writes the non-zero 4 KiB blocks of `buf` at `pos`, each run in one call.
fn write_sparse(f: &std::fs::File, pos: u64, buf: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let n = buf.len();
    let mut run: Option<usize> = None;
    let blocks = n.div_ceil(4096);
    for i in 0..=blocks {
        const ZERO: [u8; 4096] = [0; 4096];
        let nonzero = i < blocks && {
            let block = &buf[i * 4096..((i + 1) * 4096).min(n)];
            block != &ZERO[..block.len()]
        };
        match (nonzero, run) {
            (true, None) => run = Some(i),
            (false, Some(start)) => {
                let (a, b) = (start * 4096, (i * 4096).min(n));
                f.write_all_at(&buf[a..b], pos + a as u64)
                    .map_err(|e| e.to_string())?;
                run = None;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The whole allocation map of an image (golden files, tests).
pub fn map_of(path: &Path, o: &ReadOptions) -> Result<Vec<MapEntry>, String> {
    open(path, o)
        .and_then(|mut d| d.map())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `qconform map`: the allocation map, JSON like `qemu-img map --output=json`,
/// written entry by entry as it is found (a map never waits for, or holds,
/// the whole disk).
pub fn run_map(path: &Path, o: &ReadOptions, output: Output) -> i32 {
    let mut disk = match open(path, o) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("qconform: {}: {e}", path.display());
            return 1;
        }
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let r = write_map(&mut disk, &mut w, output);
    match r {
        Ok(()) => 0,
        Err(CatError::ClosedPipe) => 0,
        Err(CatError::Other(e)) => {
            let _ = w.flush();
            eprintln!("qconform: {}: {e}", path.display());
            1
        }
    }
}

/// Writes the map entry by entry: a JSON array (one entry a line, as
/// qemu-img prints it) or the human table of data ranges.
fn write_map(disk: &mut VirtualDisk, w: &mut dyn Write, output: Output) -> Result<(), CatError> {
    if output == Output::Human {
        writeln!(
            w,
            "{:<18} {:<18} {:<18} File",
            "Offset", "Length", "Mapped to"
        )?;
    } else {
        write!(w, "[")?;
    }
    let mut first = true;
    // The sink's write error, kept whole (a closed pipe ends quietly).
    let mut failed: Option<std::io::Error> = None;
    let mapped = disk.map_each(|e| {
        let r = match output {
            Output::Json => {
                let sep = if first { "" } else { ",\n" };
                first = false;
                let json = serde_json::to_string(e).unwrap_or_default();
                write!(w, "{sep}{json}")
            }
            Output::Human if e.data => {
                let to = e
                    .offset
                    .map_or("compressed".to_string(), |o| format!("{o:#x}"));
                writeln!(
                    w,
                    "{:<#18x} {:<#18x} {:<18} depth {}",
                    e.start, e.length, to, e.depth
                )
            }
            Output::Human => Ok(()),
        };
        r.map_err(|err| {
            failed = Some(err);
            ReadError::Unsupported("the map's output could not be written".into())
        })
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    mapped?;
    if output == Output::Json {
        writeln!(w, "]")?;
    }
    Ok(w.flush()?)
}
