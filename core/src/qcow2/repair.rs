//! Repair of leaked clusters (spec "Host cluster management"), as
//! `qemu-img check -r leaks` does it: every refcount above the number of
//! references is lowered to that number.
//!
//! Nothing here writes: [`leak_fixes`] returns the bytes to write, at
//! which file offsets, and the caller applies them to a copy. The image
//! checked is never the image written (a failed in-place repair, as
//! qemu-img does it, can lose data).

use super::check::check;
use super::header::{self, Header};
use super::refcount::{decode, OnDisk};
use crate::limits::Limits;
use crate::report::{Report, Severity};
use crate::rules::{general, qcow2 as rule};
use crate::source::ReadAt;
use std::collections::BTreeMap;

/// One leaked cluster and the refcount it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leak {
    /// The host cluster index.
    pub cluster: u64,
    /// Its refcount on disk.
    pub refcount: u64,
    /// The references the check counted: the refcount it is lowered to.
    pub references: u64,
}

/// What repairing the leaks of an image takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeakFixes {
    /// The leaks found, in cluster order.
    pub leaks: Vec<Leak>,
    /// Bytes to write at file offsets (refcount block entries), in offset
    /// order, non-overlapping.
    pub patches: Vec<(u64, Vec<u8>)>,
}

/// Finds every leak of a qcow2 image and the writes that lower each
/// refcount to its references. Refuses (an error naming the rule) an
/// image whose check could not complete, since its references are not
/// all known, and one with more leaks than twice its clusters (refcounts
/// of clusters past the end of the file; each leak costs memory).
pub fn leak_fixes(src: &dyn ReadAt, filename: &str, limits: &Limits) -> crate::Result<LeakFixes> {
    let mut h_report = Report::new(filename, "qcow2", limits);
    let Some(parsed) = header::parse(src, &mut h_report) else {
        return Err(h_report.into_error());
    };
    let h = parsed.header;
    let cap = (src.size() >> h.cluster_bits).saturating_mul(2).max(1024) as usize;
    let keep_all = Limits {
        max_findings_per_rule: cap,
        ..limits.clone()
    };
    let report = check(src, filename, &keep_all);
    if report.check_errors > 0 {
        return Err(report.into_error());
    }
    if report
        .findings_omitted()
        .contains_key(rule::REFCOUNT_LEAK.id)
    {
        return Err(crate::Error::rule(
            &general::WORK_LIMIT,
            None,
            format!(
                "{filename}: {} leaked clusters, more than the {cap} a repair keeps in memory",
                report.count(rule::REFCOUNT_LEAK.id)
            ),
        ));
    }
    let mut leaks = Vec::new();
    for f in &report.findings {
        if f.rule.id != rule::REFCOUNT_LEAK.id || f.severity != Severity::Leak {
            continue;
        }
        let cs = h.cluster_size();
        let (Some(at), Some(references)) = (f.offset(), number_after(&f.detail, "reference="))
        else {
            continue;
        };
        let refcount = number_after(&f.detail, "refcount=").unwrap_or(0);
        leaks.push(Leak {
            cluster: at / cs,
            refcount,
            references,
        });
    }
    leaks.sort_by_key(|l| l.cluster);
    let patches = patches(src, &h, &leaks)?;
    Ok(LeakFixes { leaks, patches })
}

/// The decimal number after `key` in a finding's detail: the checker
/// writes leaks as "cluster K refcount=N reference=M".
fn number_after(detail: &str, key: &str) -> Option<u64> {
    let rest = &detail[detail.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The refcount block bytes that hold the new refcounts. Sub-byte widths
/// share bytes: each byte is read once and every refcount in it applied.
fn patches(src: &dyn ReadAt, h: &Header, leaks: &[Leak]) -> crate::Result<Vec<(u64, Vec<u8>)>> {
    let ondisk = OnDisk::load(src, h)?;
    let epb = ondisk.entries_per_block();
    let order = h.refcount_order;
    let bits = 1u64 << order;
    let mut bytes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for l in leaks {
        let block = ondisk.block_offset(l.cluster / epb).map_err(|e| {
            crate::Error::rule(
                &rule::REFBLOCK_UNREADABLE,
                Some(e.block_offset),
                format!(
                    "the refcount of leaked cluster {} cannot be written",
                    l.cluster
                ),
            )
        })?;
        let index = l.cluster % epb;
        let bit = index * bits;
        let at = block + bit / 8;
        let width = bits.div_ceil(8) as usize;
        let cur = match bytes.get(&at) {
            Some(b) => b.clone(),
            None => {
                let mut b = vec![0u8; width];
                src.read_exact_at(&mut b, at)?;
                b
            }
        };
        // Re-read through the decoder: what the check saw must be what is
        // about to change.
        let within = if bits >= 8 { 0 } else { index % (8 / bits) };
        if decode(&cur, within, order) != l.refcount {
            return Err(crate::Error::rule(
                &rule::REFCOUNT_LEAK,
                Some(at),
                format!("cluster {}: refcount changed under the repair", l.cluster),
            ));
        }
        let new = if bits >= 8 {
            l.references.to_be_bytes()[8 - width..].to_vec()
        } else {
            let shift = bit % 8;
            let mask = (((1u64 << bits) - 1) << shift) as u8;
            let b = cur.first().copied().unwrap_or(0);
            vec![(b & !mask) | (((l.references << shift) as u8) & mask)]
        };
        bytes.insert(at, new);
    }
    Ok(bytes.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_details_parse_as_the_checker_writes_them() {
        let d = "cluster 7 refcount=3 reference=1 (data cluster)";
        assert_eq!(number_after(d, "refcount="), Some(3));
        assert_eq!(number_after(d, "reference="), Some(1));
        assert_eq!(number_after("cluster 7", "reference="), None);
    }

    #[test]
    fn every_refcount_width_is_lowered_and_rechecks_clean() {
        use crate::qcow2::mutate::{apply, Mutation};
        for order in 1..=6 {
            let mut d = crate::qcow2::write::Description::new(1 << 20, 16);
            d.refcount_order = order;
            d.clusters
                .insert(0, crate::qcow2::write::ClusterData::Data(vec![7; 65536]));
            let Ok(w) = crate::qcow2::write::write(&d) else {
                panic!("order {order}: the writer failed");
            };
            let mut img = w.image;
            assert!(apply(Mutation::RefcountUp { nth: 0 }, &mut img).is_some());
            let before = check(&img.as_slice(), "t", &Limits::default());
            // A raised refcount is a leak, and COPIED no longer matches it.
            assert!(
                before.has(&rule::REFCOUNT_LEAK) && before.has(&rule::L2_COPIED),
                "order {order}: {:?}",
                before.findings
            );
            let fixes = leak_fixes(&img.as_slice(), "t", &Limits::default())
                .unwrap_or_else(|e| panic!("order {order}: {e}"));
            assert_eq!(fixes.leaks.len(), 1);
            assert_eq!((fixes.leaks[0].refcount, fixes.leaks[0].references), (2, 1));
            for (at, bytes) in &fixes.patches {
                let at = *at as usize;
                img[at..at + bytes.len()].copy_from_slice(bytes);
            }
            let after = check(&img.as_slice(), "t", &Limits::default());
            assert_eq!(
                after.exit_code(false),
                0,
                "order {order}: {:?}",
                after.findings
            );
        }
    }
}
