//! The control packets of the KCP transport (`PROTOCOL.md`, "KCP
//! transport"), shared by the gateway and the client SDK.
//!
//! Every datagram of a KCP listener starts with a conversation id, a `u32`
//! little-endian: KCP's own `conv` field. Conversation 0 is never a KCP
//! conversation: a datagram whose first four bytes are zero is a control
//! packet, laid out as below (all integers little-endian):
//!
//! | offset | size | field                                  |
//! |--------|------|----------------------------------------|
//! | 0      | 4    | `0` (the control conversation)         |
//! | 4      | 1    | kind ([`Control`])                     |
//! | 5      | 1    | version, [`VERSION`]                   |
//! | 6      | 2    | zero                                   |
//! | 8      | …    | the kind's fields                      |
//!
//! The handshake is `HELLO` → `COOKIE` → `CONNECT` → `ACCEPT`; only a
//! `CONNECT` with a cookie the gateway made for that address opens a
//! connection, and no reply is ever larger than the request it answers.
//! [`Control::decode`] checks every length and never panics.

use std::fmt;

/// The conversation id of control packets.
pub const CONTROL_CONV: u32 = 0;

/// Version of the control packets.
pub const VERSION: u8 = 1;

/// Bytes of the header every control packet starts with.
pub const HEADER_LEN: usize = 8;

/// Smallest `HELLO`: the client pads it with zeros so that the `COOKIE`
/// that answers it is never larger (no amplification).
pub const HELLO_LEN: usize = 64;

/// Bytes of the opaque cookie (`COOKIE`, echoed in `CONNECT`).
pub const COOKIE_LEN: usize = 20;

/// Length of `COOKIE` and `CONNECT`.
pub const COOKIE_PACKET_LEN: usize = HEADER_LEN + 8 + 4 + COOKIE_LEN;

/// Length of `ACCEPT`.
pub const ACCEPT_LEN: usize = HEADER_LEN + 8 + 4;

/// Length of `CLOSE`.
pub const CLOSE_LEN: usize = HEADER_LEN + 4;

// No reply is larger than the request it answers (no amplification),
// checked when this compiles.
const _: () = assert!(COOKIE_PACKET_LEN <= HELLO_LEN && ACCEPT_LEN <= COOKIE_PACKET_LEN);

/// KCP's segment header, bytes (counted in a listener's `mtu`).
pub const KCP_HEADER_LEN: usize = 24;

/// Kind bytes (offset 4).
pub mod kind {
    /// Client → gateway: asks for a cookie.
    pub const HELLO: u8 = 1;
    /// Gateway → client: a conversation id and a cookie for it.
    pub const COOKIE: u8 = 2;
    /// Client → gateway: opens the conversation with the cookie.
    pub const CONNECT: u8 = 3;
    /// Gateway → client: the conversation is open.
    pub const ACCEPT: u8 = 4;
    /// Either way: the conversation is over.
    pub const CLOSE: u8 = 5;
}

/// A control packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Asks for a cookie; `nonce` is echoed so that the client can match
    /// the answer. At least [`HELLO_LEN`] bytes.
    Hello {
        /// Client's random number for this handshake.
        nonce: u64,
    },
    /// A conversation id and the cookie that opens it, for the address the
    /// `HELLO` came from.
    Cookie {
        /// The `HELLO`'s nonce.
        nonce: u64,
        /// The conversation id the client is to use (never 0).
        conv: u32,
        /// Opaque to the client, echoed in `CONNECT`.
        cookie: [u8; COOKIE_LEN],
    },
    /// Opens the conversation: `conv` and `cookie` as the `COOKIE` gave them.
    Connect {
        /// The `HELLO`'s nonce.
        nonce: u64,
        /// The conversation id.
        conv: u32,
        /// The cookie.
        cookie: [u8; COOKIE_LEN],
    },
    /// The conversation is open: KCP segments of `conv` may flow.
    Accept {
        /// The `HELLO`'s nonce.
        nonce: u64,
        /// The conversation id.
        conv: u32,
    },
    /// The conversation `conv` is closed (best effort: a lost `CLOSE` is
    /// covered by the dead-peer timeout).
    Close {
        /// The conversation id.
        conv: u32,
    },
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cookie is left out: it is a credential.
        match *self {
            Control::Hello { nonce } => write!(f, "HELLO(nonce {nonce:#x})"),
            Control::Cookie { nonce, conv, .. } => write!(f, "COOKIE(nonce {nonce:#x}, conv {conv:#x})"),
            Control::Connect { nonce, conv, .. } => write!(f, "CONNECT(nonce {nonce:#x}, conv {conv:#x})"),
            Control::Accept { nonce, conv } => write!(f, "ACCEPT(nonce {nonce:#x}, conv {conv:#x})"),
            Control::Close { conv } => write!(f, "CLOSE(conv {conv:#x})"),
        }
    }
}

