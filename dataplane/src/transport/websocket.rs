//! WebSocket (RFC 6455), server side, sans-IO: the adapter between the
//! bytes of a TCP connection of a `transport = "websocket"` listener and
//! the core, used alike by the kernel TCP transport and the userspace stack.
//!
//! The core is not changed by it: each data message carries exactly one
//! envelope, which the adapter hands to the core framed as the listener's
//! codec frames its streams ([`Framing::begin`] / [`Framing::finish`]); the
//! other way, it splits the core's framed output into envelopes
//! ([`Framing::next_frame`]) and sends each as one message — binary for
//! protobuf and FlatBuffers, text for JSON and text.
//!
//! Contract, in the order a transport drives it:
//! 1. [`WebSocket::handle_input`] with every byte read from the peer; it
//!    answers the HTTP/1.1 Upgrade request (101, or 400, 403, 426, 431 and
//!    the end of the connection), then parses frames: client masking
//!    required, fragmentation, ping → pong, the close handshake, the
//!    listener's maximum frame size per message. [`Progress::opened`] says
//!    the handshake has just completed (output may flow: tell the core the
//!    connection is writable); [`Progress::finished`] says the connection
//!    is over (the peer closed, or broke the protocol).
//! 2. [`WebSocket::for_core`] then [`WebSocket::delivered`]: the framed
//!    envelopes for [`portcullis_core::Gateway::handle_data`].
//! 3. [`WebSocket::encode`] with [`portcullis_core::Gateway::outbound`]:
//!    returns how many bytes the core may consume; [`WebSocket::pending`]
//!    and [`WebSocket::sent`]: the bytes for the socket.
//! 4. [`WebSocket::shutdown`] when the connection ends (the core closed it,
//!    or [`Progress::finished`] while the core still takes input): the
//!    core's last output and a close frame; write [`WebSocket::pending`],
//!    then close the TCP connection. If the core closed the connection
//!    before its handshake ([`WebSocket::awaits_handshake`]: a refusal at
//!    accept), keep reading (for a bounded time): the held output goes out
//!    once the request has been answered.
//!
//! Steps 1–2 and 3 are [`into_core`] and [`transmit`], which both TCP
//! transports call, so that the logic exists once; [`into_core`] counts
//! upgrades and failures by reason (`ws_*` in [`IoStats`]).
//!
//! A message over the limit is announced to the core as an oversized frame
//! (so that the core answers FRAME_TOO_LARGE, counts and scores it as on
//! TCP) and the connection then closes with status 1009.
//!
//! `wss`: when the listener has `tls_cert` and `tls_key`, a rustls
//! [`rustls::ServerConnection`] (sans-IO too) sits below: the bytes in and
//! [`WebSocket::pending`] are TLS records, the rest is the same.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use portcullis_core::config::{Config, ListenerTransport};
use portcullis_core::{ConnId, Gateway};
use portcullis_proto::framing::{Framing, LENGTH_PREFIX};
use portcullis_proto::Codec;

use crate::io::IoStats;

/// The largest Upgrade request accepted, bytes (431 beyond).
pub const MAX_REQUEST: usize = 8 * 1024;

/// Headers of an Upgrade request parsed at most.
const MAX_HEADERS: usize = 32;

/// [`WebSocket::encode`] stops taking output once this much waits for the
/// socket, so that the backlog stays in the core (where the slow-consumer
/// limit sees it).
const TX_BATCH: usize = 256 * 1024;

/// Buffers emptied with more capacity than this are given back, so that an
/// idle connection holds kilobytes whatever it once sent or received.
const KEEP_CAPACITY: usize = 16 * 1024;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEAD: usize = 14;

/// Close status codes sent (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure (the gateway closed the connection).
    pub const NORMAL: u16 = 1000;
    /// Protocol error (unmasked frame, bad opcode, reserved bits, …).
    pub const PROTOCOL: u16 = 1002;
    /// Invalid payload: a text message that is not UTF-8, or a message of a
    /// line codec that holds more than one line.
    pub const INVALID: u16 = 1007;
    /// A message larger than the listener's maximum frame size.
    pub const TOO_BIG: u16 = 1009;
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The WebSocket settings of one listener.
#[derive(Debug, Clone)]
pub struct WsSettings {
    framing: Framing,
    /// Messages sent as text (JSON and text codecs), else binary.
    text: bool,
    /// Largest message accepted, bytes.
    max_message: usize,
    /// Accepted `Origin`s; empty: any, and none.
    origins: Arc<[String]>,
    /// TLS (`wss`), when the listener has a certificate.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl WsSettings {
    /// Settings for a listener of `codec` with messages up to `max_message`
    /// bytes and the accepted `origins` (empty: any).
    pub fn new(codec: Codec, max_message: usize, origins: &[String]) -> WsSettings {
        WsSettings {
            framing: codec.framing(),
            text: codec.framing() == Framing::Lines,
            max_message,
            origins: origins.into(),
            tls: None,
        }
    }

    /// The same, over TLS (`wss`).
    #[must_use]
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> WsSettings {
        self.tls = Some(tls);
        self
    }

    /// The settings of each listener of `config` that runs WebSocket (`None`
    /// for the others), by listener index; the certificates of `wss`
    /// listeners are loaded (an error names the listener and the file).
    pub fn for_listeners(config: &Config) -> io::Result<Vec<Option<WsSettings>>> {
        let mut all = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if l.transport != ListenerTransport::Websocket {
                all.push(None);
                continue;
            }
            let mut settings = WsSettings::new(l.codec, config.max_frame(i), &l.websocket_origins);
            if let (Some(cert), Some(key)) = (&l.tls_cert, &l.tls_key) {
                settings = settings.with_tls(tls_config(i, cert, key)?);
            }
            all.push(Some(settings));
        }
        Ok(all)
    }
}

/// The TLS server config of listener `i` from its PEM files; ALPN
/// `http/1.1`.
pub fn tls_config(i: usize, cert: &str, key: &str) -> io::Result<Arc<rustls::ServerConfig>> {
    super::tls::server_config(i, cert, key, super::tls::Versions::SafeDefault, b"http/1.1").map(Arc::new)
}

/// TLS below the WebSocket: records in and out, plaintext between.
struct Tls {
    conn: rustls::ServerConnection,
    /// Records for the socket, from `wire_off`.
    wire: Vec<u8>,
    wire_off: usize,
    /// Plaintext read, reused.
    plain: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("handshaking", &self.conn.is_handshaking()).finish_non_exhaustive()
    }
}

