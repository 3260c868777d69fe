//! The core path per 64-byte message, in memory (no sockets):
//!
//! - `request`: client frame → decode → rate limits → session → route →
//!   link frame (request tracked in flight)
//! - `reply`: link frame → in-flight lookup → session → sequenced, kept for
//!   replay → client frame
//!
//! Each three times: with the security chain reduced to compliance
//! (`chain = []`); with every link on — rate with a command class for the
//! command, behaviour with a score being looked up on every frame, and a
//! whitelist rule by role — so that the difference is the chain's cost per
//! message; and with the chain off on an encrypted session (AES-128-GCM:
//! the request opened, the reply sealed), so that the difference is the
//! encryption's cost. The client's sealing of its requests (and acks) is
//! done outside the timed loop, in batches.
//!
//! Before criterion runs, the same paths are run 100 000 times under a
//! counting allocator and the allocations the core makes per message are
//! printed.
//!
//! `cargo bench -p portcullis-benches --bench core_path`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use portcullis_benches::alloc_counter::{allocations, CountingAlloc};
use portcullis_core::auth::TokenAuthenticator;
use portcullis_core::shard::Shared;
use portcullis_core::{Config, ConnId, Gateway, Output, Transport};
use portcullis_proto::crypto::{ConnectionKeys, KeyShare, SessionSecret};
use portcullis_proto::pb::client::{LoginReply, LoginRequest};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, wire, Codec, Envelope, Framing};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SECRET: &str = "bench-secret-0123456789";
const CONN: ConnId = ConnId::new(Transport::KernelTcp, 1);

struct Bench {
    core: Gateway,
    now: Instant,
    session: u64,
    request: Vec<u8>,
    reply: Vec<u8>,
    request_id: u64,
    /// The client's keys of an encrypted session.
    client: Option<ConnectionKeys>,
}

/// A game server's `Reply` link frame, written without allocating.
fn reply_frame(out: &mut Vec<u8>, session: u64, request_id: u64, payload: &[u8]) {
    out.clear();
    let mark = Framing::LengthPrefixed.begin(out);
    let body = wire::uint_len(1, session)
        + wire::uint_len(2, 1000)
        + wire::uint_len(3, 7)
        + wire::bytes_len(4, payload.len())
        + wire::uint_len(7, request_id);
    wire::put_varint(out, (10 << 3) | 2);
    wire::put_varint(out, body as u64);
    wire::put_uint(out, 1, session);
    wire::put_uint(out, 2, 1000);
    wire::put_uint(out, 3, 7);
    wire::put_bytes(out, 4, payload);
    wire::put_uint(out, 7, request_id);
    Framing::LengthPrefixed.finish(out, mark);
}

/// Carries out every output as a perfect network would.
fn drain(core: &mut Gateway) -> usize {
    let mut bytes = 0;
    while let Some(out) = core.poll_output() {
        match out {
            Output::Transmit(c) => {
                let n = core.outbound(c).len();
                core.consume(c, n);
                bytes += n;
            }
            Output::TransmitLink(l) => {
                let n = core.link_outbound(l).len();
                core.consume_link(l, n);
                bytes += n;
            }
            _ => {}
        }
    }
    bytes
}

/// The security chain reduced to compliance.
const CHAIN_OFF: &str = "[security]\nchain = []\n";
/// Every link, each with work to do for the benchmark's command.
const CHAIN_ON: &str = "[gateway]\nmax_bad_frames = 100\n\
    [security]\nchain = [\"rate\", \"behaviour\", \"whitelist\"]\n\
    [security.behaviour]\ndecay_per_sec = 0.001\n\
    [[security.classes]]\nname = \"moves\"\ncommands = [[1000, 1099]]\nrate = 4000000\nburst = 1000\n\
    [[security.whitelist]]\ncommands = [[1000, 1999]]\nroles = [\"player\", \"moderator\"]\n";

