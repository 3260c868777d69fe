//! The client SDK: connect to a gateway, log in, send requests and
//! framework commands, receive pushes — and survive a dropped connection.
//!
//! After login, heartbeats and acknowledgements run in the background. Every
//! server message carries a per-session sequence number; the SDK delivers
//! each at most once, acknowledges them (piggy-backed on requests, and at
//! least every [`ACK_EVERY`]), and after an [`Event::Disconnected`] a call to
//! [`Client::resume`] gets the same session back on a new connection, with
//! everything the gateway sent meanwhile replayed in order.
//!
//! Sessions are encrypted by default ([`Encryption::Preferred`]): LOGIN
//! offers an X25519 key and, if the gateway's listener agrees, every frame
//! after the answer is sealed with AES-GCM both ways; RESUME derives fresh
//! keys from the session's secret (`proto/PROTOCOL.md` §14). Between
//! [`Client::login`] (or [`Client::resume`]) and its answer, send nothing
//! else: the keys change with the answer.
//!
//! Events are backpressure: the reader holds up to 4096 of them and then
//! waits for the application, so the gateway (and its slow-consumer limit)
//! sees a client that does not keep up. An application must drain its
//! events — answers to requests arrive through the same reader.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis_client::ClientError> {
//! use portcullis_client::{Client, Event};
//! let (client, mut events) = Client::connect("127.0.0.1:7000").await?;
//! client.login("<token>").await?;
//! client.join("room:lobby").await?;
//! let echoed = client.call(1000, b"hello").await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Disconnected => { client.resume().await?; }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portcullis_proto::crypto::{resume_nonce, Cipher, FrameCipher, KeyShare, SessionSecret};
use portcullis_proto::framework::Payload;
pub use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::pb::client::{
    Delivery, Error as ErrorMsg, GroupRequest, Kick, LoginReply, LoginRequest, ResumeReply, ResumeRequest, SendResult,
    SendToGroup, SendToUser, SendToUsers,
};
use portcullis_proto::{cmd, flags, Codec, Envelope};

pub mod transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::net::{lookup_host, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
pub use transport::{connector, direct, BoxStream, Connector, Dialer, DirectDialer, TransportKind};

/// Largest frame the client accepts from the gateway.
pub const MAX_FRAME: usize = 16 << 20;

/// Acknowledgements are sent at least this often while messages arrive.
pub const ACK_EVERY: Duration = Duration::from_millis(200);

/// Pushes buffered before the reader waits for the application.
const EVENT_QUEUE: usize = 4096;

/// Unacknowledged messages after which an ACK is sent at once.
const ACK_BATCH: u64 = 64;

/// Whether the client encrypts its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Never: no key is offered.
    Off,
    /// Offer a key; a gateway whose listener does not encrypt gets a clear
    /// session.
    #[default]
    Preferred,
    /// Offer a key; a LOGIN or RESUME answered without one fails with
    /// [`ClientError::NotEncrypted`] and the connection is closed.
    Required,
}

