//! Property tests of the QED and Parallels writers, readers, checkers and
//! mutators: every written image checks clean and obeys its format's
//! invariants (re-derived here from the bytes, not from the checker), reads
//! back as described (through the backing file for QED), and every mutation
//! is reported with the rule it names.

use proptest::prelude::*;
use qconform_core::disk::{Backing, OpenOptions, VirtualDisk};
use qconform_core::{parallels, qed, Limits};
use std::collections::BTreeSet;

use qconform_testkit::descriptions;

fn le32(b: &[u8], at: u64) -> u64 {
    u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().unwrap()) as u64
}
fn le64(b: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

use mem::Mem;
use qconform_testkit::mem;

fn read_all(img: Vec<u8>, backing: Option<Vec<u8>>) -> Result<(Vec<u8>, VirtualDisk), String> {
    let follow = if backing.is_some() {
        Backing::Follow
    } else {
        Backing::Ignore
    };
    let opts = OpenOptions {
        backing: follow,
        ..OpenOptions::default()
    };
    let mut disk =
        VirtualDisk::open(Box::new(img), &Mem(backing), &opts).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut out).map_err(|e| e.to_string())?;
    Ok((out, disk))
}

/// The QED spec's consistency invariants, straight from the bytes: every
/// offset aligned and inside the file, tables whole before EOF, and every
/// cluster of the file referenced once and only once (header, L1, L2s, data).
fn qed_invariants(img: &[u8]) -> Result<(), String> {
    let cs = le32(img, 4);
    let ts = le32(img, 8);
    let header_clusters = le32(img, 12);
    let l1 = le64(img, 40);
    let per_table = ts * cs / 8;
    let len = img.len() as u64;
    if !len.is_multiple_of(cs) {
        return Err(format!("file length {len} is not whole clusters"));
    }
    let mut refs = vec![0u32; (len / cs) as usize];
    let mut take = |off: u64, n: u64, what: &str| -> Result<(), String> {
        if !off.is_multiple_of(cs) || off + n * cs > len {
            return Err(format!("{what} at {off:#x}: unaligned or past EOF"));
        }
        for k in off / cs..off / cs + n {
            refs[k as usize] += 1;
        }
        Ok(())
    };
    take(0, header_clusters, "header")?;
    take(l1, ts, "L1")?;
    for i in 0..per_table {
        let l2 = le64(img, l1 + 8 * i);
        if l2 == 0 {
            continue;
        }
        take(l2, ts, "L2")?;
        for j in 0..per_table {
            let d = le64(img, l2 + 8 * j);
            if d > 1 {
                take(d, 1, "data")?;
            }
        }
    }
    match refs.iter().position(|&r| r != 1) {
        Some(k) => Err(format!("cluster {k} referenced {} times", refs[k])),
        None => Ok(()),
    }
}

