//! The userspace network stack of the kernel-bypass backends: raw Ethernet
//! frames in and out of a [`smoltcp::phy::Device`] (the AF_XDP rings, or an
//! in-memory queue in tests), ARP, IPv4/IPv6, ICMP echo and TCP by smoltcp,
//! and every accepted TCP connection bridged to the sans-IO [`Gateway`]
//! core as a client connection.
//!
//! UDP: the optional echo service (`gateway.udp_echo`) answers every
//! datagram to its port from the address it was sent to.
//!
//! Listening: smoltcp needs a socket in LISTEN for each SYN, and it walks
//! every socket for every packet and every poll — so idle listening sockets
//! cost on every packet. Each port keeps two spare ones; before a poll the
//! stack counts the SYNs among the received frames and opens a listening
//! socket for each, as long as the port's half-open sockets stay within its
//! `backlog`. A SYN flood that got past the XDP buckets can therefore hold
//! at most `backlog` half-open connections per port — bounded memory — for
//! at most `half_open_timeout`; SYNs beyond that are refused (RST).
//! Connections count against `max_connections`.

use std::time::Instant as StdInstant;

use rustc_hash::FxHashMap;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as NetDuration, Instant as NetInstant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket,
};

use portcullis_core::{ConnId, Gateway, Transport};

use crate::io::dispatch::ClientTransport;

pub mod neighbors;

/// Sizes and services of the stack.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Port of the UDP echo service, if any.
    pub udp_echo: Option<u16>,
    /// Listening sockets (half-open connections) per port.
    pub backlog: usize,
    /// A handshake not completed within this is dropped, freeing its
    /// listening socket (spoofed SYNs never complete).
    pub half_open_timeout: NetDuration,
    /// Connections at most.
    pub max_connections: usize,
    /// Receive buffer per connection, bytes.
    pub rx_buffer: usize,
    /// Send buffer per connection, bytes.
    pub tx_buffer: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        // Small buffers: game traffic is many small messages, and memory per
        // idle connection matters more than bulk throughput.
        NetConfig {
            udp_echo: None,
            backlog: 64,
            half_open_timeout: NetDuration::from_secs(5),
            max_connections: 100_000,
            rx_buffer: 16 * 1024,
            tx_buffer: 32 * 1024,
        }
    }
}

/// Listening sockets kept per port while no SYN is in sight (for SYNs the
/// pre-scan cannot see, e.g. behind IPv6 extension headers).
const SPARE: usize = 2;

/// One gateway port.
struct Listener {
    port: u16,
    /// Index of the listener in the gateway config.
    index: usize,
    /// Sockets in LISTEN or SYN-RECEIVED.
    waiting: Vec<SocketHandle>,
    /// SYNs for this port in the frames about to be polled.
    syns: usize,
}

/// A TCP stack serving the gateway's ports.
pub struct NetStack {
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<Listener>,
    conns: FxHashMap<ConnId, SocketHandle>,
    handles: FxHashMap<SocketHandle, ConnId>,
    /// Connections whose output did not fit into the send buffer.
    blocked: Vec<ConnId>,
    /// Closed towards the core, waiting for the TCP close to finish.
    closing: Vec<SocketHandle>,
    /// Number of the next connection ([`Transport::UserTcp`]).
    next_conn: u64,
    /// When the stack's next timer fires.
    due: Option<StdInstant>,
    udp_echo: Option<SocketHandle>,
    /// One datagram being echoed.
    datagram: Vec<u8>,
    epoch: StdInstant,
    cfg: NetConfig,
}

