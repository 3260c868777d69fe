//! Session encryption's cost on one core (`ring`: AES-NI/VAES + CLMUL):
//!
//! - `seal` and `seal+open` of one message of 64 B, 1 KiB and 16 KiB with
//!   AES-128-GCM and AES-256-GCM, through [`FrameCipher`] exactly as the
//!   gateway does it (the envelope's header as associated data, the nonce
//!   from the frame counter, in place);
//! - the gateway's side of a LOGIN handshake: an ephemeral X25519 key pair,
//!   the agreement, the session secret and both directions' keys.
//!
//! Before criterion runs, each case is also timed by a plain loop and
//! printed as a `figure:` line (MB/s = 10⁶ bytes per second, like
//! `openssl speed`), which `benches/scripts/cipher-bench.sh` puts beside
//! OpenSSL's figures.
//!
//! `cargo bench -p portcullis-benches --bench cipher`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use portcullis_proto::crypto::{Cipher, ConnectionKeys, KeyShare, SessionSecret};
use portcullis_proto::{flags, Envelope};

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn keys(cipher: Cipher) -> ConnectionKeys {
    SessionSecret::from_bytes([7; 32]).connection_keys(cipher, &[1; 32], &[2; 32])
}

/// The header of a typical business frame.
fn header() -> Envelope<'static> {
    Envelope { server_seq: 12345, ..Envelope::new(1000, 7, flags::RESPONSE | flags::ENCRYPTED, b"") }
}

/// Seals `buf`'s first `len` bytes in place (the tag of the previous round
/// cut off), as `openssl speed` encrypts one buffer over and over: the
/// payload copy the gateway makes around it is measured by `core_path`.
fn seal(k: &mut ConnectionKeys, env: &Envelope<'_>, len: usize, buf: &mut Vec<u8>) {
    buf.truncate(len);
    k.server_to_client.seal(env, buf).expect("seal");
}

/// A pair that seals with one cipher and opens with an identical one.
struct Pair {
    sender: ConnectionKeys,
    receiver: ConnectionKeys,
}

impl Pair {
    fn new(cipher: Cipher) -> Pair {
        Pair { sender: keys(cipher), receiver: keys(cipher) }
    }

    fn round(&mut self, env: &Envelope<'_>, len: usize, buf: &mut Vec<u8>) -> usize {
        seal(&mut self.sender, env, len, buf);
        self.receiver.server_to_client.open(env, buf).expect("opens").len()
    }
}

fn server_handshake(client_key: &[u8]) -> ConnectionKeys {
    let share = KeyShare::generate().expect("randomness");
    let server_key = *share.public_key();
    let dh = share.agree(client_key).expect("agree");
    let secret = SessionSecret::derive(&dh, client_key, &server_key);
    secret.connection_keys(Cipher::Aes128Gcm, client_key, &server_key)
}

/// Times `f` for about `budget` and returns the seconds per call.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn figures() {
    let env = header();
    for cipher in Cipher::ALL {
        for size in SIZES {
            let mut buf = vec![0x5a; size];
            buf.reserve(16);
            let mut k = keys(cipher);
            let t = per_call(Duration::from_millis(600), || seal(&mut k, &env, size, &mut buf));
            println!("figure: {} seal {size} B: {:.0} MB/s ({:.3} µs)", cipher, size as f64 / t / 1e6, t * 1e6);
            let mut p = Pair::new(cipher);
            let t = per_call(Duration::from_millis(600), || {
                black_box(p.round(&env, size, &mut buf));
            });
            println!("figure: {} seal+open {size} B: {:.0} MB/s ({:.3} µs)", cipher, size as f64 / t / 1e6, t * 1e6);
        }
    }
    let client_key = *KeyShare::generate().expect("randomness").public_key();
    let t = per_call(Duration::from_millis(1000), || {
        black_box(server_handshake(&client_key));
    });
    println!("figure: handshake server side: {:.1} µs ({:.0} handshakes/s per core)", t * 1e6, 1.0 / t);
}

fn main() {
    figures();
    let mut c = Criterion::default().configure_from_args();
    let env = header();
    for cipher in Cipher::ALL {
        let mut g = c.benchmark_group(format!("cipher_{cipher}"));
        for size in SIZES {
            let mut buf = vec![0x5a; size];
            buf.reserve(16);
            g.throughput(Throughput::Bytes(size as u64));
            let mut k = keys(cipher);
            g.bench_function(format!("seal {size} B"), |b| b.iter(|| seal(&mut k, &env, black_box(size), &mut buf)));
            let mut p = Pair::new(cipher);
            g.bench_function(format!("seal+open {size} B"), |b| b.iter(|| p.round(&env, black_box(size), &mut buf)));
        }
        g.finish();
    }
    let client_key = *KeyShare::generate().expect("randomness").public_key();
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("server side: X25519 key pair + agreement + HKDF keys", |b| {
        b.iter(|| server_handshake(black_box(&client_key)))
    });
    g.finish();
    c.final_summary();
}
