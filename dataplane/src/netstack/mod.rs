//! The userspace network stack of the kernel-bypass backends: Ethernet
//! frames in and out of a [`FrameQueue`] (the AF_XDP or DPDK rings copy
//! through it; tests use it as a wire), TCP, UDP and ICMP by smoltcp, and
//! every accepted TCP connection bridged to the sans-IO [`Gateway`] core as
//! a client connection ([`Transport::UserTcp`]).
//!
//! ```text
//!  frames ─▶ link (ARP/ND answers, next hops) ─▶ flow table (4-tuple → shard, O(1))
//!                                                   │            │
//!                                          shard 0 (control)   shards 1.. (≤ shard_size TCP sockets each)
//!                                          ICMP, UDP echo,      smoltcp on IP packets; polled only when
//!                                          resets for strays    they got packets, output or a due timer
//! ```
//!
//! **Why shards.** smoltcp walks every socket of a socket set for every
//! packet and every poll. One set of 10 000 connections costs 10 000 socket
//! visits per frame; shards of `shard_size` sockets, each with its own
//! smoltcp interface, bound that to `shard_size` whatever the number of
//! connections, and idle shards cost nothing until their next timer.
//!
//! **Next hops.** smoltcp runs on IP packets ([`link`] does Ethernet): each
//! flow keeps the Ethernet address its frames come from — the player's, or
//! the router's in front of it — and is answered through it. Players off the
//! gateway's subnet need no route, thousands of players need no neighbour
//! cache, and nothing expires while a connection lives.
//!
//! **Listening.** A SYN for a gateway port opens a listening socket in a
//! shard with room, as long as the port's half-open connections stay within
//! `backlog` and connections within `max_connections`; a handshake not
//! completed within `half_open_timeout` is dropped. Beyond the backlog, SYNs
//! are answered with [`cookies`], which hold no state: a spoofed flood fills
//! nothing a player needs. Segments of no known flow (and no valid cookie)
//! go to the control shard, which answers RST.
//!
//! **Close means flush.** When the core closes a connection, what it had
//! queued moves into the stack, which sends all of it and then the FIN;
//! what the peer still sends is read and dropped; a peer that has not
//! taken everything and closed within `close_timeout` is reset.
//!
//! **WebSocket.** Connections of a `transport = "websocket"` listener
//! pass through the same [`WebSocket`] adapter as on the kernel transport
//! ([`NetStack::with_websocket`]): received bytes go through it to the
//! core, the core's output leaves as its messages, a close sends a close
//! frame before the FIN.
//!
//! UDP: the optional echo service (`gateway.udp_echo`) answers every
//! datagram to its port from the address it was sent to.

pub mod buffers;
pub mod cookies;
pub mod datagrams;
mod device;
pub mod directory;
pub mod flows;
pub mod link;

use std::net::SocketAddr;
use std::time::{Duration, Instant as StdInstant};

use portcullis_core::{ConnId, Gateway, Transport};
use rustc_hash::FxHashMap;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::Medium;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as NetDuration, Instant as NetInstant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Packet, Ipv6Packet};

use self::buffers::BufferPool;
use self::cookies::SynCookies;
pub use self::device::FrameQueue;
use self::directory::FlowDirectory;
use self::flows::{Flow, FlowKey};
use self::link::{Link, Received};
use crate::io::dispatch::ClientTransport;
use crate::transport::websocket::{self, WebSocket, WsSettings};

/// Sizes and services of the stack.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Port of the UDP echo service, if any.
    pub udp_echo: Option<u16>,
    /// Half-open connections per port at most.
    pub backlog: usize,
    /// A handshake not completed within this is dropped, freeing its
    /// place in the backlog (spoofed SYNs never complete).
    pub half_open_timeout: NetDuration,
    /// Connections at most.
    pub max_connections: usize,
    /// Receive buffer per connection, bytes (the window a player sees).
    pub rx_buffer: usize,
    /// Send buffer per connection, bytes; output beyond it waits in the
    /// core's per-connection buffer, which grows on demand.
    pub tx_buffer: usize,
    /// TCP sockets per shard: the most sockets one packet can make smoltcp
    /// walk.
    pub shard_size: usize,
    /// How long a closed connection may take to deliver what was queued
    /// before it, before it is reset.
    pub close_timeout: Duration,
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
            rx_buffer: 4 * 1024,
            tx_buffer: 4 * 1024,
            shard_size: 32,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// What the stack counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// SYN-ACKs sent with a cookie (a port's backlog was full).
    pub syn_cookies_sent: u64,
    /// Connections that came in through a cookie.
    pub syn_cookies_accepted: u64,
    /// SYNs refused: `max_connections` reached.
    pub drop_syn_max_connections: u64,
    /// Packets dropped because nobody knew where to send them.
    pub drop_no_next_hop: u64,
    /// Frames of flows another worker owns, handed to it.
    pub frames_forwarded: u64,
    /// Frames for another worker dropped: its inbox was full.
    pub drop_forward_full: u64,
}

/// The control shard: ICMP, UDP echo, resets for strays.
const CONTROL: u32 = 0;

/// One gateway port.
#[derive(Debug)]
struct Listener {
    port: u16,
    /// Index of the listener in the gateway config.
    index: usize,
    /// Half-open connections (listening or SYN-RECEIVED sockets).
    half_open: usize,
}