impl NetStack {
    /// A stack with address `mac` and `addrs`, listening on `ports` —
    /// `(port, listener index in the gateway config)`.
    pub fn new<D: Device>(
        device: &mut D,
        mac: [u8; 6],
        addrs: &[IpCidr],
        ports: &[(u16, usize)],
        cfg: NetConfig,
        now: StdInstant,
    ) -> NetStack {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // Initial sequence numbers and ephemeral ports: random per process.
        config.random_seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), mac);
        let mut iface = Interface::new(config, device, NetInstant::ZERO);
        iface.update_ip_addrs(|a| {
            for addr in addrs {
                let _ = a.push(*addr);
            }
        });
        let mut stack = NetStack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            listeners: ports
                .iter()
                .map(|&(port, index)| Listener { port, index, waiting: Vec::new(), syns: 0 })
                .collect(),
            conns: FxHashMap::default(),
            handles: FxHashMap::default(),
            blocked: Vec::new(),
            closing: Vec::new(),
            next_conn: 1,
            due: Some(now),
            udp_echo: None,
            datagram: vec![0; 65_536],
            epoch: now,
            cfg,
        };
        if let Some(port) = cfg.udp_echo {
            let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 512], vec![0; 512 * 1024]);
            let mut s = udp::Socket::new(buffer(), buffer());
            if s.bind(port).is_ok() {
                stack.udp_echo = Some(stack.sockets.add(s));
            }
        }
        for i in 0..stack.listeners.len() {
            stack.listen_for(i, SPARE);
        }
        stack
    }

    fn at(&self, now: StdInstant) -> NetInstant {
        NetInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    /// Makes `n` sockets of listener `i` listen, as far as the backlog and
    /// `max_connections` allow.
    fn listen_for(&mut self, i: usize, n: usize) {
        let listening = {
            let (sockets, l) = (&self.sockets, &self.listeners[i]);
            l.waiting.iter().filter(|&&h| sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen).count()
        };
        for _ in listening..n {
            if self.listeners[i].waiting.len() >= self.cfg.backlog
                || self.conns.len() + self.listening() >= self.cfg.max_connections
            {
                return;
            }
            let rx = tcp::SocketBuffer::new(vec![0; self.cfg.rx_buffer]);
            let tx = tcp::SocketBuffer::new(vec![0; self.cfg.tx_buffer]);
            let mut s = tcp::Socket::new(rx, tx);
            s.set_nagle_enabled(false);
            s.set_keep_alive(Some(NetDuration::from_secs(30)));
            s.set_timeout(Some(self.cfg.half_open_timeout));
            if s.listen(self.listeners[i].port).is_err() {
                return;
            }
            let h = self.sockets.add(s);
            self.listeners[i].waiting.push(h);
        }
    }

    /// Listening sockets, half-open connections included.
    pub fn listening(&self) -> usize {
        self.listeners.iter().map(|l| l.waiting.len()).sum()
    }

    /// Stops accepting: the listening sockets close (shutdown).
    pub fn stop_listening(&mut self) {
        for l in &mut self.listeners {
            for h in l.waiting.drain(..) {
                self.sockets.remove(h);
            }
        }
        self.cfg.backlog = 0;
    }

    /// Established connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// One round: frames from `device` through the stack into the core,
    /// answers back out. Call [`NetStack::transmit`] / [`NetStack::close`]
    /// for the core's client outputs in between, then `poll` again to send.
    pub fn poll(&mut self, now: StdInstant, device: &mut FrameQueue, core: &mut Gateway) {
        let ts = self.at(now);
        self.listen_for_syns(&device.rx);
        self.iface.poll(ts, device, &mut self.sockets);
        self.echo_udp();
        self.accept(now, core);
        self.receive(now, core);
        self.finish_closes();
        self.report_writable(core);
        self.iface.poll(ts, device, &mut self.sockets);
        self.due = self
            .iface
            .poll_at(ts, &self.sockets)
            .map(|t| self.epoch + std::time::Duration::from_micros(t.total_micros().max(0) as u64));
    }

    /// Whether a timer of the stack (retransmission, delayed ACK, keep-alive,
    /// close) is due: without new frames or output, polling is needed only
    /// then — each poll walks every socket.
    pub fn is_due(&self, now: StdInstant) -> bool {
        self.due.is_some_and(|t| now >= t)
    }

    /// When the stack's next timer fires, if any.
    pub fn due(&self) -> Option<StdInstant> {
        self.due
    }

    /// Every datagram to the echo port goes back where it came from.
    fn echo_udp(&mut self) {
        let Some(h) = self.udp_echo else { return };
        let s = self.sockets.get_mut::<udp::Socket>(h);
        while s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut self.datagram) else { return };
            let _ = s.send_slice(&self.datagram[..n], meta);
        }
    }

    /// A listening socket for every SYN among `frames`, within the backlog.
    fn listen_for_syns(&mut self, frames: &std::collections::VecDeque<Vec<u8>>) {
        let mut any = false;
        for port in frames.iter().filter_map(|f| syn_port(f)) {
            if let Some(l) = self.listeners.iter_mut().find(|l| l.port == port) {
                l.syns += 1;
                any = true;
            }
        }
        if !any {
            return;
        }
        for i in 0..self.listeners.len() {
            let syns = std::mem::take(&mut self.listeners[i].syns);
            if syns > 0 {
                self.listen_for(i, syns + SPARE);
            }
        }
    }

    /// Established sockets leave their listener's pool and become connections.
    fn accept(&mut self, now: StdInstant, core: &mut Gateway) {
        for i in 0..self.listeners.len() {
            let (mut j, mut listening) = (0, 0);
            while j < self.listeners[i].waiting.len() {
                let h = self.listeners[i].waiting[j];
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                match s.state() {
                    tcp::State::Established => {
                        // Connected: the core's heartbeat decides when a
                        // quiet player is gone, not the handshake timeout.
                        s.set_timeout(None);
                        let peer = s.remote_endpoint().map(|e| std::net::SocketAddr::new(e.addr.into(), e.port));
                        self.listeners[i].waiting.swap_remove(j);
                        let conn = ConnId::new(Transport::UserTcp, self.next_conn);
                        self.next_conn += 1;
                        self.conns.insert(conn, h);
                        self.handles.insert(h, conn);
                        let peer = peer.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                        core.handle_connect(now, conn, self.listeners[i].index, peer);
                    }
                    tcp::State::Closed => {
                        // A handshake that failed or timed out.
                        self.listeners[i].waiting.swap_remove(j);
                        self.sockets.remove(h);
                    }
                    tcp::State::Listen if listening >= SPARE => {
                        // Spare beyond the spares: SYNs were fewer than
                        // expected (retransmissions of a pending handshake).
                        self.listeners[i].waiting.swap_remove(j);
                        self.sockets.remove(h);
                    }
                    tcp::State::Listen => {
                        listening += 1;
                        j += 1;
                    }
                    _ => j += 1,
                }
            }
            if listening < SPARE {
                self.listen_for(i, SPARE);
            }
        }
    }

    /// Bytes received go to the core, straight from the socket buffers;
    /// connections the peer closed are reported.
    fn receive(&mut self, now: StdInstant, core: &mut Gateway) {
        let mut gone = Vec::new();
        for (&conn, &h) in &self.conns {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                let _ = s.recv(|buf| {
                    core.handle_data(now, conn, buf);
                    (buf.len(), ())
                });
            }
            if !s.may_recv() || !s.is_active() {
                gone.push(conn);
            }
        }
        for conn in gone {
            if let Some(h) = self.conns.remove(&conn) {
                self.handles.remove(&h);
                self.sockets.get_mut::<tcp::Socket>(h).close();
                self.closing.push(h);
                core.handle_disconnect(now, conn);
            }
        }
    }

    /// Blocked connections whose send buffer has room again are reported
    /// writable (only those: reporting a full one would have the core
    /// retry at once, forever).
    fn report_writable(&mut self, core: &mut Gateway) {
        let (conns, sockets) = (&self.conns, &self.sockets);
        self.blocked.retain(|conn| match conns.get(conn) {
            Some(&h) => {
                let s = sockets.get::<tcp::Socket>(h);
                if !s.may_send() {
                    return false; // closing: the receive path reports it
                }
                if s.send_queue() == s.send_capacity() {
                    return true;
                }
                core.handle_writable(*conn);
                false
            }
            None => false,
        });
    }

    /// Frees sockets whose close has completed.
    fn finish_closes(&mut self) {
        let sockets = &mut self.sockets;
        self.closing.retain(|&h| {
            let done = matches!(sockets.get::<tcp::Socket>(h).state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                sockets.remove(h);
            }
            !done
        });
    }
}