/// Something the gateway sent without being asked, or a change of the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A push from a game server.
    Push {
        /// Business command.
        cmd: u32,
        /// Business payload.
        payload: Vec<u8>,
    },
    /// A message from another player (SEND_TO_USER(S) / SEND_TO_GROUP).
    Delivery {
        /// The framework command it was sent with.
        cmd: u32,
        /// Sender.
        from_user_id: String,
        /// Group, for group messages.
        group: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// An ERROR frame that answers no pending request.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The gateway ended the session (KICK). With `reconnect`, the gateway
    /// is going away: connect to another one and log in again.
    Kicked {
        /// Why.
        reason: String,
        /// Whether to reconnect elsewhere.
        reconnect: bool,
    },
    /// The connection dropped while logged in: [`Client::resume`] within
    /// the resume window gets the session back.
    Disconnected,
    /// The connection is closed for good (logout, kick, or before login).
    Closed,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before the answer arrived.
    #[error("connection closed")]
    Closed,
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The gateway answered with an ERROR frame.
    #[error("{code:?}: {message}")]
    Server {
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("undecodable answer: {0}")]
    Decode(String),
    /// `resume` without a session to resume.
    #[error("no session to resume: log in first")]
    NoSession,
    /// [`Encryption::Required`] and the gateway did not encrypt the session.
    #[error("the gateway did not encrypt the session and encryption is required")]
    NotEncrypted,
    /// A cryptographic step failed (no randomness, a bad key from the
    /// gateway).
    #[error("encryption: {0}")]
    Crypto(#[from] portcullis_proto::crypto::CryptoError),
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Envelope<'static>>>>>;

/// The secret of an encrypted session and its cipher, kept for RESUME.
type SessionKeys = Arc<Mutex<Option<(SessionSecret, Cipher)>>>;

/// A handshake waiting for the LOGIN or RESUME answer.
enum Handshake {
    /// LOGIN offered this key.
    Login(KeyShare),
    /// RESUME of an encrypted session sent this nonce.
    Resume([u8; 32]),
}

/// The encryption state of one connection, shared by its reader (which
/// installs the keys when the answer arrives) and its writer (which seals).
#[derive(Default)]
struct LinkCrypto {
    pending: Mutex<Option<Handshake>>,
    /// Seals frames to the gateway, from the answer on.
    seal: Mutex<Option<FrameCipher>>,
}

/// The state of the current connection.
struct Link {
    tx: mpsc::Sender<Envelope<'static>>,
    crypto: Arc<LinkCrypto>,
    tasks: Vec<JoinHandle<()>>,
    /// Set by the reader when the connection ends.
    down: Arc<AtomicBool>,
}

struct Inner {
    addr: SocketAddr,
    connector: Connector,
    codec: Codec,
    timeout: Duration,
    link: Mutex<Link>,
    pending: Pending,
    events: mpsc::Sender<Event>,
    seq: AtomicU32,
    /// Highest server_seq delivered to the application.
    last_seen: Arc<AtomicU64>,
    /// Highest server_seq acknowledged to the gateway.
    last_acked: AtomicU64,
    resume_token: Mutex<Option<String>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    closing: Arc<AtomicBool>,
    /// A session exists that a dropped connection could resume.
    logged_in: Arc<AtomicBool>,
    encryption: Mutex<Encryption>,
    /// Set once a login was encrypted.
    session_keys: SessionKeys,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.link.lock().expect("link lock").tasks.drain(..) {
            t.abort();
        }
        for t in self.background.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }
}

/// A session with a gateway. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects with the protobuf codec and a 10 s request timeout.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        Self::connect_with(addr, Codec::Protobuf, Duration::from_secs(10)).await
    }

    /// Connects with a codec and a per-request timeout.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        codec: Codec,
        timeout: Duration,
    ) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let addr = lookup_host(addr).await?.next().ok_or(ClientError::Closed)?;
        Self::connect_via(addr, codec, timeout, direct()).await
    }

    /// Connects through `connector`, with a codec and a per-request timeout.
    pub async fn connect_via(
        addr: SocketAddr,
        codec: Codec,
        timeout: Duration,
        connector: Connector,
    ) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let pending: Pending = Arc::default();
        let last_seen = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let logged_in = Arc::new(AtomicBool::new(false));
        let session_keys = SessionKeys::default();
        let stream = connector(addr).await?;
        let link = open(stream, codec, &pending, &events_tx, &last_seen, &closing, &logged_in, &session_keys).await?;
        let inner = Inner {
            addr,
            connector,
            codec,
            timeout,
            link: Mutex::new(link),
            pending,
            events: events_tx,
            seq: AtomicU32::new(0),
            last_seen,
            last_acked: AtomicU64::new(0),
            resume_token: Mutex::new(None),
            background: Mutex::new(Vec::new()),
            closing,
            logged_in,
            encryption: Mutex::new(Encryption::default()),
            session_keys,
        };
        Ok((Client { inner: Arc::new(inner) }, events))
    }

    /// The codec in use.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// Chooses whether the next [`Client::login`] encrypts the session
    /// (default [`Encryption::Preferred`]).
    pub fn set_encryption(&self, encryption: Encryption) {
        *self.inner.encryption.lock().expect("encryption lock") = encryption;
    }

    /// The cipher of the session, if it is encrypted.
    pub fn cipher(&self) -> Option<Cipher> {
        self.inner.session_keys.lock().expect("keys lock").as_ref().map(|(_, c)| *c)
    }

    /// The highest server sequence number delivered so far.
    pub fn last_server_seq(&self) -> u64 {
        self.inner.last_seen.load(Ordering::Acquire)
    }

    fn next_seq(&self) -> u32 {
        loop {
            let s = self.inner.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if s != 0 {
                return s;
            }
        }
    }

    /// Sends a frame, piggy-backing the acknowledgement.
    async fn send_frame(&self, mut env: Envelope<'_>) -> Result<(), ClientError> {
        env.ack = self.inner.last_seen.load(Ordering::Acquire);
        let frame = env.clone().into_owned();
        let (tx, down) = {
            let link = self.inner.link.lock().expect("link lock");
            (link.tx.clone(), link.down.clone())
        };
        if down.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        tx.send(frame).await.map_err(|_| ClientError::Closed)?;
        self.inner.last_acked.fetch_max(env.ack, Ordering::AcqRel);
        Ok(())
    }

    /// Sends a frame and waits for its answer (a response or an ERROR).
    pub async fn request(
        &self,
        cmd: u32,
        payload: &[u8],
        route_key: Option<&[u8]>,
    ) -> Result<Envelope<'static>, ClientError> {
        let seq = self.next_seq();
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().expect("pending lock").insert(seq, tx);
        let mut env = Envelope::new(cmd, seq, 0, payload);
        env.route_key = route_key.map(Into::into);
        let sent = self.send_frame(env).await;
        // The reader sets `down` before it fails what is pending: checking it
        // after registering closes the race with a connection that just ended.
        let down = self.inner.link.lock().expect("link lock").down.load(Ordering::Acquire);
        if let Err(e) = sent.and(if down { Err(ClientError::Closed) } else { Ok(()) }) {
            self.inner.pending.lock().expect("pending lock").remove(&seq);
            return Err(e);
        }
        let answer = match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(env)) => env,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.inner.pending.lock().expect("pending lock").remove(&seq);
                return Err(ClientError::Timeout(self.inner.timeout));
            }
        };
        if answer.cmd == cmd::ERROR {
            let e: ErrorMsg = self.decode(&answer.payload)?;
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::ErrorUnspecified);
            return Err(ClientError::Server { code, message: e.message });
        }
        Ok(answer)
    }

    fn decode<M: Payload>(&self, bytes: &[u8]) -> Result<M, ClientError> {
        self.inner.codec.payload_form().decode(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn framework<M: Payload, R: Payload>(&self, cmd: u32, msg: &M) -> Result<R, ClientError> {
        let body = self.inner.codec.payload_form().encode_to_vec(msg);
        let answer = self.request(cmd, &body, None).await?;
        self.decode(&answer.payload)
    }

    /// Sends a business command and returns the game server's answer payload.
    pub async fn call(&self, cmd: u32, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(self.request(cmd, payload, None).await?.payload.into_owned())
    }

    /// Like [`Client::call`], with a routing key (a room, a match).
    pub async fn call_keyed(&self, cmd: u32, key: &[u8], payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(self.request(cmd, payload, Some(key)).await?.payload.into_owned())
    }

    /// Logs in; starts background heartbeats (at the interval the gateway
    /// asks for) and acknowledgements.
    pub async fn login(&self, token: &str) -> Result<LoginReply, ClientError> {
        let encryption = *self.inner.encryption.lock().expect("encryption lock");
        let mut req = LoginRequest { token: token.into(), ..Default::default() };
        let crypto = self.inner.link.lock().expect("link lock").crypto.clone();
        if encryption != Encryption::Off {
            let share = KeyShare::generate()?;
            req.client_key = share.public_key().to_vec();
            *crypto.pending.lock().expect("crypto lock") = Some(Handshake::Login(share));
        }
        let reply: LoginReply = self.framework(cmd::LOGIN, &req).await?;
        if reply.server_key.is_empty() && encryption == Encryption::Required {
            self.close_link();
            return Err(ClientError::NotEncrypted);
        }
        *self.inner.resume_token.lock().expect("token lock") = Some(reply.resume_token.clone());
        self.inner.logged_in.store(true, Ordering::Release);
        self.start_background(reply.heartbeat_interval_ms);
        Ok(reply)
    }

    fn start_background(&self, heartbeat_ms: u32) {
        let every = Duration::from_millis(u64::from(heartbeat_ms.max(100)));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let beat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let _ = Client { inner }.heartbeat().await;
            }
        });
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let acks = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ACK_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let _ = Client { inner }.ack_if_behind(1).await;
            }
        });
        self.inner.background.lock().expect("tasks lock").extend([beat, acks]);
    }

    /// Sends an ACK if at least `min` messages are unacknowledged.
    async fn ack_if_behind(&self, min: u64) -> Result<(), ClientError> {
        let seen = self.inner.last_seen.load(Ordering::Acquire);
        if seen >= self.inner.last_acked.load(Ordering::Acquire) + min {
            self.send_frame(Envelope::new(cmd::ACK, 0, 0, &[])).await?;
        }
        Ok(())
    }

    /// Gets the session back on a new connection after
    /// [`Event::Disconnected`]: everything unacknowledged is replayed, and
    /// requests still waiting for their answer get it if the gateway had it.
    /// The gateway answers with the token for the next resume, which
    /// replaces the one just used.
    pub async fn resume(&self) -> Result<ResumeReply, ClientError> {
        let token = self.inner.resume_token.lock().expect("token lock").clone().ok_or(ClientError::NoSession)?;
        let i = &self.inner;
        let stream = (i.connector)(i.addr).await?;
        let link =
            open(stream, i.codec, &i.pending, &i.events, &i.last_seen, &i.closing, &i.logged_in, &i.session_keys)
                .await?;
        let encrypted = i.session_keys.lock().expect("keys lock").is_some();
        let mut req = ResumeRequest { resume_token: token, ..Default::default() };
        if encrypted {
            let nonce = resume_nonce()?;
            req.client_nonce = nonce.to_vec();
            *link.crypto.pending.lock().expect("crypto lock") = Some(Handshake::Resume(nonce));
        }
        let old = std::mem::replace(&mut *i.link.lock().expect("link lock"), link);
        for t in old.tasks {
            t.abort();
        }
        let last_server_seq = i.last_seen.load(Ordering::Acquire);
        req.last_server_seq = last_server_seq;
        let reply: ResumeReply = self.framework(cmd::RESUME, &req).await?;
        if encrypted && reply.server_nonce.is_empty() {
            self.close_link();
            return Err(ClientError::NotEncrypted);
        }
        i.last_acked.store(last_server_seq, Ordering::Release);
        // Each token resumes once: keep the next one.
        *i.resume_token.lock().expect("token lock") = Some(reply.resume_token.clone());
        Ok(reply)
    }

    /// Ends the current connection without a word (a handshake that did not
    /// give the encryption asked for).
    fn close_link(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let link = self.inner.link.lock().expect("link lock");
        link.down.store(true, Ordering::Release);
        for t in &link.tasks {
            t.abort();
        }
    }

    /// Sends one heartbeat and waits for its answer.
    pub async fn heartbeat(&self) -> Result<(), ClientError> {
        self.request(cmd::HEARTBEAT, &[], None).await.map(drop)
    }

    /// Logs out; the gateway closes the connection after answering.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.inner.closing.store(true, Ordering::Release);
        self.request(cmd::LOGOUT, &[], None).await.map(drop)
    }

    /// Joins a group.
    pub async fn join(&self, group: &str) -> Result<(), ClientError> {
        let body = self.inner.codec.payload_form().encode_to_vec(&GroupRequest { group: group.into() });
        self.request(cmd::JOIN_GROUP, &body, None).await.map(drop)
    }

    /// Leaves a group.
    pub async fn leave(&self, group: &str) -> Result<(), ClientError> {
        let body = self.inner.codec.payload_form().encode_to_vec(&GroupRequest { group: group.into() });
        self.request(cmd::LEAVE_GROUP, &body, None).await.map(drop)
    }

    /// Sends to every session of a user; returns how many it reached.
    pub async fn send_to_user(&self, user_id: &str, payload: &[u8]) -> Result<u32, ClientError> {
        let msg = SendToUser { user_id: user_id.into(), payload: payload.to_vec() };
        let r: SendResult = self.framework(cmd::SEND_TO_USER, &msg).await?;
        Ok(r.delivered)
    }

    /// Sends to every session of several users; returns how many it reached.
    pub async fn send_to_users(&self, user_ids: &[&str], payload: &[u8]) -> Result<u32, ClientError> {
        let msg = SendToUsers { user_ids: user_ids.iter().map(|u| u.to_string()).collect(), payload: payload.to_vec() };
        let r: SendResult = self.framework(cmd::SEND_TO_USERS, &msg).await?;
        Ok(r.delivered)
    }

    /// Sends to a group's members (not to this session unless `include_self`).
    pub async fn send_to_group(&self, group: &str, payload: &[u8], include_self: bool) -> Result<u32, ClientError> {
        let msg = SendToGroup { group: group.into(), payload: payload.to_vec(), include_self };
        let r: SendResult = self.framework(cmd::SEND_TO_GROUP, &msg).await?;
        Ok(r.delivered)
    }
}

