//! `qconform check` and `qconform info`.

use crate::Output;
use crate::{out, outln};
use qconform_core::formats::{self, ImageFormat, Info};
use qconform_core::rules::general;
use qconform_core::source::FileSource;
use qconform_core::{qcow2, Limits, Report, Severity};
use std::path::Path;

/// Opens an image and finds its format in the registry: forced by `format`
/// (a `-f` name) or probed from the magic. What fails is the crate's error
/// with the rule it breaks (a check error: exit code 1).
fn open_as(
    path: &Path,
    format: Option<&str>,
) -> qconform_core::Result<(FileSource, &'static dyn ImageFormat)> {
    let name = path.display().to_string();
    let src = FileSource::open(path).map_err(|e| {
        // open_regular refuses FIFOs, devices, directories and sockets.
        let rule = if e.kind() == std::io::ErrorKind::InvalidInput {
            &qconform_core::rules::policy::REGULAR_FILE
        } else {
            &general::IO_ERROR
        };
        qconform_core::Error::rule(rule, None, format!("cannot open {name}: {e}"))
    })?;
    let found = match format {
        Some(f) => formats::by_name(f),
        None => formats::probe(&src),
    };
    let f = found.ok_or_else(|| {
        let known = formats::names().collect::<Vec<_>>().join(", ");
        let what = match format {
            Some(f) => format!("unknown format {f:?} (known: {known})"),
            None => format!(
                "the file is not in a format qconform knows (it has none of the magics of {known})"
            ),
        };
        qconform_core::Error::rule(&general::UNKNOWN_FORMAT, Some(0), what)
    })?;
    Ok((src, f))
}

/// Checks one image file; unreadable files and unknown formats become a
/// report with a check error (exit code 1), never a panic.
pub fn check_file(path: &Path, format: Option<&str>, limits: &Limits) -> Report {
    check_file_counted(path, format, limits, &indicatif::ProgressBar::hidden())
}

/// [`check_file`], counting the bytes the check reads on `bar`.
pub fn check_file_counted(
    path: &Path,
    format: Option<&str>,
    limits: &Limits,
    bar: &indicatif::ProgressBar,
) -> Report {
    let name = path.display().to_string();
    match open_as(path, format) {
        Ok((src, f)) => {
            if let Some(total) = f.metadata_size(&src) {
                crate::progress::with_total(bar, total);
            }
            let counted = crate::progress::Counted { inner: &src, bar };
            let mut report = f.check(&counted, &name, limits);
            // Names inside the image that the default path policy would
            // refuse, judged without opening them.
            let names = qconform_core::disk::named_files(&src);
            qconform_core::disk::policy::audit(&mut report, path, &names);
            report
        }
        Err(e) => {
            let mut r = Report::for_image(&name, format.unwrap_or("unknown"), limits);
            match e {
                qconform_core::Error::Rule {
                    rule,
                    offset,
                    detail,
                } => r.add(rule, offset, detail),
                other => r.add(&general::IO_ERROR, None, other.to_string()),
            }
            r
        }
    }
}

/// The metadata `qconform info` shows, for an image of any registered format.
pub fn info_file(path: &Path, limits: &Limits) -> qconform_core::Result<Info> {
    let (src, f) = open_as(path, None)?;
    f.info(&src, &path.display().to_string(), limits)
}

