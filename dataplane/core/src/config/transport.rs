//! The transport of a listener (`transport`, `[listeners.kcp]`, TLS and
//! WebSocket settings): how players' bytes reach the gateway before they
//! become frames of the listener's codec.

use serde::{Deserialize, Serialize};

/// How players reach a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTransport {
    /// TCP: the codec's frames on a byte stream (the default).
    #[default]
    Tcp,
    /// WebSocket (RFC 6455) on TCP, one envelope per message; `wss` when
    /// the listener has a certificate.
    Websocket,
    /// QUIC on UDP: one bidirectional stream of the codec's frames, and
    /// datagrams for unreliable messages. Needs a certificate.
    Quic,
    /// KCP on UDP after a cookie handshake: a stream of the codec's frames.
    Kcp,
}

impl ListenerTransport {
    /// Whether it runs on UDP (QUIC, KCP) rather than TCP.
    pub fn is_udp(self) -> bool {
        matches!(self, ListenerTransport::Quic | ListenerTransport::Kcp)
    }

    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            ListenerTransport::Tcp => "tcp",
            ListenerTransport::Websocket => "websocket",
            ListenerTransport::Quic => "quic",
            ListenerTransport::Kcp => "kcp",
        }
    }
}

/// KCP tuning of a listener (`[listeners.kcp]`); the defaults are KCP's
/// usual fast mode (`nodelay 1, interval 10, resend 2, nc 1`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KcpConfig {
    /// Send segments without waiting to coalesce and use the shorter
    /// minimum retransmission timeout.
    pub nodelay: bool,
    /// Internal update interval, milliseconds (10..=5000).
    pub interval_ms: u32,
    /// Fast retransmit after this many duplicate ACKs (0: off).
    pub resend: u32,
    /// Disable congestion control (KCP's `nc`).
    pub no_congestion: bool,
    /// Send and receive window, segments.
    pub window: u16,
    /// Largest datagram sent, bytes, KCP's 24-byte segment header included
    /// (its first 4 bytes, the conversation id, are the only prefix: see
    /// `proto/PROTOCOL.md`, "KCP transport").
    pub mtu: usize,
    /// A peer silent this long is dead and its connection closed, ms.
    pub dead_after_ms: u64,
}

impl Default for KcpConfig {
    fn default() -> Self {
        KcpConfig {
            nodelay: true,
            interval_ms: 10,
            resend: 2,
            no_congestion: true,
            window: 256,
            mtu: 1200,
            dead_after_ms: 15_000,
        }
    }
}

impl super::ListenerConfig {
    /// The KCP tuning of this listener (its own or the defaults).
    pub fn kcp(&self) -> KcpConfig {
        self.kcp.clone().unwrap_or_default()
    }

    /// Checks the transport settings of `listeners[i]`.
    pub(super) fn validate_transport(&self, i: usize) -> Result<(), super::ConfigError> {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let t = self.transport;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(super::invalid(key("tls_key"), "tls_cert and tls_key go together: set both or neither"));
        }
        match t {
            ListenerTransport::Quic if self.tls_cert.is_none() => {
                return Err(super::invalid(
                    key("tls_cert"),
                    "QUIC needs a certificate: set tls_cert and tls_key (PEM files)",
                ))
            }
            ListenerTransport::Tcp | ListenerTransport::Kcp if self.tls_cert.is_some() => {
                return Err(super::invalid(
                    key("tls_cert"),
                    format!("has no effect with transport = \"{}\" (only quic and websocket use TLS)", t.name()),
                ))
            }
            _ => {}
        }
        if t != ListenerTransport::Websocket && !self.websocket_origins.is_empty() {
            return Err(super::invalid(key("websocket_origins"), "only for transport = \"websocket\""));
        }
        match (&self.kcp, t) {
            (Some(_), t) if t != ListenerTransport::Kcp => {
                Err(super::invalid(key("kcp"), "only for transport = \"kcp\""))
            }
            (Some(k), _) if !(10..=5000).contains(&k.interval_ms) => {
                Err(super::invalid(key("kcp.interval_ms"), "must be 10..=5000"))
            }
            (Some(k), _) if !(64..=1472).contains(&k.mtu) => Err(super::invalid(key("kcp.mtu"), "must be 64..=1472")),
            (Some(k), _) if k.window == 0 => Err(super::invalid(key("kcp.window"), "must be greater than zero")),
            (Some(k), _) if k.dead_after_ms < 1000 => {
                Err(super::invalid(key("kcp.dead_after_ms"), "must be at least 1000"))
            }
            _ => Ok(()),
        }
    }
}
