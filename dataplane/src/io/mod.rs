//! IO backends: what moves bytes between sockets (or NIC rings) and the
//! sans-IO [`Gateway`] core.
//!
//! Every backend implements [`IoBackend`]; the runtime's worker loop
//! ([`crate::runtime::run_worker`]) drives any of them. Backends: [`kernel`]
//! (ordinary sockets through epoll, for laptops, CI without root and as the
//! baseline), and the kernel-bypass ones over [`bypass`]: AF_XDP (feature
//! `afxdp`) and DPDK (feature `dpdk`).
//!
//! What they share: one [`epoll`] instance per worker, the game-server
//! [`links`] on kernel sockets, and the output [`dispatch`]er that sends each
//! of the core's outputs to the transport owning its connection.

#[cfg(feature = "afxdp")]
pub mod afxdp;
#[cfg(any(feature = "afxdp", feature = "dpdk"))]
pub mod bypass;
pub mod dispatch;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod epoll;
pub mod fds;
pub mod kernel;
pub mod links;
pub mod udp;

use std::io::{self, Write};
use std::time::Duration;

use portcullis_core::Gateway;

portcullis_core::counters! {
    /// Counters of one worker's IO backend, read about every 100 ms with
    /// the worker's status. Frame and ring counters are those of the
    /// kernel-bypass backends; the kernel backend counts bytes only.
    IoStats {
    /// Frames received from the NIC rings.
    rx_frames,
    /// Bytes received from players (frames, or TCP payload on kernel sockets).
    rx_bytes,
    /// Frames sent.
    tx_frames,
    /// Bytes sent to players.
    tx_bytes,
    /// Worker loop rounds.
    polls,
    /// Rounds that moved no frame (busy polling with nothing to do).
    idle_polls,
    /// Times the worker slept after a run of idle rounds.
    idle_sleeps,
    /// System calls that kicked the kernel to transmit.
    tx_kicks,
    /// Times the transmit ring took fewer frames than were ready.
    tx_ring_full,
    /// Times every transmit frame was in flight (frames waited in the stack).
    tx_frames_exhausted,
    /// Dropped: frames larger than a transmit buffer (UMEM frame, mbuf).
    drop_tx_oversize,
    /// Dropped: frames the driver would not take for a while (DPDK).
    drop_tx_ring_full,
    /// Dropped: frames with no free transmit buffer (DPDK mbufs).
    drop_tx_no_buffer,
    /// Kernel: received frames dropped (socket counter `rx_dropped`).
    kernel_rx_dropped,
    /// Kernel: frames dropped because the receive ring was full.
    kernel_rx_ring_full,
    /// Kernel: times the fill ring was empty when a frame arrived.
    kernel_fill_ring_empty,
    /// Kernel: invalid descriptors on the receive or transmit ring.
    kernel_invalid_descs,
    /// Outputs about a connection of a transport this worker does not run
    /// (a bug if ever non-zero; the connection is closed in the core).
    drop_unowned_output,
    /// Kernel backend: clients closed at once because they would have used
    /// a descriptor of `limits.fd_reserve`.
    refused_fd_reserve,
    /// Userspace stack: SYN-ACKs sent with a cookie (a port's backlog was full).
    syn_cookies_sent,
    /// Userspace stack: connections that came in through a cookie.
    syn_cookies_accepted,
    /// Userspace stack: SYNs refused because `max_connections` was reached.
    drop_syn_max_connections,
    /// Userspace stack: packets with no known next hop.
    drop_no_next_hop,
    /// Userspace stack: frames of flows another worker owns, handed to it
    /// (the flow moved to another queue).
    frames_forwarded,
    /// Userspace stack: such frames dropped, the owner's inbox full.
    drop_forward_full,
    /// Userspace stack: TCP connections open (a gauge).
    stack_connections,
    /// Userspace stack: shards of TCP sockets (a gauge).
    stack_shards,
    /// Userspace stack: sockets whose buffers hold memory (a gauge; idle
    /// ones give it back).
    stack_buffers_backed,
    /// QUIC and KCP: datagrams handed to the transports.
    udp_rx_datagrams,
    /// QUIC and KCP: datagrams the transports sent.
    udp_tx_datagrams,
    /// QUIC and KCP: connections open (a gauge; handshakes included).
    udp_connections,
    /// QUIC and KCP: handshake packets answered without keeping any state
    /// (QUIC Retry or refusal, KCP cookie).
    udp_stateless_replies,
    /// QUIC and KCP: datagrams dropped (malformed, unknown connection, bad
    /// cookie).
    udp_dropped,
    /// WebSocket: upgrades accepted (101).
    ws_upgrades,
    /// WebSocket: upgrade requests refused with an HTTP error (400, 403,
    /// 426, 431); the connection is closed.
    ws_refused_upgrades,
    /// WebSocket: connections closed for a protocol violation (status 1002
    /// or 1007).
    ws_protocol_errors,
    /// WebSocket: messages over the frame limit (status 1009).
    ws_too_big,
    /// WebSocket: `wss` connections closed because their TLS failed.
    ws_tls_errors,
}
}

/// An IO backend for one worker.
pub trait IoBackend {
    /// Waits up to `timeout` for IO and feeds everything that arrived to the
    /// core through its `handle_*` methods.
    fn poll(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()>;

    /// Carries out every output the core has queued
    /// ([`Gateway::poll_output`]) until none is left.
    fn flush(&mut self, core: &mut Gateway) -> io::Result<()>;

    /// Stops accepting new connections (shutdown).
    fn stop_accepting(&mut self);

    /// Whether everything the core handed over has left: a worker that
    /// shuts down waits for it (up to its deadline).
    fn flushed(&mut self) -> bool {
        true
    }

    /// Its counters so far (called with each status report, not per frame).
    fn io_stats(&mut self) -> IoStats;
}

/// Writes as much of `data` as the socket takes without blocking;
/// `Err` if it failed.
pub(crate) fn write_some(stream: &mut impl Write, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