/// Renders a report as qemu-img-like text.
pub fn human(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{} ({}):", report.filename, report.format);
    for f in &report.findings {
        let at = f
            .offset()
            .map_or(String::new(), |o| format!(" at offset {o:#x}"));
        let sev = match f.severity {
            Severity::Error => "ERROR",
            Severity::Corruption => "CORRUPTION",
            Severity::Leak => "LEAK",
            Severity::Violation => "VIOLATION",
            Severity::Note => "NOTE",
        };
        let _ = writeln!(
            s,
            "{}: {sev} [{}]{at}: {} ({} §{})",
            report.filename, f.rule.id, f.detail, f.rule.spec, f.rule.section
        );
    }
    for (rule, n) in &report.findings_omitted() {
        let _ = writeln!(
            s,
            "{}: ... and {n} more findings of [{rule}]",
            report.filename
        );
    }
    if report.check_errors > 0 {
        let _ = writeln!(
            s,
            "\n{} errors occurred during the check; the check is not complete.",
            report.check_errors
        );
    } else if report.corruptions == 0 && report.leaks == 0 {
        let _ = writeln!(s, "\nNo errors were found on the image.");
    } else {
        if report.corruptions > 0 {
            let _ = writeln!(s, "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.", report.corruptions);
        }
        if report.leaks > 0 {
            let _ = writeln!(s, "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.", report.leaks);
        }
    }
    if report.violations > 0 {
        let _ = writeln!(
            s,
            "{} spec violations that qemu-img does not count (--strict counts them).",
            report.violations
        );
    }
    let stats = report.stats.unwrap_or_default();
    if let (Some(total), Some(alloc), Some(frag), Some(comp)) = (
        stats.total_clusters,
        stats.allocated_clusters,
        stats.fragmented_clusters,
        stats.compressed_clusters,
    ) {
        let pct = |n: u64, d: u64| {
            if d == 0 {
                0.0
            } else {
                n as f64 * 100.0 / d as f64
            }
        };
        let _ = writeln!(
            s,
            "{alloc}/{total} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            pct(alloc, total),
            pct(frag, alloc),
            pct(comp, alloc)
        );
    }
    if let Some(end) = stats.image_end_offset {
        let _ = writeln!(s, "Image end offset: {end}");
    }
    s
}

/// How bad an exit code is, for several images: corruptions (2) > could
/// not check (1) > leaks only (3) > clean (0). A file that cannot be read
/// never hides another image's corruption.
pub fn severity_rank(code: i32) -> u8 {
    match code {
        2 => 3,
        1 => 2,
        3 => 1,
        _ => 0,
    }
}

/// `qconform check`: the exit code is the most severe verdict of all
/// images; `reports` also get one JUnit test case per image and one SARIF
/// result per finding. Several images are checked on every core at once
/// ([`checked_in_order`]); what is printed, the exit code and the CI
/// reports are those of a sequential run, in input order.
pub fn run_check(
    format: Option<&str>,
    output: Output,
    strict: bool,
    policy: &qconform_core::upload::Policy,
    images: &[std::path::PathBuf],
    reports_to: &crate::ci_report::Targets,
    quiet: bool,
) -> i32 {
    let limits = Limits::default();
    let mut worst = 0;
    let mut reports = Vec::new();
    let mut cases = Vec::new();
    let mut results = Vec::new();
    // One image: a spinner of the bytes it reads. Several: one bar of the
    // images done (spinners of images checked side by side would fight).
    let many = images.len() > 1;
    let images_bar = if many {
        crate::progress::bar(images.len() as u64, crate::progress::Unit::Items, quiet)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let check_one = |path: &std::path::PathBuf| {
        // As upload_policy::check, with the bytes the check reads on a spinner.
        let bar = crate::progress::reading(&path.display().to_string(), quiet || many);
        let mut report = check_file_counted(path, format, &limits, &bar);
        bar.finish_and_clear();
        crate::upload_policy::apply(&mut report, path, format, &limits, policy);
        let code = policy.exit_code(&report, strict);
        (report, code)
    };
    checked_in_order(images, check_one, |(report, code)| {
        images_bar.inc(1);
        if severity_rank(code) > severity_rank(worst) {
            worst = code;
        }
        if reports_to.any() {
            cases.push(crate::ci_report::Case {
                suite: "qconform check".into(),
                name: report.filename.clone(),
                outcome: crate::ci_report::check_outcome(&report, code),
            });
            results.extend(crate::ci_report::image_results(&report, &report.filename));
        }
        match output {
            Output::Human => images_bar.suspend(|| out!("{}", human(&report))),
            Output::Json => reports.push(report),
        }
    });
    images_bar.finish_and_clear();
    if output == Output::Json {
        let text = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&reports)
        };
        outln!("{}", text.unwrap_or_default());
    }
    if !reports_to.any() {
        return worst;
    }
    reports_to.write_or_fail("qconform check", &cases, &results, worst)
}

