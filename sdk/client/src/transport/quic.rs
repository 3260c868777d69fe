//! QUIC to the gateway (quinn): one bidirectional stream carries the
//! codec's frames; the connection keeps itself alive and survives the
//! client's address changing.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use quinn;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Connected, Dialer, Tls};

/// The ALPN protocol the gateway speaks.
pub const ALPN: &[u8] = b"portcullis";

/// Keep-alive of an idle connection (the gateway forgets a connection
/// silent for 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The QUIC client configuration that trusts `tls` (ALPN, keep-alive and
/// stream limits as the gateway expects).
pub fn client_config(tls: &Tls) -> io::Result<quinn::ClientConfig> {
    let invalid = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in &tls.roots {
        roots.add(cert.clone()).map_err(|e| invalid(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| invalid(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_concurrent_bidi_streams(0u8.into());
    transport.max_concurrent_uni_streams(0u8.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The stream of a QUIC connection; it holds the endpoint and connection.
pub struct QuicStream {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl QuicStream {
    /// The endpoint (to [`quinn::Endpoint::rebind`] it to another socket:
    /// the connection migrates).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The connection (datagrams, statistics).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// The stream and its connection's datagrams, for a [`crate::Client`].
    pub fn into_connected(self) -> Connected {
        let datagrams = Some(self.connection.clone());
        Connected { stream: Box::new(self), datagrams }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// Connects to the gateway at `addr` and opens the stream.
pub async fn connect(dialer: &dyn Dialer, addr: SocketAddr, tls: &Tls) -> io::Result<QuicStream> {
    let socket = dialer.udp(addr)?;
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))?;
    endpoint.set_default_client_config(client_config(tls)?);
    let connecting = endpoint
        .connect(addr, &tls.server_name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("QUIC to {addr}: {e}")))?;
    let connection = connecting.await.map_err(|e| io::Error::other(format!("QUIC handshake with {addr}: {e}")))?;
    let (send, recv) = connection.open_bi().await.map_err(|e| io::Error::other(format!("QUIC stream: {e}")))?;
    Ok(QuicStream { endpoint, connection, send, recv })
}
