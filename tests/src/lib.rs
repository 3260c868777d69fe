//! Helpers of the end-to-end tests: a whole stack (gateway worker on kernel
//! sockets + sample game server) on loopback ports chosen by the OS.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_client::{Client, ClientError, Event};
use portcullis_dataplane::io::kernel::RunningGateway;
use portcullis_dataplane::Config;
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::Codec;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The token secret of test stacks.
pub const SECRET: &str = "portcullis-test-secret-0123456789";

/// A gateway and a sample game server on loopback.
pub struct Stack {
    /// The gateway; listeners in the order protobuf, flatbuffers, json, text.
    pub gateway: RunningGateway,
    /// The game server's address.
    pub game_addr: SocketAddr,
    game: JoinHandle<()>,
}

impl Stack {
    /// Starts a stack. `gateway_extra` is spliced into `[gateway]`.
    pub async fn start(gateway_extra: &str) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind game server");
        let game_addr = listener.local_addr().expect("game server address");
        let game = tokio::spawn(async move {
            let _ = portcullis_backend_sdk::serve(listener, portcullis_sample_game_server::SampleGame::default()).await;
        });
        let config = Config::parse(&config_text(gateway_extra, &[game_addr]), "test stack").expect("test config");
        let gateway = tokio::task::spawn_blocking(move || RunningGateway::start(&config))
            .await
            .expect("start task")
            .expect("gateway starts");
        let stack = Stack { gateway, game_addr, game };
        stack.wait_for_game_server().await;
        stack
    }

    /// Address of the listener with this codec.
    pub fn addr(&self, codec: Codec) -> SocketAddr {
        let i = Codec::ALL.iter().position(|c| *c == codec).expect("codec");
        self.gateway.addrs[i]
    }

    /// Connects a client with the protobuf codec and logs it in as `user`.
    pub async fn player(&self, user: &str) -> (Client, mpsc::Receiver<Event>) {
        let (c, events) = Client::connect(self.addr(Codec::Protobuf)).await.expect("connect");
        c.login(&token(user)).await.expect("login");
        (c, events)
    }

    /// Waits (bounded) until the gateway's link to the game server is up.
    async fn wait_for_game_server(&self) {
        let (c, _events) = self.player("readiness-probe").await;
        for _ in 0..200 {
            match c.call(portcullis_sample_game_server::ECHO, b"ready?").await {
                Ok(_) => return,
                Err(ClientError::Server { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("readiness probe failed: {e}"),
            }
        }
        panic!("the gateway never linked to the game server");
    }

    /// Stops the game server (the gateway keeps running).
    pub fn stop_game_server(&self) {
        self.game.abort();
    }
}

/// A gateway config for tests: four listeners on OS-chosen ports, one
/// service of the given game servers for commands 1000-1999.
pub fn config_text(gateway_extra: &str, game_servers: &[SocketAddr]) -> String {
    let servers: Vec<String> = game_servers.iter().map(|a| format!("\"{a}\"")).collect();
    let listeners: String =
        Codec::ALL.iter().map(|c| format!("[[listeners]]\nbind = \"127.0.0.1:0\"\ncodec = \"{c}\"\n")).collect();
    format!(
        "[gateway]\n{gateway_extra}\n{listeners}\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [[services]]\nname = \"game\"\nservers = [{}]\n[[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n",
        servers.join(", ")
    )
}

/// A valid token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    sign(SECRET.as_bytes(), &Claims { uid: user.into(), dev: "pc".into(), exp: now + 3600 })
}

/// Receives the next event, failing the test after `secs` seconds.
pub async fn next_event(events: &mut mpsc::Receiver<Event>, secs: u64) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), events.recv())
        .await
        .expect("an event within the time limit")
        .expect("event stream open")
}