/// What becomes of a SYN of a new flow.
enum Open {
    /// A listening socket waits for it in this shard.
    Shard(u32),
    /// The backlog is full: answer with a cookie.
    Cookie,
    /// Not served (no such port, `max_connections`, stopping): reset.
    Refused,
}

/// How long a WebSocket connection the core closed before its handshake
/// (a refusal) waits for the request, so that the refusal reaches the
/// client as a message (as on the kernel transport).
const REFUSED_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// A WebSocket connection the core closed before its handshake: its
/// adapter holds the core's last output until the request comes.
#[derive(Debug)]
struct Lingering {
    handle: SocketHandle,
    key: FlowKey,
    ws: Box<WebSocket>,
    /// Closed without an answer if the request has not come by then.
    deadline: StdInstant,
}

/// A socket between SYN and established.
#[derive(Debug)]
struct HalfOpen {
    handle: SocketHandle,
    /// Index into the stack's listeners.
    listener: usize,
    /// The flow it was opened for.
    key: FlowKey,
}

/// A connection the core closed, delivering what was queued before its FIN.
#[derive(Debug)]
struct Closing {
    handle: SocketHandle,
    key: FlowKey,
    /// Bytes not yet in the send buffer.
    pending: Vec<u8>,
    /// The FIN was queued.
    fin: bool,
    /// Reset if not done by then.
    deadline: StdInstant,
}

/// A smoltcp interface and its sockets: at most `shard_size` TCP sockets.
struct Shard {
    iface: Interface,
    sockets: SocketSet<'static>,
    /// IP packets in and out.
    dev: FrameQueue,
    /// TCP sockets in it (half-open, established, closing).
    tcp: usize,
    half_open: Vec<HalfOpen>,
    /// Established connections known to the core.
    conns: FxHashMap<SocketHandle, (ConnId, FlowKey)>,
    /// The buffer slot of each TCP socket.
    slots: FxHashMap<SocketHandle, u32>,
    /// Connections whose output did not fit into the send buffer.
    blocked: Vec<ConnId>,
    closing: Vec<Closing>,
    lingering: Vec<Lingering>,
    /// When its next timer fires.
    due: Option<StdInstant>,
    /// Has packets or output: poll it this round.
    dirty: bool,
}

/// A TCP stack serving the gateway's ports.
pub struct NetStack {
    link: Link,
    addrs: Vec<IpCidr>,
    shards: Vec<Shard>,
    /// Shards with room for another socket.
    open: Vec<u32>,
    flows: FxHashMap<FlowKey, Flow>,
    conns: FxHashMap<ConnId, (u32, SocketHandle)>,
    listeners: Vec<Listener>,
    /// Shards to poll this round.
    work: Vec<u32>,
    /// The earliest timer of any shard, as of the last poll.
    next_due: Option<StdInstant>,
    next_conn: u64,
    udp_echo: Option<SocketHandle>,
    /// UDP listener ports (QUIC, KCP) → listener index.
    udp_ports: Vec<(u16, usize)>,
    /// Those of them whose datagrams go to the worker named by their QUIC
    /// connection id.
    quic_ports: Vec<u16>,
    /// Datagrams for the UDP listeners, taken out of the frame path, for
    /// the backend to hand to their transports ([`NetStack::take_datagram`]).
    datagrams_in: std::collections::VecDeque<datagrams::Datagram>,
    /// Payload buffers of handed-over datagrams, reused.
    spare: Vec<Vec<u8>>,
    /// One datagram being echoed.
    datagram: Vec<u8>,
    cookies: SynCookies,
    /// The process's other workers' flows, and this worker's number.
    directory: Option<(std::sync::Arc<FlowDirectory>, u32)>,
    /// Counters, read with the worker's status.
    pub counters: NetCounters,
    verify_checksums: bool,
    epoch: StdInstant,
    cfg: NetConfig,
    /// The shard and socket holding each buffer slot.
    owners: Vec<(u32, SocketHandle)>,
    /// When `poll` last ran.
    last_poll: StdInstant,
    /// When idle buffers are looked for next.
    next_sweep: StdInstant,
    /// Slots found idle by a sweep.
    idle: Vec<u32>,
    /// The WebSocket settings of each config listener (`None`: plain TCP).
    websocket: Vec<Option<WsSettings>>,
    /// The WebSocket adapter of each connection of a WebSocket listener.
    ws: FxHashMap<ConnId, Box<WebSocket>>,
    /// The WebSocket counters (`ws_*`), read with the worker's status.
    pub ws_counters: crate::io::IoStats,
    /// The sockets' buffers; after `shards`, so that it is dropped after
    /// the sockets borrowing from it.
    pool: BufferPool,
}

