//! KCP to a `transport = "kcp"` listener (`PROTOCOL.md`, "KCP transport").
//!
//! `connect` (used by [`super::connector`]) runs the handshake (`HELLO` →
//! `COOKIE` → `CONNECT` → `ACCEPT`, each step retried) on a UDP socket of
//! the dialer, then hands the socket to a background task that drives a
//! [`Kcp`] in fast mode and bridges it to the returned stream through
//! [`tokio::io::duplex`]:
//!
//! - bytes written to the stream go to `Kcp::send` while KCP's send queue
//!   is under the window (past it the writer waits: backpressure);
//! - bytes KCP receives go to the stream, at most 256 KiB ahead of
//!   the reader (past it KCP's receive window closes and the gateway waits);
//! - `update` runs on a 10 ms tick and on every input;
//! - a `CLOSE` from the gateway, KCP's dead link, or data left
//!   unacknowledged for [`STALL`] end the stream (EOF);
//! - dropping (or shutting down) the stream delivers what was written, then
//!   sends `CLOSE`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kcp::Kcp;
use portcullis_proto::kcp::{conv_of, random_nonce, tuning, Control, CONTROL_CONV};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};

use super::{tokio_udp, BoxStream, Dialer};

/// How long the handshake may take before the connector gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause before a handshake packet is sent again.
const RETRY: Duration = Duration::from_millis(250);

/// KCP's update tick.
const TICK: Duration = Duration::from_millis(tuning::INTERVAL_MS as u64);

/// Data in flight with no acknowledgement for this long: the gateway is
/// gone.
pub const STALL: Duration = Duration::from_secs(15);

/// Bytes received and not yet read by the stream's reader, at most.
const TO_USER_MAX: usize = 256 * 1024;

/// Bytes of the duplex pipe each way.
const PIPE: usize = 64 * 1024;

/// Opens a KCP connection to `addr` from a UDP socket of `dialer`.
pub(crate) async fn connect(dialer: &dyn Dialer, addr: SocketAddr) -> io::Result<BoxStream> {
    connect_within(dialer, addr, HANDSHAKE_TIMEOUT).await
}

async fn connect_within(dialer: &dyn Dialer, addr: SocketAddr, timeout: Duration) -> io::Result<BoxStream> {
    let socket = Arc::new(tokio_udp(dialer.udp(addr)?)?);
    let conv = handshake(&socket, addr, timeout).await?;
    let (user, ours) = tokio::io::duplex(PIPE);
    tokio::spawn(drive(socket, addr, conv, ours));
    Ok(Box::new(user))
}

/// Sends `packet` every [`RETRY`] until `answer` accepts a reply from
/// `addr` (`Some`), or `deadline`.
async fn exchange<T>(
    socket: &UdpSocket,
    addr: SocketAddr,
    packet: &[u8],
    deadline: Instant,
    step: &str,
    mut answer: impl FnMut(Control) -> Option<io::Result<T>>,
) -> io::Result<T> {
    let mut buf = [0u8; 2048];
    loop {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("KCP handshake with {addr}: no {step} (is it a transport = \"kcp\" listener?)"),
            ));
        }
        socket.send_to(packet, addr).await?;
        let retry_at = (Instant::now() + RETRY).min(deadline);
        loop {
            let got = tokio::time::timeout_at(retry_at, socket.recv_from(&mut buf)).await;
            let Ok(got) = got else { break };
            let (n, from) = match got {
                Ok(r) => r,
                // An ICMP error (port unreachable) reported on the socket:
                // the next retry may fare better.
                Err(_) => continue,
            };
            if from != addr {
                continue;
            }
            if let Some(done) = Control::decode(&buf[..n]).ok().and_then(&mut answer) {
                return done;
            }
        }
    }
}

/// The handshake; returns the conversation id.
async fn handshake(socket: &UdpSocket, addr: SocketAddr, timeout: Duration) -> io::Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt(socket, addr, deadline).await {
            // The id was taken between COOKIE and CONNECT: start over.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => continue,
            done => return done,
        }
    }
}

/// One handshake from HELLO, with a fresh nonce.
async fn attempt(socket: &UdpSocket, addr: SocketAddr, deadline: Instant) -> io::Result<u32> {
    let nonce = random_nonce();
    let hello = Control::Hello { nonce }.to_vec();
    let (conv, cookie) = exchange(socket, addr, &hello, deadline, "COOKIE in answer to HELLO", |c| match c {
        Control::Cookie { nonce: n, conv, cookie } if n == nonce => Some(Ok((conv, cookie))),
        _ => None,
    })
    .await?;
    let connect = Control::Connect { nonce, conv, cookie }.to_vec();
    exchange(socket, addr, &connect, deadline, "ACCEPT in answer to CONNECT", |c| match c {
        Control::Accept { nonce: n, conv: v } if n == nonce && v == conv => Some(Ok(conv)),
        Control::Close { conv: v } if v == conv => Some(Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("KCP handshake with {addr}: the gateway refused conversation {conv:#x}"),
        ))),
        _ => None,
    })
    .await
}