/// Runs `work` on every item on all of rayon's threads and hands each
/// result to `done` on the calling thread in input order, as soon as it and
/// every earlier one are ready (so output streams). Workers take the next
/// unclaimed item in turn, so results arrive nearly in order and only
/// those finished ahead of a slow earlier item wait, held in `pending`.
/// One item, or one thread, runs on the calling thread alone.
pub fn checked_in_order<T, R, W, D>(items: &[T], work: W, mut done: D)
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    D: FnMut(R),
{
    let threads = rayon::current_num_threads().min(items.len());
    if threads <= 1 {
        items.iter().map(&work).for_each(done);
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, R)>();
    std::thread::scope(|scope| {
        let (next, work) = (&next, &work);
        // The workers run in rayon's pool (the checks inside may fork work
        // of their own there); a scoped thread waits for them so that this
        // thread is free to print.
        scope.spawn(move || {
            rayon::scope(|s| {
                for _ in 0..threads {
                    let tx = tx.clone();
                    s.spawn(move |_| loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        // The receiver lives until every result is in.
                        if tx.send((i, work(item))).is_err() {
                            break;
                        }
                    });
                }
                drop(tx);
            });
        });
        let mut pending = std::collections::BTreeMap::new();
        let mut want = 0usize;
        for (i, r) in rx.iter() {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&want) {
                done(r);
                want += 1;
            }
        }
    });
}

pub fn run_info(output: Output, path: &Path) -> i32 {
    match info_file(path, &Limits::default()) {
        Err(e) => {
            eprintln!("qconform: {}: {e}", path.display());
            1
        }
        Ok(info) => {
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&crate::info_json::image_info(path, &info))
                        .unwrap_or_default()
                ),
                Output::Human => out!("{}", info_human(&path.display().to_string(), &info)),
            }
            0
        }
    }
}

/// `qconform info` as text, for any format.
pub fn info_human(name: &str, info: &Info) -> String {
    match info {
        Info::Qcow2(i) => qcow2_info_human(name, i),
        Info::Qed(i) => qed_info_human(name, i),
        Info::Parallels(i) => parallels_info_human(name, i),
    }
}

fn qed_info_human(name: &str, i: &qconform_core::qed::info::Info) -> String {
    use std::fmt::Write;
    let h = &i.header;
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let bits = |b: &[u8]| list(b.iter().map(|b| format!("bit {b}")).collect());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "image: {name}\nfile format: qed\nvirtual size: {} bytes",
        i.image_size
    );
    let _ = writeln!(
        s,
        "cluster size: {}\ntable size: {} clusters ({} entries per table)\nheader size: {} clusters",
        i.cluster_size, h.table_size, i.table_entries, h.header_size
    );
    let _ = writeln!(
        s,
        "features: {}\ncompat features: {}\nautoclear features: {}",
        list(i.features.iter().map(|f| f.to_string()).collect()),
        bits(&i.compat_feature_bits),
        bits(&i.autoclear_feature_bits)
    );
    if let Some(b) = &i.backing_file {
        let _ = writeln!(
            s,
            "backing file: {b:?} (format {})",
            i.backing_format.unwrap_or("probed")
        );
    }
    let _ = writeln!(
        s,
        "L1 table: at {:#x}, {} entries in the file, {} L2 tables",
        i.l1_table_offset, i.l1_entries_in_file, i.l2_tables
    );
    let _ = writeln!(
        s,
        "dirty (NEED_CHECK): {}",
        if i.need_check { "yes" } else { "no" }
    );
    s
}

