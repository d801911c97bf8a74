//! The common case of an L2 table (spec "Cluster mapping"), scanned in a
//! few instructions per entry and on every core: a table reached once from
//! the active L1 table whose entries are all unallocated or healthy
//! standard clusters (aligned, inside the disk and the file, no reserved
//! bits, COPIED as the on-disk refcount says). The scan only reads the table
//! and the refcount-is-one bits, so tables are independent work; what it
//! returns is merged into the census in table order, which keeps every
//! count and finding as the entry-by-entry visit makes them. Any other
//! table (one entry that is compressed, misaligned, reserved, shared, past
//! the disk, or whose COPIED flag disagrees) gets `None` and is visited
//! entry by entry, with every rule.

use super::mapping::{L2E_OFFSET_MASK, L2E_STD_RESERVED_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};

/// What one healthy table adds to the check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Healthy {
    /// Allocated clusters (the `allocated-clusters` statistic).
    pub allocated: u64,
    /// Clusters not following their predecessor in the file (`fragmented-clusters`).
    pub fragmented: u64,
    /// The referenced host clusters as runs (first cluster index, length),
    /// in entry order.
    pub runs: Vec<(u64, u64)>,
}

/// The read-only state the scan consults: the image geometry and one bit
/// per refcount == 1 of the refcount blocks covering the file.
#[derive(Clone, Copy)]
pub struct Scanner<'a> {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size: entries mapping at or past it are not healthy.
    pub disk_size: u64,
    /// Host clusters the census counts on its fast path (inside the file).
    pub cluster_limit: u64,
    /// log2 of the refcounts per refcount block.
    pub epb_shift: u32,
    /// Per refcount block: where its bits start in `ones_words`, or one
    /// of the two markers below.
    pub ones_at: &'a [u32],
    /// The refcount-is-one bits.
    pub ones_words: &'a [u64],
    /// `ones_at` value of a block that holds no refcount of 1.
    pub ones_none: u32,
    /// `ones_at` value of a block QEMU cannot read (no COPIED check).
    pub ones_unreadable: u32,
}

impl Scanner<'_> {
    /// Scans `table` (the part of one L2 table inside the file, standard
    /// 8-byte entries) whose first entry maps guest offset `guest_base`.
    ///
    /// The common case costs two compares per entry: an entry equal to
    /// its predecessor plus one cluster (same flags, next host cluster)
    /// extends the current segment; each segment is then judged whole
    /// (inside the file, COPIED against the refcount bits a word at a time).
    pub fn scan(&self, table: &[u8], guest_base: u64) -> Option<Healthy> {
        let cb = self.cluster_bits;
        let cs = 1u64 << cb;
        // Entries at index >= `inside` map past the virtual disk: they must
        // all be zero.
        let inside = if guest_base >= self.disk_size {
            0
        } else {
            (self.disk_size - guest_base).div_ceil(cs)
        };
        let head_len = (table.len() as u64).min(inside.saturating_mul(8)) as usize;
        let (head, tail) = table.split_at(head_len);
        if !crate::field::is_zero(tail) {
            return None;
        }
        // Compressed, reserved, or an offset that is not cluster aligned.
        let bad = OFLAG_COMPRESSED | L2E_STD_RESERVED_MASK | (L2E_OFFSET_MASK & (cs - 1));
        let mut out = Healthy::default();
        let mut seg = Segment::default();
        // The entry that would continue the current segment (0: none).
        let mut expect = 0u64;
        for raw in head.chunks_exact(8) {
            let entry = u64::from_be_bytes(raw.try_into().ok()?);
            if entry == expect {
                seg.len += 1;
                expect = expect.wrapping_add(cs);
                continue;
            }
            if entry == 0 {
                continue;
            }
            let offset = entry & L2E_OFFSET_MASK;
            if entry & bad != 0 || offset == 0 {
                return None;
            }
            self.close(&mut out, &seg)?;
            seg = Segment {
                first: offset >> cb,
                len: 1,
                copied: entry & OFLAG_COPIED != 0,
            };
            expect = entry.wrapping_add(cs);
        }
        self.close(&mut out, &seg)?;
        Some(out)
    }

    /// Judges a finished segment and adds it to `out`: None when one of
    /// its clusters lies past the census's fast path or has a COPIED flag
    /// the refcount contradicts.
    fn close(&self, out: &mut Healthy, seg: &Segment) -> Option<()> {
        if seg.len == 0 {
            return Some(());
        }
        let end = seg.first.checked_add(seg.len)?;
        if end > self.cluster_limit {
            return None;
        }
        self.copied_agrees(seg.first, end, seg.copied)?;
        out.allocated += seg.len;
        match out.runs.last_mut() {
            // Contiguous in the file: one run (flags may differ).
            Some(run) if run.0 + run.1 == seg.first => run.1 += seg.len,
            last => {
                if last.is_some() {
                    out.fragmented += 1;
                }
                out.runs.push((seg.first, seg.len));
            }
        }
        Some(())
    }

    /// Whether every cluster of `first..end` has COPIED == (refcount is 1),
    /// where that can be told (a block QEMU cannot read is not judged, as in
    /// the entry-by-entry visit); None when not, or past the blocks loaded.
    fn copied_agrees(&self, first: u64, end: u64, copied: bool) -> Option<()> {
        let mask = (1u64 << self.epb_shift) - 1;
        let mut k = first;
        while k < end {
            let t = k >> self.epb_shift;
            let block_end = ((t + 1) << self.epb_shift).min(end);
            match self.ones_at.get(t as usize).copied()? {
                at if at == self.ones_unreadable => {}
                at if at == self.ones_none => {
                    if copied {
                        return None;
                    }
                }
                at => {
                    let (mut b, b_end) = (k & mask, (k & mask) + (block_end - k));
                    while b < b_end {
                        let word = *self.ones_words.get(at as usize + (b / 64) as usize)?;
                        let lo = b % 64;
                        let n = (64 - lo).min(b_end - b);
                        let m = if n == 64 {
                            u64::MAX
                        } else {
                            ((1u64 << n) - 1) << lo
                        };
                        let agrees = if copied { word & m == m } else { word & m == 0 };
                        if !agrees {
                            return None;
                        }
                        b += n;
                    }
                }
            }
            k = block_end;
        }
        Some(())
    }
}

