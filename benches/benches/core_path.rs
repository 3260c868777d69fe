//! The core path per 64-byte message, in memory (no sockets):
//!
//! - `request`: client frame → decode → session → route → link frame
//! - `reply`: link frame → session → client frame
//!
//! Before criterion runs, the same paths are run 100 000 times under a
//! counting allocator and the allocations per message are printed.
//!
//! `cargo bench -p portcullis-benches --bench core_path`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use portcullis_benches::alloc_counter::{allocations, CountingAlloc};
use portcullis_dataplane::auth::TokenAuthenticator;
use portcullis_dataplane::{Config, Gateway, Output};
use portcullis_proto::link::encode_frame;
use portcullis_proto::pb::client::LoginRequest;
use portcullis_proto::pb::link::{link_frame::Kind, Reply};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, Codec, Envelope};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SECRET: &str = "bench-secret-0123456789";
const CONN: u64 = 1;

struct Bench {
    core: Gateway,
    now: Instant,
    request: Vec<u8>,
    reply: Vec<u8>,
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

fn setup() -> Bench {
    let config = Config::parse(
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
             [[services]]\nname = \"game\"\nservers = [\"127.0.0.1:9000\"]\n\
             [[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n"
        ),
        "bench",
    )
    .expect("config");
    let now = Instant::now();
    let mut core = Gateway::new(&config, Box::new(TokenAuthenticator::new(SECRET.into())), now, 1_800_000_000);
    while core.poll_output().is_some() {}
    core.handle_link_connected(now, 0);
    core.handle_connect(now, CONN, 0, SocketAddr::from(([127, 0, 0, 1], 5555)));
    let token = sign(SECRET.as_bytes(), &Claims { uid: "player-1".into(), dev: "pc".into(), exp: u64::MAX });
    let login = Codec::Protobuf.payload_form().encode_to_vec(&LoginRequest { token });
    let mut frame = Vec::new();
    Codec::Protobuf.encode(&Envelope::new(cmd::LOGIN, 1, 0, &login), &mut frame);
    core.handle_data(now, CONN, &frame);
    drain(&mut core);
    let session = core.session_of(CONN).expect("session");
    let payload = [0x5a; 64];
    let mut request = Vec::new();
    Codec::Protobuf.encode(&Envelope::new(1000, 7, 0, &payload), &mut request);
    let mut reply = Vec::new();
    let r = Reply { session_id: session, cmd: 1000, seq: 7, payload: payload.to_vec(), ..Default::default() };
    encode_frame(Kind::Reply(r), &mut reply);
    Bench { core, now, request, reply }
}

impl Bench {
    fn request(&mut self) -> usize {
        self.core.handle_data(self.now, CONN, black_box(&self.request));
        drain(&mut self.core)
    }

    fn reply(&mut self) -> usize {
        self.core.handle_link_data(self.now, 0, black_box(&self.reply));
        drain(&mut self.core)
    }
}

fn allocations_per_message(b: &mut Bench) {
    const N: u64 = 100_000;
    for _ in 0..1000 {
        b.request();
        b.reply();
    }
    let before = allocations();
    for _ in 0..N {
        assert!(b.request() > 64, "the request reached the link");
    }
    let mid = allocations();
    for _ in 0..N {
        assert!(b.reply() > 64, "the reply reached the client");
    }
    let after = allocations();
    println!(
        "allocations per message over {N} messages: request path {:.4} ({} total), reply path {:.4} ({} total)",
        (mid - before) as f64 / N as f64,
        mid - before,
        (after - mid) as f64 / N as f64,
        after - mid
    );
    assert!(b.core.stats().requests >= N && b.core.stats().replies >= N);
}

fn main() {
    let mut b = setup();
    allocations_per_message(&mut b);
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("core_path_64B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request: client frame -> link frame", |bench| bench.iter(|| b.request()));
    g.bench_function("reply: link frame -> client frame", |bench| bench.iter(|| b.reply()));
    g.finish();
    c.final_summary();
}
