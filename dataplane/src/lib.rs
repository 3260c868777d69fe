//! The Portcullis dataplane process: what moves players' bytes between the
//! NIC (or kernel sockets) and the sans-IO gateway core of
//! `portcullis-core`.
//!
//! | part | module |
//! |---|---|
//! | worker threads, shared state, status, signals | [`runtime`] |
//! | the agent API the control plane talks to | [`agent`] |
//! | blocks by the security chain into the XDP filter | [`nic`] |
//! | IO backends (kernel sockets, AF_XDP, DPDK), game-server link sockets, the output dispatcher | [`io`] |
//! | the userspace TCP/IP stack of the kernel-bypass backends | [`netstack`] |
//! | client transports above IO: QUIC, KCP, WebSocket | [`transport`] |
//!
//! The XDP filter's loader and rules are in `portcullis-xdp`.

pub mod agent;
pub mod io;
pub mod netstack;
pub mod nic;
pub mod runtime;
pub mod transport;

pub use runtime::{RunningGateway, WorkerStatus};