/// Starts the reader and writer of a new connection.
#[allow(clippy::too_many_arguments)]
async fn open(
    stream: BoxStream,
    codec: Codec,
    pending: &Pending,
    events: &mpsc::Sender<Event>,
    last_seen: &Arc<AtomicU64>,
    closing: &Arc<AtomicBool>,
    logged_in: &Arc<AtomicBool>,
    session_keys: &SessionKeys,
) -> Result<Link, ClientError> {
    let (read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Envelope<'static>>(1024);
    let crypto = Arc::new(LinkCrypto::default());
    let sealer = crypto.clone();
    // Frames are sealed here, in the order they are written: the gateway
    // expects the frame counter in wire order.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut sealed = Vec::new();
        let mut put = |env: Envelope<'static>, batch: &mut Vec<u8>| {
            let mut seal = sealer.seal.lock().expect("crypto lock");
            match seal.as_mut() {
                None => codec.encode(&env, batch),
                Some(keys) => {
                    let mut env = env;
                    env.flags |= flags::ENCRYPTED;
                    sealed.clear();
                    sealed.extend_from_slice(&env.payload);
                    keys.seal(&env, &mut sealed).expect("2^64 frames cannot be sent on one connection");
                    codec.encode(&Envelope { payload: sealed.as_slice().into(), ..env }, batch);
                }
            }
        };
        while let Some(frame) = rx.recv().await {
            put(frame, &mut batch);
            while let Ok(f) = rx.try_recv() {
                put(f, &mut batch);
            }
            if write.write_all(&batch).await.is_err() || write.flush().await.is_err() {
                return;
            }
            batch.clear();
        }
    });
    let down = Arc::new(AtomicBool::new(false));
    let reader = Reader {
        codec,
        down: down.clone(),
        logged_in: logged_in.clone(),
        pending: pending.clone(),
        events: events.clone(),
        last_seen: last_seen.clone(),
        closing: closing.clone(),
        tx: tx.clone(),
        crypto: crypto.clone(),
        session_keys: session_keys.clone(),
    };
    let reader = tokio::spawn(reader.run(read));
    Ok(Link { tx, crypto, tasks: vec![writer, reader], down })
}

