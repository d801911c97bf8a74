//! vhost-user over real sockets: connections with SCM_RIGHTS ([`conn`]),
//! the probing front-end ([`probe`]), the reference back-end ([`serve`]),
//! and the offline transcript check ([`check`]).

pub mod check;
pub mod conn;
pub mod corpus;
pub mod probe;
pub mod serve;
pub mod tap;
