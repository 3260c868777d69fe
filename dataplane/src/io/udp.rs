//! The UDP listeners of the kernel backend (QUIC, KCP): one socket per
//! listener and worker (SO_REUSEPORT, so the kernel spreads players over
//! workers by address), datagrams handed to the listener's
//! [`DatagramTransport`], and what the transports send written back.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry};
use portcullis_core::config::Config;
use portcullis_core::Gateway;
use socket2::{Domain, Protocol, Socket, Type};

use super::epoll::Source;
use super::IoStats;
use crate::transport::{DatagramStats, UdpTransports};

/// Datagrams read from one socket per wake-up, so that no sender holds a
/// worker.
const READS_PER_ROUND: usize = 64;

/// Largest datagram.
const DATAGRAM: usize = 64 * 1024;

struct Listener {
    index: usize,
    socket: UdpSocket,
    local: SocketAddr,
}

/// The UDP listeners of one worker and the transports behind them.
pub struct KernelUdp {
    listeners: Vec<Listener>,
    /// The transports behind them.
    pub transports: UdpTransports,
    buf: Box<[u8]>,
    stats: IoStats,
    /// Sockets left with datagrams to read at the end of their round.
    pub(crate) unfinished: Vec<usize>,
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Room for bursts of handshakes and retransmissions.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    Ok(UdpSocket::from_std(socket.into()))
}

impl KernelUdp {
    /// Binds the UDP listeners of `config` in `registry` (`addrs`: the
    /// addresses to bind instead of the config's, as for TCP).
    pub fn bind(config: &Config, addrs: Option<&[SocketAddr]>, registry: &Registry, now: Instant) -> io::Result<Self> {
        let mut listeners = Vec::new();
        for (index, l) in config.listeners.iter().enumerate().filter(|(_, l)| l.transport.is_udp()) {
            let addr = addrs.map_or(l.bind, |a| a[index]);
            let mut socket = bind_udp(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind listeners[{index}].bind = {addr} (UDP): {e}"))
            })?;
            registry.register(&mut socket, Source::Listener(index).token(), Interest::READABLE)?;
            let local = socket.local_addr()?;
            listeners.push(Listener { index, socket, local });
        }
        Ok(KernelUdp {
            listeners,
            transports: UdpTransports::new(config, now)?,
            buf: vec![0; DATAGRAM].into_boxed_slice(),
            stats: IoStats::default(),
            unfinished: Vec::new(),
        })
    }

    /// Whether listener `index` is one of these.
    pub fn owns(&self, index: usize) -> bool {
        self.listeners.iter().any(|l| l.index == index)
    }

    /// The address listener `index` is bound to, if it is a UDP listener.
    pub fn local_addr(&self, index: usize) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.index == index).map(|l| l.local)
    }

    /// Reads the datagrams waiting on listener `index`'s socket.
    pub fn on_readable(&mut self, core: &mut Gateway, index: usize, now: Instant) {
        let Some(l) = self.listeners.iter().find(|l| l.index == index) else { return };
        for _ in 0..READS_PER_ROUND {
            match l.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    self.stats.rx_bytes += n as u64;
                    self.transports.handle_datagram(now, core, index, l.local, from, &self.buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        self.unfinished.push(index);
    }

    /// Sends what the transports have queued. A datagram the socket does
    /// not take now is dropped: both transports retransmit.
    pub fn send(&mut self, now: Instant) {
        while let Some(t) = self.transports.poll_transmit(now, &mut self.buf) {
            self.send_one(t.listener, t.to, t.len);
        }
    }

    fn send_one(&mut self, index: usize, to: SocketAddr, len: usize) {
        let Some(l) = self.listeners.iter().find(|l| l.index == index) else { return };
        match l.socket.send_to(&self.buf[..len], to) {
            Ok(n) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += n as u64;
            }
            Err(_) => self.stats.drop_tx_ring_full += 1,
        }
    }

    /// Counters of the sockets and transports.
    pub fn io_stats(&self) -> (IoStats, DatagramStats) {
        (self.stats.clone(), self.transports.stats())
    }
}
