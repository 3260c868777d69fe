//! How a client reaches the gateway: TCP, WebSocket, QUIC or KCP, all as
//! one ordered byte stream of the codec's frames to the rest of the SDK.
//!
//! A [`Dialer`] opens the sockets (directly, from another network
//! namespace, from a chosen source address); [`connector`] turns a dialer
//! and a [`TransportKind`] into the [`Connector`] a [`crate::Client`] uses
//! for its first connection and for every [`crate::Client::resume`].

mod websocket;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UdpSocket};

pub mod kcp;
pub mod quic;

pub use rustls::pki_types::CertificateDer;

/// A bidirectional byte stream to the gateway.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxStream = Box<dyn ByteStream>;

/// A connection to the gateway, as a connector opens it: the stream of
/// frames and, on QUIC, the connection that carries unreliable datagrams.
pub struct Connected {
    /// The ordered stream of the codec's frames.
    pub stream: BoxStream,
    /// QUIC: the connection, for datagrams ([`crate::Client::call_unreliable`]).
    pub datagrams: Option<quinn::Connection>,
}

impl<S: ByteStream> From<S> for Connected {
    fn from(stream: S) -> Connected {
        Connected { stream: Box::new(stream), datagrams: None }
    }
}

/// A boxed future, as dialers and connectors return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Opens the connections of a client: the first one and those of
/// [`crate::Client::resume`].
pub type Connector = Arc<dyn Fn(SocketAddr) -> BoxFuture<io::Result<Connected>> + Send + Sync>;

/// The transports a client can use; the gateway's listener decides which
/// one it speaks (`transport` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// TCP.
    #[default]
    Tcp,
    /// WebSocket on TCP (`ws://`), one envelope per message: binary for
    /// the length-prefixed codecs, text for the line codecs (see
    /// `proto/PROTOCOL.md` §17).
    WebSocket,
    /// QUIC: one bidirectional stream.
    Quic,
    /// KCP on UDP after the cookie handshake.
    Kcp,
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(TransportKind::Tcp),
            "websocket" | "ws" => Ok(TransportKind::WebSocket),
            "quic" => Ok(TransportKind::Quic),
            "kcp" => Ok(TransportKind::Kcp),
            other => Err(format!("unknown transport {other:?}: tcp, websocket, quic or kcp")),
        }
    }
}

/// Opens sockets toward the gateway. The default ([`DirectDialer`]) opens
/// them in this process's namespace from any address.
pub trait Dialer: Send + Sync + 'static {
    /// A TCP connection to `addr`.
    fn tcp(&self, addr: SocketAddr) -> BoxFuture<io::Result<TcpStream>>;
    /// A UDP socket (unconnected, bound) to talk to `addr` from.
    fn udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket>;
}

/// Dials from this namespace, any source address.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectDialer;

impl Dialer for DirectDialer {
    fn tcp(&self, addr: SocketAddr) -> BoxFuture<io::Result<TcpStream>> {
        Box::pin(TcpStream::connect(addr))
    }

    fn udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let any: SocketAddr =
            if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        std::net::UdpSocket::bind(any)
    }
}

/// A tokio UDP socket from a dialer's.
#[allow(dead_code, reason = "for the QUIC and KCP connectors, not built yet")]
pub(crate) fn tokio_udp(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// What a client trusts of the gateway's TLS (QUIC, `wss`).
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificates (roots, or the gateway's own self-signed one) trusted.
    pub roots: Vec<CertificateDer<'static>>,
    /// The name the gateway's certificate must carry.
    pub server_name: String,
}

impl Tls {
    /// Trusts the certificates of a PEM file, for `server_name`.
    pub fn from_pem_file(path: &str, server_name: &str) -> io::Result<Tls> {
        use rustls::pki_types::pem::PemObject;
        let roots = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: {e}")))?;
        if roots.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: no certificate in the file")));
        }
        Ok(Tls { roots, server_name: server_name.into() })
    }
}

/// The connector for `kind` over `dialer`, without TLS (QUIC needs
/// [`connector_tls`]).
pub fn connector(kind: TransportKind, dialer: Arc<dyn Dialer>) -> Connector {
    connector_tls(kind, dialer, None)
}

/// The connector for `kind` over `dialer`, trusting `tls` for QUIC.
pub fn connector_tls(kind: TransportKind, dialer: Arc<dyn Dialer>, tls: Option<Tls>) -> Connector {
    let tls = tls.map(Arc::new);
    match kind {
        TransportKind::Tcp => Arc::new(move |addr| {
            let dial = dialer.tcp(addr);
            Box::pin(async move {
                let stream = dial.await?;
                stream.set_nodelay(true)?;
                Ok(Connected::from(stream))
            })
        }),
        TransportKind::Quic => Arc::new(move |addr| {
            let (dialer, tls) = (dialer.clone(), tls.clone());
            Box::pin(async move {
                let tls = tls.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "QUIC needs the gateway's certificate (connector_tls)")
                })?;
                Ok(quic::connect(dialer.as_ref(), addr, &tls).await?.into_connected())
            })
        }),
        TransportKind::Kcp => Arc::new(move |addr| {
            let dialer = dialer.clone();
            Box::pin(
                async move { Ok(Connected { stream: kcp::connect(dialer.as_ref(), addr).await?, datagrams: None }) },
            )
        }),
        TransportKind::WebSocket => Arc::new(move |addr| {
            let dialer = dialer.clone();
            Box::pin(
                async move { Ok(Connected { stream: websocket::connect(&*dialer, addr).await?, datagrams: None }) },
            )
        }),
    }
}

/// The connector that dials TCP directly.
pub fn direct() -> Connector {
    connector(TransportKind::Tcp, Arc::new(DirectDialer))
}