impl NetStack {
    /// A stack with Ethernet address `mac` and IP addresses `addrs`,
    /// listening on `ports` — `(port, listener index in the gateway
    /// config)`. Frames will come through `device`.
    pub fn new(
        device: &FrameQueue,
        mac: [u8; 6],
        addrs: &[IpCidr],
        ports: &[(u16, usize)],
        cfg: NetConfig,
        now: StdInstant,
    ) -> NetStack {
        let ips: Vec<IpAddress> = addrs.iter().map(|c| c.address()).collect();
        let mut stack = NetStack {
            link: Link::new(mac, &ips),
            addrs: addrs.to_vec(),
            shards: Vec::new(),
            open: Vec::new(),
            flows: FxHashMap::default(),
            conns: FxHashMap::default(),
            listeners: ports.iter().map(|&(port, index)| Listener { port, index, half_open: 0 }).collect(),
            work: Vec::new(),
            next_due: Some(now),
            next_conn: 1,
            udp_echo: None,
            udp_ports: Vec::new(),
            quic_ports: Vec::new(),
            datagrams_in: std::collections::VecDeque::new(),
            spare: Vec::new(),
            datagram: vec![0; 65_536],
            cookies: SynCookies::new(now),
            directory: None,
            counters: NetCounters::default(),
            verify_checksums: device.verify_checksums,
            epoch: now,
            cfg: NetConfig { shard_size: cfg.shard_size.max(1), ..cfg },
            owners: Vec::new(),
            last_poll: now,
            next_sweep: now,
            idle: Vec::new(),
            websocket: Vec::new(),
            ws: FxHashMap::default(),
            ws_counters: Default::default(),
            pool: BufferPool::new(cfg.rx_buffer, cfg.tx_buffer),
        };
        stack.add_shard();
        if let Some(port) = cfg.udp_echo {
            let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 512], vec![0; 512 * 1024]);
            let mut s = udp::Socket::new(buffer(), buffer());
            if s.bind(port).is_ok() {
                stack.udp_echo = Some(stack.shards[CONTROL as usize].sockets.add(s));
            }
        }
        stack
    }

    /// Serves WebSocket on the listeners (by config index) that have
    /// settings ([`WsSettings::for_listeners`]).
    #[must_use]
    pub fn with_websocket(mut self, settings: Vec<Option<WsSettings>>) -> NetStack {
        self.websocket = settings;
        self
    }

    fn at(&self, now: StdInstant) -> NetInstant {
        NetInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    fn add_shard(&mut self) -> u32 {
        let mut dev = FrameQueue::default();
        dev.medium = Medium::Ip;
        dev.verify_checksums = self.verify_checksums;
        let mut config = Config::new(HardwareAddress::Ip);
        // Initial sequence numbers and ephemeral ports: random per process.
        config.random_seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), self.shards.len());
        let mut iface = Interface::new(config, &mut dev, NetInstant::ZERO);
        iface.update_ip_addrs(|a| {
            for addr in &self.addrs {
                let _ = a.push(*addr);
            }
        });
        // Every player is reachable: the link layer knows through whom.
        for addr in &self.addrs {
            match addr.address() {
                IpAddress::Ipv4(v4) => {
                    let _ = iface.routes_mut().add_default_ipv4_route(v4);
                }
                IpAddress::Ipv6(v6) => {
                    let _ = iface.routes_mut().add_default_ipv6_route(v6);
                }
            }
        }
        self.shards.push(Shard {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            tcp: 0,
            half_open: Vec::new(),
            conns: FxHashMap::default(),
            slots: FxHashMap::default(),
            blocked: Vec::new(),
            closing: Vec::new(),
            lingering: Vec::new(),
            due: None,
            dirty: false,
        });
        let id = (self.shards.len() - 1) as u32;
        if id != CONTROL {
            self.open.push(id);
        }
        id
    }

    /// A shard with room for one more TCP socket.
    fn shard_with_room(&mut self) -> u32 {
        while let Some(&id) = self.open.last() {
            if self.shards[id as usize].tcp < self.cfg.shard_size {
                return id;
            }
            self.open.pop();
        }
        self.add_shard()
    }

    /// Removes a TCP socket of `shard`; its buffers go back to the pool.
    fn drop_socket(&mut self, shard: u32, handle: SocketHandle) {
        let s = &mut self.shards[shard as usize];
        s.sockets.remove(handle);
        if let Some(slot) = s.slots.remove(&handle) {
            self.pool.give_back(slot);
        }
        s.tcp -= 1;
        if s.tcp + 1 == self.cfg.shard_size {
            self.open.push(shard);
        }
    }

    fn mark(&mut self, shard: u32) {
        let s = &mut self.shards[shard as usize];
        if !s.dirty {
            s.dirty = true;
            self.work.push(shard);
        }
    }

    /// Joins the workers of a process as worker `worker` of `directory`:
    /// its flows are registered there, and segments of flows another worker
    /// owns are handed to it.
    pub fn join(&mut self, directory: std::sync::Arc<FlowDirectory>, worker: u32) {
        self.directory = Some((directory, worker));
    }

    /// Frames other workers handed to this one, into `device`.
    pub fn take_forwarded(&mut self, device: &mut FrameQueue) {
        if let Some((d, me)) = &self.directory {
            while let Some(frame) = d.take(*me) {
                device.push_rx(&frame);
            }
        }
    }

    fn own_flow(&mut self, key: FlowKey, flow: Flow) {
        self.flows.insert(key, flow);
        if let Some((d, me)) = &self.directory {
            d.register(key, *me);
        }
    }

    fn forget_flow(&mut self, key: &FlowKey) {
        self.flows.remove(key);
        if let Some((d, me)) = &self.directory {
            d.forget(key, *me);
        }
    }

    /// Whether connections and half-open ones have reached `max_connections`.
    fn at_capacity(&self) -> bool {
        self.conns.len() + self.listening() >= self.cfg.max_connections
    }

    /// Half-open connections, over all ports.
    pub fn listening(&self) -> usize {
        self.listeners.iter().map(|l| l.half_open).sum()
    }

    /// Stops accepting: half-open connections are dropped (shutdown).
    pub fn stop_listening(&mut self) {
        for id in 0..self.shards.len() {
            for h in std::mem::take(&mut self.shards[id].half_open) {
                self.drop_socket(id as u32, h.handle);
                self.forget_flow(&h.key);
            }
        }
        for l in &mut self.listeners {
            l.half_open = 0;
        }
        self.cfg.backlog = 0;
    }

    /// Established connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// TCP sockets whose buffers may hold memory (the others have been idle
    /// and gave their pages back).
    pub fn buffers_backed(&self) -> usize {
        self.pool.backed()
    }

    /// Shards (the control shard included).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Closed connections not yet gone (delivering what was queued before
    /// their close, or waiting for the peer's FIN).
    pub fn closing(&self) -> usize {
        self.shards.iter().map(|s| s.closing.len()).sum()
    }

    /// Closed connections with bytes their peer has not acknowledged yet.
    pub fn delivering(&self) -> usize {
        self.shards
            .iter()
            .flat_map(|s| s.closing.iter().map(move |c| (s, c)))
            .filter(|(s, c)| !c.fin || !c.pending.is_empty() || s.sockets.get::<tcp::Socket>(c.handle).send_queue() > 0)
            .count()
    }

    /// Serves UDP listeners on `ports` (`(port, listener index)`): their
    /// datagrams skip the TCP path and wait for [`NetStack::take_datagram`].
    /// Datagrams to `quic_ports` whose connection id names another worker
    /// of the process go to that worker (a client that moved to an address
    /// the NIC hashes to another queue).
    pub fn set_udp_ports(&mut self, ports: Vec<(u16, usize)>, quic_ports: Vec<u16>) {
        self.udp_ports = ports;
        self.quic_ports = quic_ports;
    }

    /// Hands the frame of a QUIC datagram whose connection id names
    /// another worker to that worker. Returns whether it did.
    fn forward_quic(&mut self, payload: &[u8], frame: &[u8]) -> bool {
        let Some((d, me)) = &self.directory else { return false };
        let Some(worker) = crate::transport::quic::worker_of(payload).map(u32::from) else { return false };
        if worker == *me || !d.has_worker(worker) {
            return false;
        }
        if d.forward(worker, frame.to_vec()) {
            self.counters.frames_forwarded += 1;
        } else {
            self.counters.drop_forward_full += 1;
        }
        true
    }

    /// The next datagram for a UDP listener; give it back with
    /// [`NetStack::recycle_datagram`].
    pub fn take_datagram(&mut self) -> Option<datagrams::Datagram> {
        self.datagrams_in.pop_front()
    }

    /// Takes a handed-over datagram's buffer back for reuse.
    pub fn recycle_datagram(&mut self, d: datagrams::Datagram) {
        if self.spare.len() < 256 {
            self.spare.push(d.payload);
        }
    }

    /// Sends `payload` from UDP listener address `local` to `to`, through
    /// the next hop `to` was last heard from. Whether it went.
    pub fn send_datagram(
        &mut self,
        local: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
        device: &mut FrameQueue,
    ) -> bool {
        let Some(next_hop) = self.link.next_hop(to.ip().into()) else {
            self.counters.drop_no_next_hop += 1;
            return false;
        };
        let len = datagrams::packet_len(local, payload.len());
        self.link
            .send_with(next_hop, local.is_ipv6(), len, device, |buf| datagrams::emit(buf, local, to, payload))
            .is_some()
    }

    /// One round: frames from `device` through the stack into the core,
    /// answers back out. Call [`ClientTransport::transmit`] /
    /// [`ClientTransport::close`] for the core's client outputs in between,
    /// then `poll` again to send.
    pub fn poll(&mut self, now: StdInstant, device: &mut FrameQueue, core: &mut Gateway) {
        let ts = self.at(now);
        self.last_poll = now;
        while let Some(frame) = device.rx.pop_front() {
            self.ingress(&frame, device, now, ts);
            device.recycle(frame);
        }
        if self.next_due.is_some_and(|t| now >= t) {
            for id in 0..self.shards.len() {
                if !self.shards[id].dirty && self.shards[id].due.is_some_and(|t| now >= t) {
                    self.mark(id as u32);
                }
            }
        }
        while let Some(id) = self.work.pop() {
            self.shards[id as usize].dirty = false;
            self.poll_shard(id, now, ts, device, core);
        }
        if now >= self.next_sweep {
            self.release_idle_buffers(now);
        }
        self.next_due = self.shards.iter().filter_map(|s| s.due).min();
        if self.pool.backed() > 0 {
            self.next_due = Some(self.next_due.map_or(self.next_sweep, |t| t.min(self.next_sweep)));
        }
    }

    /// Gives the pages of sockets whose buffers have been empty for
    /// [`buffers::RELEASE_AFTER`] back to the kernel; a bounded number of
    /// sockets per sweep, ten sweeps a second.
    fn release_idle_buffers(&mut self, now: StdInstant) {
        const PER_SWEEP: usize = 1024;
        self.next_sweep = now + Duration::from_millis(100);
        let mut idle = std::mem::take(&mut self.idle);
        self.pool.idle(now, PER_SWEEP, &mut idle);
        for &slot in &idle {
            let (id, handle) = self.owners[slot as usize];
            let socket = self.shards[id as usize].sockets.get::<tcp::Socket>(handle);
            if socket.recv_queue() == 0 && socket.send_queue() == 0 {
                self.pool.release(slot);
            } else {
                self.pool.touch(slot, now);
            }
        }
        self.idle = idle;
    }

    /// Sends a received frame to the shard that owns its flow.
    fn ingress(&mut self, frame: &[u8], device: &mut FrameQueue, now: StdInstant, ts: NetInstant) {
        let (next_hop, packet) = match self.link.receive(frame, device) {
            Received::Packet(next_hop, packet) => (next_hop, packet),
            Received::Answered | Received::Dropped => return,
        };
        if !self.udp_ports.is_empty() {
            if let Some((listener, local, from, payload)) =
                datagrams::parse(packet, &self.udp_ports, device.verify_checksums)
            {
                if self.quic_ports.contains(&local.port()) && self.forward_quic(payload, frame) {
                    return;
                }
                self.link.heard(from.ip().into(), next_hop);
                let mut buf = self.spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(payload);
                self.datagrams_in.push_back(datagrams::Datagram { listener, local, from, payload: buf });
                return;
            }
        }
        let (shard, offset) = match flows::segment(packet, true) {
            Some(seg) => match self.flows.get_mut(&seg.key).map(|flow| {
                flow.next_hop = next_hop;
                (flow.shard, flow.seq_offset)
            }) {
                Some(known) => known,
                None if self.forward(&seg.key, frame) => return,
                None if seg.opens => match self.open_for(seg.key, next_hop) {
                    Open::Shard(shard) => {
                        // smoltcp gives a SYN to the first listening socket of
                        // its port: the new socket takes this one now, before
                        // another SYN can land in the same shard.
                        let s = &mut self.shards[shard as usize];
                        s.dev.push_rx(packet);
                        s.iface.poll(ts, &mut s.dev, &mut s.sockets);
                        self.mark(shard);
                        return;
                    }
                    Open::Cookie => return self.send_cookie(seg.key, packet, next_hop, device, now),
                    Open::Refused => {
                        self.link.heard(seg.key.remote.0, next_hop);
                        (CONTROL, 0)
                    }
                },
                None => match self.cookie_ack(seg.key, packet, next_hop, now, ts) {
                    Some(established) => established,
                    None => {
                        self.link.heard(seg.key.remote.0, next_hop);
                        (CONTROL, 0)
                    }
                },
            },
            None => {
                if let Some((src, _)) = ends(packet) {
                    self.link.heard(src, next_hop);
                }
                (CONTROL, 0)
            }
        };
        let s = &mut self.shards[shard as usize];
        s.dev.push_rx(packet);
        if offset != 0 {
            // A cookie connection: the player acknowledges the cookie's
            // numbers, smoltcp knows its own.
            if let Some(p) = s.dev.rx.back_mut() {
                cookies::shift(p, 0, offset);
            }
        }
        self.mark(shard);
    }

    /// Hands the frame of a flow another worker owns to that worker (its
    /// queue got the flow's SYN). Returns whether it did.
    fn forward(&mut self, key: &FlowKey, frame: &[u8]) -> bool {
        let Some((d, me)) = &self.directory else { return false };
        match d.owner(key) {
            Some(owner) if owner != *me => {
                if d.forward(owner, frame.to_vec()) {
                    self.counters.frames_forwarded += 1;
                } else {
                    self.counters.drop_forward_full += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Opens a listening socket for a SYN of a new flow, within the port's
    /// backlog and `max_connections`.
    fn open_for(&mut self, key: FlowKey, next_hop: EthernetAddress) -> Open {
        let Some(listener) = self.listeners.iter().position(|l| l.port == key.local.1) else { return Open::Refused };
        if self.at_capacity() {
            self.counters.drop_syn_max_connections += 1;
            return Open::Refused;
        }
        if self.listeners[listener].half_open >= self.cfg.backlog {
            // Full: a stateless answer, unless the gateway is stopping.
            return if self.cfg.backlog == 0 { Open::Refused } else { Open::Cookie };
        }
        match self.add_socket(key, listener, next_hop) {
            Some(shard) => Open::Shard(shard),
            None => Open::Refused,
        }
    }

    /// A TCP socket listening for `key` in a shard with room.
    fn add_socket(&mut self, key: FlowKey, listener: usize, next_hop: EthernetAddress) -> Option<u32> {
        let buffers = self.pool.take()?;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut buffers.rx[..self.cfg.rx_buffer]),
            tcp::SocketBuffer::new(&mut buffers.tx[..self.cfg.tx_buffer]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(NetDuration::from_secs(30)));
        socket.set_timeout(Some(self.cfg.half_open_timeout));
        if socket.listen(key.local).is_err() {
            self.pool.give_back(buffers.slot);
            return None;
        }
        let shard = self.shard_with_room();
        let s = &mut self.shards[shard as usize];
        let handle = s.sockets.add(socket);
        s.slots.insert(handle, buffers.slot);
        s.tcp += 1;
        let slot = buffers.slot as usize;
        if self.owners.len() <= slot {
            self.owners.resize(slot + 1, (CONTROL, handle));
        }
        self.owners[slot] = (shard, handle);
        s.half_open.push(HalfOpen { handle, listener, key });
        self.listeners[listener].half_open += 1;
        self.own_flow(key, Flow { shard, next_hop, seq_offset: 0 });
        Some(shard)
    }

    /// Answers a SYN with a cookie: no state.
    fn send_cookie(
        &mut self,
        key: FlowKey,
        packet: &[u8],
        next_hop: EthernetAddress,
        device: &mut FrameQueue,
        now: StdInstant,
    ) {
        let Some((client_isn, mss)) = cookies::syn_options(packet) else { return };
        let (cookie, mss) = self.cookies.make(&key, client_isn, mss, now);
        let window = self.cfg.rx_buffer.min(usize::from(u16::MAX)) as u16;
        self.link.send(&cookies::syn_ack(&key, cookie, client_isn, mss, window), next_hop, device);
        self.counters.syn_cookies_sent += 1;
    }

    /// An ACK of no known flow that carries a valid cookie becomes a
    /// connection: smoltcp is handed the player's SYN, its SYN-ACK is taken
    /// away, and the flow's numbers are shifted from then on. Returns the
    /// shard and the shift.
    fn cookie_ack(
        &mut self,
        key: FlowKey,
        packet: &[u8],
        next_hop: EthernetAddress,
        now: StdInstant,
        ts: NetInstant,
    ) -> Option<(u32, u32)> {
        let listener = self.listeners.iter().position(|l| l.port == key.local.1)?;
        if self.cfg.backlog == 0 || self.at_capacity() {
            return None;
        }
        let (seq, ack, window) = cookies::completing_ack(packet)?;
        let accepted = self.cookies.check(&key, seq, ack, now)?;
        let shard = self.add_socket(key, listener, next_hop)?;
        let s = &mut self.shards[shard as usize];
        s.dev.push_rx(&cookies::syn(&key, accepted.client_isn, accepted.mss, window));
        s.iface.poll(ts, &mut s.dev, &mut s.sockets);
        let syn_ack = s.dev.tx.iter().position(|p| {
            flows::segment(p, false).is_some_and(|seg| seg.key == key) && cookies::syn_ack_isn(p).is_some()
        });
        let Some(isn) = syn_ack.and_then(|i| s.dev.tx.remove(i)).and_then(|p| cookies::syn_ack_isn(&p)) else {
            // smoltcp did not take the SYN: the socket is dropped on the
            // shard's next poll (still listening).
            self.mark(shard);
            return None;
        };
        let offset = accepted.cookie.wrapping_sub(isn);
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.seq_offset = offset;
        }
        self.counters.syn_cookies_accepted += 1;
        Some((shard, offset))
    }

    /// Runs one shard: its packets through smoltcp, its sockets' news to
    /// the core, its output out.
    fn poll_shard(&mut self, id: u32, now: StdInstant, ts: NetInstant, device: &mut FrameQueue, core: &mut Gateway) {
        let s = &mut self.shards[id as usize];
        s.iface.poll(ts, &mut s.dev, &mut s.sockets);
        if id == CONTROL {
            self.echo_udp();
        }
        self.accept(id, now, core);
        self.receive(id, now, core);
        self.linger(id, now);
        self.flush_closing(id, now);
        self.report_writable(id, core);
        let s = &mut self.shards[id as usize];
        s.iface.poll(ts, &mut s.dev, &mut s.sockets);
        self.egress(id, device);
        let s = &mut self.shards[id as usize];
        s.due =
            s.iface.poll_at(ts, &s.sockets).map(|t| self.epoch + Duration::from_micros(t.total_micros().max(0) as u64));
        if let Some(linger) = s.lingering.iter().map(|l| l.deadline).min() {
            s.due = Some(s.due.map_or(linger, |t| t.min(linger)));
        }
    }

    /// WebSocket connections refused before their handshake: what they
    /// send goes to their adapter alone; once the handshake is done (the
    /// refusal goes out as messages), the peer is gone, or the wait is
    /// over, they close like any connection the core closed.
    fn linger(&mut self, id: u32, now: StdInstant) {
        let s = &mut self.shards[id as usize];
        let mut i = 0;
        while i < s.lingering.len() {
            let l = &mut s.lingering[i];
            let socket = s.sockets.get_mut::<tcp::Socket>(l.handle);
            let mut done = false;
            while socket.can_recv() && !done {
                let _ = socket.recv(|buf| {
                    done = l.ws.handle_input(buf).finished;
                    (buf.len(), ())
                });
            }
            if done || now >= l.deadline || !socket.may_recv() {
                let l = s.lingering.swap_remove(i);
                let pending = if done { l.ws.pending().to_vec() } else { Vec::new() };
                let deadline = now + self.cfg.close_timeout;
                s.closing.push(Closing { handle: l.handle, key: l.key, pending, fin: false, deadline });
            } else {
                i += 1;
            }
        }
    }

    /// The shard's IP packets out, each to its next hop.
    fn egress(&mut self, id: u32, device: &mut FrameQueue) {
        let s = &mut self.shards[id as usize];
        while let Some(mut packet) = s.dev.tx.pop_front() {
            let next_hop = match flows::segment(&packet, false) {
                Some(seg) => match self.flows.get(&seg.key) {
                    Some(flow) => {
                        if flow.seq_offset != 0 {
                            cookies::shift(&mut packet, flow.seq_offset, 0);
                        }
                        Some(flow.next_hop)
                    }
                    None => self.link.next_hop(seg.key.remote.0),
                },
                None => ends(&packet).and_then(|(_, d)| self.link.next_hop(d)),
            };
            match next_hop {
                Some(mac) => self.link.send(&packet, mac, device),
                None => self.counters.drop_no_next_hop += 1,
            }
            s.dev.recycle(packet);
        }
    }

    /// Every datagram to the echo port goes back where it came from.
    fn echo_udp(&mut self) {
        let Some(h) = self.udp_echo else { return };
        let s = self.shards[CONTROL as usize].sockets.get_mut::<udp::Socket>(h);
        while s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut self.datagram) else { return };
            let _ = s.send_slice(&self.datagram[..n], meta);
        }
    }

    /// Established half-open sockets become connections of the core; failed
    /// or timed-out handshakes free their place.
    fn accept(&mut self, id: u32, now: StdInstant, core: &mut Gateway) {
        let mut i = 0;
        while i < self.shards[id as usize].half_open.len() {
            let s = &mut self.shards[id as usize];
            let h = &s.half_open[i];
            let (handle, listener, key) = (h.handle, h.listener, h.key);
            let socket = s.sockets.get_mut::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::Established => {
                    // Connected: the core's heartbeat decides when a quiet
                    // player is gone, not the handshake timeout.
                    socket.set_timeout(None);
                    debug_assert_eq!(
                        socket.remote_endpoint().map(|e| (e.addr, e.port)),
                        Some(key.remote),
                        "a socket holds the flow it was opened for"
                    );
                    s.half_open.swap_remove(i);
                    let conn = ConnId::new(Transport::UserTcp, self.next_conn);
                    self.next_conn += 1;
                    s.conns.insert(handle, (conn, key));
                    self.conns.insert(conn, (id, handle));
                    self.listeners[listener].half_open -= 1;
                    let peer = std::net::SocketAddr::new(key.remote.0.into(), key.remote.1);
                    let index = self.listeners[listener].index;
                    if let Some(settings) = self.websocket.get(index).cloned().flatten() {
                        self.ws.insert(conn, Box::new(WebSocket::new(settings)));
                    }
                    core.handle_connect(now, conn, index, peer);
                }
                tcp::State::Listen | tcp::State::SynReceived => i += 1,
                _ => {
                    // A handshake that failed, timed out, or whose SYN never
                    // came through (malformed).
                    s.half_open.swap_remove(i);
                    self.drop_socket(id, handle);
                    self.forget_flow(&key);
                    self.listeners[listener].half_open -= 1;
                }
            }
        }
        // A listening socket whose SYN smoltcp refused would wait for
        // another flow's SYN: give it up.
        let s = &mut self.shards[id as usize];
        let stale: Vec<usize> = (0..s.half_open.len())
            .rev()
            .filter(|&i| s.sockets.get::<tcp::Socket>(s.half_open[i].handle).state() == tcp::State::Listen)
            .collect();
        for i in stale {
            let h = self.shards[id as usize].half_open.swap_remove(i);
            self.drop_socket(id, h.handle);
            self.forget_flow(&h.key);
            self.listeners[h.listener].half_open -= 1;
        }
    }

    /// Bytes received go to the core, straight from the socket buffers;
    /// connections the peer closed are reported.
    fn receive(&mut self, id: u32, now: StdInstant, core: &mut Gateway) {
        let s = &mut self.shards[id as usize];
        let mut gone = Vec::new();
        let mut finished = Vec::new();
        for (&handle, &(conn, key)) in &s.conns {
            let socket = s.sockets.get_mut::<tcp::Socket>(handle);
            if socket.can_recv() {
                if let Some(&slot) = s.slots.get(&handle) {
                    self.pool.touch(slot, now);
                }
            }
            let mut ws = self.ws.get_mut(&conn);
            while socket.can_recv() {
                let _ = socket.recv(|buf| {
                    match ws.as_deref_mut() {
                        None => core.handle_data(now, conn, buf),
                        Some(ws) => {
                            if websocket::into_core(ws, now, core, conn, buf, &mut self.ws_counters).finished {
                                finished.push(conn);
                            }
                        }
                    }
                    (buf.len(), ())
                });
            }
            if let Some(ws) = ws {
                // The 101 and pongs.
                if !ws.pending().is_empty() {
                    let n = socket.send_slice(ws.pending()).unwrap_or(0);
                    ws.sent(n);
                    if !ws.pending().is_empty() && !s.blocked.contains(&conn) {
                        s.blocked.push(conn);
                    }
                }
            }
            if !socket.may_recv() || !socket.is_active() {
                gone.push((handle, conn, key));
            }
        }
        for conn in finished {
            // The peer closed or broke the protocol: the close frame (or
            // HTTP answer) goes out before the FIN. If the core is closing
            // the connection already, its close comes after its last words.
            if core.takes_input(conn) {
                self.close(now, core, conn);
            }
        }
        for (handle, conn, key) in gone {
            self.ws.remove(&conn);
            if self.conns.remove(&conn).is_some() {
                let s = &mut self.shards[id as usize];
                s.conns.remove(&handle);
                s.closing.push(Closing {
                    handle,
                    key,
                    pending: Vec::new(),
                    fin: false,
                    deadline: now + self.cfg.close_timeout,
                });
                core.handle_disconnect(now, conn);
            }
        }
    }

    /// Closed connections: what was queued goes into the send buffer as it
    /// drains, then the FIN; done sockets are freed, late ones reset.
    fn flush_closing(&mut self, id: u32, now: StdInstant) {
        let mut i = 0;
        while i < self.shards[id as usize].closing.len() {
            let s = &mut self.shards[id as usize];
            let c = &mut s.closing[i];
            let socket = s.sockets.get_mut::<tcp::Socket>(c.handle);
            // Nobody reads any more: what the peer still sends is dropped,
            // so that its window stays open until it closes too.
            while socket.can_recv() {
                let _ = socket.recv(|b| (b.len(), ()));
            }
            if !c.pending.is_empty() && socket.may_send() {
                let n = socket.send_slice(&c.pending).unwrap_or(0);
                c.pending.drain(..n);
            }
            if (c.pending.is_empty() || !socket.may_send()) && !c.fin {
                socket.close();
                c.fin = true;
            }
            if now >= c.deadline && !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                socket.abort();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                let c = s.closing.swap_remove(i);
                self.drop_socket(id, c.handle);
                self.forget_flow(&c.key);
            } else {
                i += 1;
            }
        }
    }

    /// Blocked connections whose send buffer has room again are reported
    /// writable (only those: reporting a full one would have the core
    /// retry at once, forever).
    fn report_writable(&mut self, id: u32, core: &mut Gateway) {
        let (conns, s) = (&self.conns, &mut self.shards[id as usize]);
        let sockets = &s.sockets;
        let mut adapters = Vec::new();
        s.blocked.retain(|conn| match conns.get(conn) {
            Some(&(_, h)) => {
                let socket = sockets.get::<tcp::Socket>(h);
                if !socket.may_send() {
                    return false; // closing: the receive path reports it
                }
                if socket.send_queue() == socket.send_capacity() {
                    return true;
                }
                if self.ws.contains_key(conn) {
                    // Its adapter may hold bytes the core no longer has.
                    adapters.push(*conn);
                } else {
                    core.handle_writable(*conn);
                }
                false
            }
            None => false,
        });
        for conn in adapters {
            self.transmit(core, conn);
        }
    }

    /// Whether a timer of the stack (retransmission, delayed ACK, keep-alive,
    /// close) is due: without new frames or output, polling is needed only
    /// then.
    pub fn is_due(&self, now: StdInstant) -> bool {
        !self.work.is_empty() || self.next_due.is_some_and(|t| now >= t)
    }

    /// When the stack's next timer fires, if any (now, if a shard has work).
    pub fn due(&self) -> Option<StdInstant> {
        if self.work.is_empty() {
            self.next_due
        } else {
            Some(self.epoch)
        }
    }
}

