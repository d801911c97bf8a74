//! `qconform cat` and `qconform map`: the virtual disk of a qcow2, QED or
//! Parallels image.

use crate::Output;
use qconform_core::qcow2::read::{
    Backing, OpenOptions, ReadError, Resolved, Resolver, VirtualDisk,
};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use qconform_core::source::FileSource as SparseFile;

/// Resolves backing and data file names relative to the directory of the
/// image that names them (absolute names as they are), as QEMU does.
pub struct DirResolver {
    pub dir: PathBuf,
    pub holes: bool,
}

impl Resolver for DirResolver {
    fn open(&self, name: &str) -> Result<Resolved, String> {
        let path = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            self.dir.join(name)
        };
        let key = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let source = SparseFile::open_with(&key, self.holes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let dir = key.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Resolved {
            source: Box::new(source),
            key: key.display().to_string(),
            resolver: Box::new(DirResolver {
                dir,
                holes: self.holes,
            }),
        })
    }
}

/// Opens the virtual disk of `path`.
pub fn open(path: &Path, backing: Backing, snapshot: Option<&str>) -> Result<VirtualDisk, String> {
    open_with(path, backing, snapshot, true)
}

/// Like [`open`]; `holes` says whether file holes count (as QEMU's file
/// driver counts them) or every byte of the files is taken as written.
pub fn open_with(
    path: &Path,
    backing: Backing,
    snapshot: Option<&str>,
    holes: bool,
) -> Result<VirtualDisk, String> {
    let src = SparseFile::open_with(path, holes).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let opts = OpenOptions {
        backing,
        snapshot,
        ..OpenOptions::default()
    };
    VirtualDisk::open(Box::new(src), &DirResolver { dir, holes }, &opts)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Bytes copied per read.
const CHUNK: usize = 4 << 20;

/// `qconform cat`: the virtual disk (qcow2, QED or Parallels, with its
/// backing chain) to stdout, or sparsely to a file.
pub fn run_cat(path: &Path, backing: Backing, snapshot: Option<&str>, out: Option<&Path>) -> i32 {
    let mut disk = match open(path, backing, snapshot) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("qconform: {e}");
            return 1;
        }
    };
    let r = match out {
        Some(o) => cat_to_file(&mut disk, o),
        None => cat_to(&mut disk, &mut std::io::stdout().lock()),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("qconform: {}: {e}", path.display());
            1
        }
    }
}

fn cat_to(disk: &mut VirtualDisk, w: &mut dyn Write) -> Result<(), String> {
    let size = disk.size();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let n = ((size - pos) as usize).min(CHUNK);
        disk.read_at(pos, &mut buf[..n])
            .map_err(|e: ReadError| e.to_string())?;
        w.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        pos += n as u64;
    }
    w.flush().map_err(|e| e.to_string())
}

/// Writes only the chunks that are not all zero; the file is sized first,
/// so the rest stays a hole.
fn cat_to_file(disk: &mut VirtualDisk, out: &Path) -> Result<(), String> {
    let f = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let size = disk.size();
    f.set_len(size).map_err(|e| e.to_string())?;
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
        // Only ranges the map says are not zero are read at all; the file
        // was sized first, so everything else stays a hole.
        let ranges: Vec<(u64, u64)> = match disk.map() {
            Ok(m) => m
                .iter()
                .filter(|e| !e.zero)
                .map(|e| (e.start, e.start + e.length))
                .collect(),
            Err(_) => vec![(0, size)],
        };
        let mut result = Ok(());
        'ranges: for (start, end) in ranges {
            let mut pos = start;
            while pos < end {
                let Ok(mut buf) = empty_rx.recv() else {
                    break 'ranges;
                };
                let n = ((end - pos) as usize).min(CHUNK);
                if let Err(e) = disk.read_at(pos, &mut buf[..n]) {
                    result = Err(e.to_string());
                    break 'ranges;
                }
                if full_tx.send((pos, n, buf)).is_err() {
                    break 'ranges;
                }
                pos += n as u64;
            }
        }
        drop(full_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the writer thread failed".into()));
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

/// `qconform map`: the allocation map, JSON like `qemu-img map --output=json`.
/// The allocation map of any image qconform reads (qcow2, QED, Parallels);
/// `holes` as in [`open_with`].
pub fn map_of(
    path: &Path,
    backing: Backing,
    holes: bool,
) -> Result<Vec<qconform_core::qcow2::read::MapEntry>, String> {
    open_with(path, backing, None, holes).and_then(|mut d| d.map().map_err(|e| e.to_string()))
}

pub fn run_map(path: &Path, backing: Backing, output: Output) -> i32 {
    let map = map_of(path, backing, true);
    let map = match map {
        Ok(m) => m,
        Err(e) => {
            eprintln!("qconform: {e}");
            return 1;
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&map).unwrap_or_default()),
        Output::Human => {
            println!("{:<18} {:<18} {:<18} File", "Offset", "Length", "Mapped to");
            for e in map.iter().filter(|e| e.data) {
                let to = e
                    .offset
                    .map_or("compressed".to_string(), |o| format!("{o:#x}"));
                println!(
                    "{:<#18x} {:<#18x} {:<18} depth {}",
                    e.start, e.length, to, e.depth
                );
            }
        }
    }
    0
}
