//! The data path of `vhost-user probe --data-path`: one split virtqueue in
//! the memfd we share with the back-end, real virtio-blk requests placed on
//! it, a kick, a wait on the call eventfd (bounded by the probe's timeout),
//! and the used ring and data checked.
//!
//! No mmap here: guest memory is read and written through the memfd with
//! pread/pwrite, which reach the same pages the back-end has mapped.

use qconform_core::rules::{vhost_user as vrule, virtio as rule, Rule};
use qconform_core::virtio::blk::{self, Placement, Request, RequestType, Status};
use qconform_core::virtio::split_ring::{
    Buffer, Completion, GuestMemory, Layout, MemoryError, SplitRing, UsedFault,
};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Guest memory backed by the memfd of our one region (guest address 0).
pub struct MemfdMemory<'a> {
    pub fd: BorrowedFd<'a>,
    pub size: u64,
}

impl MemfdMemory<'_> {
    fn check(&self, gpa: u64, len: usize) -> Result<(), MemoryError> {
        match gpa.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemoryError {
                gpa,
                len,
                why: "outside the memory region".into(),
            }),
        }
    }
}

impl GuestMemory for MemfdMemory<'_> {
    fn read_at(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(gpa, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.get_mut(done..).unwrap_or_default();
            match rustix::io::pread(self.fd, rest, gpa + done as u64) {
                Ok(0) | Err(_) => {
                    return Err(MemoryError {
                        gpa,
                        len: buf.len(),
                        why: "pread of the memfd failed".into(),
                    })
                }
                Ok(n) => done += n,
            }
        }
        Ok(())
    }

    fn write_at(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check(gpa, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let rest = data.get(done..).unwrap_or_default();
            match rustix::io::pwrite(self.fd, rest, gpa + done as u64) {
                Ok(0) | Err(_) => {
                    return Err(MemoryError {
                        gpa,
                        len: data.len(),
                        why: "pwrite of the memfd failed".into(),
                    })
                }
                Ok(n) => done += n,
            }
        }
        Ok(())
    }
}

/// Which device the data path drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Blk,
    Rng,
}

/// A malformed request placed on the ring by a data-path robustness probe
/// (each on a fresh back-end). A clean error, a reset or a closed
/// connection conforms; a crash or a hang does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RingAbuse {
    /// A chain whose header buffer lies outside every memory region.
    OutsideRegion,
    /// A chain whose next fields loop (0 -> 1 -> 0).
    LoopingChain,
    /// The available index moved by more than the ring size.
    AvailIndexJump,
    /// A data descriptor of length 2^32-1.
    HugeLength,
}

impl RingAbuse {
    /// Every data-path robustness probe, in the order they run.
    pub const ALL: [RingAbuse; 4] = [
        RingAbuse::OutsideRegion,
        RingAbuse::LoopingChain,
        RingAbuse::AvailIndexJump,
        RingAbuse::HugeLength,
    ];

    /// The probe's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            RingAbuse::OutsideRegion => "ring-descriptor-outside-memory",
            RingAbuse::LoopingChain => "ring-looping-chain",
            RingAbuse::AvailIndexJump => "ring-avail-index-jump",
            RingAbuse::HugeLength => "ring-descriptor-length-4g",
        }
    }
}

/// What the data path needs from the probe's options.
#[derive(Debug, Clone)]
pub struct Options {
    pub device: Device,
    /// The raw disk file the back-end exports, compared with what we wrote.
    pub disk: Option<PathBuf>,
}

/// Virtio-blk feature bits the data path acknowledges when offered:
/// VIRTIO_BLK_F_FLUSH (9), so that a flush request is one the device must
/// carry out.
pub const BLK_ACK: u64 = 1 << 9;

/// Where our buffers live: above the rings, below the end of guest memory.
const DATA_BASE: u64 = 0x10_0000;
/// The sectors written and read back.
const SECTOR: u64 = 8;
const DATA_LEN: u32 = 4096;
/// Guest memory no ring or buffer of ours uses: filled with GUARD_BYTE
/// before the requests and checked after them.
const GUARD: std::ops::Range<u64> = 0x12_0000..0x20_0000;
const GUARD_BYTE: u8 = 0xa5;
/// How long a back-end has to signal the call eventfd once its used entry
/// is visible.
const CALL_GRACE: Duration = Duration::from_millis(200);
/// How long a stopped ring is watched for (forbidden) processing.
const STOPPED_WATCH: Duration = Duration::from_millis(300);

