//! virtio (OASIS virtio 1.2) as a driver sees it: split virtqueues laid out
//! in guest memory ([`split_ring`]) and virtio-blk requests ([`blk`]). Pure
//! code over a [`split_ring::GuestMemory`]: the vhost-user probe backs it
//! with the memfd it shares with the back-end, tests with a byte vector.
//!
//! The virtio text is not in the repository; comments cite virtio 1.2
//! section numbers and quote only the sentence relied on.

pub mod blk;
pub mod split_ring;
