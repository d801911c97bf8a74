//! Split virtqueue round trips (virtio 1.2 §2.7): whatever chains the
//! driver posts, a device walking the available ring sees exactly those
//! buffers, and the used entries it returns come back as the same chains;
//! whatever a hostile device writes into the used ring, a poll neither
//! panics nor accepts a chain it did not post.

use proptest::prelude::*;
use qconform_core::virtio::split_ring::{
    device, Buffer, GuestMemory, Layout, PostError, SplitRing, UsedFault, VecMemory,
};

fn buffers() -> impl Strategy<Value = Vec<Buffer>> {
    prop::collection::vec(
        (0u64..0x10_0000, 1u32..0x2000, any::<bool>()).prop_map(|(addr, len, writable)| Buffer {
            addr: 0x20_0000 + addr,
            len,
            writable,
        }),
        1..4,
    )
}

proptest! {
    #[test]
    fn posted_chains_come_back_as_posted(
        size_log in 1u32..7,
        rounds in prop::collection::vec((prop::collection::vec(buffers(), 1..6), any::<bool>(), any::<bool>()), 1..8),
    ) {
        let size = 1u32 << size_log;
        let mut mem = VecMemory::new(0, 0x40_0000);
        let layout = Layout::new(0x1000, size).unwrap();
        let mut ring = SplitRing::new(layout);
        ring.init(&mut mem, 0).unwrap();
        let (mut last_avail, mut used_idx) = (0u16, 0u16);
        for (chains, indirect, reverse) in rounds {
            let mut posted = Vec::new();
            for (i, bufs) in chains.iter().enumerate() {
                let table = 0x10_0000 + 0x1000 * i as u64;
                let head = if indirect {
                    ring.post_indirect(&mut mem, table, bufs)
                } else {
                    ring.post(&mut mem, bufs)
                };
                match head {
                    Ok(h) => posted.push((h, bufs.clone())),
                    // A full ring, or a chain longer than the ring, is the only refusal.
                    Err(PostError::Full) => {}
                    Err(PostError::TooLong) => prop_assert!(bufs.len() > size as usize),
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
            // The device side sees every chain as posted, in order.
            let avail = device::avail_index(&mem, &layout).unwrap();
            prop_assert_eq!(avail.wrapping_sub(last_avail) as usize, posted.len());
            let mut seen = Vec::new();
            while last_avail != avail {
                let head = device::avail_head(&mem, &layout, last_avail).unwrap();
                let walked = device::walk(&mem, &layout, head).unwrap();
                seen.push((head, walked));
                last_avail = last_avail.wrapping_add(1);
            }
            prop_assert_eq!(&seen, &posted);
            // It returns them (in either order) with lengths within bounds.
            if reverse {
                seen.reverse();
            }
            for (head, bufs) in &seen {
                let writable: u64 = bufs.iter().filter(|b| b.writable).map(|b| b.len as u64).sum();
                device::push_used(&mut mem, &layout, used_idx, *head as u32, writable as u32).unwrap();
                used_idx = used_idx.wrapping_add(1);
            }
            let batch = ring.poll_used(&mem).unwrap();
            prop_assert_eq!(batch.faults, vec![]);
            let got: Vec<(u16, Vec<Buffer>)> =
                batch.completed.into_iter().map(|c| (c.head, c.chain.buffers)).collect();
            prop_assert_eq!(got, seen);
            prop_assert_eq!(ring.outstanding(), 0);
        }
    }

    #[test]
    fn a_hostile_used_ring_is_judged_not_trusted(
        size_log in 0u32..6,
        posts in 0usize..8,
        idx in any::<u16>(),
        entries in prop::collection::vec((any::<u32>(), any::<u32>()), 64),
    ) {
        let size = 1u32 << size_log;
        let mut mem = VecMemory::new(0, 0x40_0000);
        let layout = Layout::new(0x1000, size).unwrap();
        let mut ring = SplitRing::new(layout);
        ring.init(&mut mem, 0).unwrap();
        let buf = Buffer { addr: 0x20_0000, len: 100, writable: true };
        let mut heads = Vec::new();
        for _ in 0..posts.min(size as usize) {
            heads.push(ring.post(&mut mem, &[buf]).unwrap());
        }
        for (k, (id, len)) in entries.iter().enumerate().take(size as usize) {
            let slot = layout.used_slot(k as u16);
            mem.write_at(slot, &id.to_le_bytes()).unwrap();
            mem.write_at(slot + 4, &len.to_le_bytes()).unwrap();
        }
        mem.write_at(layout.used + 2, &idx.to_le_bytes()).unwrap();
        let batch = ring.poll_used(&mem).unwrap();
        // At most `size` entries are read, whatever the index claims.
        let read = batch.completed.len()
            + batch.faults.iter().filter(|f| matches!(f, UsedFault::NotPosted { .. })).count();
        prop_assert!(read <= size as usize);
        prop_assert_eq!(read, (idx as usize).min(size as usize));
        for c in &batch.completed {
            prop_assert!(heads.contains(&c.head));
            let flagged = batch.faults.contains(&UsedFault::LenPastBuffer { head: c.head, len: c.len, writable: 100 });
            prop_assert_eq!(flagged, c.len > 100);
        }
        prop_assert_eq!(
            batch.faults.iter().any(|f| matches!(f, UsedFault::IndexJump { .. })),
            idx as usize > heads.len()
        );
    }
}
