//! Helpers of the end-to-end tests: a whole stack (gateway workers on
//! kernel sockets + sample game servers) on loopback ports chosen by the OS,
//! game servers that can be killed and restarted, and a proxy that cuts
//! client connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_backend_sdk::{Handler, Pusher, Request, Response};
use portcullis_client::{Client, ClientError, Event};
use portcullis_dataplane::io::kernel::RunningGateway;
use portcullis_dataplane::Config;
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::Codec;
use portcullis_sample_game_server::SampleGame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The token secret of test stacks.
pub const SECRET: &str = "portcullis-test-secret-0123456789";

/// The sample game, counting the requests it handles.
#[derive(Clone, Default)]
pub struct CountingGame {
    game: SampleGame,
    /// Requests handled.
    pub requests: Arc<AtomicU64>,
}

impl Handler for CountingGame {
    async fn on_request(&self, req: Request, push: &Pusher) -> Response {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.game.on_request(req, push).await
    }
}

/// A sample game server that can be killed and restarted on its address.
pub struct GameServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its requests counter and game state.
    pub game: CountingGame,
    /// Pushes and drain announcements.
    pub pusher: Pusher,
    task: Option<JoinHandle<()>>,
}

impl GameServer {
    async fn start(addr: SocketAddr) -> GameServer {
        let mut server = GameServer { addr, game: CountingGame::default(), pusher: Pusher::default(), task: None };
        server.restart().await;
        server
    }

    /// Kills it: every gateway link drops at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Starts it again on the same address (retrying while the port frees).
    pub async fn restart(&mut self) {
        self.kill();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.addr = listener.local_addr().expect("game server address");
        let (game, pusher) = (self.game.clone(), self.pusher.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = portcullis_backend_sdk::serve_with(listener, game, pusher).await;
        }));
    }
}

impl Drop for GameServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test stack looks like.
#[derive(Clone)]
pub struct StackOptions {
    /// Lines spliced into the config before the listeners (may open
    /// sections such as `[sessions]`; `[gateway]` keys come first).
    pub config: String,
    /// Game servers of the "game" service.
    pub game_servers: usize,
    /// Lines spliced into the "game" `[[services]]` table.
    pub service: String,
    /// `[auth]` table body; default: the token authenticator.
    pub auth: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions { config: String::new(), game_servers: 1, service: String::new(), auth: None }
    }
}

/// A gateway and sample game servers on loopback.
pub struct Stack {
    /// The gateway; listeners in the order protobuf, flatbuffers, json, text.
    pub gateway: RunningGateway,
    /// The game servers.
    pub games: Vec<GameServer>,
}

impl Stack {
    /// Starts a stack with one game server; `gateway_extra` is spliced into `[gateway]`.
    pub async fn start(gateway_extra: &str) -> Stack {
        Self::start_with(StackOptions { config: gateway_extra.into(), ..Default::default() }).await
    }

    /// Starts a stack.
    pub async fn start_with(opts: StackOptions) -> Stack {
        let mut games = Vec::new();
        for _ in 0..opts.game_servers {
            games.push(GameServer::start("127.0.0.1:0".parse().expect("addr")).await);
        }
        let addrs: Vec<SocketAddr> = games.iter().map(|g| g.addr).collect();
        let text = config_text(&opts, &addrs);
        let config = Config::parse(&text, "test stack").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let gateway = tokio::task::spawn_blocking(move || RunningGateway::start(&config))
            .await
            .expect("start task")
            .expect("gateway starts");
        let stack = Stack { gateway, games };
        if opts.auth.is_none() {
            stack.wait_for_game_servers().await;
        }
        stack
    }

    /// Address of the listener with this codec.
    pub fn addr(&self, codec: Codec) -> SocketAddr {
        let i = Codec::ALL.iter().position(|c| *c == codec).expect("codec");
        self.gateway.addrs[i]
    }

    /// Connects a client with the protobuf codec and logs it in as `user`.
    pub async fn player(&self, user: &str) -> (Client, mpsc::Receiver<Event>) {
        self.player_at(self.addr(Codec::Protobuf), user, "pc").await
    }

    /// Connects a client to `addr` and logs it in as `user` on `device`.
    pub async fn player_at(&self, addr: SocketAddr, user: &str, device: &str) -> (Client, mpsc::Receiver<Event>) {
        let (c, events) = Client::connect(addr).await.expect("connect");
        c.login(&token_for(user, device)).await.expect("login");
        (c, events)
    }

    /// Waits (bounded) until every worker's links to the game servers are up.
    pub async fn wait_for_game_servers(&self) {
        let want = self.games.len() * self.gateway.status().len();
        for _ in 0..500 {
            if self.gateway.status().iter().map(|w| w.links_up).sum::<usize>() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the gateway never linked to all game servers: {:?}", self.gateway.status());
    }
}

/// The config of a test stack: four listeners on OS-chosen ports, one
/// service "game" of the given servers for commands 1000-1999.
pub fn config_text(opts: &StackOptions, game_servers: &[SocketAddr]) -> String {
    let servers: Vec<String> = game_servers.iter().map(|a| format!("\"{a}\"")).collect();
    let listeners: String =
        Codec::ALL.iter().map(|c| format!("[[listeners]]\nbind = \"127.0.0.1:0\"\ncodec = \"{c}\"\n")).collect();
    let auth = opts.auth.clone().unwrap_or_else(|| format!("kind = \"token\"\nsecret = \"{SECRET}\""));
    format!(
        "[gateway]\n{}\n{listeners}\n[auth]\n{auth}\n[[services]]\nname = \"game\"\nservers = [{}]\n{}\n\
         [[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n",
        opts.config,
        servers.join(", "),
        opts.service,
    )
}

/// A valid token for `user` on a "pc", valid for an hour.
pub fn token(user: &str) -> String {
    token_for(user, "pc")
}

/// A valid token for `user` on `device`, valid for an hour.
pub fn token_for(user: &str, device: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    sign(SECRET.as_bytes(), &Claims { uid: user.into(), dev: device.into(), exp: now + 3600 })
}

/// Receives the next event, failing the test after `secs` seconds.
pub async fn next_event(events: &mut mpsc::Receiver<Event>, secs: u64) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), events.recv())
        .await
        .expect("an event within the time limit")
        .expect("event stream open")
}

/// Whether a call failed with a gateway ERROR (not a timeout or a close).
pub fn answered_with_error<T>(r: &Result<T, ClientError>) -> bool {
    matches!(r, Err(ClientError::Server { .. }))
}

/// A TCP proxy in front of the gateway whose connections a test can cut,
/// as a flaky mobile network would.
pub struct CuttingProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: tokio::sync::broadcast::Sender<()>,
    task: JoinHandle<()>,
}

impl CuttingProxy {
    /// A proxy to `target`.
    pub async fn start(target: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut stop = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.recv() => {}
                    }
                });
            }
        });
        CuttingProxy { addr, cut, task }
    }

    /// Cuts every connection through the proxy now.
    pub fn cut_all(&self) {
        let _ = self.cut.send(());
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
