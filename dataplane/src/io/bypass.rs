//! What the kernel-bypass backends share: a worker whose players' frames
//! come from NIC rings ([`Rings`]: AF_XDP or DPDK), go through the userspace
//! stack ([`crate::netstack`]) to the core, and leave through the rings;
//! game-server links stay on kernel sockets.
//!
//! The worker busy-polls while frames flow. The stack is polled only when
//! frames arrived, the core has output or one of the stack's timers is due
//! (each poll walks every socket). After a run of idle rounds the worker
//! waits in epoll — on its links, its wake-up and, where the rings have one,
//! a file descriptor that frames make readable — until the core's or the
//! stack's next deadline, so that an idle gateway does not burn its core.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::config::Config;
use portcullis_core::{Gateway, Transport};
use smoltcp::wire::IpCidr;

use super::dispatch::Dispatcher;
use super::epoll::{Epoll, Ready, Source};
use super::links::LinkSockets;
use super::{IoBackend, IoStats};
use crate::netstack::directory::FlowDirectory;
use crate::netstack::{FrameQueue, NetConfig, NetStack};
use crate::transport::UdpTransports;

/// Idle rounds of busy polling before the worker waits in epoll.
const SPIN_ROUNDS: u32 = 256;

/// Longest wait when the rings cannot wake the worker themselves: it
/// checks them at least this often while idle.
const MAX_NAP: Duration = Duration::from_millis(1);

/// A NIC queue's receive and transmit rings.
pub trait Rings {
    /// Moves received frames into `dev` (in batches); returns how many.
    fn receive(&mut self, dev: &mut FrameQueue, stats: &mut IoStats) -> usize;

    /// Moves the frames of `dev.tx` onto the transmit ring (in batches);
    /// returns how many.
    fn send(&mut self, dev: &mut FrameQueue, stats: &mut IoStats) -> usize;

    /// A file descriptor that becomes readable when frames arrive, if any.
    fn wake_fd(&self) -> Option<RawFd>;

    /// Adds counters kept elsewhere (the kernel's) to `stats`.
    fn read_stats(&mut self, _stats: &mut IoStats) {}
}

/// One worker of a kernel-bypass backend.
pub struct BypassIo<R> {
    rings: R,
    epoll: Epoll,
    links: LinkSockets,
    ready: Vec<Ready>,
    dev: FrameQueue,
    stack: NetStack,
    /// QUIC and KCP, on datagrams the stack takes out of the frame path.
    udp: UdpTransports,
    /// Source address of each UDP listener's datagrams, by listener index.
    udp_local: Vec<Option<SocketAddr>>,
    /// One datagram being sent.
    datagram: Box<[u8]>,
    idle: u32,
    stats: IoStats,
}

impl<R: Rings> BypassIo<R> {
    /// Worker `worker` on `rings`, its stack answering as `mac` and
    /// `addrs` on the config's listener ports (and its UDP echo port).
    pub fn new(config: &Config, rings: R, mac: [u8; 6], addrs: &[String], worker: usize) -> io::Result<BypassIo<R>> {
        let epoll = Epoll::new()?;
        if let Some(fd) = rings.wake_fd() {
            epoll.wake_on(fd)?;
        }
        let links = LinkSockets::new(config, epoll.registry()?);
        let addrs: Vec<IpCidr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let ports: Vec<(u16, usize)> = config
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.transport.is_udp())
            .map(|(i, l)| (l.bind.port(), i))
            .collect();
        // A UDP listener bound to any address answers from the stack's
        // first address of its family.
        let udp_local = config
            .listeners
            .iter()
            .map(|l| {
                l.transport.is_udp().then(|| {
                    if !l.bind.ip().is_unspecified() {
                        return l.bind;
                    }
                    let ip = addrs
                        .iter()
                        .map(|c| std::net::IpAddr::from(c.address()))
                        .find(|a| a.is_ipv4() == l.bind.is_ipv4())
                        .unwrap_or(l.bind.ip());
                    SocketAddr::new(ip, l.bind.port())
                })
            })
            .collect();
        let mut dev = FrameQueue::default();
        // Frames from a local kernel (veth, virtio) carry partial checksums.
        dev.verify_checksums = false;
        let u = &config.userspace_tcp;
        let net = NetConfig {
            udp_echo: config.gateway.udp_echo.map(|a| a.port()),
            rx_buffer: u.rx_buffer_bytes,
            tx_buffer: u.tx_buffer_bytes,
            backlog: u.backlog,
            shard_size: u.shard_size,
            max_connections: config.limits.max_connections,
            ..NetConfig::default()
        };
        let mut stack = NetStack::new(&dev, mac, &addrs, &ports, net, Instant::now())
            .with_websocket(crate::transport::websocket::WsSettings::for_listeners(config)?);
        let quic_ports = config
            .listeners
            .iter()
            .filter(|l| l.transport == portcullis_core::config::ListenerTransport::Quic)
            .map(|l| l.bind.port())
            .collect();
        stack.set_udp_ports(UdpTransports::ports(config), quic_ports);
        Ok(BypassIo {
            rings,
            epoll,
            links,
            ready: Vec::new(),
            dev,
            stack,
            udp: UdpTransports::new(config, worker as u8, Instant::now())?,
            udp_local,
            datagram: vec![0; 64 * 1024].into_boxed_slice(),
            idle: 0,
            stats: IoStats::default(),
        })
    }

    /// The rings.
    pub fn rings(&self) -> &R {
        &self.rings
    }

    /// Wakes this worker from another thread.
    pub fn waker(&self) -> Arc<mio::Waker> {
        self.epoll.waker()
    }

    /// Joins the process's other workers as worker `worker` of `directory`:
    /// a flow that reaches another worker's queue is handed back here.
    pub fn join(&mut self, directory: Arc<FlowDirectory>, worker: u32) {
        let waker = self.waker();
        directory.set_waker(worker, move || {
            let _ = waker.wake();
        });
        self.stack.join(directory, worker);
    }

    /// Waits up to `timeout` for link traffic, a wake-up or frames, and
    /// handles the links' events.
    fn poll_links(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()> {
        self.epoll.wait(timeout, &mut self.ready)?;
        let now = Instant::now();
        for r in &self.ready {
            if let Source::Link(link) = r.source {
                self.links.on_event(core, link, r.readable, r.writable, now);
            }
        }
        Ok(())
    }

    /// Hands the datagrams the stack took out to their transports and runs
    /// the transports' due timers.
    fn receive_datagrams(&mut self, core: &mut Gateway, now: Instant) -> usize {
        let mut n = 0;
        while let Some(d) = self.stack.take_datagram() {
            self.udp.handle_datagram(now, core, d.listener, d.local, d.from, &d.payload);
            self.stack.recycle_datagram(d);
            n += 1;
        }
        self.udp.handle_timeout(now, core);
        n
    }

    /// Puts what the datagram transports send into the stack's frames.
    fn send_datagrams(&mut self, now: Instant) {
        while let Some(t) = self.udp.poll_transmit(now, &mut self.datagram) {
            let Some(local) = self.udp_local.get(t.listener).copied().flatten() else { continue };
            if self.stack.send_datagram(local, t.to, &self.datagram[..t.len], &mut self.dev) {
                self.stats.tx_bytes += t.len as u64;
            }
        }
    }

    /// Waits in epoll until frames, link traffic, a wake-up, or the core's
    /// (`timeout`) or the stack's next deadline.
    fn wait(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let mut wait = timeout;
        let mut cap = |d: Duration| wait = Some(wait.map_or(d, |w| w.min(d)));
        if let Some(due) = self.stack.due() {
            cap(due.saturating_duration_since(now));
        }
        if let Some(due) = self.udp.poll_timeout() {
            cap(due.saturating_duration_since(now));
        }
        if self.rings.wake_fd().is_none() {
            cap(MAX_NAP);
        }
        self.stats.idle_sleeps += 1;
        self.poll_links(core, wait)
    }
}

