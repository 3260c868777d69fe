//! The client SDK: connect to a gateway, log in, send requests and
//! framework commands, receive pushes. Heartbeats run in the background
//! after login.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis_client::ClientError> {
//! let (client, mut events) = portcullis_client::Client::connect("127.0.0.1:7000").await?;
//! client.login("<token>").await?;
//! client.join("room:lobby").await?;
//! let echoed = client.call(1000, b"hello").await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portcullis_proto::framework::Payload;
use portcullis_proto::pb::client::{
    Delivery, Error as ErrorMsg, ErrorCode, GroupRequest, Kick, LoginReply, LoginRequest, SendResult, SendToGroup,
    SendToUser, SendToUsers,
};
use portcullis_proto::{cmd, Codec, Envelope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Largest frame the client accepts from the gateway.
pub const MAX_FRAME: usize = 16 << 20;

/// Pushes buffered before the reader waits for the application.
const EVENT_QUEUE: usize = 4096;

/// Something the gateway sent without being asked.
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
    /// The gateway closed the session (KICK) with this reason.
    Kicked(String),
    /// The connection is closed.
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
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Envelope<'static>>>>>;

struct Inner {
    codec: Codec,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    seq: AtomicU32,
    timeout: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }
}

/// A connection to a gateway. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects with the protobuf codec.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        Self::connect_with(addr, Codec::Protobuf, Duration::from_secs(10)).await
    }

    /// Connects with a codec and a per-request timeout.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        codec: Codec,
        timeout: Duration,
    ) -> Result<(Client, mpsc::Receiver<Event>), ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let pending: Pending = Arc::default();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(frame) = rx.recv().await {
                batch.extend_from_slice(&frame);
                while let Ok(f) = rx.try_recv() {
                    batch.extend_from_slice(&f);
                }
                if write.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        });
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            'read: loop {
                let n = match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut pos = 0;
                while let Ok(Some((range, used))) = codec.framing().next_frame(&buf[pos..], MAX_FRAME) {
                    let frame = &buf[pos + range.start..pos + range.end];
                    pos += used;
                    let Ok(env) = codec.decode(frame) else {
                        break 'read;
                    };
                    if !dispatch(codec, env.into_owned(), &reader_pending, &events_tx).await {
                        break 'read;
                    }
                }
                buf.drain(..pos);
            }
            reader_pending.lock().expect("pending lock").clear();
            let _ = events_tx.send(Event::Closed).await;
        });
        let inner =
            Inner { codec, tx, pending, seq: AtomicU32::new(0), timeout, tasks: Mutex::new(vec![writer, reader]) };
        Ok((Client { inner: Arc::new(inner) }, events))
    }

    /// The codec in use.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    fn next_seq(&self) -> u32 {
        loop {
            let s = self.inner.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if s != 0 {
                return s;
            }
        }
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
        let mut frame = Vec::with_capacity(payload.len() + 32);
        self.inner.codec.encode(&env, &mut frame);
        if self.inner.tx.send(frame).await.is_err() {
            self.inner.pending.lock().expect("pending lock").remove(&seq);
            return Err(ClientError::Closed);
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

    /// Logs in and starts background heartbeats at the interval the gateway asks for.
    pub async fn login(&self, token: &str) -> Result<LoginReply, ClientError> {
        let reply: LoginReply = self.framework(cmd::LOGIN, &LoginRequest { token: token.into() }).await?;
        let every = Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(100)));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let beat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let client = Client { inner };
                if let Err(ClientError::Closed) = client.heartbeat().await {
                    return;
                }
            }
        });
        self.inner.tasks.lock().expect("tasks lock").push(beat);
        Ok(reply)
    }

    /// Sends one heartbeat and waits for its answer.
    pub async fn heartbeat(&self) -> Result<(), ClientError> {
        self.request(cmd::HEARTBEAT, &[], None).await.map(drop)
    }

    /// Logs out; the gateway closes the connection after answering.
    pub async fn logout(&self) -> Result<(), ClientError> {
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

/// Routes one received frame: answers to their waiting request, the rest
/// to the event queue. Returns false once nobody listens any more.
async fn dispatch(codec: Codec, env: Envelope<'static>, pending: &Pending, events: &mpsc::Sender<Event>) -> bool {
    if !env.is_push() && env.seq != 0 {
        if let Some(waiter) = pending.lock().expect("pending lock").remove(&env.seq) {
            let _ = waiter.send(env);
            return true;
        }
    }
    let form = codec.payload_form();
    let event = match env.cmd {
        cmd::KICK => Event::Kicked(form.decode::<Kick>(&env.payload).map(|k| k.reason).unwrap_or_default()),
        cmd::ERROR => match form.decode::<ErrorMsg>(&env.payload) {
            Ok(e) => Event::Error {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::ErrorUnspecified),
                message: e.message,
            },
            Err(_) => return true,
        },
        cmd::SEND_TO_USER | cmd::SEND_TO_USERS | cmd::SEND_TO_GROUP => match form.decode::<Delivery>(&env.payload) {
            Ok(d) => Event::Delivery { cmd: env.cmd, from_user_id: d.from_user_id, group: d.group, payload: d.payload },
            Err(_) => return true,
        },
        c => Event::Push { cmd: c, payload: env.payload.into_owned() },
    };
    events.send(event).await.is_ok()
}