fn qcow2_info_human(name: &str, i: &qcow2::check::Info) -> String {
    use qcow2::header::feature_name;
    use std::fmt::Write;
    let h = &i.header;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "image: {name}\nfile format: qcow2\nversion: {}\nvirtual size: {} bytes",
        h.version, h.size
    );
    let _ = writeln!(
        s,
        "cluster_size: {} (cluster_bits {})\nrefcount bits: {}",
        h.cluster_size(),
        h.cluster_bits,
        h.refcount_bits()
    );
    let _ = writeln!(
        s,
        "header_length: {}\ncompression type: {}",
        h.header_length,
        if h.compression_type == 1 {
            "zstd"
        } else {
            "deflate"
        }
    );
    let _ = writeln!(
        s,
        "crypt_method: {}",
        ["none", "AES", "LUKS"]
            .get(h.crypt_method as usize)
            .unwrap_or(&"unknown")
    );
    let _ = writeln!(
        s,
        "L1: {} entries at {:#x}\nrefcount table: {} clusters at {:#x}",
        h.l1_size, h.l1_table_offset, h.refcount_table_clusters, h.refcount_table_offset
    );
    for (kind, label, bits) in [
        (0u8, "incompatible", h.incompatible_features),
        (1, "compatible", h.compatible_features),
        (2, "autoclear", h.autoclear_features),
    ] {
        let names: Vec<String> = (0..64u8)
            .filter(|b| bits >> b & 1 == 1)
            .map(|b| {
                let from_table = i
                    .extensions
                    .feature_names
                    .iter()
                    .find(|f| f.kind == kind && f.bit == b)
                    .map(|f| f.name.clone());
                feature_name(kind, b)
                    .map(str::to_owned)
                    .or(from_table)
                    .unwrap_or_else(|| format!("unknown bit {b}"))
            })
            .collect();
        let _ = writeln!(
            s,
            "{label} features: {}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    }
    let e = &i.extensions;
    if h.backing_file_offset != 0 {
        let _ = writeln!(
            s,
            "backing file: {:?} (at {:#x}, {} bytes){}",
            i.backing_file.as_deref().unwrap_or(""),
            h.backing_file_offset,
            h.backing_file_size,
            e.backing_format
                .as_ref()
                .map_or(String::new(), |f| format!(" (format {f})"))
        );
    }
    if let Some(d) = &e.data_file {
        let _ = writeln!(s, "data file: {d}");
    }
    if let Some(f) = &e.fde {
        let _ = writeln!(
            s,
            "encryption header: {} bytes at {:#x}",
            f.length, f.offset
        );
    }
    for u in &e.unknown {
        let _ = writeln!(
            s,
            "unknown extension {:#010x}: {} bytes at {:#x}",
            u.ext_type, u.length, u.offset
        );
    }
    let _ = writeln!(s, "snapshots: {}", i.snapshots.snapshots.len());
    for sn in &i.snapshots.snapshots {
        let _ = writeln!(
            s,
            "  id {:>4} name {:<20} L1 {} entries at {:#x}, vm state {} bytes, disk size {}{}",
            sn.id,
            sn.name,
            sn.l1_size,
            sn.l1_table_offset,
            sn.vm_state_size,
            sn.disk_size,
            sn.icount.map_or(String::new(), |c| format!(", icount {c}"))
        );
    }
    let _ = writeln!(s, "bitmaps: {}", i.bitmaps.len());
    for b in &i.bitmaps {
        let _ = writeln!(
            s,
            "  {:<20} granularity {} bytes, flags{}{}, table {} entries at {:#x}",
            b.name,
            1u64 << b.granularity_bits,
            if b.in_use() { " in-use" } else { "" },
            if b.auto() { " auto" } else { "" },
            b.bitmap_table_size,
            b.bitmap_table_offset
        );
    }
    s
}

fn parallels_info_human(name: &str, i: &qconform_core::parallels::check::Info) -> String {
    use std::fmt::Write;
    let h = &i.header;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "image: {name}\nfile format: parallels ({})\nvirtual size: {} bytes",
        if h.ext_magic {
            "WithouFreSpacExt"
        } else {
            "WithoutFreeSpace"
        },
        h.disk_size()
    );
    let _ = writeln!(
        s,
        "cluster size: {} ({} sectors)\nBAT entries: {} ({} allocated)\ndata offset: {:#x}",
        i.cluster_size, h.tracks, h.nb_bat_entries, i.allocated_clusters, i.data_offset
    );
    let _ = writeln!(s, "in_use: {:#x}\nflags: {:#x}", h.in_use, h.flags);
    if let Some(x) = &i.extension {
        let _ = writeln!(s, "format extension at sector {}", h.ext_off);
        for b in &x.bitmaps {
            let g = b.granularity as u64 * 512;
            let _ = writeln!(
                s,
                "  dirty bitmap {}: {} sectors, granularity {} bytes",
                b.id, b.size, g
            );
            for (start, len) in &b.dirty {
                let _ = writeln!(
                    s,
                    "    dirty clusters {}-{} (bytes {:#x}..{:#x})",
                    start / g,
                    (start + len) / g - 1,
                    start,
                    start + len
                );
            }
        }
        for (m, f) in &x.unknown {
            let _ = writeln!(s, "  unknown feature {m:#018x} flags {f:#x}");
        }
    }
    s
}
