//! Players for the drivers: login tokens, sockets opened from a chosen
//! source address, waiting for the game server behind a gateway, and the
//! pacing and latency histograms of open-loop senders.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use portcullis_client::transport::BoxFuture;
use portcullis_client::{Client, ClientError, Connector, Dialer, Tls, TransportKind};
use portcullis_proto::token::{sign, Claims};
use portcullis_sample_game_server::ECHO;

/// A login token for `user` on device type "load", valid for a day.
pub fn token(secret: &str, user: &str) -> String {
    device_token(secret, user, "load")
}

/// A login token for `user` on device type `device`, valid for a day.
pub fn device_token(secret: &str, user: &str, device: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 24 * 3600;
    sign(secret.as_bytes(), &Claims { uid: user.into(), dev: device.into(), exp, role: String::new() })
}

/// An unconnected TCP socket bound to `source` (in blocking mode). On IPv4
/// the port is chosen at connect time (`IP_BIND_ADDRESS_NO_PORT`), so one
/// source address can hold as many connections as there are free 4-tuples,
/// not only as many as there are free ports.
pub fn bound_socket(source: IpAddr) -> io::Result<socket2::Socket> {
    use std::os::fd::AsRawFd;
    let domain = if source.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if source.is_ipv4() {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option value of the
        // size passed, both alive for the call.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    Ok(socket)
}

/// Connects a socket from [`bound_socket`] through tokio.
pub async fn connect_from(socket: socket2::Socket, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    socket.set_nonblocking(true)?;
    tokio::net::TcpSocket::from_std_stream(socket.into()).connect(addr).await
}

/// A client-SDK dialer that opens its sockets from `source`.
pub struct SourceDialer(pub IpAddr);

impl Dialer for SourceDialer {
    fn tcp(&self, addr: SocketAddr) -> BoxFuture<io::Result<tokio::net::TcpStream>> {
        let source = self.0;
        Box::pin(async move { connect_from(bound_socket(source)?, addr).await })
    }

    fn udp(&self, _addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        std::net::UdpSocket::bind(SocketAddr::new(self.0, 0))
    }
}

/// A client-SDK connector over `transport` that opens its sockets from
/// `source` (and trusts `tls` for QUIC).
pub fn connector_from(source: IpAddr, transport: TransportKind, tls: Option<Tls>) -> Connector {
    portcullis_client::connector_tls(transport, Arc::new(SourceDialer(source)), tls)
}

/// Waits (up to 3 s) until an ECHO through `probe`'s gateway comes back:
/// the gateway's game-server link may still be coming up. Says so on
/// stderr the first time it has to wait.
pub async fn wait_for_game_server(probe: &Client) -> Result<(), ClientError> {
    let mut attempt = 0;
    loop {
        match probe.call(ECHO, b"ready?").await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 300 => {
                if attempt == 0 {
                    eprintln!("waiting for the game server: {e}");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A latency histogram in microseconds, from 1 µs to 60 s, 3 significant
/// digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds")
}

/// Paces one open-loop sender: a message is due every `interval` from
/// `first`.
pub struct Pacer {
    due: Instant,
    interval: Duration,
}

impl Pacer {
    /// The first message is due at `first`.
    pub fn new(first: Instant, interval: Duration) -> Pacer {
        Pacer { due: first, interval }
    }

    /// Waits until the next message is due and returns the instant its
    /// latency counts from: when it was due if the previous round trip ran
    /// past it (the system under test held it up), else when it is sent —
    /// the runtime's timer wakes up to a millisecond late, and that lateness
    /// is the driver's, not the gateway's.
    pub async fn next(&mut self) -> Instant {
        let held_up = Instant::now() >= self.due;
        tokio::time::sleep_until(self.due.into()).await;
        let t = if held_up { self.due } else { Instant::now() };
        self.due += self.interval;
        t
    }
}