/// What [`WebSocket::handle_input`] found out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The handshake completed: the core's output may flow now.
    pub opened: bool,
    /// The connection is over: give the core [`WebSocket::for_core`], then
    /// end it ([`WebSocket::shutdown`], write, close).
    pub finished: bool,
}

/// Why a connection's WebSocket ended early, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Refused,
    Protocol,
    TooBig,
    Tls,
}

/// A frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct Head {
    opcode: u8,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes unmasked so far.
    pos: usize,
}

/// Why a frame header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Close with this status.
    Close(u16),
    /// A message of this many bytes (or more) is over the limit.
    TooBig(u64),
}

/// One server-side WebSocket connection.
#[derive(Debug)]
pub struct WebSocket {
    settings: WsSettings,
    /// The 101 was sent.
    opened: bool,
    /// Input is parsed (not after the close or a protocol error).
    reading: bool,
    /// Unparsed input: the Upgrade request, or the start of a frame header.
    rx: Vec<u8>,
    /// The frame whose payload is arriving.
    frame: Option<Head>,
    /// The data message being assembled: its opcode and its mark in `inbox`.
    message: Option<(u8, usize)>,
    /// The payload of a control frame being assembled.
    control: Vec<u8>,
    /// Framed envelopes for the core (the first `ready` bytes), then the
    /// message being assembled.
    inbox: Vec<u8>,
    ready: usize,
    /// Bytes for the socket, from `tx_off`.
    tx: Vec<u8>,
    tx_off: usize,
    /// The status of the close frame to send.
    close_code: Option<u16>,
    close_sent: bool,
    /// The core's last output, when it closed the connection before the
    /// handshake completed (a refusal): sent once it does, then the close.
    held: Option<Vec<u8>>,
    /// `wss`: the TLS connection below.
    tls: Option<Box<Tls>>,
    /// Why it failed, if it did.
    failure: Option<Failure>,
}

impl WebSocket {
    /// A connection that waits for its Upgrade request.
    ///
    /// # Panics
    /// If rustls cannot make a connection of a config it accepted (it
    /// fails only for QUIC-only or invalid configs, which
    /// [`tls_config`] does not build).
    pub fn new(settings: WsSettings) -> WebSocket {
        let tls = settings.tls.clone().map(|config| {
            let conn = rustls::ServerConnection::new(config).expect("a TLS connection of a valid server config");
            Box::new(Tls { conn, wire: Vec::new(), wire_off: 0, plain: Vec::new() })
        });
        WebSocket {
            failure: None,
            tls,
            settings,
            opened: false,
            reading: true,
            rx: Vec::new(),
            frame: None,
            message: None,
            control: Vec::new(),
            inbox: Vec::new(),
            ready: 0,
            tx: Vec::new(),
            tx_off: 0,
            close_code: None,
            close_sent: false,
            held: None,
        }
    }

    /// Whether the handshake completed (messages flow).
    pub fn is_open(&self) -> bool {
        self.opened
    }

    /// Whether the core closed the connection while its handshake was
    /// still going on ([`WebSocket::shutdown`] before the request came): the
    /// transport keeps reading for a short while so that the core's last
    /// words (a refusal's ERROR) reach the client as a message.
    pub fn awaits_handshake(&self) -> bool {
        self.held.is_some() && self.reading
    }

    /// Bytes that arrived from the peer.
    pub fn handle_input(&mut self, data: &[u8]) -> Progress {
        let Some(mut tls) = self.tls.take() else { return self.handle_plain(data) };
        let mut p = Progress::default();
        let mut rest = data;
        while !rest.is_empty() && !p.finished {
            let state = match tls.conn.read_tls(&mut rest) {
                Ok(0) => break, // takes nothing more (cannot happen while its plaintext is drained)
                Ok(_) => tls.conn.process_new_packets(),
                Err(_) => Err(rustls::Error::General("TLS input refused".into())),
            };
            let Ok(state) = state else {
                // Broken TLS: its alert goes out, then the TCP close.
                self.reading = false;
                self.failure = Some(Failure::Tls);
                p.finished = true;
                break;
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                tls.plain.resize(n, 0);
                if tls.conn.reader().read_exact(&mut tls.plain).is_ok() {
                    let q = self.handle_plain(&tls.plain);
                    p.opened |= q.opened;
                    p.finished |= q.finished;
                }
            }
            if state.peer_has_closed() {
                self.reading = false;
                p.finished = true;
            }
        }
        self.tls = Some(tls);
        self.seal();
        p
    }

    /// Plaintext that arrived from the peer.
    fn handle_plain(&mut self, data: &[u8]) -> Progress {
        let mut p = Progress::default();
        if !self.reading {
            return p;
        }
        if !self.opened {
            self.rx.extend_from_slice(data);
            match self.handshake() {
                Ok(None) => return p,
                Ok(Some(used)) => {
                    p.opened = true;
                    if let Some(held) = self.held.take() {
                        // Closed already: its last output, then the close.
                        self.rx = Vec::new();
                        self.shutdown(&held);
                        p.finished = true;
                        return p;
                    }
                    let request = std::mem::take(&mut self.rx);
                    self.frames(&request[used..], &mut p);
                }
                Err((status, why)) => {
                    self.refuse(status, why);
                    p.finished = true;
                }
            }
            return p;
        }
        self.frames(data, &mut p);
        p
    }

    /// Framed envelopes for the core.
    pub fn for_core(&self) -> &[u8] {
        &self.inbox[..self.ready]
    }

    /// [`WebSocket::for_core`] was handed to the core.
    pub fn delivered(&mut self) {
        if self.ready < self.inbox.len() {
            self.inbox.drain(..self.ready);
        } else if self.inbox.capacity() > KEEP_CAPACITY {
            self.inbox = Vec::new();
        } else {
            self.inbox.clear();
        }
        if let Some((_, mark)) = &mut self.message {
            *mark -= self.ready;
        }
        self.ready = 0;
    }

    /// Turns whole frames at the start of `out` (the core's outbound bytes)
    /// into messages waiting for the socket; returns how many bytes of
    /// `out` it took (none before the handshake, after the close, or while
    /// [`WebSocket::pending`] holds a batch already).
    pub fn encode(&mut self, out: &[u8]) -> usize {
        self.encode_up_to(out, TX_BATCH)
    }