/// Why bytes are not a control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Shorter than its kind needs (or a `HELLO` under [`HELLO_LEN`]).
    #[error("control packet too short")]
    Truncated,
    /// The first four bytes are not zero.
    #[error("not a control packet")]
    NotControl,
    /// A version this code does not speak.
    #[error("control packet version {0}")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown control packet kind {0}")]
    Kind(u8),
    /// A field out of range (conversation 0).
    #[error("bad control packet field `{0}`")]
    Field(&'static str),
}

/// The conversation id a datagram is for, `None` if it is too short to
/// have one. `Some(CONTROL_CONV)` means a control packet.
pub fn conv_of(datagram: &[u8]) -> Option<u32> {
    let b: [u8; 4] = datagram.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Control {
    /// Its kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Control::Hello { .. } => kind::HELLO,
            Control::Cookie { .. } => kind::COOKIE,
            Control::Connect { .. } => kind::CONNECT,
            Control::Accept { .. } => kind::ACCEPT,
            Control::Close { .. } => kind::CLOSE,
        }
    }

    /// Its length on the wire.
    pub fn len(&self) -> usize {
        match self {
            Control::Hello { .. } => HELLO_LEN,
            Control::Cookie { .. } | Control::Connect { .. } => COOKIE_PACKET_LEN,
            Control::Accept { .. } => ACCEPT_LEN,
            Control::Close { .. } => CLOSE_LEN,
        }
    }

    /// Never empty (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.len(), 0);
        let b = &mut out[start..];
        b[4] = self.kind();
        b[5] = VERSION;
        match *self {
            Control::Hello { nonce } => b[8..16].copy_from_slice(&nonce.to_le_bytes()),
            Control::Cookie { nonce, conv, cookie } | Control::Connect { nonce, conv, cookie } => {
                b[8..16].copy_from_slice(&nonce.to_le_bytes());
                b[16..20].copy_from_slice(&conv.to_le_bytes());
                b[20..20 + COOKIE_LEN].copy_from_slice(&cookie);
            }
            Control::Accept { nonce, conv } => {
                b[8..16].copy_from_slice(&nonce.to_le_bytes());
                b[16..20].copy_from_slice(&conv.to_le_bytes());
            }
            Control::Close { conv } => b[8..12].copy_from_slice(&conv.to_le_bytes()),
        }
    }

    /// The packet as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        self.encode(&mut v);
        v
    }

    /// Reads a control packet. Bytes past a kind's length are ignored
    /// (a `HELLO`'s padding; room for later versions).
    pub fn decode(b: &[u8]) -> Result<Control, ControlError> {
        if b.len() < HEADER_LEN {
            return Err(ControlError::Truncated);
        }
        if u32_at(b, 0) != CONTROL_CONV {
            return Err(ControlError::NotControl);
        }
        if b[5] != VERSION {
            return Err(ControlError::Version(b[5]));
        }
        let need = match b[4] {
            kind::HELLO => HELLO_LEN,
            kind::COOKIE | kind::CONNECT => COOKIE_PACKET_LEN,
            kind::ACCEPT => ACCEPT_LEN,
            kind::CLOSE => CLOSE_LEN,
            k => return Err(ControlError::Kind(k)),
        };
        if b.len() < need {
            return Err(ControlError::Truncated);
        }
        let conv = |at| match u32_at(b, at) {
            CONTROL_CONV => Err(ControlError::Field("conv")),
            c => Ok(c),
        };
        Ok(match b[4] {
            kind::HELLO => Control::Hello { nonce: u64_at(b, 8) },
            kind::COOKIE | kind::CONNECT => {
                let (nonce, conv) = (u64_at(b, 8), conv(16)?);
                let mut cookie = [0; COOKIE_LEN];
                cookie.copy_from_slice(&b[20..20 + COOKIE_LEN]);
                if b[4] == kind::COOKIE {
                    Control::Cookie { nonce, conv, cookie }
                } else {
                    Control::Connect { nonce, conv, cookie }
                }
            }
            kind::ACCEPT => Control::Accept { nonce: u64_at(b, 8), conv: conv(16)? },
            _ => Control::Close { conv: conv(8)? },
        })
    }
}

