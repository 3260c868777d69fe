//! The kernel-socket IO backend: players' TCP through the Linux stack,
//! multiplexed with epoll (mio), one event loop per worker.
//!
//! [`KernelTcp`] is the transport (listeners, client sockets, the UDP echo
//! socket); [`KernelIo`] is the backend: that transport and the game-server
//! [`LinkSockets`] on one [`Epoll`], outputs through the [`Dispatcher`].
//!
//! Connections of a `transport = "websocket"` listener pass through a
//! [`WebSocket`] adapter both ways: what is read goes to the adapter and
//! the envelopes it gives back to the core; the core's output goes out as
//! the adapter's messages (the core is told how many of its bytes were
//! taken, not how many were written); a close sends a close frame first.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Waker};
use portcullis_core::config::Config;
use portcullis_core::{ConnId, Gateway, Transport};
use socket2::{Domain, Protocol, Socket, Type};

use super::dispatch::{ClientTransport, Dispatcher};
use super::epoll::{Epoll, Ready, Source};
use super::fds::FdBudget;
use super::links::LinkSockets;
use super::udp::KernelUdp;
use super::{write_some, IoBackend, IoStats};
use crate::transport::websocket::{self, WebSocket, WsSettings};

const READ_CHUNK: usize = 64 * 1024;

/// Reads of one client per wake-up: a connection that has more is read
/// again in the next round, after the others, so that no sender can hold a
/// worker (readiness is edge-triggered: it is remembered, not re-reported).
const READS_PER_ROUND: usize = 4;

/// Connections accepted per listener per wake-up, likewise.
const ACCEPTS_PER_ROUND: usize = 64;

/// How long a WebSocket connection the core closed before its handshake
/// (a refusal) waits for the request, so that the refusal reaches the
/// client as a message.
const REFUSED_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

struct Client {
    id: ConnId,
    stream: TcpStream,
    /// In the worker's epoll (not for connections the core refused at once).
    registered: bool,
    /// The WebSocket adapter of a connection of a WebSocket listener.
    ws: Option<Box<WebSocket>>,
}

/// A listening socket with SO_REUSEPORT, so that every worker has its own
/// accept queue on the same port and the kernel spreads connections.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Players' TCP on kernel sockets, for one worker: the [`Transport::KernelTcp`]
/// connections.
pub struct KernelTcp {
    registry: Registry,
    fds: Arc<FdBudget>,
    /// By listener index; `None` for the UDP listeners.
    listeners: Vec<Option<TcpListener>>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    generation: u32,
    udp_echo: Option<UdpSocket>,
    buf: Box<[u8]>,
    stats: IoStats,
    /// The WebSocket settings of each listener (`None`: plain TCP).
    websocket: Vec<Option<WsSettings>>,
    /// WebSocket connections closed by the core before their handshake,
    /// oldest first, with when they are given up.
    lingering: std::collections::VecDeque<(Instant, ConnId)>,
    /// Clients and listeners left with more to read or accept at the end
    /// of their round.
    unfinished: Vec<Source>,
}

