#![warn(missing_docs)]
//! qconform-core: reference parsers and checkers for QEMU disk image formats.
//!
//! Everything here works over a [`source::ReadAt`] byte source and never writes
//! to it. Every check a checker performs is a [`rules::Rule`] of the one
//! registry; its results are [`report::Finding`]s collected in a
//! [`report::Report`]. Hostile input is the normal case: every table is bounded
//! by the length of the source (never by a size a header claims) and by the
//! explicit caps of [`limits::Limits`].

pub mod detect;
pub mod disk;
pub mod error;
pub mod field;
pub mod formats;
mod hash;
pub mod limits;
pub mod parallels;
pub mod qcow2;
pub mod qed;
pub mod repair;
pub mod report;
pub mod rng;
pub mod rules;
pub mod source;
#[cfg(feature = "arbitrary")]
pub mod structured;
pub mod upload;
pub mod vhost_user;
pub mod virtio;

pub use error::{Error, Result};
pub use limits::Limits;
pub use report::{Finding, ImageStats, Location, Report, Severity};
pub use source::ReadAt;
