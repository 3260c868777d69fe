//! The `netstack` harness: a [`NetStack`] with a real [`Gateway`] core
//! behind it, built as in `dataplane/src/netstack/tests.rs`, fed Ethernet
//! frames from the fuzzer's input with a simulated clock.
//!
//! Input: one options byte, then records `[ctl: u8][len: u16 BE][frame]`
//! (a record longer than what is left takes the rest).
//!
//! - options bit 0: verify received checksums (the DPDK path and tests);
//!   clear, they are not checked, as on AF_XDP.
//! - `ctl` bits 0–2: how far the clock moves before this record's poll
//!   ([`ADVANCE_MS`]); bit 3: patch the frame's TCP sequence and
//!   acknowledgement numbers to what the stack expects of that peer
//!   (tracked from the segments it sent), checksums refreshed — the stack's
//!   initial sequence numbers are random per process, so without this the
//!   fuzzer could never complete a handshake; bit 4: queue the frame
//!   without polling (several frames in one poll).
//!
//! After the last record the clock jumps past the handshake, heartbeat,
//! request and resume timeouts, polling at each step, so timers run too.
//!
//! The core's outputs are carried out through the stack
//! ([`ClientTransport::transmit`] / [`ClientTransport::close`]); the one
//! game-server link of the config "connects" at once and swallows what it
//! is sent (no game server answers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::config::Config;
use portcullis_core::shard::Shared;
use portcullis_core::{Gateway, Output, Stats};
use portcullis_dataplane::io::dispatch::ClientTransport;
use portcullis_dataplane::netstack::{FrameQueue, NetConfig, NetCounters, NetStack};
use smoltcp::wire::{IpCidr, Ipv4Address, Ipv6Address};

use crate::packets::{self, Ip};

/// Carries out every output of `core`: client outputs through `transport`,
/// link outputs as a game server that takes everything and never answers.
pub fn carry_out(now: Instant, core: &mut Gateway, transport: &mut impl ClientTransport) {
    while let Some(out) = core.poll_output() {
        match out {
            Output::Transmit(c) => transport.transmit(core, c),
            Output::Close(c) => transport.close(now, core, c),
            Output::ConnectLink(l, _) => core.handle_link_connected(now, l),
            Output::TransmitLink(l) => {
                let n = core.link_outbound(l).len();
                core.consume_link(l, n);
            }
            Output::CloseLink(_) => {}
        }
    }
}

/// The secret of the token authenticator (seeds sign with it).
pub const SECRET: &str = "fuzz-netstack-secret-0123";
/// Unix time the core starts at (tokens must expire later).
pub const UNIX_NOW: u64 = 1_800_000_000;
/// Listener ports: protobuf, text.
pub const PORTS: [u16; 2] = [7000, 7001];
/// Port of the UDP echo service.
pub const UDP_ECHO: u16 = 7100;

/// Clock advance before a record, by `ctl & 7`.
pub const ADVANCE_MS: [u64; 8] = [0, 1, 10, 100, 1_000, 5_000, 30_000, 61_000];
/// `ctl` bit: patch TCP sequence numbers.
pub const PATCH: u8 = 0x08;
/// `ctl` bit: queue without polling.
pub const QUEUE: u8 = 0x10;

/// The config text of the harness: two listeners (protobuf, text), token
/// auth, one service with one game server, business commands routed to it.
pub fn config_text() -> String {
    format!(
        "[[listeners]]\nbind = \"10.77.0.1:{}\"\n[[listeners]]\nbind = \"10.77.0.1:{}\"\ncodec = \"text\"\n\
         [auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [[services]]\nname = \"game\"\nservers = [\"127.0.0.1:9\"]\n\
         [[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n",
        PORTS[0], PORTS[1]
    )
}

/// What the stack sent last on a connection: the sequence number it will
/// send next, and what it acknowledged.
#[derive(Debug, Clone, Copy)]
struct Peer {
    next_seq: u32,
    acked: u32,
}

struct Harness {
    now: Instant,
    dev: FrameQueue,
    stack: NetStack,
    core: Gateway,
    shared: Arc<Shared>,
    peers: HashMap<(Ip, u16), Peer>,
}

thread_local! {
    static CONFIG: Config = Config::parse(&config_text(), "fuzz netstack").expect("the harness config is valid");
}

