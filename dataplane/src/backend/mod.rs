//! Backend links: one TCP connection from a worker to each game server,
//! multiplexing every session (`schema/link.proto`). This module holds a
//! link's state in the core; the IO backend owns the socket.

use std::net::SocketAddr;
use std::time::Instant;

/// Connection state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// A connect is under way.
    Connecting,
    /// Connected: requests may be sent.
    Up,
    /// Down; a reconnect is due at `retry_at`.
    Down {
        /// When to try again.
        retry_at: Instant,
    },
}

/// One game-server link.
#[derive(Debug)]
pub struct Link {
    /// Game-server address.
    pub addr: SocketAddr,
    /// Index of its service in the router.
    pub service: usize,
    /// Connection state.
    pub state: LinkState,
    /// Encoded frames not yet written to the socket.
    pub out: Vec<u8>,
    /// Bytes received that do not yet form a whole frame.
    pub inbuf: Vec<u8>,
    /// A `TransmitLink` output is pending.
    pub queued: bool,
}

impl Link {
    /// A link that has not been connected yet.
    pub fn new(addr: SocketAddr, service: usize, now: Instant) -> Self {
        Link {
            addr,
            service,
            state: LinkState::Down { retry_at: now },
            out: Vec::new(),
            inbuf: Vec::new(),
            queued: false,
        }
    }

    /// Whether a new request may be queued on it.
    pub fn accepts(&self, max_outbound: usize) -> bool {
        self.state == LinkState::Up && self.out.len() < max_outbound
    }
}

/// Largest frame accepted from a game server.
pub const MAX_LINK_FRAME: usize = 16 << 20;