    fn encode_up_to(&mut self, out: &[u8], limit: usize) -> usize {
        if !self.opened || self.close_sent {
            return 0;
        }
        if self.tx_off > 0 {
            self.tx.drain(..self.tx_off);
            self.tx_off = 0;
        }
        let mut used = 0;
        let sealed = self.tls.as_ref().map_or(0, |t| t.wire.len() - t.wire_off);
        while self.tx.len() + sealed < limit {
            // The core writes whole frames of its own: no limit to check.
            let Ok(Some((body, n))) = self.settings.framing.next_frame(&out[used..], usize::MAX) else { break };
            let opcode = if self.settings.text { OP_TEXT } else { OP_BINARY };
            let body = &out[used + body.start..used + body.end];
            push_frame(&mut self.tx, opcode, body);
            used += n;
        }
        self.seal();
        used
    }

    /// The end of the connection: messages of the core's last output `out`,
    /// then the close frame (status 1000, or why the connection failed).
    /// Write [`WebSocket::pending`] and close the TCP connection after it.
    ///
    /// Before the handshake has completed, `out` is held until it does
    /// ([`WebSocket::awaits_handshake`]).
    pub fn shutdown(&mut self, out: &[u8]) {
        if !self.opened && self.reading {
            self.held = Some(out.to_vec());
            return;
        }
        self.encode_up_to(out, usize::MAX);
        self.reading = false;
        if self.opened && !self.close_sent {
            let code = self.close_code.unwrap_or(close_code::NORMAL);
            push_frame(&mut self.tx, OP_CLOSE, &code.to_be_bytes());
            self.close_sent = true;
        }
        if let Some(tls) = &mut self.tls {
            tls.conn.send_close_notify();
        }
        self.seal();
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> &[u8] {
        match &self.tls {
            Some(tls) => &tls.wire[tls.wire_off..],
            None => &self.tx[self.tx_off..],
        }
    }

    /// `n` bytes of [`WebSocket::pending`] were written.
    pub fn sent(&mut self, n: usize) {
        let (buf, off) = match &mut self.tls {
            Some(tls) => (&mut tls.wire, &mut tls.wire_off),
            None => (&mut self.tx, &mut self.tx_off),
        };
        *off += n;
        if *off >= buf.len() {
            buf.clear();
            *off = 0;
            if buf.capacity() > KEEP_CAPACITY {
                *buf = Vec::new();
            }
        }
    }

    /// `wss`: the plaintext waiting goes into TLS records (the TLS
    /// handshake's records too).
    fn seal(&mut self) {
        let Some(tls) = &mut self.tls else { return };
        if self.tx_off < self.tx.len() && !tls.conn.is_handshaking() {
            let n = tls.conn.writer().write(&self.tx[self.tx_off..]).unwrap_or(0);
            self.tx_off += n;
            if self.tx_off >= self.tx.len() {
                self.tx.clear();
                self.tx_off = 0;
            }
        }
        while tls.conn.wants_write() {
            if tls.conn.write_tls(&mut tls.wire).is_err() {
                break;
            }
        }
    }

    // ----- the handshake ---------------------------------------------------

    /// Parses the Upgrade request in `rx`: its length once complete and
    /// accepted (the 101 is queued), `None` while incomplete.
    fn handshake(&mut self) -> Result<Option<usize>, (u16, &'static str)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(&self.rx) {
            Ok(httparse::Status::Partial) if self.rx.len() > MAX_REQUEST => {
                return Err((431, "request headers too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST => return Err((431, "request headers too large")),
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => return Err((431, "too many request headers")),
            Err(_) => return Err((400, "malformed HTTP request")),
        };
        if req.method != Some("GET") {
            return Err((400, "a WebSocket upgrade is a GET"));
        }
        if req.version != Some(1) {
            return Err((400, "a WebSocket upgrade needs HTTP/1.1"));
        }
        let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
        let has_token = |name: &str, token: &str| {
            header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if header("Host").is_none() {
            return Err((400, "no Host header"));
        }
        if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
            return Err((400, "not a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)"));
        }
        if header("Sec-WebSocket-Version").map(<[u8]>::trim_ascii) != Some(b"13") {
            return Err((426, "only WebSocket version 13 is spoken"));
        }
        let key = header("Sec-WebSocket-Key").map(<[u8]>::trim_ascii).unwrap_or_default();
        if !valid_key(key) {
            return Err((400, "Sec-WebSocket-Key must be 16 bytes in base64"));
        }
        if !self.settings.origins.is_empty() {
            let origin = header("Origin").map(<[u8]>::trim_ascii).unwrap_or_default();
            if !self.settings.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin)) {
                return Err((403, "origin not allowed"));
            }
        }
        let accept = tungstenite::handshake::derive_accept_key(key);
        self.tx.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
        self.tx.extend_from_slice(b"Sec-WebSocket-Accept: ");
        self.tx.extend_from_slice(accept.as_bytes());
        self.tx.extend_from_slice(b"\r\n\r\n");
        self.opened = true;
        Ok(Some(used))
    }

    /// Queues an HTTP error answer; the connection ends after it.
    fn refuse(&mut self, status: u16, why: &str) {
        let reason = match status {
            403 => "Forbidden",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let version = if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
        let answer = format!(
            "HTTP/1.1 {status} {reason}\r\n{version}Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{why}\n",
            why.len() + 1
        );
        self.tx.extend_from_slice(answer.as_bytes());
        self.reading = false;
        self.failure = Some(Failure::Refused);
        self.rx = Vec::new();
    }

    // ----- frames ----------------------------------------------------------

    fn frames(&mut self, mut data: &[u8], p: &mut Progress) {
        while self.reading {
            if self.frame.is_none() {
                let parsed = if self.rx.is_empty() {
                    match parse_head(data) {
                        Ok(Some((head, n))) => {
                            data = &data[n..];
                            head
                        }
                        Ok(None) => {
                            self.rx.extend_from_slice(data);
                            return;
                        }
                        Err(code) => return self.fail(code, p),
                    }
                } else {
                    // A header split across reads: at most 14 bytes copied.
                    let old = self.rx.len();
                    let add = (MAX_HEAD - old).min(data.len());
                    self.rx.extend_from_slice(&data[..add]);
                    match parse_head(&self.rx) {
                        Ok(Some((head, n))) => {
                            data = &data[n - old..];
                            self.rx.clear();
                            head
                        }
                        Ok(None) => return,
                        Err(code) => return self.fail(code, p),
                    }
                };
                if let Err(refusal) = self.begin_frame(parsed) {
                    return match refusal {
                        Refusal::Close(code) => self.fail(code, p),
                        Refusal::TooBig(len) => self.too_big(len, p),
                    };
                }
                if parsed.remaining == 0 {
                    self.end_frame(p);
                    continue;
                }
            }
            if data.is_empty() {
                return;
            }
            let Some(head) = self.frame.as_mut() else { return };
            let take = head.remaining.min(data.len() as u64) as usize;
            let dst = if head.opcode >= OP_CLOSE { &mut self.control } else { &mut self.inbox };
            let start = dst.len();
            dst.extend_from_slice(&data[..take]);
            unmask(&mut dst[start..], head.mask, head.pos);
            head.pos += take;
            head.remaining -= take as u64;
            data = &data[take..];
            if head.remaining == 0 {
                self.end_frame(p);
            }
        }
    }

    /// Checks a frame header against the state of the connection.
    fn begin_frame(&mut self, head: Head) -> Result<(), Refusal> {
        match head.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !head.fin || head.remaining > 125 {
                    return Err(Refusal::Close(close_code::PROTOCOL));
                }
            }
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                let so_far = match (head.opcode, self.message) {
                    (OP_CONTINUATION, Some((_, mark))) => self.inbox.len() - mark - self.prefix(),
                    (OP_CONTINUATION, None) | (_, Some(_)) => return Err(Refusal::Close(close_code::PROTOCOL)),
                    (_, None) => 0,
                };
                let total = so_far as u64 + head.remaining;
                // A line may end with a `\r\n` the limit does not count
                // (checked exactly once the message is whole).
                let slack = if self.settings.framing == Framing::Lines { 2 } else { 0 };
                if total > (self.settings.max_message + slack) as u64 {
                    return Err(Refusal::TooBig(total));
                }
                if self.message.is_none() {
                    let mark = self.settings.framing.begin(&mut self.inbox);
                    self.message = Some((head.opcode, mark));
                }
                self.inbox.reserve(head.remaining as usize);
            }
            _ => return Err(Refusal::Close(close_code::PROTOCOL)),
        }
        self.frame = Some(head);
        Ok(())
    }

    /// Bytes [`Framing::begin`] reserves before a message.
    fn prefix(&self) -> usize {
        match self.settings.framing {
            Framing::LengthPrefixed => LENGTH_PREFIX,
            Framing::Lines => 0,
        }
    }

    /// The frame's payload is complete.
    fn end_frame(&mut self, p: &mut Progress) {
        let Some(head) = self.frame.take() else { return };
        match head.opcode {
            OP_PING => {
                push_frame(&mut self.tx, OP_PONG, &self.control);
                self.control.clear();
            }
            OP_PONG => self.control.clear(),
            OP_CLOSE => {
                let code = match self.control.len() {
                    0 => close_code::NORMAL,
                    1 => return self.fail(close_code::PROTOCOL, p),
                    _ => {
                        let code = u16::from_be_bytes([self.control[0], self.control[1]]);
                        if std::str::from_utf8(&self.control[2..]).is_err() {
                            return self.fail(close_code::INVALID, p);
                        }
                        if !valid_close_code(code) {
                            return self.fail(close_code::PROTOCOL, p);
                        }
                        code
                    }
                };
                // The close handshake: the same status goes back (the
                // peer's choice, not a failure of this side).
                self.close_code = Some(code);
                self.fail(code, p);
            }
            _ if head.fin => self.end_message(p),
            _ => {}
        }
    }

    /// A data message is complete: it becomes one framed envelope.
    fn end_message(&mut self, p: &mut Progress) {
        let Some((opcode, mark)) = self.message.take() else { return };
        let body = mark + self.prefix();
        if opcode == OP_TEXT && std::str::from_utf8(&self.inbox[body..]).is_err() {
            return self.fail(close_code::INVALID, p);
        }
        if self.settings.framing == Framing::Lines {
            // One line per message; a line end at its end is tolerated.
            if self.inbox[body..].ends_with(b"\n") {
                self.inbox.pop();
            }
            if self.inbox[body..].contains(&b'\n') {
                return self.fail(close_code::INVALID, p);
            }
            // The limit counts the line without its `\r` (as on TCP).
            let len = self.inbox.len() - body - usize::from(self.inbox.ends_with(b"\r"));
            if len > self.settings.max_message {
                return self.too_big(len as u64, p);
            }
        }
        self.settings.framing.finish(&mut self.inbox, mark);
        self.ready = self.inbox.len();
    }

    /// The connection fails (or the peer closed it): input stops; the
    /// close frame will carry `code`.
    fn fail(&mut self, code: u16, p: &mut Progress) {
        if matches!(code, close_code::PROTOCOL | close_code::INVALID) && self.close_code.is_none() {
            self.failure = Some(Failure::Protocol);
        }
        self.reading = false;
        self.close_code.get_or_insert(code);
        self.inbox.truncate(self.ready);
        self.message = None;
        self.frame = None;
        p.finished = true;
    }

    /// A message of `len` bytes is over the limit: the core is shown an
    /// oversized frame (its FRAME_TOO_LARGE answer goes out before the
    /// close), and the connection closes with 1009.
    fn too_big(&mut self, len: u64, p: &mut Progress) {
        self.fail(close_code::TOO_BIG, p);
        self.failure = Some(Failure::TooBig);
        match self.settings.framing {
            Framing::LengthPrefixed => {
                let announced = u32::try_from(len).unwrap_or(u32::MAX);
                self.inbox.extend_from_slice(&announced.to_be_bytes());
            }
            // A line longer than the limit, without its end.
            Framing::Lines => self.inbox.resize(self.inbox.len() + self.settings.max_message + 1, b'.'),
        }
        self.ready = self.inbox.len();
    }
}