/// The Parallels spec's BAT rules, straight from the bytes: each entry zero
/// or at least the data offset, a whole cluster inside the file, unique, and
/// cluster-aligned relative to the data offset.
fn bat_rules(img: &[u8]) -> Result<(), String> {
    let ext = &img[..16] == b"WithouFreSpacExt";
    let cs = le32(img, 28) * 512;
    let n = le32(img, 32);
    let data_off = le32(img, 48) * 512;
    let mut seen = BTreeSet::new();
    for i in 0..n {
        let e = le32(img, 64 + 4 * i);
        if e == 0 {
            continue;
        }
        let off = if ext { e * cs } else { e * 512 };
        if off < data_off || off + cs > img.len() as u64 || !(off - data_off).is_multiple_of(cs) {
            return Err(format!("BAT entry {i}: {off:#x} breaks a BAT rule"));
        }
        if !seen.insert(off) {
            return Err(format!("BAT entry {i}: {off:#x} is used twice"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn written_qed_images_check_clean_hold_the_invariants_and_read_back(d in descriptions::qed_description(40)) {
        let img = qed::write::write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let r = qed::check(&img.as_slice(), "written", &Limits::default());
        prop_assert!(r.findings.is_empty(), "{:#?}", r.findings);
        prop_assert_eq!(r.stats.unwrap().image_end_offset, Some(img.len() as u64));
        qed_invariants(&img).map_err(TestCaseError::fail)?;
        let (got, _) = read_all(img.clone(), None).map_err(TestCaseError::fail)?;
        prop_assert!(got == d.guest_bytes(), "read-back differs");
    }

    #[test]
    fn qed_reads_its_backing_file_where_unallocated(d in descriptions::qed_description(24), base_len in 0u64..30, seed in any::<u8>()) {
        // Base shorter or longer than the image: past its end reads zeros.
        let mut d = d;
        d.backing = Some(("base.raw".into(), true));
        let img = qed::write::write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let base = descriptions::bytes(seed, (base_len * 4096) as usize);
        let (got, _) = read_all(img, Some(base.clone())).map_err(TestCaseError::fail)?;
        let cs = d.cluster_size as usize;
        let mut want = vec![0u8; d.size as usize];
        let n = want.len().min(base.len());
        want[..n].copy_from_slice(&base[..n]);
        for (&k, c) in &d.clusters {
            let at = k as usize * cs;
            let end = (at + cs).min(want.len());
            match c {
                qed::write::Cluster::Zero => want[at..end].fill(0),
                qed::write::Cluster::Data(b) => want[at..end].copy_from_slice(&b[..end - at]),
            }
        }
        prop_assert!(got == want, "read through the backing file differs");
    }

    #[test]
    fn qed_mutations_are_reported_with_their_rule(d in descriptions::qed_description(24), kind in 0..qed::mutate::KINDS, a in any::<usize>(), b in any::<u8>()) {
        let mut img = qed::write::write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let m = qed::mutate::Mutation::from_parts(kind, a, b);
        if let Some(rules) = qed::mutate::apply(m, &mut img) {
            let r = qed::check(&img.as_slice(), "mutated", &Limits::default());
            for rule in rules {
                prop_assert!(r.findings.iter().any(|f| f.rule.id == rule.id), "{:?}: {} not reported: {:#?}", m, rule, r.findings);
            }
            // The reader never panics on it either.
            let _ = read_all(img, None);
        }
    }

    #[test]
    fn written_parallels_images_check_clean_hold_the_bat_rules_and_read_back(d in descriptions::parallels_description(40)) {
        let img = parallels::write::write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let r = parallels::check(&img.as_slice(), "written", &Limits::default());
        prop_assert!(r.findings.is_empty(), "{:#?}", r.findings);
        prop_assert_eq!(r.stats.unwrap().image_end_offset, Some(img.len() as u64));
        bat_rules(&img).map_err(TestCaseError::fail)?;
        let (got, mut disk) = read_all(img.clone(), None).map_err(TestCaseError::fail)?;
        prop_assert!(got == d.guest_bytes(), "read-back differs");
        let map = disk.map().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let data: u64 = map.iter().filter(|e| e.data).map(|e| e.length).sum();
        let want: u64 = d.clusters.keys().map(|&k| d.cluster_size.min(d.size - k * d.cluster_size)).sum();
        prop_assert_eq!(data, want);
        // The bitmap reads back as the dirty ranges described.
        let info = parallels::check::info(&img.as_slice(), "written", &Limits::default()).map_err(|_| TestCaseError::fail("info"))?;
        let dirty = info.extension.map(|x| x.bitmaps.into_iter().flat_map(|b| b.dirty).collect::<Vec<_>>()).unwrap_or_default();
        prop_assert_eq!(dirty, d.dirty_ranges());
    }

    #[test]
    fn parallels_mutations_are_reported_with_their_rule(d in descriptions::parallels_description(24), kind in 0..parallels::mutate::KINDS, a in any::<usize>(), b in any::<u8>()) {
        let mut img = parallels::write::write(&d).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let m = parallels::mutate::Mutation::from_parts(kind, a, b);
        if let Some(rules) = parallels::mutate::apply(m, &mut img) {
            let r = parallels::check(&img.as_slice(), "mutated", &Limits::default());
            for rule in rules {
                prop_assert!(r.findings.iter().any(|f| f.rule.id == rule.id), "{:?}: {} not reported: {:#?}", m, rule, r.findings);
            }
            let _ = read_all(img, None);
        }
    }
}

#[test]
fn every_mutation_kind_applies_to_some_written_image() {
    // Not vacuous: each kind changes at least one rich image.
    let mut q = qed::write::Description::new(8 * 4096, 4096, 1);
    q.clusters
        .insert(1, qed::write::Cluster::Data(vec![7; 4096]));
    q.clusters.insert(2, qed::write::Cluster::Zero);
    for kind in 0..qed::mutate::KINDS {
        let mut img = qed::write::write(&q).unwrap();
        let m = qed::mutate::Mutation::from_parts(kind, 0, 0);
        assert!(qed::mutate::apply(m, &mut img).is_some(), "{m:?}");
    }
    for ext in [false, true] {
        let mut p = parallels::write::Description::new(8 * 4096, 4096, ext);
        p.clusters.insert(1, vec![7; 4096]);
        p.clusters.insert(3, vec![8; 4096]);
        if ext {
            p.bitmap = Some(parallels::write::BitmapDesc {
                id: [1; 16],
                granularity: 8,
                dirty_bits: vec![1, 2],
            });
        }
        let written = parallels::write::write(&p).unwrap();
        for kind in 0..parallels::mutate::KINDS {
            let mut img = written.clone();
            let m = parallels::mutate::Mutation::from_parts(kind, 0, 0);
            let applies = parallels::mutate::apply(m, &mut img).is_some();
            // Extension mutations need the extension magic; sector-level ones the other.
            let expected = match m {
                parallels::mutate::Mutation::ExtMagic
                | parallels::mutate::Mutation::ExtChecksum
                | parallels::mutate::Mutation::BitmapGranularity
                | parallels::mutate::Mutation::BitmapL1PastEof
                | parallels::mutate::Mutation::BitmapSize => ext,
                parallels::mutate::Mutation::BatUnaligned { .. }
                | parallels::mutate::Mutation::NbSectorsHigh
                | parallels::mutate::Mutation::BatBelowData { .. } => !ext,
                _ => true,
            };
            assert_eq!(applies, expected, "{m:?} (ext magic {ext})");
        }
    }
}