impl Harness {
    fn new(verify_checksums: bool) -> Harness {
        let now = Instant::now();
        CONFIG.with(|config| {
            let auth = portcullis_core::auth::from_config(config).expect("token auth");
            let shared = crate::shared::take();
            let core = Gateway::new(config, 0, shared.clone(), auth, now, std::time::Duration::from_secs(UNIX_NOW));
            let mut dev = FrameQueue::default();
            dev.verify_checksums = verify_checksums;
            let addrs = [
                IpCidr::new(Ipv4Address::from(packets::GW4).into(), 24),
                IpCidr::new(Ipv6Address::from(packets::GW6).into(), 64),
            ];
            let cfg = NetConfig { udp_echo: Some(UDP_ECHO), backlog: 4, ..NetConfig::default() };
            let ports = [(PORTS[0], 0), (PORTS[1], 1)];
            let stack = NetStack::new(&dev, packets::GW_MAC, &addrs, &ports, cfg, now);
            Harness { now, dev, stack, core, shared, peers: HashMap::new() }
        })
    }

    /// One round as a backend runs it: frames in, core outputs out, frames
    /// sent; what the stack sent is remembered for [`PATCH`].
    fn poll(&mut self) {
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
        }
        self.stack.poll(self.now, &mut self.dev, &mut self.core);
        carry_out(self.now, &mut self.core, &mut self.stack);
        self.stack.poll(self.now, &mut self.dev, &mut self.core);
        while let Some(f) = self.dev.tx.pop_front() {
            self.learn(&f);
            self.dev.recycle(f);
        }
    }

    fn learn(&mut self, frame: &[u8]) {
        let Some((_, dst, l4)) = packets::tcp_header(frame) else { return };
        let h = &frame[l4..];
        let port = u16::from_be_bytes([h[2], h[3]]);
        let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let hlen = usize::from(h[12] >> 4) * 4;
        let fl = h[13];
        let len = h.len().saturating_sub(hlen) as u32;
        let next_seq =
            seq.wrapping_add(len).wrapping_add(u32::from(fl & (packets::flags::SYN | packets::flags::FIN) != 0));
        let peer = self.peers.entry((dst, port)).or_insert(Peer { next_seq, acked: ack });
        peer.next_seq = next_seq;
        if fl & packets::flags::ACK != 0 {
            peer.acked = ack;
        }
    }

    /// Sets the sequence and acknowledgement numbers of a TCP frame to what
    /// the stack expects, if it has spoken to that peer.
    fn patch(&self, frame: &mut [u8]) {
        let Some((src, _, l4)) = packets::tcp_header(frame) else { return };
        let port = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
        let Some(p) = self.peers.get(&(src, port)) else { return };
        frame[l4 + 4..l4 + 8].copy_from_slice(&p.acked.to_be_bytes());
        frame[l4 + 8..l4 + 12].copy_from_slice(&p.next_seq.to_be_bytes());
        if self.dev.verify_checksums {
            packets::fix_tcp_checksums(frame);
        }
    }
}

/// Runs the harness over one input. Never panics unless the code under
/// test does.
pub fn run(data: &[u8]) {
    run_with_stats(data);
}

/// [`run`], returning the core's and the stack's counters (the seed tests
/// check that the seeds reach logins and routed requests through TCP).
pub fn run_with_stats(data: &[u8]) -> (Stats, NetCounters) {
    let Some((&options, mut rest)) = data.split_first() else { return Default::default() };
    let mut h = Harness::new(options & 1 != 0);
    let mut frame = Vec::new();
    while let Some((ctl, bytes)) = crate::next_record(&mut rest) {
        frame.clear();
        frame.extend_from_slice(bytes);
        if ctl & PATCH != 0 {
            h.patch(&mut frame);
        }
        h.dev.push_rx(&frame);
        h.now += Duration::from_millis(ADVANCE_MS[usize::from(ctl & 7)]);
        if ctl & QUEUE == 0 {
            h.poll();
        }
    }
    // Let every timer run: handshake (5 s), heartbeat, request and resume
    // (60 s) timeouts, keep-alive.
    for step in [0, 10, 1_000, 5_100, 31_000, 61_000, 120_000] {
        h.now += Duration::from_millis(step);
        h.poll();
    }
    // Then a graceful shutdown, through to the end, so that the shared
    // state is clean for the next run.
    h.core.shutdown(h.now);
    for step in [0, 1, 1_000, 10_000, 30_000, 61_000] {
        h.now += Duration::from_millis(step);
        h.poll();
    }
    let Harness { core, shared, stack, .. } = h;
    let stats = (core.stats().clone(), stack.counters);
    drop(core);
    crate::shared::give_back(shared);
    stats
}
