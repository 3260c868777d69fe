//! The backend SDK: what a game server links to serve Portcullis gateways.
//!
//! Implement [`Handler`], then [`serve`] on a TCP listener. Each gateway
//! worker opens one link to the game server and multiplexes all its
//! sessions over it (`proto/schema/link.proto`). Requests of one link are
//! handled in arrival order, so one session's commands are never reordered;
//! a handler that waits on slow work should spawn it and answer through a
//! [`Pusher`].
//!
//! ```no_run
//! use portcullis_backend_sdk::{serve, Handler, Request, Response, Pusher};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     async fn on_request(&self, req: Request, _push: &Pusher) -> Response {
//!         Response::reply(req.payload)
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! serve(listener, Echo).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_proto::link::encode_frame;
use portcullis_proto::pb::link::{
    link_frame::Kind, Broadcast, LinkFrame, Pong, PushToGroup, PushToSession, PushToUser, Reply, Status,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub use portcullis_proto::pb::client::LoginRequest;
pub use portcullis_proto::pb::link::{AuthResult, Request, SessionClosed};

/// The command of login requests a delegate-to-backend gateway forwards
/// (payload: protobuf [`LoginRequest`]; answer with [`Response::authenticated`]).
pub const LOGIN: u32 = portcullis_proto::cmd::LOGIN;

/// Largest link frame accepted from a gateway.
pub const MAX_FRAME: usize = 16 << 20;

/// Frames queued towards one gateway link before senders wait.
const LINK_QUEUE: usize = 4096;

/// What a game server does with the gateway's traffic.
pub trait Handler: Send + Sync + 'static {
    /// Handles one business request. Requests of a link arrive in order.
    fn on_request(&self, req: Request, push: &Pusher) -> impl Future<Output = Response> + Send;

    /// A session that sent requests here has ended (logout, disconnect, kick).
    fn on_session_closed(&self, _closed: SessionClosed, _push: &Pusher) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A response with this command and payload.
    Reply {
        /// Command of the response (usually the request's).
        cmd: Option<u32>,
        /// Business payload.
        payload: Vec<u8>,
    },
    /// The client receives an ERROR frame (BACKEND_ERROR) with this code and message.
    Error {
        /// Game-defined non-zero code.
        code: u32,
        /// Explanation for the client.
        message: String,
    },
    /// No answer: the request is complete (the handler may push later).
    None,
}

impl Response {
    /// A reply with the request's command.
    pub fn reply(payload: impl Into<Vec<u8>>) -> Response {
        Response::Reply { cmd: None, payload: payload.into() }
    }

    /// An error answer.
    pub fn error(code: u32, message: impl Into<String>) -> Response {
        Response::Error { code: code.max(1), message: message.into() }
    }

    /// The answer of an auth service accepting a [`LOGIN`].
    pub fn authenticated(user_id: impl Into<String>, device: impl Into<String>) -> Response {
        Response::authenticated_as(user_id, device, "")
    }

    /// The answer of an auth service accepting a [`LOGIN`] with a role for
    /// the gateway's command whitelist.
    pub fn authenticated_as(
        user_id: impl Into<String>,
        device: impl Into<String>,
        role: impl Into<String>,
    ) -> Response {
        let result = AuthResult { user_id: user_id.into(), device: device.into(), role: role.into() };
        Response::reply(result.encode_to_vec())
    }
}

#[derive(Default)]
struct Shared {
    links: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    /// Which link each known session arrived on.
    sessions: Mutex<HashMap<u64, u64>>,
    next_link: AtomicU64,
    draining: std::sync::atomic::AtomicBool,
}

/// Pushes messages to players through the gateways. Cheap to clone.
#[derive(Clone, Default)]
pub struct Pusher {
    shared: Arc<Shared>,
    /// Pushes go as QUIC datagrams where the player's connection takes one.
    unreliable: bool,
}

