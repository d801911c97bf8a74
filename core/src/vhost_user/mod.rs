//! vhost-user (docs/interop/vhost-user.rst): the message codec and the rule
//! engine that judges a conversation.
//!
//! [`wire`] is the 12-byte header, [`features`] the feature bits,
//! [`request`] the table of every front-end and back-end request,
//! [`payload`] the typed payloads with their exact sizes, [`session`] the
//! rule engine, and [`transcript`] the JSON Lines recording format. No
//! sockets here: the CLI feeds bytes and fd counts in.

#[cfg(feature = "arbitrary")]
pub mod arbitrary;
pub mod features;
pub mod payload;
pub mod request;
pub mod session;
pub mod transcript;
pub mod wire;

pub use session::{Direction, Message, Session};
pub use wire::Header;
