//! The sans-IO Portcullis gateway: everything between a client's bytes and
//! a game server's link, with no socket, no clock and no unsafe code.
//!
//! The modules follow the message path of `DESIGN.md`:
//!
//! | stage | module |
//! |---|---|
//! | decode (codecs live in `portcullis-proto`), connections, output | [`gateway`] |
//! | the check stage: every frame's verdict before it is handled | [`security`] |
//! | sessions, user and group indexes | [`session`] |
//! | login authentication | [`auth`] |
//! | framework commands | [`framework`] |
//! | routing and balancing | [`route`] |
//! | game-server links | [`backend`] |
//! | what the workers share (user index, cross-worker rings) | [`shard`] |
//! | operator commands and the event log (for the agent API) | [`admin`] |
//!
//! [`Gateway`] ties the stages together as a state machine: IO backends
//! (the `portcullis-dataplane` crate) feed it with `handle_*(now, …)` and
//! carry out what [`Gateway::poll_output`] returns.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub use portcullis_common::cidr;
pub mod config;
pub mod conn;
pub mod framework;
pub mod gateway;
pub mod log;
pub mod route;
pub mod security;
pub mod session;
pub mod shard;
pub mod stats;

pub use config::Config;
pub use conn::{ConnId, Transport};
pub use gateway::{Gateway, Output};
pub use stats::Stats;