/// KCP's output: straight to the socket (a datagram the socket cannot take
/// now is lost, and KCP sends it again).
struct UdpOut {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl Write for UdpOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.socket.try_send_to(buf, self.to);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Drives the conversation until it ends; dropping `ours` is the stream's
/// EOF.
async fn drive(socket: Arc<UdpSocket>, addr: SocketAddr, conv: u32, ours: DuplexStream) {
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u32;
    let mut kcp = Kcp::new_stream(conv, UdpOut { socket: socket.clone(), to: addr });
    kcp.set_nodelay(tuning::NODELAY, tuning::INTERVAL_MS as i32, tuning::RESEND as i32, tuning::NO_CONGESTION);
    kcp.set_wndsize(tuning::WINDOW, tuning::WINDOW);
    let _ = kcp.set_mtu(tuning::MTU);
    let _ = kcp.update(ms());
    let window = usize::from(tuning::WINDOW);

    let (mut rd, mut wr) = tokio::io::split(ours);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut datagram = vec![0u8; 64 * 1024];
    let mut from_user = vec![0u8; 32 * 1024];
    let mut to_user: Vec<u8> = Vec::new();
    let mut user_done = false;
    let mut progress = Instant::now();
    let mut linger_until: Option<Instant> = None;

    loop {
        let room = kcp.wait_snd() < window;
        tokio::select! {
            got = socket.recv_from(&mut datagram) => {
                let Ok((n, from)) = got else { continue };
                if from != addr {
                    continue;
                }
                let d = &datagram[..n];
                match conv_of(d) {
                    Some(CONTROL_CONV) if Control::decode(d) == Ok(Control::Close { conv }) => break,
                    Some(c) if c == conv => {
                        let waiting = kcp.wait_snd();
                        let _ = kcp.update(ms());
                        if kcp.input(d).is_ok() && kcp.wait_snd() < waiting {
                            progress = Instant::now();
                        }
                    }
                    _ => {}
                }
            }
            read = rd.read(&mut from_user), if room && !user_done => match read {
                Ok(0) | Err(_) => {
                    user_done = true;
                    linger_until = Some(Instant::now() + STALL);
                }
                Ok(n) => {
                    if kcp.wait_snd() == 0 {
                        progress = Instant::now();
                    }
                    if kcp.send(&from_user[..n]).is_err() {
                        break;
                    }
                    let _ = kcp.update(ms());
                    let _ = kcp.flush();
                }
            },
            wrote = wr.write(&to_user), if !to_user.is_empty() => match wrote {
                Ok(n) if n > 0 => { to_user.drain(..n); }
                // The reader is gone: nothing more to deliver.
                _ => to_user.clear(),
            },
            _ = tick.tick() => {
                let _ = kcp.update(ms());
                if kcp.is_dead_link() || (kcp.wait_snd() > 0 && progress.elapsed() >= STALL) {
                    break;
                }
            }
        }
        while to_user.len() < TO_USER_MAX {
            let Ok(n) = kcp.peeksize() else { break };
            let at = to_user.len();
            to_user.resize(at + n, 0);
            match kcp.recv(&mut to_user[at..]) {
                Ok(got) => to_user.truncate(at + got),
                Err(_) => {
                    to_user.truncate(at);
                    break;
                }
            }
        }
        if user_done && (kcp.wait_snd() == 0 || linger_until.is_some_and(|t| Instant::now() >= t)) {
            let _ = socket.send_to(&Control::Close { conv }.to_vec(), addr).await;
            return;
        }
    }
    // Ended by the gateway: what arrived is still handed over, then EOF.
    if !to_user.is_empty() {
        let _ = wr.write_all(&to_user).await;
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use portcullis_proto::kcp::COOKIE_LEN;

    use super::*;
    use crate::transport::DirectDialer;

    #[derive(Clone, Default)]
    struct Outbox(Arc<Mutex<VecDeque<Vec<u8>>>>);

    impl Write for Outbox {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push_back(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const CONV: u32 = 0x1234_5678;
    const COOKIE: [u8; COOKIE_LEN] = [9; COOKIE_LEN];

    /// What the fake gateway saw.
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        hellos: usize,
        connects: usize,
        echoed: usize,
        close: bool,
    }

    /// A one-client gateway that echoes the stream; it answers only the
    /// `answer_from`-th HELLO on (to exercise retries), and sends `CLOSE`
    /// after echoing `close_after` bytes.
    async fn fake_gateway(
        socket: UdpSocket,
        answer_from: usize,
        close_after: Option<usize>,
        refuse_first: bool,
    ) -> Seen {
        let mut seen = Seen::default();
        let out = Outbox::default();
        let mut kcp: Option<Kcp<Outbox>> = None;
        let start = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut peer = None;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                got = socket.recv_from(&mut buf) => {
                    let (n, from) = got.unwrap();
                    peer = Some(from);
                    let d = &buf[..n];
                    if conv_of(d) == Some(CONTROL_CONV) {
                        let reply = match Control::decode(d).unwrap() {
                            Control::Hello { nonce } => {
                                seen.hellos += 1;
                                (seen.hellos >= answer_from).then_some(Control::Cookie { nonce, conv: CONV, cookie: COOKIE })
                            }
                            Control::Connect { nonce, conv, cookie } if conv == CONV && cookie == COOKIE => {
                                seen.connects += 1;
                                if refuse_first && seen.connects == 1 {
                                    socket.send_to(&Control::Close { conv }.to_vec(), from).await.unwrap();
                                    continue;
                                }
                                let mut k = Kcp::new_stream(CONV, out.clone());
                                k.set_nodelay(true, 10, 2, true);
                                let _ = k.update(start.elapsed().as_millis() as u32);
                                kcp.get_or_insert(k);
                                Some(Control::Accept { nonce, conv })
                            }
                            Control::Close { conv } if conv == CONV => {
                                seen.close = true;
                                return seen;
                            }
                            other => panic!("unexpected {other:?}"),
                        };
                        if let Some(r) = reply {
                            socket.send_to(&r.to_vec(), from).await.unwrap();
                        }
                    } else if let Some(k) = kcp.as_mut() {
                        k.input(d).unwrap();
                        let mut data = vec![0u8; 64 * 1024];
                        while let Ok(n) = k.recv(&mut data) {
                            k.send(&data[..n]).unwrap();
                            seen.echoed += n;
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            if let Some(k) = kcp.as_mut() {
                let _ = k.update(start.elapsed().as_millis() as u32);
                let _ = k.flush();
                let datagrams: Vec<_> = out.0.lock().unwrap().drain(..).collect();
                for d in datagrams {
                    socket.send_to(&d, peer.unwrap()).await.unwrap();
                }
                if close_after.is_some_and(|n| seen.echoed >= n) && k.wait_snd() == 0 {
                    socket.send_to(&Control::Close { conv: CONV }.to_vec(), peer.unwrap()).await.unwrap();
                    return seen;
                }
            }
        }
    }

    async fn gateway(answer_from: usize, close_after: Option<usize>) -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
        gateway_refusing(answer_from, close_after, false).await
    }

    async fn gateway_refusing(
        answer_from: usize,
        close_after: Option<usize>,
        refuse_first: bool,
    ) -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        (addr, tokio::spawn(fake_gateway(socket, answer_from, close_after, refuse_first)))
    }

    #[tokio::test]
    async fn a_close_in_answer_to_connect_starts_the_handshake_over() {
        let (addr, gw) = gateway_refusing(1, Some(2), true).await;
        let mut stream = connect(&DirectDialer, addr).await.unwrap();
        stream.write_all(b"hi").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, b"hi");
        let seen = gw.await.unwrap();
        assert_eq!((seen.hellos, seen.connects), (2, 2));
    }

    #[tokio::test]
    async fn handshake_with_retries_then_an_echo_and_close_on_drop() {
        // The first HELLO goes unanswered, as if it were lost.
        let (addr, gw) = gateway(2, None).await;
        let mut stream = connect(&DirectDialer, addr).await.unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(&mut stream);
        let (_, got) = tokio::join!(
            async {
                wr.write_all(&sent).await.unwrap();
            },
            async {
                let mut got = vec![0; sent.len()];
                rd.read_exact(&mut got).await.unwrap();
                got
            }
        );
        assert!(got == sent, "the echo came back whole and in order");
        drop(stream);
        let seen = tokio::time::timeout(Duration::from_secs(5), gw).await.unwrap().unwrap();
        assert_eq!(seen, Seen { hellos: 2, connects: 1, echoed: sent.len(), close: true });
    }

    #[tokio::test]
    async fn close_from_the_gateway_is_end_of_stream() {
        let (addr, gw) = gateway(1, Some(5)).await;
        let mut stream = connect(&DirectDialer, addr).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, b"hello");
        assert!(!gw.await.unwrap().close);
    }

    #[tokio::test]
    async fn a_gateway_that_never_answers_is_a_clear_error() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let err = match connect_within(&DirectDialer, addr, Duration::from_millis(600)).await {
            Ok(_) => panic!("connected to nobody"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no COOKIE in answer to HELLO"), "{err}");
        // It did retry.
        let mut buf = [0u8; 128];
        let mut hellos = 0;
        while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(50), silent.recv_from(&mut buf)).await {
            assert!(matches!(Control::decode(&buf[..n]), Ok(Control::Hello { .. })));
            hellos += 1;
        }
        assert!(hellos >= 2, "{hellos} HELLOs");
    }
}