/// Runs `data` read from the peer of `conn` through `ws` into `core` (what
/// both TCP transports do with what they read): the envelopes go to the
/// core; an opened connection is reported writable (the core's output held
/// during the handshake may flow). The transport then writes
/// [`WebSocket::pending`] (the 101, pongs) and, if
/// [`Progress::finished`], ends the connection. Upgrades and failures are
/// counted in `stats`.
pub fn into_core(
    ws: &mut WebSocket,
    now: Instant,
    core: &mut Gateway,
    conn: ConnId,
    data: &[u8],
    stats: &mut IoStats,
) -> Progress {
    let progress = ws.handle_input(data);
    stats.ws_upgrades += u64::from(progress.opened);
    if progress.finished {
        match ws.failure {
            Some(Failure::Refused) => stats.ws_refused_upgrades += 1,
            Some(Failure::Protocol) => stats.ws_protocol_errors += 1,
            Some(Failure::TooBig) => stats.ws_too_big += 1,
            Some(Failure::Tls) => stats.ws_tls_errors += 1,
            None => {}
        }
    }
    if !ws.for_core().is_empty() {
        core.handle_data(now, conn, ws.for_core());
        ws.delivered();
    }
    if progress.opened {
        core.handle_writable(conn);
    }
    progress
}

/// Writes what `ws` has for the socket with `write` (which returns how
/// many bytes it took), then turns the core's output for `conn` into
/// messages and writes them, until the socket or the core has no more;
/// the core is told how many of its bytes were taken. Returns whether the
/// adapter still holds bytes (the socket is full: wait until it is
/// writable and call again).
pub fn transmit(
    ws: &mut WebSocket,
    core: &mut Gateway,
    conn: ConnId,
    mut write: impl FnMut(&[u8]) -> std::io::Result<usize>,
) -> std::io::Result<bool> {
    loop {
        if !ws.pending().is_empty() {
            let n = write(ws.pending())?;
            ws.sent(n);
            if !ws.pending().is_empty() {
                return Ok(true);
            }
        }
        let taken = ws.encode(core.outbound(conn));
        if taken == 0 {
            return Ok(false);
        }
        core.consume(conn, taken);
    }
}