/// Consecutive entries with the same flags naming consecutive host clusters.
#[derive(Default)]
struct Segment {
    first: u64,
    len: u64,
    copied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[u64]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.to_be_bytes()).collect()
    }

    /// 64 KiB clusters, 1 GiB disk, 16 clusters per refcount block, every
    /// refcount of block 0 and 1 equal to 1.
    fn scanner<'a>(ones_at: &'a [u32], words: &'a [u64]) -> Scanner<'a> {
        Scanner {
            cluster_bits: 16,
            disk_size: 1 << 30,
            cluster_limit: 32,
            epb_shift: 4,
            ones_at,
            ones_words: words,
            ones_none: u32::MAX - 1,
            ones_unreadable: u32::MAX,
        }
    }

    #[test]
    fn runs_and_fragmentation_follow_the_host_offsets() {
        let words = [0xffff, 0xffff];
        let s = scanner(&[0, 1], &words);
        let c = |k: u64| OFLAG_COPIED | k << 16;
        let t = table(&[c(3), c(4), 0, c(5), c(9), c(2), c(3)]);
        let h = s.scan(&t, 0).expect("healthy");
        assert_eq!(h.allocated, 6);
        // 3,4,5 are contiguous (a zero entry between does not break it); 9 and 2 are not.
        assert_eq!(h.fragmented, 2);
        assert_eq!(h.runs, vec![(3, 3), (9, 1), (2, 2)]);
    }

    #[test]
    fn copied_is_judged_across_words_and_blocks() {
        // Two blocks of 16 clusters: refcount 1 everywhere but cluster 21.
        let words = [0xffff, 0xffff & !(1 << 5)];
        let s = scanner(&[0, 1], &words);
        let run = |from: u64, n: u64| -> Vec<u64> {
            (from..from + n).map(|k| OFLAG_COPIED | k << 16).collect()
        };
        assert!(s.scan(&table(&run(2, 19)), 0).is_some());
        assert_eq!(s.scan(&table(&run(2, 20)), 0), None);
        let mut t = run(2, 19);
        t.extend((21..22).map(|k| k << 16));
        t.extend(run(22, 10));
        let h = s.scan(&table(&t), 0).expect("healthy");
        // One run: the COPIED change does not break contiguity.
        assert_eq!((h.allocated, h.fragmented, h.runs), (30, 0, vec![(2, 30)]));
        // Entries past the disk must be zero, even after healthy ones.
        let s2 = Scanner {
            disk_size: 2 << 16,
            ..s
        };
        assert!(s2
            .scan(
                &table(&[OFLAG_COPIED | 3 << 16, OFLAG_COPIED | 4 << 16, 0]),
                0
            )
            .is_some());
        assert_eq!(s2.scan(&table(&run(3, 3)), 0), None);
    }

    #[test]
    fn anything_but_a_healthy_standard_cluster_goes_to_the_full_visit() {
        let words = [0xffff, 0xfffe];
        let s = scanner(&[0, 1], &words);
        let c = |k: u64| OFLAG_COPIED | k << 16;
        // COPIED set on a cluster whose refcount is not 1 (cluster 16).
        assert_eq!(s.scan(&table(&[c(16)]), 0), None);
        // COPIED clear where the refcount is 1.
        assert_eq!(s.scan(&table(&[3 << 16]), 0), None);
        // Compressed, reserved bits, misaligned, past the file.
        assert_eq!(s.scan(&table(&[OFLAG_COMPRESSED | 0x1_0000]), 0), None);
        assert_eq!(s.scan(&table(&[c(3) | 2]), 0), None);
        assert_eq!(s.scan(&table(&[OFLAG_COPIED | 0x1_0200]), 0), None);
        assert_eq!(s.scan(&table(&[c(40)]), 0), None);
        // Mapping past the virtual disk.
        assert_eq!(s.scan(&table(&[c(3)]), 1 << 30), None);
        // An unreadable block has no COPIED check; an absent one has no 1s.
        let s = scanner(&[u32::MAX, u32::MAX - 1], &words);
        assert!(s.scan(&table(&[c(3), 4 << 16]), 0).is_some());
        assert_eq!(s.scan(&table(&[c(17)]), 0), None);
        assert!(s.scan(&table(&[17 << 16]), 0).is_some());
    }
}
