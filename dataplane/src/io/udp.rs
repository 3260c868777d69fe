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
use crate::transport::UdpTransports;

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
    /// Bytes and datagrams of its sockets.
    pub(crate) stats: IoStats,
    /// Sockets left with datagrams to read at the end of their round.
    pub(crate) unfinished: Vec<usize>,
}

/// Makes the kernel give each QUIC datagram of a reuseport group to the
/// socket of the worker whose number starts its destination connection id
/// (see [`crate::transport::quic::worker_of`]): a client that moved to a new
/// address still reaches the worker that owns its connection. Datagrams too
/// short to say go by the kernel's hash. Classic BPF on the UDP payload.
fn steer_by_connection_id(socket: &Socket, workers: usize) -> io::Result<()> {
    use libc::{
        sock_filter, sock_fprog, BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_MOD, BPF_RET,
    };
    let op = |code: u32, k: u32| sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let mut prog = [
        op(BPF_LD | BPF_B | BPF_ABS, 0), // A = flags
        sock_filter { code: (BPF_JMP | BPF_JSET | BPF_K) as u16, jt: 0, jf: 2, k: 0x80 }, // long header?
        op(BPF_LD | BPF_B | BPF_ABS, 6), // long: first id byte
        sock_filter { code: (BPF_JMP | libc::BPF_JA) as u16, jt: 0, jf: 0, k: 1 },
        op(BPF_LD | BPF_B | BPF_ABS, 1), // short: first id byte
        op(BPF_ALU | BPF_MOD | BPF_K, workers.max(1) as u32),
        op(BPF_RET | BPF_A, 0),
    ];
    let fprog = sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const sock_fprog).cast(),
            std::mem::size_of::<sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_udp(addr: SocketAddr, quic: bool, workers: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if quic && workers > 1 {
        steer_by_connection_id(&socket, workers)?;
    }
    // Room for bursts of handshakes and retransmissions.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    Ok(UdpSocket::from_std(socket.into()))
}

impl KernelUdp {
    /// Binds the UDP listeners of `config` in `registry` for worker
    /// `worker` (`addrs`: the addresses to bind instead of the config's, as
    /// for TCP). Workers must bind in the order of their numbers.
    pub fn bind(
        config: &Config,
        addrs: Option<&[SocketAddr]>,
        registry: &Registry,
        worker: usize,
        now: Instant,
    ) -> io::Result<Self> {
        let workers = config.gateway.workers;
        let mut listeners = Vec::new();
        for (index, l) in config.listeners.iter().enumerate().filter(|(_, l)| l.transport.is_udp()) {
            let addr = addrs.map_or(l.bind, |a| a[index]);
            let quic = l.transport == portcullis_core::config::ListenerTransport::Quic;
            let mut socket = bind_udp(addr, quic, workers).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind listeners[{index}].bind = {addr} (UDP): {e}"))
            })?;
            registry.register(&mut socket, Source::Listener(index).token(), Interest::READABLE)?;
            let local = socket.local_addr()?;
            listeners.push(Listener { index, socket, local });
        }
        Ok(KernelUdp {
            listeners,
            transports: UdpTransports::new(config, worker as u8, now)?,
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
}