/// A frame header at the start of `buf`: the header and its length, `None`
/// while incomplete, or the close status of a header refused outright.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, u16> {
    let Some(&[b0, b1]) = buf.first_chunk::<2>() else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(close_code::PROTOCOL); // no extension was negotiated
    }
    if b1 & 0x80 == 0 {
        return Err(close_code::PROTOCOL); // clients must mask
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) if b[0] & 0x80 != 0 => return Err(close_code::PROTOCOL),
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Some(mask) = buf.get(at..at + 4).and_then(|m| <[u8; 4]>::try_from(m).ok()) else { return Ok(None) };
    Ok(Some((Head { opcode: b0 & 0x0f, fin: b0 & 0x80 != 0, remaining: len, mask, pos: 0 }, at + 4)))
}

/// Unmasks `buf`, whose first byte is payload byte `pos` of its frame.
fn unmask(buf: &mut [u8], mask: [u8; 4], pos: usize) {
    let mut m = mask;
    m.rotate_left(pos % 4);
    for chunk in buf.chunks_mut(4) {
        for (b, k) in chunk.iter_mut().zip(m) {
            *b ^= k;
        }
    }
}

/// Appends an unmasked (server) frame with FIN set.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64 (24 characters, `==` at the end).
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// Close statuses a peer may send (RFC 6455 §7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    /// A client frame, masked.
    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Server frames in `bytes`: (opcode, fin, payload).
    fn server_frames(mut bytes: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (b0, b1) = (bytes[0], bytes[1]);
            assert_eq!(b1 & 0x80, 0, "server frames are not masked");
            let (len, at) = match b1 {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
                n => (n as usize, 2),
            };
            frames.push((b0 & 0x0f, b0 & 0x80 != 0, bytes[at..at + len].to_vec()));
            bytes = &bytes[at + len..];
        }
        frames
    }

    fn ws(codec: Codec, max: usize, origins: &[&str]) -> WebSocket {
        let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        WebSocket::new(WsSettings::new(codec, max, &origins))
    }

    /// An open connection (the 101 taken off).
    fn open(codec: Codec, max: usize) -> WebSocket {
        let mut w = ws(codec, max, &[]);
        assert_eq!(w.handle_input(upgrade("").as_bytes()), Progress { opened: true, finished: false });
        let n = w.pending().len();
        w.sent(n);
        w
    }

    fn answer(w: &WebSocket) -> String {
        String::from_utf8(w.pending().to_vec()).unwrap()
    }

    #[test]
    fn the_rfc_example_key_gets_the_rfc_accept_value() {
        let mut w = ws(Codec::Protobuf, 1024, &[]);
        let req = upgrade("");
        // Byte by byte: nothing happens before the request is complete.
        for b in &req.as_bytes()[..req.len() - 1] {
            assert_eq!(w.handle_input(std::slice::from_ref(b)), Progress::default());
        }
        assert!(w.pending().is_empty());
        assert_eq!(w.handle_input(b"\n"), Progress { opened: true, finished: false });
        let a = answer(&w);
        assert!(a.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{a}");
        assert!(a.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{a}");
        assert!(a.ends_with("\r\n\r\n"));
        assert!(w.is_open());
    }

    #[test]
    fn bad_upgrades_get_400_426_or_431_and_end() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".into(), 400),
            (upgrade("").replace("Host: server.example.com\r\n", ""), 400),
            (upgrade("").replace(KEY, "short=="), 400),
            (upgrade("").replace("Version: 13", "Version: 8"), 426),
            ("\x16\x03\x01 not http\r\n\r\n".into(), 400),
            (format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST)), 431),
        ];
        for (req, status) in cases {
            let mut w = ws(Codec::Protobuf, 1024, &[]);
            let p = w.handle_input(req.as_bytes());
            assert_eq!(p, Progress { opened: false, finished: true }, "{req:?}");
            assert!(answer(&w).starts_with(&format!("HTTP/1.1 {status} ")), "{req:?}: {}", answer(&w));
            assert!(!w.is_open());
            // Nothing more: no messages, no close frame on a refused upgrade.
            let len = w.pending().len();
            assert_eq!(w.encode(&Framing::LengthPrefixed.frame(b"x")), 0);
            w.shutdown(b"");
            assert_eq!(w.pending().len(), len);
        }
        // A request that never ends is cut off at the bound.
        let mut w = ws(Codec::Protobuf, 1024, &[]);
        let p = w.handle_input(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST)).as_bytes());
        assert!(p.finished && answer(&w).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn origins_outside_the_list_get_403() {
        let allowed = ["https://game.example"];
        for (origin, ok) in [("Origin: https://game.example\r\n", true), ("Origin: HTTPS://GAME.example\r\n", true)]
            .into_iter()
            .chain([("Origin: https://evil.example\r\n", false), ("", false)])
        {
            let mut w = ws(Codec::Json, 1024, &allowed);
            let p = w.handle_input(upgrade(origin).as_bytes());
            assert_eq!(p.opened, ok, "{origin}");
            let status = if ok { "101" } else { "403" };
            assert!(answer(&w).starts_with(&format!("HTTP/1.1 {status} ")), "{origin}: {}", answer(&w));
        }
        // No list: any origin, or none.
        let mut w = ws(Codec::Json, 1024, &[]);
        assert!(w.handle_input(upgrade("Origin: https://anywhere\r\n").as_bytes()).opened);
    }

    #[test]
    fn each_message_is_one_framed_envelope_for_the_core() {
        for codec in Codec::ALL {
            let mut w = open(codec, 1024);
            let framing = codec.framing();
            let op = if framing == Framing::Lines { OP_TEXT } else { OP_BINARY };
            let mut input = masked(op, true, b"first");
            input.extend(masked(op, true, b""));
            input.extend(masked(op, true, b"third"));
            // Any cut of the input gives the same envelopes.
            for cut in 0..input.len() {
                let mut w2 = open(codec, 1024);
                assert_eq!(w2.handle_input(&input[..cut]), Progress::default());
                assert_eq!(w2.handle_input(&input[cut..]), Progress::default());
                let mut want = framing.frame(b"first");
                want.extend(framing.frame(b""));
                want.extend(framing.frame(b"third"));
                assert_eq!(w2.for_core(), want, "{codec:?} cut {cut}");
            }
            assert_eq!(w.handle_input(&input), Progress::default());
            let mut want = framing.frame(b"first");
            want.extend(framing.frame(b""));
            want.extend(framing.frame(b"third"));
            assert_eq!(w.for_core(), want);
            w.delivered();
            assert!(w.for_core().is_empty());
        }
    }

    #[test]
    fn fragments_are_joined_around_a_ping_which_is_answered() {
        let mut w = open(Codec::Protobuf, 1024);
        let mut input = masked(OP_BINARY, false, b"hel");
        input.extend(masked(OP_PING, true, b"are you there"));
        input.extend(masked(OP_CONTINUATION, false, b"lo "));
        input.extend(masked(OP_PONG, true, b"unasked"));
        assert_eq!(w.handle_input(&input), Progress::default());
        assert!(w.for_core().is_empty(), "not before the last fragment");
        assert_eq!(w.handle_input(&masked(OP_CONTINUATION, true, b"world")), Progress::default());
        assert_eq!(w.for_core(), Framing::LengthPrefixed.frame(b"hello world"));
        assert_eq!(server_frames(w.pending()), vec![(OP_PONG, true, b"are you there".to_vec())]);
    }

    #[test]
    fn the_core_output_goes_out_one_message_per_envelope() {
        for (codec, op) in [
            (Codec::Protobuf, OP_BINARY),
            (Codec::Flatbuffers, OP_BINARY),
            (Codec::Json, OP_TEXT),
            (Codec::Text, OP_TEXT),
        ] {
            let mut w = ws(codec, 1 << 20, &[]);
            let framing = codec.framing();
            let big = vec![b'z'; 70_000];
            let mut out = framing.frame(b"one");
            out.extend(framing.frame(&[b'y'; 300]));
            out.extend(framing.frame(&big));
            assert_eq!(w.encode(&out), 0, "nothing before the handshake");
            w.handle_input(upgrade("").as_bytes());
            let n = w.pending().len();
            w.sent(n);
            assert_eq!(w.encode(&out), out.len());
            let frames = server_frames(w.pending());
            assert_eq!(frames, vec![(op, true, b"one".to_vec()), (op, true, vec![b'y'; 300]), (op, true, big.clone())]);
            // Written in pieces.
            let n = w.pending().len();
            w.sent(n - 1);
            assert_eq!(w.pending().len(), 1);
            w.sent(1);
            assert!(w.pending().is_empty());
        }
    }

    #[test]
    fn buffers_of_a_burst_are_given_back_once_empty() {
        let mut w = open(Codec::Protobuf, 1 << 20);
        assert!(!w.handle_input(&masked(OP_BINARY, true, &[5; 100_000])).finished);
        assert_eq!(w.for_core().len(), 100_004);
        w.delivered();
        assert!(w.inbox.capacity() <= KEEP_CAPACITY);
        assert!(w.encode(&Framing::LengthPrefixed.frame(&[6; 100_000])) > 0);
        let n = w.pending().len();
        w.sent(n);
        assert!(w.tx.capacity() <= KEEP_CAPACITY);
        // Small traffic keeps its buffers.
        w.handle_input(&masked(OP_BINARY, true, b"small"));
        w.delivered();
        assert!(w.inbox.capacity() > 0);
    }

    #[test]
    fn the_output_waiting_for_the_socket_is_bounded() {
        let mut w = open(Codec::Protobuf, 1 << 20);
        let mut out = Vec::new();
        for _ in 0..20 {
            out.extend(Framing::LengthPrefixed.frame(&[1; 64 * 1024]));
        }
        let taken = w.encode(&out);
        assert!(taken < out.len() && w.pending().len() >= TX_BATCH && w.pending().len() < TX_BATCH + 70_000);
        assert_eq!(w.encode(&out[taken..]), 0, "a full batch takes nothing more");
        let n = w.pending().len();
        w.sent(n);
        assert!(w.encode(&out[taken..]) > 0);
    }

    #[test]
    fn a_close_is_answered_with_the_same_status_after_the_last_output() {
        let mut w = open(Codec::Protobuf, 1024);
        let mut close = masked(OP_CLOSE, true, &1001u16.to_be_bytes());
        close.extend(masked(OP_BINARY, true, b"after the close"));
        assert_eq!(w.handle_input(&close), Progress { opened: false, finished: true });
        assert!(w.for_core().is_empty(), "nothing after a close is read");
        w.shutdown(&Framing::LengthPrefixed.frame(b"bye"));
        assert_eq!(
            server_frames(w.pending()),
            vec![(OP_BINARY, true, b"bye".to_vec()), (OP_CLOSE, true, 1001u16.to_be_bytes().to_vec())]
        );
        // Nothing after the close frame.
        assert_eq!(w.encode(&Framing::LengthPrefixed.frame(b"late")), 0);
        let len = w.pending().len();
        w.shutdown(b"");
        assert_eq!(w.pending().len(), len);
    }

    #[test]
    fn a_close_before_the_handshake_is_sent_once_it_completes() {
        let mut w = ws(Codec::Protobuf, 1024, &[]);
        w.shutdown(&Framing::LengthPrefixed.frame(b"refused"));
        assert!(w.awaits_handshake() && w.pending().is_empty());
        let mut input = upgrade("").into_bytes();
        input.extend(masked(OP_BINARY, true, b"ignored"));
        assert_eq!(w.handle_input(&input), Progress { opened: true, finished: true });
        assert!(w.for_core().is_empty() && !w.awaits_handshake());
        let a = w.pending().to_vec();
        let end = a.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
        assert!(a.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(
            server_frames(&a[end..]),
            vec![(OP_BINARY, true, b"refused".to_vec()), (OP_CLOSE, true, 1000u16.to_be_bytes().to_vec())]
        );
        // A bad request instead: the HTTP answer only.
        let mut w = ws(Codec::Protobuf, 1024, &[]);
        w.shutdown(&Framing::LengthPrefixed.frame(b"refused"));
        assert!(w.handle_input(b"GET / HTTP/1.1\r\n\r\n").finished);
        assert!(answer(&w).starts_with("HTTP/1.1 400 ") && !w.awaits_handshake());
    }

    /// xorshift64: deterministic randomness for the tests below.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn random_valid_traffic_in_random_cuts_gives_exactly_its_envelopes() {
        for seed in 0..200u64 {
            let mut next = rng(seed);
            let codec = Codec::ALL[(seed % 4) as usize];
            let (framing, op) = if codec.framing() == Framing::Lines {
                (Framing::Lines, OP_TEXT)
            } else {
                (Framing::LengthPrefixed, OP_BINARY)
            };
            let mut input = upgrade("").into_bytes();
            let mut want = Vec::new();
            for _ in 0..(next() % 12) {
                let len = (next() % 300) as usize;
                let body: Vec<u8> = (0..len).map(|_| b'a' + (next() % 26) as u8).collect();
                // Split into up to 3 fragments, with pings between them.
                let cuts = (next() % 3) as usize;
                let mut at = 0;
                for i in 0..=cuts {
                    let end = if i == cuts { len } else { at + (next() as usize % (len - at + 1)) };
                    let opcode = if i == 0 { op } else { OP_CONTINUATION };
                    input.extend(masked(opcode, i == cuts, &body[at..end]));
                    if next().is_multiple_of(4) {
                        input.extend(masked(OP_PING, true, b"p"));
                    }
                    at = end;
                }
                want.extend(framing.frame(&body));
            }
            let mut w = ws(codec, 1024, &[]);
            let mut got = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len().min(64));
                assert!(!w.handle_input(&rest[..n]).finished, "seed {seed}");
                got.extend_from_slice(w.for_core());
                w.delivered();
                rest = &rest[n..];
            }
            assert_eq!(got, want, "seed {seed} {codec:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic_and_only_whole_frames_reach_the_core() {
        for seed in 0..300u64 {
            let mut next = rng(seed);
            let codec = Codec::ALL[(seed % 4) as usize];
            let mut w = open(codec, 64);
            let mut input = Vec::new();
            for _ in 0..(next() % 8) {
                // Mostly plausible frames, with random bits flipped.
                let mut f = masked((next() % 11) as u8, next().is_multiple_of(2), &vec![b'x'; (next() % 100) as usize]);
                if next().is_multiple_of(2) {
                    let i = next() as usize % f.len();
                    f[i] ^= 1 << (next() % 8);
                }
                input.extend(f);
            }
            input.extend((0..next() % 64).map(|_| next() as u8));
            let mut finished = false;
            for chunk in input.chunks(1 + (next() % 17) as usize) {
                let p = w.handle_input(chunk);
                if finished {
                    assert!(w.for_core().is_empty(), "nothing read after the end");
                }
                finished |= p.finished;
                let mut core = w.for_core();
                // Whole frames, or one oversize announcement at the end.
                while !core.is_empty() {
                    match codec.framing().next_frame(core, 64) {
                        Ok(Some((_, used))) => core = &core[used..],
                        Ok(None) | Err(_) => {
                            assert!(finished, "seed {seed}: a partial frame reached the core");
                            break;
                        }
                    }
                }
                w.delivered();
            }
            w.shutdown(b"");
            if w.is_open() {
                assert_eq!(server_frames(w.pending()).last().map(|f| f.0), Some(OP_CLOSE), "seed {seed}");
            }
        }
    }

    /// PEM files of a fresh self-signed certificate for "localhost".
    fn certificate(name: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("portcullis-ws-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, private) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, key.cert.pem()).unwrap();
        std::fs::write(&private, key.signing_key.serialize_pem()).unwrap();
        let path = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
        (path(cert), path(private), key.cert.der().to_vec())
    }

    /// Carries TLS records between a client and the adapter until neither
    /// has anything to send.
    fn pump(client: &mut rustls::ClientConnection, w: &mut WebSocket) {
        for _ in 0..16 {
            let mut records = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut records).unwrap();
            }
            if !records.is_empty() {
                w.handle_input(&records);
            }
            let back = w.pending().to_vec();
            w.sent(back.len());
            if back.is_empty() && records.is_empty() {
                return;
            }
            let mut rd = &back[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
        }
    }

    #[test]
    fn wss_runs_the_same_websocket_over_tls() {
        let (cert, key, der) = certificate("wss");
        let settings = WsSettings::new(Codec::Protobuf, 1024, &[]).with_tls(tls_config(0, &cert, &key).unwrap());
        let mut w = WebSocket::new(settings);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        pump(&mut client, &mut w);
        assert!(!client.is_handshaking(), "the TLS handshake completed");
        assert!(!w.is_open());
        let mut plain = upgrade("").into_bytes();
        plain.extend(masked(OP_BINARY, true, b"over tls"));
        client.writer().write_all(&plain).unwrap();
        pump(&mut client, &mut w);
        assert!(w.is_open());
        assert_eq!(w.for_core(), Framing::LengthPrefixed.frame(b"over tls"));
        w.delivered();
        assert!(w.encode(&Framing::LengthPrefixed.frame(b"and back")) > 0);
        pump(&mut client, &mut w);
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        let end = got.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
        assert!(got.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(server_frames(&got[end..]), vec![(OP_BINARY, true, b"and back".to_vec())]);
        // Plaintext WebSocket on a wss listener is not understood.
        let mut w =
            WebSocket::new(WsSettings::new(Codec::Protobuf, 1024, &[]).with_tls(tls_config(0, &cert, &key).unwrap()));
        assert!(w.handle_input(upgrade("").as_bytes()).finished);
        assert!(!w.is_open());
    }

    #[test]
    fn unreadable_pem_files_are_named_in_the_error() {
        let (cert, key, _) = certificate("errors");
        let e = tls_config(3, "/nonexistent/cert.pem", &key).unwrap_err().to_string();
        assert!(e.contains("listeners[3].tls_cert") && e.contains("/nonexistent/cert.pem"), "{e}");
        let e = tls_config(3, &cert, "/nonexistent/key.pem").unwrap_err().to_string();
        assert!(e.contains("listeners[3].tls_key") && e.contains("/nonexistent/key.pem"), "{e}");
        let e = tls_config(3, &key, &key).unwrap_err().to_string();
        assert!(e.contains("tls_cert") && e.contains("no CERTIFICATE"), "{e}");
    }

    #[test]
    fn the_gateway_closing_sends_a_normal_close() {
        let mut w = open(Codec::Json, 1024);
        w.shutdown(&Framing::Lines.frame(b"{\"cmd\":5}"));
        assert_eq!(
            server_frames(w.pending()),
            vec![(OP_TEXT, true, b"{\"cmd\":5}".to_vec()), (OP_CLOSE, true, 1000u16.to_be_bytes().to_vec())]
        );
    }

    fn fails_with(codec: Codec, input: &[u8], code: u16) {
        let mut w = open(codec, 1024);
        let p = w.handle_input(input);
        assert!(p.finished, "{input:?}");
        w.shutdown(b"");
        assert_eq!(server_frames(w.pending()).last().unwrap(), &(OP_CLOSE, true, code.to_be_bytes().to_vec()));
    }

    #[test]
    fn protocol_violations_close_with_1002_or_1007() {
        let mut unmasked = masked(OP_BINARY, true, b"abc");
        unmasked[1] &= 0x7f;
        fails_with(Codec::Protobuf, &unmasked, close_code::PROTOCOL);
        let mut reserved = masked(OP_BINARY, true, b"abc");
        reserved[0] |= 0x40;
        fails_with(Codec::Protobuf, &reserved, close_code::PROTOCOL);
        fails_with(Codec::Protobuf, &masked(0x3, true, b""), close_code::PROTOCOL);
        fails_with(Codec::Protobuf, &masked(OP_CONTINUATION, true, b"x"), close_code::PROTOCOL);
        let mut interleaved = masked(OP_BINARY, false, b"a");
        interleaved.extend(masked(OP_BINARY, true, b"b"));
        fails_with(Codec::Protobuf, &interleaved, close_code::PROTOCOL);
        fails_with(Codec::Protobuf, &masked(OP_PING, false, b""), close_code::PROTOCOL);
        fails_with(Codec::Protobuf, &masked(OP_PING, true, &[0; 126]), close_code::PROTOCOL);
        fails_with(Codec::Protobuf, &masked(OP_CLOSE, true, &[3]), close_code::PROTOCOL);
        fails_with(Codec::Protobuf, &masked(OP_CLOSE, true, &1005u16.to_be_bytes()), close_code::PROTOCOL);
        fails_with(Codec::Json, &masked(OP_TEXT, true, &[0xff, 0xfe]), close_code::INVALID);
        fails_with(Codec::Text, &masked(OP_TEXT, true, b"HEARTBEAT 1\nHEARTBEAT 2"), close_code::INVALID);
        // One line end at the end of a line message is tolerated.
        let mut w = open(Codec::Text, 1024);
        assert_eq!(w.handle_input(&masked(OP_TEXT, true, b"HEARTBEAT 1\n")), Progress::default());
        assert_eq!(w.for_core(), b"HEARTBEAT 1\n");
    }

    #[test]
    fn a_message_over_the_limit_is_shown_to_the_core_as_too_large_and_closes_with_1009() {
        // One frame over the limit: refused at its header.
        let mut w = open(Codec::Protobuf, 16);
        let p = w.handle_input(&masked(OP_BINARY, true, &[7; 17])[..6]);
        assert!(p.finished);
        let announced = w.for_core();
        assert_eq!(
            Framing::LengthPrefixed.next_frame(announced, 16),
            Err(portcullis_proto::framing::FrameError::TooLarge { len: 17, max: 16 })
        );
        w.delivered();
        // The core's answer goes out before the close.
        w.shutdown(&Framing::LengthPrefixed.frame(b"ERROR"));
        let frames = server_frames(w.pending());
        assert_eq!(frames[1], (OP_CLOSE, true, 1009u16.to_be_bytes().to_vec()));
        // Fragments adding up to more than the limit; the limit itself is fine.
        let mut w = open(Codec::Json, 16);
        let mut input = masked(OP_TEXT, true, &[b'a'; 16]);
        input.extend(masked(OP_TEXT, false, &[b'b'; 10]));
        input.extend(masked(OP_CONTINUATION, true, &[b'c'; 7]));
        assert!(w.handle_input(&input).finished);
        let core = w.for_core();
        let (first, used) = Framing::Lines.next_frame(core, 16).unwrap().unwrap();
        assert_eq!(&core[first], &[b'a'; 16]);
        assert!(Framing::Lines.next_frame(&core[used..], 16).is_err(), "the rest is a line over the limit");
        // A line of exactly the limit may end with `\r\n` or `\r`; one byte
        // more, whatever its end, is too big.
        for end in [&b""[..], b"\n", b"\r\n", b"\r"] {
            let mut w = open(Codec::Text, 16);
            let line = [&[b'h'; 16][..], end].concat();
            assert_eq!(w.handle_input(&masked(OP_TEXT, true, &line)), Progress::default(), "{end:?}");
            assert!(Framing::Lines.next_frame(w.for_core(), 16).unwrap().is_some());
            let mut w = open(Codec::Text, 16);
            let line = [&[b'h'; 17][..], end].concat();
            assert!(w.handle_input(&masked(OP_TEXT, true, &line)).finished, "{end:?}");
            w.delivered();
            w.shutdown(b"");
            assert_eq!(server_frames(w.pending()).last().unwrap().2, 1009u16.to_be_bytes());
        }
    }
}
