//! QED images (docs/interop/qed_spec.rst): header, tables, the checker
//! (each cluster referenced once, leaks, NEED_CHECK) and the reader.

pub mod check;
pub mod header;

pub use check::check;
