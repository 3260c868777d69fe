//! The WebSocket adapter's cost on one core, per message, beside the TCP
//! framing it replaces (`core_path` measures what follows):
//!
//! - `in`: a client's masked binary messages of 64 B, 1 KiB and 16 KiB (a
//!   batch of 64, as one read) through [`WebSocket::handle_input`] into the
//!   framed envelopes the core takes;
//! - `out`: the core's framed envelopes of those sizes through
//!   [`WebSocket::encode`] into server frames, written out.
//!
//! `cargo bench -p portcullis-benches --bench websocket`

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use portcullis_dataplane::transport::websocket::{WebSocket, WsSettings};
use portcullis_proto::Codec;

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const BATCH: usize = 64;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An open connection of a protobuf listener (the 101 written).
fn open() -> WebSocket {
    let mut ws = WebSocket::new(WsSettings::new(Codec::Protobuf, 1 << 20, &[]));
    assert!(ws.handle_input(UPGRADE).opened);
    let n = ws.pending().len();
    ws.sent(n);
    ws
}

/// `BATCH` masked binary messages of `len` bytes.
fn client_messages(len: usize) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::new();
    for _ in 0..BATCH {
        out.push(0x82);
        match len {
            0..=125 => out.push(0x80 | len as u8),
            _ => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend((0..len).map(|i| (i as u8) ^ mask[i % 4]));
    }
    out
}

/// `BATCH` length-prefixed envelopes of `len` bytes, as the core queues them.
fn core_output(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..BATCH {
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend((0..len).map(|i| i as u8));
    }
    out
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("websocket");
    for len in SIZES {
        group.throughput(Throughput::Elements(BATCH as u64));
        let input = client_messages(len);
        let mut ws = open();
        group.bench_function(format!("in/{len}"), |b| {
            b.iter(|| {
                ws.handle_input(black_box(&input));
                black_box(ws.for_core().len());
                ws.delivered();
            })
        });
        let output = core_output(len);
        let mut ws = open();
        group.bench_function(format!("out/{len}"), |b| {
            b.iter(|| {
                let mut taken = 0;
                while taken < output.len() {
                    taken += ws.encode(black_box(&output[taken..]));
                    let n = ws.pending().len();
                    ws.sent(n);
                }
            })
        });
    }
    group.finish();
    c.final_summary();
}
