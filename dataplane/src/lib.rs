//! The Portcullis dataplane: the packet path of one gateway process.
//!
//! The folders follow the message path of `DESIGN.md`:
//!
//! | stage | module |
//! |---|---|
//! | IO backends (kernel sockets; AF_XDP and DPDK later) | [`io`] |
//! | decode (codecs live in `portcullis-proto`) | [`core`] |
//! | sessions, user and group indexes | [`session`] |
//! | login authentication | [`auth`] |
//! | framework commands | [`framework`] |
//! | routing and balancing | [`route`] |
//! | game-server links | [`backend`] |
//!
//! [`core::Gateway`] ties the stages together as a sans-IO state machine.

pub mod auth;
pub mod backend;
pub mod config;
pub mod core;
pub mod filter;
pub mod framework;
pub mod io;
pub mod netstack;
pub mod route;
pub mod security;
pub mod session;
pub mod shard;

pub use crate::core::{Gateway, Output, Stats};
pub use config::Config;