/// The userspace stack owns the [`Transport::UserTcp`] connections.
impl ClientTransport for NetStack {
    /// Writes what the core has for `conn` into its send buffer.
    fn transmit(&mut self, core: &mut Gateway, conn: ConnId) {
        let Some(&h) = self.conns.get(&conn) else { return };
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        let n = s.send_slice(core.outbound(conn)).unwrap_or(0);
        core.consume(conn, n);
        if !core.outbound(conn).is_empty() && !self.blocked.contains(&conn) {
            self.blocked.push(conn);
        }
    }

    /// Sends what is pending, then closes `conn` and tells the core.
    fn close(&mut self, now: StdInstant, core: &mut Gateway, conn: ConnId) {
        self.transmit(core, conn);
        if let Some(h) = self.conns.remove(&conn) {
            self.handles.remove(&h);
            self.sockets.get_mut::<tcp::Socket>(h).close();
            self.closing.push(h);
        }
        core.handle_disconnect(now, conn);
    }
}

/// The destination port of a TCP SYN (without ACK) in an Ethernet frame:
/// IPv4, or IPv6 without extension headers — what the stack itself
/// accepts (smoltcp drops VLAN-tagged frames).
fn syn_port(frame: &[u8]) -> Option<u16> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (protocol, payload) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            (ip.next_header(), ip.payload())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            (ip.next_header(), ip.payload())
        }
        _ => return None,
    };
    if protocol != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(payload).ok()?;
    (tcp.syn() && !tcp.ack()).then(|| tcp.dst_port())
}