/// A random nonce for a `HELLO` (from the OS generator; 0 if it fails,
/// which only makes stray answers harder to tell apart).
pub fn random_nonce() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// The KCP tuning both ends use unless told otherwise: KCP's fast mode.
pub mod tuning {
    /// `nodelay`: the short minimum RTO, no coalescing delay.
    pub const NODELAY: bool = true;
    /// Update interval, ms.
    pub const INTERVAL_MS: u32 = 10;
    /// Fast retransmit after this many duplicate ACKs.
    pub const RESEND: u32 = 2;
    /// Congestion control off.
    pub const NO_CONGESTION: bool = true;
    /// Send and receive window, segments.
    pub const WINDOW: u16 = 256;
    /// Largest datagram, KCP header included.
    pub const MTU: usize = 1200;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> [Control; 5] {
        let cookie = [7; COOKIE_LEN];
        [
            Control::Hello { nonce: 0x0102_0304_0506_0708 },
            Control::Cookie { nonce: 9, conv: 0xdead_beef, cookie },
            Control::Connect { nonce: 9, conv: 0xdead_beef, cookie },
            Control::Accept { nonce: 9, conv: 0xdead_beef },
            Control::Close { conv: 0xdead_beef },
        ]
    }

    #[test]
    fn every_packet_round_trips_at_its_documented_length() {
        for c in all() {
            let b = c.to_vec();
            assert_eq!(b.len(), c.len());
            assert_eq!(conv_of(&b), Some(CONTROL_CONV));
            assert_eq!((b[4], b[5]), (c.kind(), VERSION));
            assert_eq!(Control::decode(&b), Ok(c), "{c:?}");
            // One byte short of its length is refused.
            assert_eq!(Control::decode(&b[..b.len() - 1]), Err(ControlError::Truncated), "{c:?}");
        }
    }

    #[test]
    fn layout_matches_protocol_md() {
        let b =
            Control::Cookie { nonce: 0x1122_3344_5566_7788, conv: 0xa1b2_c3d4, cookie: [0xee; COOKIE_LEN] }.to_vec();
        assert_eq!(&b[..8], &[0, 0, 0, 0, kind::COOKIE, 1, 0, 0]);
        assert_eq!(&b[8..16], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[16..20], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&b[20..40], &[0xee; 20]);
        let close = Control::Close { conv: 5 }.to_vec();
        assert_eq!(close, [0, 0, 0, 0, kind::CLOSE, 1, 0, 0, 5, 0, 0, 0]);
    }

    #[test]
    fn bad_packets_are_refused_without_panicking() {
        assert_eq!(conv_of(&[1, 2, 3]), None);
        assert_eq!(Control::decode(&[]), Err(ControlError::Truncated));
        let mut hello = Control::Hello { nonce: 1 }.to_vec();
        hello[0] = 1;
        assert_eq!(Control::decode(&hello), Err(ControlError::NotControl));
        hello[0] = 0;
        hello[5] = 2;
        assert_eq!(Control::decode(&hello), Err(ControlError::Version(2)));
        hello[5] = VERSION;
        hello[4] = 99;
        assert_eq!(Control::decode(&hello), Err(ControlError::Kind(99)));
        assert_eq!(Control::decode(&Control::Close { conv: 0 }.to_vec()), Err(ControlError::Field("conv")));
        // A HELLO without its padding would let a reply amplify.
        hello[4] = kind::HELLO;
        assert_eq!(Control::decode(&hello[..HELLO_LEN - 1]), Err(ControlError::Truncated));
        // Every prefix of every packet decodes or errs, never panics.
        for c in all() {
            let b = c.to_vec();
            for n in 0..b.len() {
                let _ = Control::decode(&b[..n]);
            }
        }
    }
}