/// Why a push could not be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The session is unknown here (it never sent a request, or it ended).
    UnknownSession(u64),
    /// No gateway is connected.
    NoGateway,
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::UnknownSession(id) => {
                write!(f, "session {id} is not known to this game server")
            }
            PushError::NoGateway => f.write_str("no gateway is connected"),
        }
    }
}

impl std::error::Error for PushError {}

impl Pusher {
    /// The same pusher, whose pushes are unreliable: sent as QUIC datagrams
    /// to players whose connection takes them — not sequenced, not kept for
    /// a resume, possibly lost; for state that is useless once late. Players
    /// on other transports get them on their stream as usual.
    pub fn unreliable(&self) -> Pusher {
        Pusher { shared: self.shared.clone(), unreliable: true }
    }

    fn frame(kind: Kind) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(kind, &mut out);
        out
    }

    async fn to_all(&self, frame: Vec<u8>) -> Result<usize, PushError> {
        let links: Vec<_> = self.shared.links.lock().expect("links lock").values().cloned().collect();
        if links.is_empty() {
            return Err(PushError::NoGateway);
        }
        let mut sent = 0;
        for link in links {
            if link.send(frame.clone()).await.is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Pushes to one session, through the gateway that owns it.
    pub async fn to_session(&self, session_id: u64, cmd: u32, payload: impl Into<Vec<u8>>) -> Result<(), PushError> {
        let link = {
            let sessions = self.shared.sessions.lock().expect("sessions lock");
            let link = sessions.get(&session_id).ok_or(PushError::UnknownSession(session_id))?;
            self.shared.links.lock().expect("links lock").get(link).cloned()
        };
        let link = link.ok_or(PushError::UnknownSession(session_id))?;
        let frame = Self::frame(Kind::PushToSession(PushToSession {
            session_id,
            cmd,
            payload: payload.into(),
            unreliable: self.unreliable,
        }));
        link.send(frame).await.map_err(|_| PushError::UnknownSession(session_id))
    }

    /// Pushes to every session of a user, on every gateway. Returns the
    /// number of gateway links it was sent to.
    pub async fn to_user(&self, user_id: &str, cmd: u32, payload: impl Into<Vec<u8>>) -> Result<usize, PushError> {
        let push = PushToUser { user_id: user_id.into(), cmd, payload: payload.into(), unreliable: self.unreliable };
        self.to_all(Self::frame(Kind::PushToUser(push))).await
    }

    /// Pushes to every member session of a group, on every gateway.
    pub async fn to_group(&self, group: &str, cmd: u32, payload: impl Into<Vec<u8>>) -> Result<usize, PushError> {
        let push = PushToGroup { group: group.into(), cmd, payload: payload.into(), unreliable: self.unreliable };
        self.to_all(Self::frame(Kind::PushToGroup(push))).await
    }

    /// Pushes to every logged-in session on every gateway.
    pub async fn broadcast(&self, cmd: u32, payload: impl Into<Vec<u8>>) -> Result<usize, PushError> {
        self.to_all(Self::frame(Kind::Broadcast(Broadcast {
            cmd,
            payload: payload.into(),
            unreliable: self.unreliable,
        })))
        .await
    }

    /// Announces to every gateway (now and later connected) whether this
    /// server is draining: a draining server gets no new sessions, while
    /// sessions already assigned to it (sticky services) keep coming.
    pub async fn set_draining(&self, draining: bool) {
        self.shared.draining.store(draining, Ordering::Release);
        let _ = self.to_all(Self::frame(Kind::Status(Status { draining }))).await;
    }

    /// Number of gateway links connected.
    pub fn gateway_links(&self) -> usize {
        self.shared.links.lock().expect("links lock").len()
    }
}

/// Serves gateway links accepted on `listener` with `handler` until the
/// listener fails. Dropping (or aborting) the returned future closes every
/// link it serves, as a crash would.
pub async fn serve<H: Handler>(listener: TcpListener, handler: H) -> io::Result<()> {
    serve_with(listener, handler, Pusher::default()).await
}

/// Like [`serve`], with a [`Pusher`] the caller keeps for pushes outside
/// of requests (timers, game events).
pub async fn serve_with<H: Handler>(listener: TcpListener, handler: H, pusher: Pusher) -> io::Result<()> {
    let handler = Arc::new(handler);
    let mut links = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let _ = stream.set_nodelay(true);
                let (handler, pusher) = (handler.clone(), pusher.clone());
                links.spawn(async move {
                    if let Err(e) = run_link(stream, handler, pusher).await {
                        tracing::info!("gateway link from {peer} ended: {e}");
                    }
                });
            }
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
}

