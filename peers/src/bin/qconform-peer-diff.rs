//! `qconform-peer-diff --impl imago|qcow2-rs (--runs N --seed S [--save DIR] | INPUT...)`:
//! a fixed-seed campaign through a differential body (findings grouped,
//! each group's first input minimised and, with --save, written to DIR as
//! `<kind>-<n>.input` and `.qcow2`), or the body on given input files.

use qconform_peers::campaign::{campaign, minimise, signature};
use qconform_peers::differential::{find, known};
use qconform_peers::generate::generate;
use qconform_peers::Impl;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut imp = None;
    let (mut runs, mut seed, mut save) = (None, 1u64, None);
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--impl" => imp = it.next().and_then(|s| Impl::parse(s)),
            "--runs" => runs = it.next().and_then(|s| s.parse::<u64>().ok()),
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()).unwrap_or(1),
            "--save" => save = it.next().cloned(),
            f => files.push(f.to_string()),
        }
    }
    let Some(imp) = imp else {
        eprintln!("usage: qconform-peer-diff --impl imago|qcow2-rs (--runs N --seed S [--save DIR] | INPUT...)");
        return ExitCode::from(2);
    };
    if let Some(runs) = runs {
        let t = Instant::now();
        let groups = campaign(imp, runs, seed);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{} {}: {runs} inputs, seed {seed}, {secs:.1} s, {:.0} exec/s, {} groups",
            imp.name(),
            imp.version(),
            runs as f64 / secs,
            groups.len()
        );
        let mut unknown = 0;
        for (n, g) in groups.iter().enumerate() {
            let min = minimise(imp, &g.input, &g.signature);
            let f = find(imp, &min).unwrap_or_else(|| g.first.clone());
            println!(
                "\n[{n}] x{} {}{}\n  {f}\n  input {}",
                g.count,
                g.signature,
                g.known
                    .map(|w| format!(" (KNOWN: {w})"))
                    .unwrap_or_default(),
                min.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            if g.known.is_none() {
                unknown += 1;
            }
            if let Some(dir) = &save {
                let _ = std::fs::create_dir_all(dir);
                let stem = format!("{dir}/{}-{n}", f.kind.name());
                let _ = std::fs::write(format!("{stem}.input"), &min);
                let _ = std::fs::write(format!("{stem}.qcow2"), &f.image);
            }
        }
        println!("\n{unknown} unknown groups");
        return ExitCode::SUCCESS;
    }
    for path in files {
        let Ok(data) = std::fs::read(&path) else {
            eprintln!("{path}: cannot read");
            continue;
        };
        match find(imp, &data) {
            Some(f) => println!(
                "{path}: {}{}\n  {f}",
                signature(&f),
                known(&f)
                    .map(|k| format!(" (KNOWN: {})", k.why))
                    .unwrap_or_default()
            ),
            None => println!(
                "{path}: no finding ({})",
                generate(&data)
                    .map(|g| g.summary())
                    .unwrap_or_else(|| "writer refused".into())
            ),
        }
    }
    ExitCode::SUCCESS
}
