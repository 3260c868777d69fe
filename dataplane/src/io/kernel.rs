//! The kernel-socket IO backend: TCP through the Linux stack, multiplexed
//! with epoll (mio), one event loop per worker.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use super::{IoBackend, IoStats};
use crate::auth;
use crate::config::Config;
use crate::route::LinkId;
use crate::session::ConnId;
use crate::shard::Shared;
use crate::{Gateway, Output, Stats};

const WAKE: Token = Token((1 << 20) - 1);
const UDP_ECHO: Token = Token((1 << 20) - 2);
const EXTERNAL: Token = Token((1 << 20) - 3);
const LINK_BASE: usize = 1 << 20;
const CLIENT_BASE: usize = 1 << 21;
const READ_CHUNK: usize = 64 * 1024;

struct Client {
    id: ConnId,
    stream: TcpStream,
}

struct LinkSocket {
    stream: TcpStream,
    connected: bool,
}

/// Kernel sockets behind mio, for one worker.
pub struct KernelIo {
    poll: Poll,
    events: Events,
    listeners: Vec<TcpListener>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    generation: u32,
    links: Vec<Option<LinkSocket>>,
    buf: Box<[u8]>,
    waker: Arc<Waker>,
    udp_echo: Option<UdpSocket>,
    /// Events of the last poll, reused.
    ready: Vec<(usize, bool, bool)>,
    stats: IoStats,
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

impl KernelIo {
    /// Binds the listeners of the config for one worker. `addrs` are the
    /// addresses to bind instead of the config's (the first worker's actual
    /// ports when the config asks for port 0).
    pub fn bind(config: &Config, addrs: Option<&[SocketAddr]>) -> io::Result<KernelIo> {
        let mut io = Self::links_only(config)?;
        for (i, l) in config.listeners.iter().enumerate() {
            let addr = addrs.map_or(l.bind, |a| a[i]);
            let mut listener = listen(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind listeners[{i}].bind = {addr}: {e}")))?;
            io.poll.registry().register(&mut listener, Token(i), Interest::READABLE)?;
            io.listeners.push(listener);
        }
        if let Some(addr) = config.gateway.udp_echo {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket
                .bind(&addr.into())
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind gateway.udp_echo = {addr}: {e}")))?;
            let mut udp = UdpSocket::from_std(socket.into());
            io.poll.registry().register(&mut udp, UDP_ECHO, Interest::READABLE)?;
            io.udp_echo = Some(udp);
        }
        Ok(io)
    }

    /// Game-server links only, no listeners: for backends that serve
    /// players through another path (AF_XDP) but keep links on sockets.
    pub fn links_only(config: &Config) -> io::Result<KernelIo> {
        let poll = Poll::new()?;
        let link_count = config.services.iter().map(|s| s.servers.len()).sum();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(KernelIo {
            poll,
            events: Events::with_capacity(1024),
            listeners: Vec::new(),
            clients: Vec::new(),
            free: Vec::new(),
            generation: 0,
            links: (0..link_count).map(|_| None).collect(),
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            waker,
            udp_echo: None,
            ready: Vec::new(),
            stats: IoStats::default(),
        })
    }

    /// Addresses the listeners are bound to (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Wakes this worker from its IO wait (from another thread).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Makes `fd` readable wake [`IoBackend::poll`] too (an AF_XDP socket
    /// whose owner waits here when idle); its events are otherwise ignored.
    pub fn wake_on(&self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.poll.registry().register(&mut mio::unix::SourceFd(&fd), EXTERNAL, Interest::READABLE)
    }

    fn slot(id: ConnId) -> usize {
        (id & 0xffff_ffff) as usize
    }

    fn client(&mut self, id: ConnId) -> Option<&mut Client> {
        self.clients.get_mut(Self::slot(id))?.as_mut().filter(|c| c.id == id)
    }

    fn accept(&mut self, core: &mut Gateway, listener: usize, now: Instant) {
        loop {
            match self.listeners[listener].accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.clients.push(None);
                        self.clients.len() - 1
                    });
                    self.generation = self.generation.wrapping_add(1);
                    let id = (u64::from(self.generation) << 32) | slot as u64;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self.poll.registry().register(&mut stream, Token(CLIENT_BASE + slot), interest).is_err() {
                        self.free.push(slot);
                        continue;
                    }
                    self.clients[slot] = Some(Client { id, stream });
                    core.handle_connect(now, id, listener, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or similar: try again on the next event.
                    tracing::warn!("accept on listener {listener} failed: {e}");
                    return;
                }
            }
        }
    }

    fn drop_client(&mut self, slot: usize) -> Option<Client> {
        let mut c = self.clients.get_mut(slot)?.take()?;
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.free.push(slot);
        Some(c)
    }

    fn read_client(&mut self, core: &mut Gateway, slot: usize, now: Instant) {
        loop {
            let Some(c) = self.clients[slot].as_mut() else {
                return;
            };
            let id = c.id;
            match c.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.stats.rx_bytes += n as u64;
                    core.handle_data(now, id, &self.buf[..n]);
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

    fn read_link(&mut self, core: &mut Gateway, link: LinkId, now: Instant) {
        loop {
            let Some(l) = self.links[link].as_mut() else {
                return;
            };
            match l.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => core.handle_link_data(now, link, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.drop_link(link);
        core.handle_link_closed(now, link);
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

    fn drop_link(&mut self, link: LinkId) {
        if let Some(mut l) = self.links[link].take() {
            let _ = self.poll.registry().deregister(&mut l.stream);
        }
    }

    /// Writes as much of `data` as the socket takes; `Err` if it failed.
    fn write_some(stream: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
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
}

impl IoBackend for KernelIo {
    fn poll(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            r => r?,
        }
        let now = Instant::now();
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| (e.token().0, e.is_readable() || e.is_read_closed(), e.is_writable())));
        for &(token, readable, writable) in &ready {
            if token == WAKE.0 || token == EXTERNAL.0 {
                continue;
            } else if token == UDP_ECHO.0 {
                self.echo_udp();
            } else if token < LINK_BASE {
                self.accept(core, token, now);
            } else if token < CLIENT_BASE {
                let link = token - LINK_BASE;
                let Some(l) = self.links[link].as_mut() else {
                    continue;
                };
                if !l.connected {
                    if !(writable || readable) {
                        continue;
                    }
                    let ok = l.stream.take_error().ok().flatten().is_none() && l.stream.peer_addr().is_ok();
                    if !ok {
                        self.drop_link(link);
                        core.handle_link_closed(now, link);
                        continue;
                    }
                    l.connected = true;
                    let _ = l.stream.set_nodelay(true);
                    core.handle_link_connected(now, link);
                }
                if writable {
                    core.handle_link_writable(link);
                }
                if readable {
                    self.read_link(core, link, now);
                }
            } else {
                let slot = token - CLIENT_BASE;
                let Some(id) = self.clients.get(slot).and_then(|c| c.as_ref()).map(|c| c.id) else {
                    continue;
                };
                if writable {
                    core.handle_writable(id);
                }
                if readable {
                    self.read_client(core, slot, now);
                }
            }
        }
        self.ready = ready;
        Ok(())
    }

    fn io_stats(&mut self) -> IoStats {
        self.stats.clone()
    }

    fn stop_accepting(&mut self) {
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    fn flush(&mut self, core: &mut Gateway) -> io::Result<()> {
        while let Some(out) = core.poll_output() {
            self.carry_out(core, out);
        }
        Ok(())
    }
}

impl KernelIo {
    /// Carries out one output of the core.
    pub fn carry_out(&mut self, core: &mut Gateway, out: Output) {
        let now = Instant::now();
        match out {
            Output::Transmit(id) => {
                let Some(c) = self.client(id) else { return };
                match Self::write_some(&mut c.stream, core.outbound(id)) {
                    Ok(n) => {
                        self.stats.tx_bytes += n as u64;
                        core.consume(id, n);
                    }
                    Err(_) => {
                        self.drop_client(Self::slot(id));
                        core.handle_disconnect(now, id);
                    }
                }
            }
            Output::Close(id) => {
                if let Some(c) = self.client(id) {
                    let _ = Self::write_some(&mut c.stream, core.outbound(id));
                    let _ = c.stream.shutdown(Shutdown::Both);
                    self.drop_client(Self::slot(id));
                }
                core.handle_disconnect(now, id);
            }
            Output::ConnectLink(link, addr) => {
                self.drop_link(link);
                let registered = TcpStream::connect(addr).and_then(|mut stream| {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    self.poll.registry().register(&mut stream, Token(LINK_BASE + link), interest)?;
                    Ok(stream)
                });
                match registered {
                    Ok(stream) => self.links[link] = Some(LinkSocket { stream, connected: false }),
                    Err(_) => core.handle_link_closed(now, link),
                }
            }
            Output::TransmitLink(link) => {
                let Some(l) = self.links[link].as_mut().filter(|l| l.connected) else {
                    return;
                };
                match Self::write_some(&mut l.stream, core.link_outbound(link)) {
                    Ok(n) => core.consume_link(link, n),
                    Err(_) => {
                        self.drop_link(link);
                        core.handle_link_closed(now, link);
                    }
                }
            }
            Output::CloseLink(link) => self.drop_link(link),
        }
    }
}

/// What a running worker last reported.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    /// Its counters.
    pub stats: Stats,
    /// Sessions it holds (connected or waiting for a RESUME).
    pub sessions: usize,
    /// Client connections.
    pub connections: usize,
    /// Groups with members on it.
    pub groups: usize,
    /// Game-server links up.
    pub links_up: usize,
    /// Its IO backend's counters.
    pub io: super::IoStats,
    /// Requests awaiting game servers.
    pub in_flight: usize,
}

/// A gateway process's workers on kernel sockets, one thread each.
pub struct RunningGateway {
    /// Bound listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    status: Arc<Mutex<Vec<WorkerStatus>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

/// 32 bytes from the OS's CSPRNG.
fn random_key() -> io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

impl RunningGateway {
    /// Binds every worker's listeners and starts `gateway.workers` worker
    /// threads; returns once all are bound.
    pub fn start(config: &Config) -> io::Result<RunningGateway> {
        let workers = config.gateway.workers;
        let first = KernelIo::bind(config, None)?;
        let addrs = first.local_addrs();
        let mut ios = vec![first];
        for _ in 1..workers {
            ios.push(KernelIo::bind(config, Some(&addrs))?);
        }
        let wakers = ios.iter().map(|io| io.waker()).collect();
        Self::spawn(config, ios, wakers, addrs)
    }

    /// Starts one AF_XDP worker per configured queue, in the calling
    /// thread's network namespace (the interface's).
    #[cfg(feature = "afxdp")]
    pub fn start_afxdp(config: &Config) -> io::Result<RunningGateway> {
        let x = config.afxdp.as_ref().ok_or_else(|| io::Error::other("the config has no [afxdp] section"))?;
        // The filter redirects only gateway ports: make sure ours are.
        let mut rules = crate::filter::Filter::at(&x.pin_dir)
            .rules()
            .map_err(|e| io::Error::other(format!("the XDP filter at afxdp.pin_dir = {}: {e}", x.pin_dir)))?;
        for l in &config.listeners {
            rules.add_port(crate::filter::Proto::Tcp, l.bind.port()).map_err(io::Error::other)?;
        }
        if let Some(udp) = config.gateway.udp_echo {
            rules.add_port(crate::filter::Proto::Udp, udp.port()).map_err(io::Error::other)?;
        }
        let mut ios = Vec::new();
        for &queue in &x.queues {
            let io = super::afxdp::AfXdpRings::open(config, x, queue)?;
            tracing::info!("AF_XDP on {} queue {queue}: {:?} mode", x.interface, io.rings().mode);
            ios.push(io);
        }
        Self::spawn_bypass(config, ios)
    }

    /// Starts DPDK (EAL once per process, then the `[dpdk]` port) and one
    /// worker per queue pair, in the calling thread's network namespace
    /// (that of a `net_af_xdp` vdev's interface).
    #[cfg(feature = "dpdk")]
    pub fn start_dpdk(config: &Config) -> io::Result<RunningGateway> {
        let d = config.dpdk.as_ref().ok_or_else(|| io::Error::other("the config has no [dpdk] section"))?;
        Self::spawn_bypass(config, super::dpdk::DpdkRings::open(config, d)?)
    }

    /// Runs kernel-bypass workers; their listeners are the config's
    /// addresses as written (the userspace stack binds no port 0).
    #[cfg(any(feature = "afxdp", feature = "dpdk"))]
    fn spawn_bypass<R: super::bypass::Rings + Send + 'static>(
        config: &Config,
        ios: Vec<super::bypass::BypassIo<R>>,
    ) -> io::Result<RunningGateway> {
        let wakers = ios.iter().map(|io| io.waker()).collect();
        let addrs = config.listeners.iter().map(|l| l.bind).collect();
        Self::spawn(config, ios, wakers, addrs)
    }

    fn spawn<B: super::IoBackend + Send + 'static>(
        config: &Config,
        ios: Vec<B>,
        wakers: Vec<Arc<Waker>>,
        addrs: Vec<SocketAddr>,
    ) -> io::Result<RunningGateway> {
        let workers = ios.len();
        let shared = Shared::new(workers, random_key()?);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(vec![WorkerStatus::default(); workers]));
        let deadline = Duration::from_millis(config.gateway.shutdown_deadline_ms);
        let mut threads = Vec::new();
        for ((worker, mut io), waker) in ios.into_iter().enumerate().zip(wakers) {
            let auth = auth::from_config(config).map_err(io::Error::other)?;
            let mut core = Gateway::new(config, worker, shared.clone(), auth, Instant::now(), unix);
            shared.set_waker(worker, move || {
                let _ = waker.wake();
            });
            let (stop, status) = (stop.clone(), status.clone());
            threads.push(std::thread::Builder::new().name(format!("portcullis-worker-{worker}")).spawn(move || {
                super::run(&mut io, &mut core, &stop, deadline, |_, core, io| {
                    let report = WorkerStatus {
                        stats: core.stats().clone(),
                        sessions: core.sessions().len(),
                        connections: core.connection_count(),
                        groups: core.sessions().group_count(),
                        links_up: core.links_up(),
                        in_flight: core.requests_in_flight(),
                        io,
                    };
                    status.lock().expect("status lock")[worker] = report;
                })
            })?);
        }
        Ok(RunningGateway { addrs, shared, status, stop, threads })
    }

    /// What each worker last reported (about every 100 ms).
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.status.lock().expect("status lock").clone()
    }

    /// State shared by the workers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether every worker thread is still running.
    pub fn is_running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Starts the graceful shutdown of every worker.
    pub fn request_stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Shuts the workers down and waits for them.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.request_stop();
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().map_err(|_| io::Error::other("gateway worker panicked")).and_then(|r| r);
            result = result.and(r);
        }
        result
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