async fn run_link<H: Handler>(stream: TcpStream, handler: Arc<H>, pusher: Pusher) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
    // The writer must end with the link: abort it if this task is dropped.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let link = pusher.shared.next_link.fetch_add(1, Ordering::Relaxed);
    pusher.shared.links.lock().expect("links lock").insert(link, tx.clone());
    if pusher.shared.draining.load(Ordering::Acquire) {
        let _ = tx.send(Pusher::frame(Kind::Status(Status { draining: true }))).await;
    }
    // Writer: batches whatever is queued into one write.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(frame) = rx.recv().await {
            batch.extend_from_slice(&frame);
            while batch.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(f) => batch.extend_from_slice(&f),
                    Err(_) => break,
                }
            }
            if write.write_all(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    });
    let _guard = AbortOnDrop(writer.abort_handle());
    let result = read_link(BufReader::with_capacity(64 * 1024, read), &*handler, &pusher, &tx, link).await;
    pusher.shared.links.lock().expect("links lock").remove(&link);
    pusher.shared.sessions.lock().expect("sessions lock").retain(|_, l| *l != link);
    drop(tx);
    let _ = writer.await;
    result
}

async fn read_link<H: Handler, R: AsyncReadExt + Unpin>(
    mut read: R,
    handler: &H,
    pusher: &Pusher,
    tx: &mpsc::Sender<Vec<u8>>,
    link: u64,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let len = match read.read_u32().await {
            Ok(len) => len as usize,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link frame of {len} bytes")));
        }
        buf.resize(len, 0);
        read.read_exact(&mut buf).await?;
        let frame = LinkFrame::decode(&buf[..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match frame.kind {
            Some(Kind::Request(req)) => {
                let (session_id, cmd, seq, request_id) = (req.session_id, req.cmd, req.seq, req.request_id);
                if req.cmd != LOGIN {
                    pusher.shared.sessions.lock().expect("sessions lock").insert(session_id, link);
                }
                let base = Reply { session_id, cmd, seq, request_id, ..Default::default() };
                let reply = match handler.on_request(req, pusher).await {
                    Response::Reply { cmd: c, payload } => Reply { cmd: c.unwrap_or(cmd), payload, ..base },
                    Response::Error { code, message } => Reply { error: code, error_message: message, ..base },
                    Response::None => Reply { silent: true, ..base },
                };
                let mut out = Vec::new();
                encode_frame(Kind::Reply(reply), &mut out);
                if tx.send(out).await.is_err() {
                    return Ok(());
                }
            }
            Some(Kind::Ping(ping)) => {
                let mut out = Vec::new();
                encode_frame(Kind::Pong(Pong { nonce: ping.nonce }), &mut out);
                if tx.send(out).await.is_err() {
                    return Ok(());
                }
            }
            Some(Kind::SessionResumed(moved)) => {
                pusher.shared.sessions.lock().expect("sessions lock").insert(moved.session_id, link);
            }
            Some(Kind::SessionClosed(closed)) => {
                pusher.shared.sessions.lock().expect("sessions lock").remove(&closed.session_id);
                handler.on_session_closed(closed, pusher).await;
            }
            Some(Kind::Hello(hello)) => {
                tracing::info!("gateway {:?} worker {} linked", hello.gateway, hello.worker);
            }
            Some(other) => {
                let msg = format!("gateway sent a game-server frame: {other:?}");
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
            None => return Err(io::Error::new(io::ErrorKind::InvalidData, "link frame without kind")),
        }
    }
}
