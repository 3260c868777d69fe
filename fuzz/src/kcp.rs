//! The `kcp` harness: a [`KcpTransport`] with a real [`Gateway`] core
//! behind it, fed UDP datagrams from the fuzzer's input with a simulated
//! clock.
//!
//! Input: records `[ctl: u8][len: u16 BE][datagram]` (a record longer than
//! what is left takes the rest).
//!
//! - `ctl` bits 0–2: how far the clock moves before the record
//!   ([`ADVANCE_MS`]);
//! - bits 3–4: which of [`CLIENTS`] sends it;
//! - bit 5 ([`CONNECT`]): the datagram is replaced by a `CONNECT` with the
//!   last `COOKIE` that client was sent (if any);
//! - bit 6 ([`CONV`]): the conversation id that client was accepted on (if
//!   any) is written into the datagram: into every KCP segment header when
//!   its first four bytes are not zero, else at offset 8 (a `CLOSE`).
//!
//! The cookie key is random per run, so without bits 5 and 6 the fuzzer
//! could never get past the handshake.
//!
//! Checked: the answer to a `HELLO` is one datagram no larger than it (no
//! amplification) and opens nothing; no datagram sent is larger than the
//! listener's MTU; after each record the core and the transport agree on
//! the number of open connections. After the last record the clock jumps
//! past the dead-peer timeout: every connection is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::config::Config;
use portcullis_core::shard::Shared;
use portcullis_core::{Gateway, Stats};
use portcullis_dataplane::transport::kcp::{KcpCounters, KcpTransport};
use portcullis_dataplane::transport::DatagramTransport;
use portcullis_proto::kcp::{conv_of, kind, Control, CONTROL_CONV, COOKIE_LEN, KCP_HEADER_LEN};

use crate::netstack::{carry_out, SECRET, UNIX_NOW};

/// Clock advance before a record, by `ctl & 7`.
pub const ADVANCE_MS: [u64; 8] = [0, 1, 10, 100, 1_000, 5_000, 12_000, 16_000];
/// `ctl` bit: send a `CONNECT` with the client's last cookie instead.
pub const CONNECT: u8 = 0x20;
/// `ctl` bit: write the client's conversation id into the datagram.
pub const CONV: u8 = 0x40;
/// The clients, by `(ctl >> 3) & 3`.
pub const CLIENTS: [&str; 4] = ["10.77.0.2:40000", "10.77.0.2:40001", "10.77.0.3:40000", "[fd77::2]:40000"];
/// The listener's address.
pub const GATEWAY: &str = "10.77.0.1:7002";
/// The listener's MTU.
pub const MTU: usize = 1200;
/// The listener's dead-peer timeout, ms.
pub const DEAD_AFTER_MS: u64 = 15_000;

/// The config text of the harness: one KCP listener (protobuf), token
/// auth, one service with one game server, business commands routed to it.
pub fn config_text() -> String {
    format!(
        "[[listeners]]\nbind = \"{GATEWAY}\"\ntransport = \"kcp\"\n[listeners.kcp]\nmtu = {MTU}\ndead_after_ms = {DEAD_AFTER_MS}\n\
         [auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [[services]]\nname = \"game\"\nservers = [\"127.0.0.1:9\"]\n\
         [[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n"
    )
}

thread_local! {
    static CONFIG: Config = Config::parse(&config_text(), "fuzz kcp").expect("the harness config is valid");
}

/// What a client was told.
#[derive(Default, Clone, Copy)]
struct Client {
    cookie: Option<(u64, u32, [u8; COOKIE_LEN])>,
    conv: Option<u32>,
}

struct Harness {
    now: Instant,
    core: Gateway,
    kcp: KcpTransport,
    shared: Arc<Shared>,
    gateway: SocketAddr,
    clients: HashMap<SocketAddr, Client>,
    buf: Vec<u8>,
}

impl Harness {
    fn new() -> Harness {
        let now = Instant::now();
        CONFIG.with(|config| {
            let auth = portcullis_core::auth::from_config(config).expect("token auth");
            let shared = crate::shared::take();
            let core = Gateway::new(config, 0, shared.clone(), auth, now, Duration::from_secs(UNIX_NOW));
            let kcp = KcpTransport::new(config, now).expect("randomness");
            Harness {
                now,
                core,
                kcp,
                shared,
                gateway: GATEWAY.parse().expect("an address"),
                clients: HashMap::new(),
                buf: vec![0; 64 * 1024],
            }
        })
    }