impl KernelTcp {
    /// Binds the listeners of the config (and the UDP echo socket) in
    /// `registry`. `addrs` are the addresses to bind instead of the
    /// config's (the first worker's actual ports when the config asks for
    /// port 0). Client sockets count against `fds`, which the process's
    /// workers share.
    pub fn bind(
        config: &Config,
        addrs: Option<&[SocketAddr]>,
        registry: Registry,
        fds: Arc<FdBudget>,
    ) -> io::Result<KernelTcp> {
        let mut tcp = KernelTcp {
            registry,
            fds,
            listeners: Vec::new(),
            clients: Vec::new(),
            free: Vec::new(),
            generation: 0,
            udp_echo: None,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            stats: IoStats::default(),
            unfinished: Vec::new(),
            websocket: WsSettings::for_listeners(config)?,
            lingering: Default::default(),
        };
        for (i, l) in config.listeners.iter().enumerate() {
            if l.transport.is_udp() {
                tcp.listeners.push(None);
                continue;
            }
            let addr = addrs.map_or(l.bind, |a| a[i]);
            let mut listener = listen(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind listeners[{i}].bind = {addr}: {e}")))?;
            tcp.registry.register(&mut listener, Source::Listener(i).token(), Interest::READABLE)?;
            tcp.listeners.push(Some(listener));
        }
        if let Some(addr) = config.gateway.udp_echo {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket
                .bind(&addr.into())
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind gateway.udp_echo = {addr}: {e}")))?;
            let mut udp = UdpSocket::from_std(socket.into());
            tcp.registry.register(&mut udp, Source::UdpEcho.token(), Interest::READABLE)?;
            tcp.udp_echo = Some(udp);
        }
        Ok(tcp)
    }

    fn slot(id: ConnId) -> usize {
        (id.local() & 0xffff_ffff) as usize
    }

    fn client(&mut self, id: ConnId) -> Option<&mut Client> {
        self.clients.get_mut(Self::slot(id))?.as_mut().filter(|c| c.id == id)
    }

    fn accept(&mut self, core: &mut Gateway, listener: usize, now: Instant) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let Some(Some(l)) = self.listeners.get(listener) else { return };
            match l.accept() {
                Ok((stream, peer)) => {
                    if !self.fds.take() {
                        // Closed at once (dropped): the reserve stays free.
                        self.stats.refused_fd_reserve += 1;
                        portcullis_core::warn_limited!(
                            "refused a client from {peer}: {} client connections hold every descriptor outside limits.fd_reserve",
                            self.fds.open()
                        );
                        continue;
                    }
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.clients.push(None);
                        self.clients.len() - 1
                    });
                    self.generation = self.generation.wrapping_add(1);
                    let id = ConnId::new(Transport::KernelTcp, (u64::from(self.generation) << 32) | slot as u64);
                    let ws = self.websocket.get(listener).cloned().flatten().map(|s| Box::new(WebSocket::new(s)));
                    // The core knows the connection from now (its login
                    // deadline bounds a handshake that never ends); its
                    // output waits for the handshake.
                    self.clients[slot] = Some(Client { id, stream, registered: false, ws });
                    core.handle_connect(now, id, listener, peer);
                    let websocket = self.clients[slot].as_ref().is_some_and(|c| c.ws.is_some());
                    if !core.takes_input(id) && !websocket {
                        // Refused (a connection limit): its ERROR and close
                        // are queued; a flood of them costs no epoll calls.
                        continue;
                    }
                    let c = self.clients[slot].as_mut().expect("just stored");
                    let _ = c.stream.set_nodelay(true);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    match self.registry.register(&mut c.stream, Source::Client(slot).token(), interest) {
                        Ok(()) => c.registered = true,
                        Err(_) => {
                            self.drop_client(slot);
                            core.handle_disconnect(now, id);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or similar: try again on the next event.
                    portcullis_core::warn_limited!("accept on listener {listener} failed: {e}");
                    return;
                }
            }
        }
        self.unfinished.push(Source::Listener(listener));
    }

    fn drop_client(&mut self, slot: usize) -> Option<Client> {
        let mut c = self.clients.get_mut(slot)?.take()?;
        if c.registered {
            let _ = self.registry.deregister(&mut c.stream);
        }
        self.free.push(slot);
        self.fds.give_back();
        Some(c)
    }

    /// Handles readiness of a client socket.
    fn on_client(&mut self, core: &mut Gateway, slot: usize, readable: bool, writable: bool, now: Instant) {
        let Some(id) = self.clients.get(slot).and_then(|c| c.as_ref()).map(|c| c.id) else { return };
        if writable {
            if self.clients[slot].as_ref().is_some_and(|c| c.ws.is_some()) {
                // The adapter may hold bytes the core no longer has.
                self.transmit(core, id);
            }
            core.handle_writable(id);
        }
        if readable {
            self.read_client(core, slot, now);
        }
    }

    fn read_client(&mut self, core: &mut Gateway, slot: usize, now: Instant) {
        let mut reads = 0;
        loop {
            let Some(c) = self.clients[slot].as_mut() else { return };
            let id = c.id;
            let lingering = c.ws.as_ref().is_some_and(|w| w.awaits_handshake());
            if !core.takes_input(id) && !lingering {
                // Closed by the core: what the client still sends is not
                // read (the socket closes at the next flush).
                return;
            }
            if reads == READS_PER_ROUND {
                self.unfinished.push(Source::Client(slot));
                return;
            }
            reads += 1;
            match c.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.stats.rx_bytes += n as u64;
                    let Some(ws) = c.ws.as_deref_mut() else {
                        core.handle_data(now, id, &self.buf[..n]);
                        continue;
                    };
                    let progress = websocket::into_core(ws, now, core, id, &self.buf[..n], &mut self.stats);
                    if progress.finished && lingering {
                        // The refusal goes out as messages; the core has
                        // forgotten the connection already.
                        let _ = write_some(&mut c.stream, ws.pending());
                        let _ = c.stream.shutdown(Shutdown::Both);
                        self.drop_client(slot);
                        return;
                    }
                    if progress.finished {
                        if core.takes_input(id) {
                            // The peer closed or broke the protocol: the close
                            // frame (or HTTP answer) goes out, then the TCP close.
                            self.close(now, core, id);
                        }
                        // Else the core closes it, after its explanation.
                        return;
                    }
                    // The 101 and pongs.
                    if !ws.pending().is_empty() {
                        match write_some(&mut c.stream, ws.pending()) {
                            Ok(n) => {
                                self.stats.tx_bytes += n as u64;
                                ws.sent(n);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if let Some(c) = self.drop_client(slot) {
            core.handle_disconnect(now, c.id);
        }
    }

    /// Sends every waiting datagram back to its sender.
    fn echo_udp(&mut self) {
        let Some(udp) = &self.udp_echo else { return };
        loop {
            match udp.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let _ = udp.send_to(&self.buf[..n], from);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Closes the lingering WebSocket connections whose request did not
    /// come in time; when the next one is due.
    fn expire_lingering(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(deadline, conn)) = self.lingering.front() {
            if deadline > now {
                return Some(deadline);
            }
            self.lingering.pop_front();
            if let Some(c) = self.client(conn) {
                let _ = c.stream.shutdown(Shutdown::Both);
                self.drop_client(Self::slot(conn));
            }
        }
        None
    }

    fn stop_accepting(&mut self) {
        for mut l in self.listeners.drain(..).flatten() {
            let _ = self.registry.deregister(&mut l);
        }
    }
}

impl ClientTransport for KernelTcp {
    fn transmit(&mut self, core: &mut Gateway, conn: ConnId) {
        let slot = Self::slot(conn);
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut).filter(|c| c.id == conn) else { return };
        if let Some(ws) = c.ws.as_deref_mut() {
            let (stream, stats) = (&mut c.stream, &mut self.stats);
            let written = websocket::transmit(ws, core, conn, |b| {
                let n = write_some(stream, b)?;
                stats.tx_bytes += n as u64;
                Ok(n)
            });
            // Still holding bytes: the socket reports writable later.
            if written.is_err() {
                self.drop_client(Self::slot(conn));
                core.handle_disconnect(Instant::now(), conn);
            }
            return;
        }
        match write_some(&mut c.stream, core.outbound(conn)) {
            Ok(n) => {
                self.stats.tx_bytes += n as u64;
                core.consume(conn, n);
            }
            Err(_) => {
                self.drop_client(Self::slot(conn));
                core.handle_disconnect(Instant::now(), conn);
            }
        }
    }

    fn close(&mut self, now: Instant, core: &mut Gateway, conn: ConnId) {
        if let Some(c) = self.client(conn) {
            match c.ws.as_deref_mut() {
                Some(ws) => {
                    // The core's last output, then the close frame.
                    ws.shutdown(core.outbound(conn));
                    if ws.awaits_handshake() {
                        // Held until the request comes (bounded wait).
                        self.lingering.push_back((now + REFUSED_HANDSHAKE_WAIT, conn));
                        core.handle_disconnect(now, conn);
                        return;
                    }
                    let _ = write_some(&mut c.stream, ws.pending());
                }
                None => {
                    let _ = write_some(&mut c.stream, core.outbound(conn));
                }
            }
            let _ = c.stream.shutdown(Shutdown::Both);
            self.drop_client(Self::slot(conn));
        }
        core.handle_disconnect(now, conn);
    }
}

/// The kernel-socket backend of one worker.
pub struct KernelIo {
    epoll: Epoll,
    tcp: KernelTcp,
    udp: KernelUdp,
    links: LinkSockets,
    /// Events of the last wait, reused.
    ready: Vec<Ready>,
    stats: IoStats,
}

impl KernelIo {
    /// Binds the listeners of the config for one worker (see
    /// [`KernelTcp::bind`] for `addrs` and `fds`).
    /// `worker` is the worker's number: workers bind in the order of their
    /// numbers.
    pub fn bind(
        config: &Config,
        addrs: Option<&[SocketAddr]>,
        fds: Arc<FdBudget>,
        worker: usize,
    ) -> io::Result<KernelIo> {
        let epoll = Epoll::new()?;
        let tcp = KernelTcp::bind(config, addrs, epoll.registry()?, fds)?;
        let udp = KernelUdp::bind(config, addrs, &epoll.registry()?, worker, Instant::now())?;
        let links = LinkSockets::new(config, epoll.registry()?);
        Ok(KernelIo { epoll, tcp, udp, links, ready: Vec::new(), stats: IoStats::default() })
    }

    /// Addresses the listeners are bound to, by listener index (useful
    /// with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let tcp = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        (0..self.tcp.listeners.len())
            .filter_map(|i| tcp(&self.tcp.listeners[i]).or_else(|| self.udp.local_addr(i)))
            .collect()
    }

    /// Wakes this worker from its IO wait (from another thread).
    pub fn waker(&self) -> Arc<Waker> {
        self.epoll.waker()
    }
}

impl IoBackend for KernelIo {
    fn poll(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()> {
        // Sockets left with more to read or accept go on without waiting,
        // after what became ready meanwhile.
        let unfinished = std::mem::take(&mut self.tcp.unfinished);
        let udp_unfinished = std::mem::take(&mut self.udp.unfinished);
        let timeout = if unfinished.is_empty() && udp_unfinished.is_empty() { timeout } else { Some(Duration::ZERO) };
        let timeout = match self.tcp.expire_lingering(Instant::now()) {
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                Some(timeout.map_or(wait, |t| t.min(wait)))
            }
            None => timeout,
        };
        // The transports' timers (retransmissions) cut the wait short.
        let timeout = match (timeout, self.udp.transports.poll_timeout()) {
            (Some(t), Some(at)) => Some(t.min(at.saturating_duration_since(Instant::now()))),
            (None, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
            (t, None) => t,
        };
        self.epoll.wait(timeout, &mut self.ready)?;
        let now = Instant::now();
        for r in &self.ready {
            match r.source {
                Source::Wake => {}
                Source::UdpEcho => self.tcp.echo_udp(),
                Source::Listener(i) if self.udp.owns(i) => self.udp.on_readable(core, i, now),
                Source::Listener(i) => self.tcp.accept(core, i, now),
                Source::Link(link) => self.links.on_event(core, link, r.readable, r.writable, now),
                Source::Client(slot) => self.tcp.on_client(core, slot, r.readable, r.writable, now),
            }
        }
        for &source in &unfinished {
            match source {
                Source::Listener(i) => self.tcp.accept(core, i, now),
                Source::Client(slot) => self.tcp.read_client(core, slot, now),
                _ => {}
            }
        }
        for i in udp_unfinished {
            self.udp.on_readable(core, i, now);
        }
        self.udp.transports.handle_timeout(Instant::now(), core);
        Ok(())
    }

    fn flush(&mut self, core: &mut Gateway) -> io::Result<()> {
        let mut dispatch =
            self.udp.transports.own(Dispatcher::new(&mut self.links).with(Transport::KernelTcp, &mut self.tcp));
        dispatch.flush(core);
        self.stats.drop_unowned_output += dispatch.unowned;
        self.udp.send(Instant::now());
        Ok(())
    }

    fn stop_accepting(&mut self) {
        self.tcp.stop_accepting();
        self.udp.transports.stop_accepting();
    }

    fn io_stats(&mut self) -> IoStats {
        let mut stats = self.stats.clone();
        stats += &self.tcp.stats;
        stats += &self.udp.stats;
        self.udp.transports.add_stats(&mut stats);
        stats
    }
}
