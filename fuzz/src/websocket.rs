//! `websocket`: the gateway's server-side WebSocket adapter
//! (`portcullis_dataplane::transport::websocket`) on a client's bytes.
//!
//! Input: an options byte, then the client's bytes. Options: bits 0–1 the
//! codec (its framing and message type), bit 2 a 64-byte message limit
//! (else the default 64 KiB), bit 3 the Upgrade request sent by the target
//! first (so that most inputs reach the frame parser), bits 4–7 the size of
//! the pieces the bytes arrive in (1–16).
//!
//! Checked: nothing panics; what reaches the core is whole frames of the
//! codec's framing within the limit, except one oversized-frame
//! announcement once the connection has failed; nothing reaches the core
//! after the connection is over; the core's frames given back are taken
//! whole and go out as messages; after the end a close frame is the last
//! thing written.

use portcullis_dataplane::transport::websocket::{WebSocket, WsSettings};
use portcullis_proto::Codec;

use crate::targets::MAX_FRAME;

/// The Upgrade request of option bit 3.
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Runs one input; returns the bytes the core received.
pub fn run(data: &[u8]) -> Vec<u8> {
    let Some((&options, input)) = data.split_first() else { return Vec::new() };
    let codec = Codec::ALL[usize::from(options & 3)];
    let framing = codec.framing();
    let max = if options & 4 != 0 { 64 } else { MAX_FRAME };
    let piece = 1 + usize::from(options >> 4);
    let mut ws = WebSocket::new(WsSettings::new(codec, max, &[]));
    let mut to_core = Vec::new();
    let mut finished = false;
    let pieces = if options & 8 != 0 { vec![UPGRADE] } else { Vec::new() };
    for chunk in pieces.into_iter().chain(input.chunks(piece)) {
        let p = ws.handle_input(chunk);
        let core = ws.for_core();
        assert!(!finished || core.is_empty(), "input read after the end");
        finished |= p.finished;
        let mut rest = core;
        while !rest.is_empty() {
            match framing.next_frame(rest, max) {
                Ok(Some((body, used))) => {
                    assert!(body.len() <= max);
                    rest = &rest[used..];
                }
                _ => {
                    assert!(finished, "a partial or oversized frame reached the core of a live connection");
                    break;
                }
            }
        }
        // The core answers with what it got: taken whole, sent as messages.
        let answer = core.to_vec();
        to_core.extend_from_slice(&answer);
        ws.delivered();
        let taken = ws.encode(&answer);
        assert!(taken <= answer.len());
        let written = ws.pending().len();
        ws.sent(written);
    }
    ws.shutdown(b"");
    if ws.is_open() {
        let out = ws.pending();
        assert!(out.len() >= 4 && out[out.len() - 4..out.len() - 2] == [0x88, 0x02], "a close frame last: {out:?}");
    }
    to_core
}