fn setup(security: &str, encrypted: bool) -> Bench {
    let config = Config::parse(
        &format!(
            "{security}[limits]\nsession_rate = 4000000\nsession_burst = 1000\nuser_rate = 4000000\nuser_burst = 1000\nip_rate = 4000000\nip_burst = 1000\n\
             [[listeners]]\nbind = \"127.0.0.1:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
             [[services]]\nname = \"game\"\nservers = [\"127.0.0.1:9000\"]\n\
             [[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n"
        ),
        "bench",
    )
    .expect("config");
    let now = Instant::now();
    let auth = Box::new(TokenAuthenticator::new(SECRET.into()));
    let mut core = Gateway::new(&config, 0, Shared::new(1, [7; 32]), auth, now, Duration::from_secs(1_800_000_000));
    while core.poll_output().is_some() {}
    core.handle_link_connected(now, 0);
    core.handle_connect(now, CONN, 0, SocketAddr::from(([127, 0, 0, 1], 5555)));
    let token = sign(
        SECRET.as_bytes(),
        &Claims { uid: "player-1".into(), dev: "pc".into(), exp: u64::MAX, role: String::new() },
    );
    let share = KeyShare::generate().expect("randomness");
    let client_key = if encrypted { share.public_key().to_vec() } else { Vec::new() };
    let login = Codec::Protobuf.payload_form().encode_to_vec(&LoginRequest { token, client_key: client_key.clone() });
    let mut frame = Vec::new();
    Codec::Protobuf.encode(&Envelope::new(cmd::LOGIN, 1, 0, &login), &mut frame);
    core.handle_data(now, CONN, &frame);
    let answer = core.outbound(CONN).to_vec();
    drain(&mut core);
    let client = encrypted.then(|| {
        let env = Codec::Protobuf.decode(&answer[4..]).expect("the LOGIN answer");
        let reply: LoginReply = Codec::Protobuf.payload_form().decode(&env.payload).expect("LoginReply");
        let secret =
            SessionSecret::derive(&share.agree(&reply.server_key).expect("agree"), &client_key, &reply.server_key);
        secret.connection_keys(portcullis_proto::crypto::Cipher::Aes128Gcm, &client_key, &reply.server_key)
    });
    let session = core.session_of(CONN).expect("session");
    if security == CHAIN_ON {
        // A stranger elsewhere past `throttle` (11 bad frames, 55 points):
        // from now on every frame's score is looked up.
        let stranger = ConnId::new(Transport::KernelTcp, 2);
        core.handle_connect(now, stranger, 0, SocketAddr::from(([192, 0, 2, 9], 5555)));
        for _ in 0..11 {
            core.handle_data(now, stranger, &[0, 0, 0, 2, 0xff, 0xff]);
        }
        assert_eq!(core.stats().escalated_throttles, 1);
        drain(&mut core);
    }
    let mut b =
        Bench { core, now, session, request: Vec::new(), reply: Vec::with_capacity(256), request_id: 0, client };
    if b.client.is_none() {
        b.request = b.client_frame(&Envelope::new(1000, 7, 0, &[0x5a; 64]));
    }
    b
}

impl Bench {
    /// A frame from the client, sealed on an encrypted session.
    fn client_frame(&mut self, env: &Envelope<'_>) -> Vec<u8> {
        let mut frame = Vec::new();
        match &mut self.client {
            None => Codec::Protobuf.encode(env, &mut frame),
            Some(keys) => {
                let env = Envelope { flags: env.flags | flags::ENCRYPTED, ..env.clone() };
                let mut sealed = env.payload.to_vec();
                keys.client_to_server.seal(&env, &mut sealed).expect("seal");
                Codec::Protobuf.encode(&Envelope { payload: sealed.into(), ..env }, &mut frame);
            }
        }
        frame
    }

    /// The next request frame: on an encrypted session every frame has a
    /// counter of its own, so it is sealed anew (outside the timed part).
    fn next_request(&mut self) {
        if self.client.is_some() {
            self.request = self.client_frame(&Envelope::new(1000, 7, 0, &[0x5a; 64]));
        }
    }

    /// A client request through the core; returns the bytes sent to the link.
    fn request(&mut self) -> usize {
        // Time moves on a microsecond per message, so the rate limits refill.
        self.now += Duration::from_micros(1);
        self.core.handle_data(self.now, CONN, black_box(&self.request));
        self.request_id += 1;
        drain(&mut self.core)
    }

    /// The game server's answer to the last request (built outside the core).
    fn prepare_reply(&mut self) {
        reply_frame(&mut self.reply, self.session, self.request_id, &[0x5a; 64]);
    }

    /// The prepared answer through the core; returns the bytes sent to the
    /// client. The client acknowledges every 64 answers.
    fn reply(&mut self) -> usize {
        self.core.handle_link_data(self.now, 0, black_box(&self.reply));
        drain(&mut self.core)
    }
}