/// Reads one connection: answers to their waiting request, the rest to the
/// event queue, each sequenced message at most once.
struct Reader {
    codec: Codec,
    down: Arc<AtomicBool>,
    logged_in: Arc<AtomicBool>,
    pending: Pending,
    events: mpsc::Sender<Event>,
    last_seen: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    tx: mpsc::Sender<Envelope<'static>>,
    crypto: Arc<LinkCrypto>,
    session_keys: SessionKeys,
}

impl Reader {
    async fn run(self, mut read: ReadHalf<BoxStream>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let (mut kicked, mut unacked) = (false, 0u64);
        // Opens frames from the gateway once the handshake's answer arrived.
        let mut open: Option<FrameCipher> = None;
        'read: loop {
            let n = match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut pos = 0;
            while let Ok(Some((range, used))) = self.codec.framing().next_frame(&buf[pos..], MAX_FRAME) {
                let frame = &buf[pos + range.start..pos + range.end];
                pos += used;
                let Ok(env) = self.codec.decode(frame) else { break 'read };
                let env = match open.as_mut() {
                    // A clear or forged frame on an encrypted connection:
                    // drop the connection (the session may be resumed).
                    Some(keys) => {
                        if !env.is_encrypted() {
                            break 'read;
                        }
                        let mut plain = env.payload.to_vec();
                        let Ok(p) = keys.open(&env, &mut plain) else { break 'read };
                        let len = p.len();
                        plain.truncate(len);
                        Envelope { payload: plain.into(), ..env }
                    }
                    None if env.is_encrypted() => break 'read,
                    None => {
                        if env.is_response() && (env.cmd == cmd::LOGIN || env.cmd == cmd::RESUME) {
                            match self.handshake_answered(&env) {
                                Ok(keys) => open = keys,
                                Err(()) => break 'read,
                            }
                        }
                        env
                    }
                };
                kicked |= env.cmd == cmd::KICK;
                if env.server_seq != 0 {
                    if self.last_seen.fetch_max(env.server_seq, Ordering::AcqRel) >= env.server_seq {
                        continue; // a replayed duplicate
                    }
                    unacked += 1;
                }
                self.dispatch(env.into_owned()).await;
            }
            buf.drain(..pos);
            if unacked >= ACK_BATCH {
                unacked = 0;
                let env =
                    Envelope { ack: self.last_seen.load(Ordering::Acquire), ..Envelope::new(cmd::ACK, 0, 0, &[]) };
                let _ = self.tx.try_send(env);
            }
        }
        // Requests waiting keep waiting through a resume (their answers are
        // replayed) until their timeout; after a final close they fail now.
        self.down.store(true, Ordering::Release);
        let resumable = !kicked && !self.closing.load(Ordering::Acquire) && self.logged_in.load(Ordering::Acquire);
        if !resumable {
            self.pending.lock().expect("pending lock").clear();
        }
        let _ = self.events.send(if resumable { Event::Disconnected } else { Event::Closed }).await;
    }

    /// The answer to a LOGIN or RESUME that offered a key or a nonce:
    /// derives the connection's keys, installs the sealing half for the
    /// writer and returns the opening half. `Err` if the gateway's key is
    /// unusable.
    fn handshake_answered(&self, env: &Envelope<'_>) -> Result<Option<FrameCipher>, ()> {
        let Some(handshake) = self.crypto.pending.lock().expect("crypto lock").take() else { return Ok(None) };
        let form = self.codec.payload_form();
        let (secret, cipher, client_part, server_part) = match handshake {
            Handshake::Login(share) => {
                let reply: LoginReply = form.decode(&env.payload).map_err(drop)?;
                if reply.server_key.is_empty() {
                    return Ok(None);
                }
                let cipher = Cipher::from_name(&reply.cipher).ok_or(())?;
                let client_key = share.public_key().to_vec();
                let dh = share.agree(&reply.server_key).map_err(drop)?;
                let secret = SessionSecret::derive(&dh, &client_key, &reply.server_key);
                *self.session_keys.lock().expect("keys lock") = Some((secret.clone(), cipher));
                (secret, cipher, client_key, reply.server_key)
            }
            Handshake::Resume(nonce) => {
                let reply: ResumeReply = form.decode(&env.payload).map_err(drop)?;
                if reply.server_nonce.is_empty() {
                    return Ok(None);
                }
                let Some((secret, cipher)) = self.session_keys.lock().expect("keys lock").clone() else {
                    return Err(());
                };
                (secret, cipher, nonce.to_vec(), reply.server_nonce)
            }
        };
        let keys = secret.connection_keys(cipher, &client_part, &server_part);
        *self.crypto.seal.lock().expect("crypto lock") = Some(keys.client_to_server);
        Ok(Some(keys.server_to_client))
    }

    async fn dispatch(&self, env: Envelope<'static>) {
        if !env.is_push() && env.seq != 0 {
            if let Some(waiter) = self.pending.lock().expect("pending lock").remove(&env.seq) {
                let _ = waiter.send(env);
                return;
            }
            if env.cmd != cmd::ERROR {
                return; // an answer nobody waits for any more
            }
        }
        let form = self.codec.payload_form();
        let event = match env.cmd {
            cmd::KICK => {
                let k = form.decode::<Kick>(&env.payload).unwrap_or_default();
                Event::Kicked { reason: k.reason, reconnect: k.reconnect }
            }
            cmd::ERROR => match form.decode::<ErrorMsg>(&env.payload) {
                Ok(e) => Event::Error {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::ErrorUnspecified),
                    message: e.message,
                },
                Err(_) => return,
            },
            cmd::SEND_TO_USER | cmd::SEND_TO_USERS | cmd::SEND_TO_GROUP => {
                match form.decode::<Delivery>(&env.payload) {
                    Ok(d) => Event::Delivery {
                        cmd: env.cmd,
                        from_user_id: d.from_user_id,
                        group: d.group,
                        payload: d.payload,
                    },
                    Err(_) => return,
                }
            }
            c => Event::Push { cmd: c, payload: env.payload.into_owned() },
        };
        // An application that dropped its event receiver still gets answers.
        let _ = self.events.send(event).await;
    }
}