/// One request's outcome, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub request: String,
    pub outcome: String,
}

/// The driver of one ring.
pub struct DataPath<'a> {
    mem: MemfdMemory<'a>,
    ring: SplitRing,
    kick: BorrowedFd<'a>,
    call: BorrowedFd<'a>,
    timeout: Duration,
    event_idx: bool,
    device: Device,
    /// Findings for the session (rule, detail starting "back-end:").
    pub findings: Vec<(&'static Rule, String)>,
    pub steps: Vec<Step>,
    /// A chain is stuck outstanding: later requests would not be judged fairly.
    broken: bool,
}

/// The pattern written to the disk (any bytes would do; these differ in
/// every byte position within a sector and between sectors).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 + i / 512 * 13 + 0x5a) as u8)
        .collect()
}

fn signal(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Reads (and so resets) an eventfd; whether it had been signalled.
fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 8];
    matches!(rustix::io::read(fd, &mut b), Ok(8))
}

fn wait_readable(fd: BorrowedFd<'_>, for_: Duration) -> bool {
    let ms = for_.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let ts = rustix::event::Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: (ms % 1000) as i64 * 1_000_000,
    };
    matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}

impl<'a> DataPath<'a> {
    /// Lays out ring `layout` in `mem` (before the back-end is told where it
    /// is) with interrupts wanted.
    pub fn new(
        mem: MemfdMemory<'a>,
        layout: Layout,
        kick: &'a OwnedFd,
        call: &'a OwnedFd,
        timeout: Duration,
        event_idx: bool,
        device: Device,
    ) -> Result<DataPath<'a>, String> {
        let mut dp = DataPath {
            mem,
            ring: SplitRing::new(layout),
            kick: kick.as_fd(),
            call: call.as_fd(),
            timeout,
            event_idx,
            device,
            findings: Vec::new(),
            steps: Vec::new(),
            broken: false,
        };
        dp.ring.init(&mut dp.mem, 0).map_err(|e| e.to_string())?;
        Ok(dp)
    }

    fn finding(&mut self, rule: &'static Rule, detail: String) {
        self.findings.push((rule, format!("back-end: {detail}")));
    }

    fn step(&mut self, request: &str, outcome: String) {
        self.steps.push(Step {
            request: request.into(),
            outcome,
        });
    }

    fn faults(&mut self, faults: Vec<UsedFault>) {
        for f in faults {
            let rule = match f {
                UsedFault::IndexJump { .. } => &rule::USED_INDEX_JUMP,
                UsedFault::NotPosted { .. } => &rule::USED_ID_POSTED,
                UsedFault::LenPastBuffer { .. } => &rule::USED_LEN_WITHIN,
            };
            self.finding(rule, f.to_string());
        }
    }

    /// Posts `req`, kicks, and waits for its used entry and the call.
    fn submit(&mut self, req: &Request, data: Option<&[u8]>) -> Option<(Completion, Status)> {
        let what = format!("{:?} sector {}", req.kind, req.sector);
        let m = &mut self.mem;
        let placed = m
            .write_at(req.at.header, &req.header())
            .and_then(|_| match data {
                Some(d) => m.write_at(req.at.data, d),
                None => m.write_at(req.at.data, &vec![0; req.at.data_len as usize]),
            })
            // A status the spec does not define, so an untouched byte shows.
            .and_then(|_| m.write_at(req.at.status, &[0xee]));
        if let Err(e) = placed {
            self.step(&what, format!("could not place the request: {e}"));
            self.broken = true;
            return None;
        }
        let c = self.run_chain(&what, &req.buffers())?;
        let mut st = [0u8; 1];
        let status = match self.mem.read_at(req.at.status, &mut st) {
            Ok(()) => Status::decode(st[0]),
            Err(_) => Status::Other(0xee),
        };
        self.step(&what, format!("{status:?}, used len {}", c.len));
        Some((c, status))
    }

    /// Posts `bufs` as one chain, kicks, and waits for its used entry and
    /// the call.
    fn run_chain(&mut self, what: &str, bufs: &[Buffer]) -> Option<Completion> {
        drain(self.call);
        if self.event_idx {
            let _ = self
                .ring
                .set_used_event(&mut self.mem, self.ring.last_used());
        }
        let head = match self.ring.post(&mut self.mem, bufs) {
            Ok(h) => h,
            Err(e) => {
                self.step(what, format!("could not post: {e}"));
                self.broken = true;
                return None;
            }
        };
        signal(self.kick);
        let deadline = Instant::now() + self.timeout;
        let mut called = false;
        let mut done: Option<Completion> = None;
        let mut done_at: Option<Instant> = None;
        loop {
            if done.is_some() && called {
                break;
            }
            // Once the used entry is visible, the call has CALL_GRACE left.
            let until = match done_at {
                Some(t) => (t + CALL_GRACE).min(deadline),
                None => deadline,
            };
            let now = Instant::now();
            if now >= until {
                break;
            }
            let slice = (until - now).min(Duration::from_millis(20));
            if wait_readable(self.call, slice) && drain(self.call) {
                called = true;
            }
            if done.is_none() {
                match self.ring.poll_used(&self.mem) {
                    Ok(batch) => {
                        self.faults(batch.faults);
                        if let Some(c) = batch.completed.into_iter().find(|c| c.head == head) {
                            done = Some(c);
                            done_at = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        self.step(what, format!("could not read the used ring: {e}"));
                        self.broken = true;
                        return None;
                    }
                }
            }
        }
        let Some(c) = done else {
            self.finding(
                &rule::USED_COMPLETES,
                format!(
                    "{what} (chain {head}) was not returned in the used ring within {} ms{}",
                    self.timeout.as_millis(),
                    if called {
                        " (the call eventfd fired)"
                    } else {
                        ""
                    }
                ),
            );
            self.step(what, "not completed".into());
            self.broken = true;
            return None;
        };
        if !called {
            self.finding(
                &vrule::RING_CALL_FIRES,
                format!("{what}: used entry added, call eventfd not signalled"),
            );
        }
        Some(c)
    }

    /// virtio-rng: four 64-byte device-writable buffers, one chain each;
    /// each must come back with random bytes in it.
    pub fn rng(&mut self) {
        const LEN: u32 = 64;
        for k in 0..4u64 {
            let what = format!("entropy buffer {k}");
            let addr = DATA_BASE + 0x1000 * k;
            if self.mem.write_at(addr, &[0; LEN as usize]).is_err() {
                return;
            }
            let buf = Buffer {
                addr,
                len: LEN,
                writable: true,
            };
            let Some(c) = self.run_chain(&what, &[buf]) else {
                return;
            };
            let mut got = [0u8; LEN as usize];
            let filled = c.len.min(LEN) as usize;
            let _ = self.mem.read_at(addr, &mut got);
            // Eight random bytes are all zero once in 2^64 tries.
            let zero = got
                .get(..filled)
                .is_some_and(|b| b.len() >= 8 && b.iter().all(|&x| x == 0));
            if c.len == 0 || zero {
                self.finding(
                    &rule::RNG_FILLS,
                    format!(
                        "{what}: used len {}, {} bytes non-zero",
                        c.len,
                        got.iter().filter(|&&b| b != 0).count()
                    ),
                );
            }
            self.step(&what, format!("used len {}", c.len));
        }
    }

    fn request(&self, kind: RequestType, sector: u64, data_len: u32) -> Request {
        Request {
            kind,
            sector,
            at: Placement {
                header: DATA_BASE,
                data: DATA_BASE + 0x1000,
                data_len,
                status: DATA_BASE + 0x1000 + 0x10000,
            },
        }
    }

    fn expect(&mut self, what: &str, got: Status, want: Status) {
        if got != want {
            self.finding(
                &rule::BLK_STATUS,
                format!("{what}: status {got:?}, expected {want:?}"),
            );
        }
    }

    /// Fills the guard area.
    pub fn place_guard(&mut self) {
        let fill = vec![GUARD_BYTE; (GUARD.end - GUARD.start) as usize];
        if self.mem.write_at(GUARD.start, &fill).is_err() {
            self.step("guard area", "could not be written".into());
        }
    }

    /// Checks the guard area is as we left it: the device wrote nowhere but
    /// the device-writable buffers and the used ring.
    pub fn check_guard(&mut self) {
        let mut got = vec![0u8; (GUARD.end - GUARD.start) as usize];
        if self.mem.read_at(GUARD.start, &mut got).is_err() {
            return;
        }
        if let Some(i) = got.iter().position(|&b| b != GUARD_BYTE) {
            let changed = got.iter().filter(|&&b| b != GUARD_BYTE).count();
            self.finding(
                &rule::DEVICE_WRITES_WRITABLE,
                format!(
                    "{changed} bytes changed in guest memory no ring or buffer covers (first at {:#x})",
                    GUARD.start + i as u64
                ),
            );
        }
    }

    /// Write, read back, flush, get-id, out-of-range read: each checked.
    /// `capacity` is the config space's (sectors), `flush` whether
    /// VIRTIO_BLK_F_FLUSH was negotiated.
    pub fn blk(&mut self, capacity: Option<u64>, flush: bool, disk: Option<&std::path::Path>) {
        let written = pattern(DATA_LEN as usize);
        let w = self.request(RequestType::Out, SECTOR, DATA_LEN);
        let Some((_, st)) = self.submit(&w, Some(&written)) else {
            return;
        };
        self.expect("write", st, Status::Ok);
        let r = self.request(RequestType::In, SECTOR, DATA_LEN);
        if self.broken {
            return;
        }
        if let Some((_, st)) = self.submit(&r, None) {
            self.expect("read", st, Status::Ok);
            let mut back = vec![0u8; DATA_LEN as usize];
            if self.mem.read_at(r.at.data, &mut back).is_ok() && back != written {
                let first = back.iter().zip(&written).position(|(a, b)| a != b);
                self.finding(
                    &rule::BLK_DATA,
                    format!(
                        "read of sectors {SECTOR}..{} differs from the write (first at byte {first:?})",
                        SECTOR + DATA_LEN as u64 / blk::SECTOR
                    ),
                );
            }
        }
        if self.broken {
            return;
        }
        if let Some((_, st)) = self.submit(&self.request(RequestType::Flush, 0, 0), None) {
            // Without VIRTIO_BLK_F_FLUSH the device may refuse a flush.
            if flush || st != Status::Unsupp {
                self.expect("flush", st, Status::Ok);
            }
        }
        if let Some(path) = disk {
            self.compare_disk(path, &written);
        }
        if self.broken {
            return;
        }
        if let Some((c, st)) =
            self.submit(&self.request(RequestType::GetId, 0, blk::ID_BYTES), None)
        {
            if !matches!(st, Status::Ok | Status::Unsupp) {
                self.finding(
                    &rule::BLK_ID,
                    format!("get-id: status {st:?} (used len {})", c.len),
                );
            }
        }
        if self.broken {
            return;
        }
        // One sector at the capacity: past the end of the disk.
        let past = capacity.unwrap_or(1 << 40);
        if let Some((_, st)) = self.submit(&self.request(RequestType::In, past, 512), None) {
            self.expect("read past the capacity", st, Status::IoErr);
        }
    }

    fn compare_disk(&mut self, path: &std::path::Path, written: &[u8]) {
        use std::os::unix::fs::FileExt;
        let mut on_disk = vec![0u8; written.len()];
        let read = std::fs::File::open(path)
            .and_then(|f| f.read_exact_at(&mut on_disk, SECTOR * blk::SECTOR));
        match read {
            Ok(()) if on_disk == written => self.step(
                "disk file",
                format!("holds the written sectors ({})", path.display()),
            ),
            Ok(()) => self.finding(
                &rule::BLK_DATA,
                format!(
                    "after the write and a flush, {} does not hold the written sectors",
                    path.display()
                ),
            ),
            Err(e) => self.step("disk file", format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Places the malformed request `abuse` on the ring and kicks; any used
    /// entries it produces are judged like any others (an error completion
    /// is fine, a used id or length we never offered is not).
    pub fn abuse(&mut self, abuse: RingAbuse, guest_memory: u64) -> String {
        use qconform_core::virtio::split_ring::{Descriptor, DESC_F_NEXT, DESC_F_WRITE};
        let req = self.request(RequestType::Out, SECTOR, DATA_LEN);
        let _ = self.mem.write_at(req.at.header, &req.header());
        let d = |addr, len, flags, next| Descriptor {
            addr,
            len,
            flags,
            next,
        };
        let size = self.ring.layout().size;
        let placed = match abuse {
            RingAbuse::OutsideRegion => self
                .ring
                .write_descriptor(
                    &mut self.mem,
                    0,
                    &d(guest_memory + 0x10_0000, 16, DESC_F_NEXT, 1),
                )
                .and_then(|_| {
                    self.ring.write_descriptor(
                        &mut self.mem,
                        1,
                        &d(req.at.status, 1, DESC_F_WRITE, 0),
                    )
                })
                .and_then(|_| self.ring.publish(&mut self.mem, 0)),
            RingAbuse::LoopingChain => self
                .ring
                .write_descriptor(&mut self.mem, 0, &d(req.at.header, 16, DESC_F_NEXT, 1))
                .and_then(|_| {
                    self.ring.write_descriptor(
                        &mut self.mem,
                        1,
                        &d(req.at.data, 512, DESC_F_NEXT, 0),
                    )
                })
                .and_then(|_| self.ring.publish(&mut self.mem, 0)),
            RingAbuse::AvailIndexJump => {
                let to = self.ring.avail_index().wrapping_add(size).wrapping_add(1);
                self.ring.force_avail_index(&mut self.mem, to)
            }
            RingAbuse::HugeLength => self
                .ring
                .write_descriptor(&mut self.mem, 0, &d(req.at.header, 16, DESC_F_NEXT, 1))
                .and_then(|_| {
                    self.ring.write_descriptor(
                        &mut self.mem,
                        1,
                        &d(req.at.data, u32::MAX, DESC_F_NEXT, 2),
                    )
                })
                .and_then(|_| {
                    self.ring.write_descriptor(
                        &mut self.mem,
                        2,
                        &d(req.at.status, 1, DESC_F_WRITE, 0),
                    )
                })
                .and_then(|_| self.ring.publish(&mut self.mem, 0)),
        };
        if let Err(e) = placed {
            return format!("could not place it: {e}");
        }
        drain(self.call);
        signal(self.kick);
        let called = wait_readable(self.call, STOPPED_WATCH) && drain(self.call);
        // The abused chain went around the driver's bookkeeping: what the
        // used ring says is reported here, not judged (an error completion
        // of head 0 is a fine answer).
        match self.ring.used_index(&self.mem) {
            Ok(0) => format!(
                "not processed (call {})",
                if called { "signalled" } else { "not signalled" }
            ),
            Ok(n) => format!("{n} used entries"),
            Err(e) => format!("cannot read the used ring: {e}"),
        }
    }

    /// The driver's available index (what GET_VRING_BASE must return once
    /// everything posted was processed).
    pub fn avail_index(&self) -> u16 {
        self.ring.avail_index()
    }

    /// Chains outstanding.
    pub fn outstanding(&self) -> usize {
        self.ring.outstanding()
    }

    /// Judges GET_VRING_BASE's reply `base` for this ring.
    pub fn check_base(&mut self, base: u32) {
        let want = self.ring.avail_index();
        if self.ring.outstanding() == 0 && base != want as u32 {
            self.finding(
                &vrule::RING_BASE_RESUMES,
                format!(
                    "GET_VRING_BASE returned {base}; every one of the {want} requests made available was processed, so the next to process is {want}"
                ),
            );
        }
        self.step("GET_VRING_BASE", format!("{base} (available index {want})"));
    }

    /// On the stopped ring: a write request made available and kicked must
    /// not be processed.
    pub fn stopped_ring_idle(&mut self) {
        if self.broken {
            return;
        }
        let before = self.ring.used_index(&self.mem).ok();
        let w = self.request(RequestType::Out, SECTOR, DATA_LEN);
        let data = vec![0u8; DATA_LEN as usize];
        let placed = self
            .mem
            .write_at(w.at.header, &w.header())
            .and_then(|_| self.mem.write_at(w.at.data, &data));
        // A chain the device may use: a blk write, or for rng one writable buffer.
        let bufs = match self.device {
            Device::Blk => w.buffers(),
            Device::Rng => vec![Buffer {
                addr: w.at.data,
                len: 64,
                writable: true,
            }],
        };
        if placed.is_err() || self.ring.post(&mut self.mem, &bufs).is_err() {
            return;
        }
        drain(self.call);
        signal(self.kick);
        let called = wait_readable(self.call, STOPPED_WATCH) && drain(self.call);
        let after = self.ring.used_index(&self.mem).ok();
        if after != before || called {
            self.finding(
                &vrule::RING_STOPPED_IDLE,
                format!(
                    "after GET_VRING_BASE stopped the ring, a request made available and kicked was processed (used index {before:?} -> {after:?}, call {})",
                    if called { "signalled" } else { "not signalled" }
                ),
            );
        }
        self.step(
            "request on the stopped ring",
            if after != before {
                "processed".into()
            } else {
                "left alone".into()
            },
        );
    }
}