/// The userspace stack owns the [`Transport::UserTcp`] connections.
impl ClientTransport for NetStack {
    /// Writes what the core has for `conn` into its send buffer.
    fn transmit(&mut self, core: &mut Gateway, conn: ConnId) {
        let Some(&(id, h)) = self.conns.get(&conn) else { return };
        let s = &mut self.shards[id as usize];
        let socket = s.sockets.get_mut::<tcp::Socket>(h);
        let (n, held) = match self.ws.get_mut(&conn) {
            None => {
                let n = socket.send_slice(core.outbound(conn)).unwrap_or(0);
                core.consume(conn, n);
                (n, false)
            }
            Some(ws) => {
                let mut n = 0;
                let held = websocket::transmit(ws, core, conn, |b| {
                    let sent = socket.send_slice(b).unwrap_or(0);
                    n += sent;
                    Ok(sent)
                })
                .unwrap_or(false);
                (n, held)
            }
        };
        if n > 0 {
            if let Some(&slot) = s.slots.get(&h) {
                // The time of the last poll is near enough to tell idle.
                self.pool.touch(slot, self.last_poll);
            }
        }
        if (held || !core.outbound(conn).is_empty()) && !s.blocked.contains(&conn) {
            s.blocked.push(conn);
        }
        self.mark(id);
    }