/// An in-memory device: frames queued in and out, in buffers that are
/// reused (after warm-up, moving a frame allocates nothing). Tests join two
/// stacks with it; the AF_XDP backend copies ring frames through it.
#[derive(Debug)]
pub struct FrameQueue {
    /// Frames to receive.
    pub rx: std::collections::VecDeque<Vec<u8>>,
    /// Frames sent.
    pub tx: std::collections::VecDeque<Vec<u8>>,
    /// Check the checksums of received frames.
    pub verify_checksums: bool,
    pool: Vec<Vec<u8>>,
}

impl Default for FrameQueue {
    fn default() -> Self {
        FrameQueue { rx: Default::default(), tx: Default::default(), verify_checksums: true, pool: Vec::new() }
    }
}

/// Buffers kept for reuse at most.
const POOL: usize = 4096;

impl FrameQueue {
    /// Queues a received frame, copied into a reused buffer.
    pub fn push_rx(&mut self, frame: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.rx.push_back(buf);
    }

    /// Hands a sent frame's buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL {
            self.pool.push(buf);
        }
    }
}

/// Receive token of [`FrameQueue`].
pub struct QueueRx<'a>(Vec<u8>, &'a mut Vec<Vec<u8>>);
/// Transmit token of [`FrameQueue`].
pub struct QueueTx<'a>(&'a mut std::collections::VecDeque<Vec<u8>>, Option<&'a mut Vec<Vec<u8>>>);

impl smoltcp::phy::RxToken for QueueRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        if self.1.len() < POOL {
            self.1.push(self.0);
        }
        r
    }
}

impl smoltcp::phy::TxToken for QueueTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = self.1.and_then(|p| p.pop()).unwrap_or_default();
        frame.clear();
        frame.resize(len, 0);
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for FrameQueue {
    type RxToken<'a> = QueueRx<'a>;
    type TxToken<'a> = QueueTx<'a>;

    fn receive(&mut self, _: NetInstant) -> Option<(QueueRx<'_>, QueueTx<'_>)> {
        let frame = self.rx.pop_front()?;
        // The reply may need a buffer while the received one is in use.
        Some((QueueRx(frame, &mut self.pool), QueueTx(&mut self.tx, None)))
    }

    fn transmit(&mut self, _: NetInstant) -> Option<QueueTx<'_>> {
        Some(QueueTx(&mut self.tx, Some(&mut self.pool)))
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        use smoltcp::phy::Checksum;
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.max_transmission_unit = 1514;
        caps.medium = smoltcp::phy::Medium::Ethernet;
        if !self.verify_checksums {
            // Frames from a local kernel (veth, virtio) carry partial
            // checksums, completed by an offload that never runs here:
            // compute ours, do not check theirs.
            caps.checksum.ipv4 = Checksum::Tx;
            caps.checksum.tcp = Checksum::Tx;
            caps.checksum.udp = Checksum::Tx;
            caps.checksum.icmpv4 = Checksum::Tx;
            caps.checksum.icmpv6 = Checksum::Tx;
        }
        caps
    }
}

#[cfg(test)]
mod tests;
