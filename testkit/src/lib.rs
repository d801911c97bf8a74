//! Test support shared by the integration tests of qconform-core and
//! qconform: generated writer descriptions ([`descriptions`]), a resolver
//! serving one in-memory file ([`mem`]), and `qconform cat`/`map` against
//! `qemu-img convert`/`map` ([`qemu_read`]), running qemu-img, qemu-io and
//! qconform with a hang guard ([`tools`]). One crate instead of files
//! included by path, so each helper is compiled once and used as a library.

pub mod descriptions;
pub mod mem;
pub mod qemu_read;
pub mod tools;