    /// Takes everything the core has queued for `conn`: it is sent before
    /// the FIN. Tells the core the connection is gone.
    fn close(&mut self, now: StdInstant, core: &mut Gateway, conn: ConnId) {
        if let Some((id, handle)) = self.conns.remove(&conn) {
            let s = &mut self.shards[id as usize];
            if let Some((_, key)) = s.conns.remove(&handle) {
                let pending = match self.ws.remove(&conn) {
                    // What the adapter holds, the core's last output as
                    // messages, the close frame.
                    Some(mut ws) => {
                        ws.shutdown(core.outbound(conn));
                        if ws.awaits_handshake() {
                            // Held until the request comes (bounded wait).
                            let deadline = now + REFUSED_HANDSHAKE_WAIT;
                            s.lingering.push(Lingering { handle, key, ws, deadline });
                            self.mark(id);
                            core.handle_disconnect(now, conn);
                            return;
                        }
                        ws.pending().to_vec()
                    }
                    None => core.outbound(conn).to_vec(),
                };
                let deadline = now + self.cfg.close_timeout;
                s.closing.push(Closing { handle, key, pending, fin: false, deadline });
            }
            self.mark(id);
        }
        core.handle_disconnect(now, conn);
    }
}

/// The source and destination addresses of an IP packet.
pub(crate) fn ends(packet: &[u8]) -> Option<(IpAddress, IpAddress)> {
    match packet.first()? >> 4 {
        4 => Ipv4Packet::new_checked(packet).ok().map(|p| (p.src_addr().into(), p.dst_addr().into())),
        6 => Ipv6Packet::new_checked(packet).ok().map(|p| (p.src_addr().into(), p.dst_addr().into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
