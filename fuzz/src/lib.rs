//! Fuzz targets of Portcullis (cargo-fuzz, libFuzzer): every parser of
//! bytes from outside — client envelopes and framework payloads, game-server
//! link frames, login and resume tokens, the config file, Ethernet frames
//! into the userspace stack, UDP datagrams into the KCP transport,
//! WebSocket traffic into the gateway's adapter, packets into the XDP filter.
//!
//! The targets in `fuzz_targets/` are one line each; their bodies live here
//! so that `cargo test` in `fuzz/` runs the committed seeds through them
//! (`tests/seeds.rs`), and so that the seeds are built from the same code
//! ([`seeds`]). `scripts/fuzz.sh` runs them.

pub mod kcp;
pub mod netstack;
pub mod packets;
pub mod seeds;
pub mod shared;
pub mod targets;
pub mod websocket;
pub mod xdp;

/// The next record `[ctl][len u16 BE][bytes]` of a target's input (a short
/// tail is one last record of what is left), advancing `rest`.
pub fn next_record<'a>(rest: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&ctl, tail) = rest.split_first()?;
    let (len, tail) = match tail {
        [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
        _ => (tail.len(), &[][..]),
    };
    let (bytes, tail) = tail.split_at(len.min(tail.len()));
    *rest = tail;
    Some((ctl, bytes))
}
