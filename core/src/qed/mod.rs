//! QED images (docs/interop/qed_spec.rst): header, tables, the checker
//! (each cluster referenced once, leaks, NEED_CHECK) and the reader.

pub mod check;
pub mod header;
pub mod info;
pub mod mutate;
pub mod read;
pub mod repair;
pub mod write;

pub use check::check;