impl<R: Rings> IoBackend for BypassIo<R> {
    fn poll(&mut self, core: &mut Gateway, timeout: Option<Duration>) -> io::Result<()> {
        self.poll_links(core, Some(Duration::ZERO))?;
        let mut got = self.rings.receive(&mut self.dev, &mut self.stats);
        let before = self.dev.rx.len();
        self.stack.take_forwarded(&mut self.dev);
        got += self.dev.rx.len() - before;
        let now = Instant::now();
        if got > 0 || self.stack.is_due(now) {
            self.stack.poll(now, &mut self.dev, core);
        }
        got += self.receive_datagrams(core, now);
        self.send_datagrams(now);
        let sent = self.rings.send(&mut self.dev, &mut self.stats);
        self.stats.polls += 1;
        if got > 0 || sent > 0 {
            self.idle = 0;
            return Ok(());
        }
        self.stats.idle_polls += 1;
        self.idle = self.idle.saturating_add(1);
        // Until a round finds work, every round waits — unless frames are
        // still waiting for transmit buffers to come back.
        if self.idle > SPIN_ROUNDS && self.dev.tx.is_empty() {
            self.wait(core, timeout)?;
        }
        Ok(())
    }

    fn flush(&mut self, core: &mut Gateway) -> io::Result<()> {
        loop {
            let mut dispatch = self.udp.own(Dispatcher::new(&mut self.links).with(Transport::UserTcp, &mut self.stack));
            let carried = dispatch.flush(core);
            self.stats.drop_unowned_output += dispatch.unowned;
            if carried == 0 {
                return Ok(());
            }
            self.stack.poll(Instant::now(), &mut self.dev, core);
            self.send_datagrams(Instant::now());
            self.rings.send(&mut self.dev, &mut self.stats);
        }
    }

    fn stop_accepting(&mut self) {
        self.stack.stop_listening();
        self.udp.stop_accepting();
    }

    fn flushed(&mut self) -> bool {
        self.stack.delivering() == 0 && self.dev.tx.is_empty()
    }

    fn io_stats(&mut self) -> IoStats {
        self.rings.read_stats(&mut self.stats);
        let c = self.stack.counters;
        self.stats.syn_cookies_sent = c.syn_cookies_sent;
        self.stats.syn_cookies_accepted = c.syn_cookies_accepted;
        self.stats.drop_syn_max_connections = c.drop_syn_max_connections;
        self.stats.drop_no_next_hop = c.drop_no_next_hop;
        self.stats.frames_forwarded = c.frames_forwarded;
        self.stats.drop_forward_full = c.drop_forward_full;
        self.stats.stack_connections = self.stack.connections() as u64;
        self.stats.stack_shards = self.stack.shards() as u64;
        self.stats.stack_buffers_backed = self.stack.buffers_backed() as u64;
        self.udp.add_stats(&mut self.stats);
        let mut stats = self.stats.clone();
        stats += &self.stack.ws_counters;
        stats
    }
}