/// The client's acknowledgement of what it received, piggy-backed on a
/// heartbeat.
fn ack_frame(b: &mut Bench) -> Vec<u8> {
    let seq = b.core.stats().replies;
    ack_frame_of(b, seq)
}

fn ack_frame_of(b: &mut Bench, seq: u64) -> Vec<u8> {
    b.client_frame(&Envelope { ack: seq, ..Envelope::new(cmd::HEARTBEAT, 9, 0, b"") })
}

fn ack(b: &mut Bench) {
    let frame = ack_frame(b);
    send_ack(b, &frame);
}

fn send_ack(b: &mut Bench, frame: &[u8]) {
    b.core.handle_data(b.now, CONN, frame);
    drain(&mut b.core);
}

fn round_trip(b: &mut Bench) -> (usize, usize) {
    b.next_request();
    let sent = b.request();
    b.prepare_reply();
    let answered = b.reply();
    if b.request_id.is_multiple_of(64) {
        ack(b);
    }
    (sent, answered)
}

/// `iters` round trips, timed without the client's sealing: the frames
/// of each batch are prepared first.
fn timed_round_trips(b: &mut Bench, iters: u64) -> Duration {
    const BATCH: u64 = 4096;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        left -= n;
        // Each ack acknowledges every answer up to its request's (one
        // sequenced answer per request).
        let mut frames = Vec::with_capacity(n as usize);
        let answered = b.core.stats().replies;
        for i in 0..n {
            b.next_request();
            let ack = (b.request_id + i + 1).is_multiple_of(64).then(|| ack_frame_of(b, answered + i + 1));
            frames.push((b.request.clone(), ack));
        }
        let replies = b.core.stats().replies;
        let start = Instant::now();
        for (request, ack) in &frames {
            b.now += Duration::from_micros(1);
            b.core.handle_data(b.now, CONN, black_box(request));
            b.request_id += 1;
            drain(&mut b.core);
            b.prepare_reply();
            black_box(b.reply());
            if let Some(ack) = ack {
                send_ack(b, ack);
            }
        }
        total += start.elapsed();
        assert_eq!(b.core.stats().replies, replies + n, "every request was answered");
    }
    total
}

fn allocations_per_message(b: &mut Bench) {
    const N: u64 = 100_000;
    for _ in 0..1000 {
        round_trip(b);
    }
    let (mut request_allocs, mut reply_allocs) = (0, 0);
    for i in 0..N {
        b.next_request();
        let ack_next = (i % 64 == 63).then(|| ack_frame(b));
        let before = allocations();
        assert!(b.request() > 64, "the request reached the link");
        let mid = allocations();
        b.prepare_reply();
        let ready = allocations();
        assert!(b.reply() > 64, "the reply reached the client");
        reply_allocs += allocations() - ready;
        request_allocs += mid - before;
        if let Some(frame) = ack_next {
            send_ack(b, &frame);
        }
    }
    println!(
        "core allocations per 64-byte message over {N} round trips: request path {:.4} ({request_allocs} total), reply path {:.4} ({reply_allocs} total)",
        request_allocs as f64 / N as f64,
        reply_allocs as f64 / N as f64,
    );
    assert!(b.core.stats().requests >= N && b.core.stats().replies >= N);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("core_path_64B");
    g.throughput(Throughput::Elements(1));
    for (name, security, encrypted) in
        [("chain off", CHAIN_OFF, false), ("chain on", CHAIN_ON, false), ("chain off, encrypted", CHAIN_OFF, true)]
    {
        let mut b = setup(security, encrypted);
        print!("{name}: ");
        allocations_per_message(&mut b);
        let s = b.core.stats();
        assert_eq!((s.drop_suspicious, s.drop_not_allowed, s.drop_command_rate), (0, 0, 0), "{name}");
        assert_eq!((s.drop_decrypt_failed, s.encrypted_logins), (0, u64::from(encrypted)), "{name}");
        g.bench_function(format!("round trip: request + reply through the core, {name}"), |bench| {
            bench.iter_custom(|iters| timed_round_trips(&mut b, iters))
        });
        assert_eq!(b.core.stats().drop_decrypt_failed, 0, "{name}");
    }
    g.finish();
    c.final_summary();
}