    /// What the transport sends, remembered per client; returns the
    /// lengths of the datagrams.
    fn sent(&mut self) -> Vec<usize> {
        let mut lens = Vec::new();
        while let Some(t) = self.kcp.poll_transmit(self.now, &mut self.buf) {
            assert!(t.len <= MTU, "a datagram of {} bytes for an MTU of {MTU}", t.len);
            assert_eq!(t.listener, 0);
            lens.push(t.len);
            let d = &self.buf[..t.len];
            let client = self.clients.entry(t.to).or_default();
            match Control::decode(d) {
                Ok(Control::Cookie { nonce, conv, cookie }) => client.cookie = Some((nonce, conv, cookie)),
                Ok(Control::Accept { conv, .. }) => client.conv = Some(conv),
                _ => {}
            }
        }
        lens
    }

    /// One round as a backend runs it: timers, the core's outputs, sends.
    fn poll(&mut self) {
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
        }
        if self.kcp.poll_timeout().is_some_and(|t| t <= self.now) {
            self.kcp.handle_timeout(self.now, &mut self.core);
        }
        carry_out(self.now, &mut self.core, &mut self.kcp);
        self.sent();
        assert_eq!(
            self.core.connection_count() as u64,
            self.kcp.stats().connections,
            "the core and the transport disagree on open connections"
        );
    }

    fn datagram(&mut self, ctl: u8, bytes: &[u8]) {
        let from: SocketAddr = CLIENTS[usize::from((ctl >> 3) & 3)].parse().expect("an address");
        let client = self.clients.get(&from).copied().unwrap_or_default();
        let mut d = bytes.to_vec();
        if ctl & CONNECT != 0 {
            if let Some((nonce, conv, cookie)) = client.cookie {
                d = Control::Connect { nonce, conv, cookie }.to_vec();
            }
        }
        if let (true, Some(conv)) = (ctl & CONV != 0, client.conv) {
            patch_conv(&mut d, conv);
        }
        let hello = conv_of(&d) == Some(CONTROL_CONV) && d.get(4) == Some(&kind::HELLO);
        let before = self.kcp.stats().connections;
        self.kcp.handle_datagram(self.now, &mut self.core, 0, self.gateway, from, &d);
        if hello {
            let replies = self.sent();
            assert!(
                replies.len() <= 1 && replies.iter().all(|&n| n <= d.len()),
                "HELLO of {} answered {replies:?}",
                d.len()
            );
            assert_eq!(self.kcp.stats().connections, before, "a HELLO opened a connection");
        }
    }
}

/// Writes `conv` into every KCP segment of `d`, or at offset 8 of a
/// control packet.
fn patch_conv(d: &mut [u8], conv: u32) {
    if conv_of(d).is_some_and(|c| c != CONTROL_CONV) {
        let mut at = 0;
        while at + KCP_HEADER_LEN <= d.len() {
            d[at..at + 4].copy_from_slice(&conv.to_le_bytes());
            let len = u32::from_le_bytes([d[at + 20], d[at + 21], d[at + 22], d[at + 23]]) as usize;
            at = at.saturating_add(KCP_HEADER_LEN).saturating_add(len);
        }
    } else if d.len() >= 12 {
        d[8..12].copy_from_slice(&conv.to_le_bytes());
    }
}

/// Runs the harness over one input. Never panics unless the code under
/// test does.
pub fn run(data: &[u8]) {
    run_with_stats(data);
}

/// [`run`], returning the core's and the transport's counters (the seed
/// tests check that the seeds log in through KCP).
pub fn run_with_stats(mut rest: &[u8]) -> (Stats, KcpCounters) {
    let mut h = Harness::new();
    while let Some((ctl, bytes)) = crate::next_record(&mut rest) {
        h.now += Duration::from_millis(ADVANCE_MS[usize::from(ctl & 7)]);
        h.poll();
        h.datagram(ctl, bytes);
        h.poll();
    }
    // Every client falls silent: all connections end as dead peers (or
    // earlier, at the core's login timeout).
    for step in [10, 1_000, 5_100, DEAD_AFTER_MS, 1_000, 60_000] {
        h.now += Duration::from_millis(step);
        h.poll();
    }
    assert_eq!(h.kcp.stats().connections, 0, "silent clients are closed");
    h.core.shutdown(h.now);
    for step in [0, 1, 1_000, 10_000, 30_000, 61_000] {
        h.now += Duration::from_millis(step);
        h.poll();
    }
    let Harness { core, shared, kcp, .. } = h;
    let stats = (core.stats().clone(), kcp.counters());
    drop(core);
    crate::shared::give_back(shared);
    stats
}
