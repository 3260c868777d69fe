//! Helpers of the end-to-end tests: a whole stack (gateway + sample game
//! servers), game servers that can be killed and restarted, and a proxy that
//! cuts client connections.
//!
//! The same tests run against two networks, chosen by the environment
//! variable `PORTCULLIS_E2E_IO`:
//! - `kernel` (default): gateway workers on kernel sockets, everything on
//!   loopback ports chosen by the OS;
//! - `afxdp` (root, cargo feature `afxdp`): a routed veth harness per stack
//!   (players behind a router namespace, off the gateway's subnet), the
//!   XDP filter attached to its gateway side, the gateway on the AF_XDP
//!   backend (TCP in the userspace stack) with one worker per veth queue,
//!   game servers on the gateway side's loopback, and every player socket
//!   opened in the players' namespace, on the real Linux TCP stack.
//!
//! Tests open connections through [`Stack::connect`], [`Stack::tcp`] and
//! [`Stack::connector`], so they need not know which network they run on.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_backend_sdk::{Handler, Pusher, Request, Response};
use portcullis_client::{BoxStream, Client, ClientError, Connector, Dialer, DirectDialer, Event, Tls, TransportKind};
use portcullis_core::Config;
use portcullis_dataplane::RunningGateway;
use portcullis_proto::pb::client::{
    Error as ErrorMsg, ErrorCode, LoginReply, LoginRequest, ResumeReply, ResumeRequest,
};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use portcullis_sample_game_server::{SampleGame, STREAM_ITEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Network namespace it listens in (`None`: the test's own).
    netns: Option<String>,
    /// Its requests counter and game state.
    pub game: CountingGame,
    /// Pushes and drain announcements.
    pub pusher: Pusher,
    task: Option<JoinHandle<()>>,
}

impl GameServer {
    async fn start(addr: SocketAddr, netns: Option<String>) -> GameServer {
        let mut server =
            GameServer { addr, netns, game: CountingGame::default(), pusher: Pusher::default(), task: None };
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
            match in_netns(self.netns.as_deref(), || std::net::TcpListener::bind(self.addr))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
            {
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
    /// Run the gateway's UDP echo service ([`Stack::udp_echo`]).
    pub udp_echo: bool,
    /// Lines spliced into every `[[listeners]]` table (e.g. `encryption`).
    pub listener: String,
    /// Transport of every listener; default: `PORTCULLIS_E2E_TRANSPORT`
    /// (tcp, websocket, quic, kcp), else TCP.
    pub transport: TransportKind,
}

/// The transport the end-to-end tests run over (`PORTCULLIS_E2E_TRANSPORT`).
pub fn e2e_transport() -> TransportKind {
    match std::env::var("PORTCULLIS_E2E_TRANSPORT") {
        Ok(t) => t.parse().unwrap_or_else(|e| panic!("PORTCULLIS_E2E_TRANSPORT: {e}")),
        Err(_) => TransportKind::Tcp,
    }
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            config: String::new(),
            game_servers: 1,
            service: String::new(),
            auth: None,
            udp_echo: false,
            listener: String::new(),
            transport: e2e_transport(),
        }
    }
}

/// A gateway and sample game servers, on the network `PORTCULLIS_E2E_IO` names.
pub struct Stack {
    /// The gateway; listeners in the order protobuf, flatbuffers, json, text.
    pub gateway: RunningGateway,
    /// The game servers.
    pub games: Vec<GameServer>,
    /// Address of the UDP echo service, if it runs.
    pub udp_echo: Option<SocketAddr>,
    /// The gateway's configuration.
    pub config: Config,
    /// Transport of its listeners.
    pub transport: TransportKind,
    /// Where game servers listen (the gateway side's namespace on the harness).
    game_ns: Option<String>,
    /// Dropped last: the harness goes once the gateway has stopped.
    net: Net,
}

/// Where a stack runs.
enum Net {
    Loopback,
    #[cfg(feature = "afxdp")]
    Harness(afxdp::HarnessNet),
}

/// Whether the stacks of this test process run on AF_XDP.
fn on_afxdp() -> bool {
    match std::env::var("PORTCULLIS_E2E_IO").as_deref() {
        Ok("afxdp") => true,
        Ok("kernel") | Err(_) => false,
        Ok(other) => panic!("PORTCULLIS_E2E_IO={other:?}: expected kernel or afxdp"),
    }
}

/// Runs `f` in network namespace `ns` (a thread of its own; sockets keep
/// the namespace they were created in), or here when `ns` is `None`.
fn in_netns<R: Send>(ns: Option<&str>, f: impl FnOnce() -> std::io::Result<R> + Send) -> std::io::Result<R> {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            portcullis_xdp::netns::enter(ns)?;
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

impl Stack {
    /// Starts a stack with one game server; `gateway_extra` is spliced into `[gateway]`.
    pub async fn start(gateway_extra: &str) -> Stack {
        Self::start_with(StackOptions { config: gateway_extra.into(), ..Default::default() }).await
    }

    /// Starts a stack.
    pub async fn start_with(mut opts: StackOptions) -> Stack {
        let (net, game_ns, bind_ip) = if on_afxdp() {
            #[cfg(feature = "afxdp")]
            {
                let h = afxdp::HarnessNet::up(&opts);
                let ns = h.harness.gateway.clone();
                (Net::Harness(h), Some(ns), afxdp::GATEWAY_IP)
            }
            #[cfg(not(feature = "afxdp"))]
            panic!("PORTCULLIS_E2E_IO=afxdp needs the tests built with --features portcullis-tests/afxdp")
        } else {
            (Net::Loopback, None, "127.0.0.1")
        };
        let udp_echo = opts.udp_echo.then(|| match &net {
            Net::Loopback => {
                // A port the OS just had free.
                let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP probe");
                probe.local_addr().expect("UDP probe address")
            }
            #[cfg(feature = "afxdp")]
            Net::Harness(_) => format!("{}:7100", afxdp::GATEWAY_IP).parse().expect("addr"),
        });
        if let Some(addr) = udp_echo {
            opts.config = format!("udp_echo = \"{addr}\"\n{}", opts.config);
        }
        let mut games = Vec::new();
        for _ in 0..opts.game_servers {
            games.push(GameServer::start("127.0.0.1:0".parse().expect("addr"), game_ns.clone()).await);
        }
        let addrs: Vec<SocketAddr> = games.iter().map(|g| g.addr).collect();
        let text = config_text(&opts, &addrs, bind_ip);
        let text = match &net {
            Net::Loopback => text,
            #[cfg(feature = "afxdp")]
            Net::Harness(h) => h.config(text),
        };
        let config = Config::parse(&text, "test stack").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let (started, game_ns_kept) = (config.clone(), game_ns.clone());
        let gateway = match &net {
            Net::Loopback => tokio::task::spawn_blocking(move || RunningGateway::start(&started)).await.expect("start"),
            #[cfg(feature = "afxdp")]
            Net::Harness(h) => h.start(&config),
        }
        .expect("gateway starts");
        let stack = Stack { gateway, games, udp_echo, config, transport: opts.transport, game_ns: game_ns_kept, net };
        if opts.auth.is_none() {
            stack.wait_for_game_servers().await;
        }
        stack
    }

    /// Starts one more sample game server where the gateway reaches game
    /// servers (not in the gateway's config: add it through the admin API);
    /// its address.
    pub async fn add_game_server(&mut self) -> SocketAddr {
        let g = GameServer::start("127.0.0.1:0".parse().expect("addr"), self.game_ns.clone()).await;
        let addr = g.addr;
        self.games.push(g);
        addr
    }

    /// Address of the listener with this codec.
    pub fn addr(&self, codec: Codec) -> SocketAddr {
        let i = Codec::ALL.iter().position(|c| *c == codec).expect("codec");
        self.gateway.addrs[i]
    }

    /// How players reach the gateway: directly on loopback, from the
    /// players' namespace on the harness.
    pub fn connector(&self) -> Connector {
        let tls = (self.transport == TransportKind::Quic).then(|| test_cert().tls.clone());
        portcullis_client::connector_tls(self.transport, self.dialer(), tls)
    }

    /// Opens players' sockets: here on loopback, in the players' namespace
    /// on the harness.
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        match &self.net {
            Net::Loopback => Arc::new(DirectDialer),
            #[cfg(feature = "afxdp")]
            Net::Harness(h) => h.dialer(),
        }
    }

    /// A UDP socket of a player (in the players' namespace on the harness).
    pub async fn udp(&self) -> tokio::net::UdpSocket {
        let ns: Option<String> = match &self.net {
            Net::Loopback => None,
            #[cfg(feature = "afxdp")]
            Net::Harness(h) => Some(h.harness.players.clone()),
        };
        let socket = in_netns(ns.as_deref(), || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .expect("a player's UDP socket");
        tokio::net::UdpSocket::from_std(socket).expect("register the UDP socket")
    }

    /// The players' network namespace on the harness (`None` on loopback):
    /// where a process playing must run, e.g. `ip netns exec NS browser`.
    pub fn players_netns(&self) -> Option<String> {
        match &self.net {
            Net::Loopback => None,
            #[cfg(feature = "afxdp")]
            Net::Harness(h) => Some(h.harness.players.clone()),
        }
    }

    /// A UDP socket of player address `n` (a port the OS chooses): one of
    /// 127.0.0.2… on loopback, of the routed players' addresses on the
    /// harness. For a client that moves to a new address.
    pub fn player_udp(&self, n: u8) -> std::net::UdpSocket {
        let (ns, ip): (Option<String>, std::net::IpAddr) = match &self.net {
            Net::Loopback => (None, std::net::Ipv4Addr::new(127, 0, 0, 2 + n).into()),
            #[cfg(feature = "afxdp")]
            Net::Harness(h) => (Some(h.harness.players.clone()), portcullis_harness::routed_v4(u32::from(n)).into()),
        };
        in_netns(ns.as_deref(), || std::net::UdpSocket::bind((ip, 0))).expect("a player's UDP socket")
    }

    /// Sends `flood` from the players' side of the harness (raw frames,
    /// any source); `None` on loopback, where sources cannot be spoofed.
    #[cfg(feature = "afxdp")]
    pub fn flood(&self, flood: portcullis_harness::flood::Flood) -> Option<portcullis_harness::flood::Report> {
        match &self.net {
            Net::Loopback => None,
            Net::Harness(h) => {
                let harness = h.harness.clone();
                let report = std::thread::spawn(move || {
                    portcullis_harness::enter(&harness.players).expect("enter the players' namespace");
                    let iface = portcullis_harness::PLAYER_IFACE;
                    portcullis_harness::flood::run(iface, harness.player_mac, harness.players_next_hop, &flood)
                })
                .join()
                .expect("flood thread");
                Some(report.expect("flood"))
            }
        }
    }

    /// A TCP connection to `addr`, opened the way players open theirs.
    pub async fn tcp(&self, addr: SocketAddr) -> TcpStream {
        self.dialer().tcp(addr).await.expect("connect to the gateway")
    }

    /// Connects a client with the protobuf codec to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> (Client, mpsc::Receiver<Event>) {
        Client::connect_via(addr, Codec::Protobuf, Duration::from_secs(10), self.connector())
            .await
            .expect("connect to the gateway")
    }

    /// Connects a client with the protobuf codec and logs it in as `user`.
    pub async fn player(&self, user: &str) -> (Client, mpsc::Receiver<Event>) {
        self.player_at(self.addr(Codec::Protobuf), user, "pc").await
    }

    /// Connects a client to `addr` and logs it in as `user` on `device`.
    pub async fn player_at(&self, addr: SocketAddr, user: &str, device: &str) -> (Client, mpsc::Receiver<Event>) {
        let (c, events) = self.connect(addr).await;
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

#[cfg(feature = "afxdp")]
mod afxdp {
    use std::sync::atomic::AtomicU32;

    use portcullis_xdp::Filter;

    use super::*;
    use portcullis_client::transport::BoxFuture;
    use portcullis_harness::{Harness, Options, GATEWAY_IFACE};

    pub const GATEWAY_IP: &str = "10.77.0.1";

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// A veth harness with the XDP filter attached to its gateway side.
    pub struct HarnessNet {
        pub harness: Arc<Harness>,
        filter: Filter,
        pin_dir: String,
        queues: u32,
    }

    impl HarnessNet {
        /// One veth queue (and AF_XDP worker) per configured worker.
        pub fn up(opts: &StackOptions) -> HarnessNet {
            if let Some(why) = portcullis_harness::unavailable() {
                panic!("PORTCULLIS_E2E_IO=afxdp: {why}");
            }
            let placeholder = ["127.0.0.1:1".parse().expect("addr")];
            let workers = Config::parse(&config_text(opts, &placeholder, GATEWAY_IP), "test stack")
                .map_or(1, |c| c.gateway.workers as u32);
            // Players behind a router, off the gateway's subnet, as in the field.
            let options = Options { queues: workers, routed: true, ..Options::default() };
            let harness = Harness::up_with(options).expect("veth harness");
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let pin_dir = format!("/sys/fs/bpf/portcullis-e2e-{}-{n}", std::process::id());
            let filter = Filter::at(&pin_dir);
            let net = HarnessNet { harness: Arc::new(harness), filter, pin_dir, queues: workers };
            net.harness.in_gateway(|| net.filter.attach(GATEWAY_IFACE, false)).expect("attach the XDP filter");
            net
        }

        /// `text` with the `[afxdp]` section of this harness.
        pub fn config(&self, text: String) -> String {
            let queues: Vec<String> = (0..self.queues).map(|q| q.to_string()).collect();
            format!(
                "{text}\n[afxdp]\ninterface = \"{GATEWAY_IFACE}\"\nqueues = [{}]\n\
                 addresses = [\"{GATEWAY_IP}/24\", \"fd77::1/64\"]\npin_dir = \"{}\"\n",
                queues.join(", "),
                self.pin_dir
            )
        }

        /// The AF_XDP gateway, started on the gateway side.
        pub fn start(&self, config: &Config) -> std::io::Result<RunningGateway> {
            self.harness.in_gateway(|| RunningGateway::start_afxdp(config))
        }

        /// Opens each socket in the players' namespace.
        pub fn dialer(&self) -> Arc<dyn Dialer> {
            Arc::new(NetnsDialer(self.harness.players.clone()))
        }
    }

    /// Opens sockets in a network namespace.
    struct NetnsDialer(String);

    impl Dialer for NetnsDialer {
        fn tcp(&self, addr: SocketAddr) -> BoxFuture<std::io::Result<TcpStream>> {
            let ns = self.0.clone();
            Box::pin(async move {
                let socket = in_netns(Some(&ns), || {
                    if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()
                    } else {
                        tokio::net::TcpSocket::new_v6()
                    }
                })?;
                socket.connect(addr).await
            })
        }

        fn udp(&self, addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
            in_netns(Some(&self.0), || DirectDialer.udp(addr))
        }
    }

    impl Drop for HarnessNet {
        fn drop(&mut self) {
            // The harness itself goes with its last reference.
            let _ = self.filter.purge();
        }
    }
}

/// The `[[listeners]]` lines that choose `transport` (and its certificate).
pub fn listener_transport(transport: TransportKind) -> String {
    match transport {
        TransportKind::Tcp => String::new(),
        TransportKind::WebSocket => "transport = \"websocket\"".into(),
        TransportKind::Kcp => "transport = \"kcp\"".into(),
        TransportKind::Quic => {
            let cert = test_cert();
            format!("transport = \"quic\"\ntls_cert = \"{}\"\ntls_key = \"{}\"", cert.cert_path, cert.key_path)
        }
    }
}

/// A self-signed certificate for `localhost`, made once per test process
/// and written to files for the gateway's config.
pub struct TestCert {
    /// PEM file of the certificate.
    pub cert_path: String,
    /// PEM file of its key.
    pub key_path: String,
    /// What a client trusts to reach a gateway with it.
    pub tls: Tls,
}

/// The test process's [`TestCert`].
pub fn test_cert() -> &'static TestCert {
    static CERT: std::sync::OnceLock<TestCert> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a self-signed certificate");
        let dir = std::env::temp_dir().join(format!("portcullis-test-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the test certificate");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, made.cert.pem()).expect("write the test certificate");
        std::fs::write(&key_path, made.signing_key.serialize_pem()).expect("write the test key");
        TestCert {
            cert_path: cert_path.display().to_string(),
            key_path: key_path.display().to_string(),
            tls: Tls { roots: vec![made.cert.der().clone()], server_name: "localhost".into() },
        }
    })
}

/// The config of a test stack: four listeners on OS-chosen ports, one
/// service "game" of the given servers for commands 1000-1999.
pub fn config_text(opts: &StackOptions, game_servers: &[SocketAddr], ip: &str) -> String {
    let servers: Vec<String> = game_servers.iter().map(|a| format!("\"{a}\"")).collect();
    // Port 0 (chosen by the OS) on loopback; fixed ports on a harness of
    // the stack's own.
    let port = |i: usize| if ip == "127.0.0.1" { 0 } else { 7000 + i };
    let transport = listener_transport(opts.transport);
    let listeners: String = Codec::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!("[[listeners]]\nbind = \"{ip}:{}\"\ncodec = \"{c}\"\n{}\n{}\n", port(i), transport, opts.listener)
        })
        .collect();
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
    token_with_role(user, device, "")
}

/// A valid token for `user` on `device` with a `role` claim (the command
/// whitelist's), valid for an hour.
pub fn token_with_role(user: &str, device: &str, role: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    sign(SECRET.as_bytes(), &Claims { uid: user.into(), dev: device.into(), exp: now + 3600, role: role.into() })
}

/// Receives the next event, failing the test after `secs` seconds.
pub async fn next_event(events: &mut mpsc::Receiver<Event>, secs: u64) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), events.recv())
        .await
        .expect("an event within the time limit")
        .expect("event stream open")
}

/// Takes the `items` pushes of a STREAM (numbered from 0) through `proxy`,
/// cutting its connections once as many items as each of `cut_at` have
/// arrived and resuming after every cut (`on_resume` checks each answer);
/// returns the items in arrival order and the number of cuts. Fails the
/// test if the stream stalls for 30 s or anything else arrives.
pub async fn stream_through_cuts(
    client: &Client,
    events: &mut mpsc::Receiver<Event>,
    proxy: &CuttingProxy,
    items: u32,
    cut_at: &[usize],
    mut on_resume: impl FnMut(ResumeReply),
) -> (Vec<u32>, usize) {
    let (mut got, mut cuts) = (Vec::new(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < items as usize {
        assert!(std::time::Instant::now() < deadline, "stream stalled at {} items", got.len());
        if cut_at.get(cuts) == Some(&got.len()) {
            proxy.cut_all();
            cuts += 1;
        }
        match next_event(events, 10).await {
            Event::Push { cmd: STREAM_ITEM, payload } => {
                got.push(String::from_utf8(payload).unwrap().parse::<u32>().unwrap());
            }
            Event::Disconnected => on_resume(client.resume().await.expect("resume")),
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, cuts)
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
    /// A proxy to `target`, reached through `connector`.
    pub async fn start(target: SocketAddr, connector: Connector) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut stop = cuts.subscribe();
                let connector = connector.clone();
                tokio::spawn(async move {
                    let Ok(server) = connector(target).await else { return };
                    let mut server = server.stream;
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

/// A raw connection speaking one codec by hand, the way a third-party
/// client would.
///
/// On a WebSocket stack it speaks WebSocket by hand too: the codec's
/// stream written with [`Raw::send_bytes`] is carried one frame per
/// message as it is written — a length prefix becomes the header of a
/// binary WebSocket frame of that length (sent before its payload has all
/// been written, as on TCP), a line becomes a text message (fragments while
/// its end has not been written) — and messages received are framed back.
pub struct Raw {
    /// The connection, over the stack's transport.
    pub stream: BoxStream,
    /// The listener's codec.
    pub codec: Codec,
    buf: Vec<u8>,
    ws: Option<RawWs>,
}

/// The WebSocket state of a [`Raw`] connection.
#[derive(Default)]
struct RawWs {
    /// Bytes of a length prefix not complete yet.
    prefix: Vec<u8>,
    /// Payload bytes still due in the binary frame being sent.
    remaining: u64,
    /// Payload bytes of it sent (for the mask).
    pos: usize,
    /// A text message has fragments out but not its last one.
    line_open: bool,
    /// Bytes received, not yet parsed.
    rx: Vec<u8>,
    /// The gateway sent its close frame.
    closed: bool,
}

const RAW_MASK: [u8; 4] = [0x5a, 0xc3, 0x0f, 0x96];

/// A masked client frame header.
fn ws_head(out: &mut Vec<u8>, opcode: u8, fin: bool, len: u64) {
    out.push(u8::from(fin) << 7 | opcode);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&RAW_MASK);
}

fn ws_masked(out: &mut Vec<u8>, payload: &[u8], pos: usize) {
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ RAW_MASK[(pos + i) % 4]));
}

impl Raw {
    /// A connection to the stack's listener of `codec`.
    pub async fn connect(stack: &Stack, codec: Codec) -> Raw {
        let mut raw = if stack.transport == TransportKind::WebSocket {
            let stream: BoxStream = Box::new(stack.tcp(stack.addr(codec)).await);
            Raw { stream, codec, buf: Vec::new(), ws: None }
        } else {
            let stream = (stack.connector())(stack.addr(codec)).await.expect("connect to the gateway").stream;
            Raw { stream, codec, buf: Vec::new(), ws: None }
        };
        if stack.transport == TransportKind::WebSocket {
            raw.upgrade(stack.addr(codec)).await;
        }
        raw
    }

    /// The WebSocket handshake, by hand.
    async fn upgrade(&mut self, addr: SocketAddr) {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream.write_all(req.as_bytes()).await.expect("write the upgrade request");
        let mut rx = Vec::new();
        let end = loop {
            if let Some(i) = rx.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("an upgrade answer within 5 s")
                .expect("read the upgrade answer");
            assert!(n > 0, "the gateway closed during the upgrade: {}", String::from_utf8_lossy(&rx));
            rx.extend_from_slice(&chunk[..n]);
        };
        let answer = String::from_utf8_lossy(&rx[..end]).to_string();
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{answer}");
        self.ws = Some(RawWs { rx: rx[end..].to_vec(), ..RawWs::default() });
    }

    /// Writes bytes as they are (on WebSocket: as the frames they make).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.try_send_bytes(bytes).await.expect("write to the gateway");
    }

    /// [`Raw::send_bytes`], for a connection the gateway may have closed.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.ws {
            None => self.stream.write_all(bytes).await,
            Some(ws) => {
                let out = ws_wrap(ws, self.codec, bytes);
                self.stream.write_all(&out).await
            }
        }
    }

    /// Writes one envelope in the listener's codec.
    pub async fn send(&mut self, env: &Envelope<'_>) {
        let mut out = Vec::new();
        self.codec.encode(env, &mut out);
        self.send_bytes(&out).await;
    }

    /// Sends a framework request with a payload in this listener's form.
    pub async fn request<M: portcullis_proto::framework::Payload>(&mut self, command: u32, seq: u32, msg: &M) {
        let body = self.codec.payload_form().encode_to_vec(msg);
        self.send(&Envelope::new(command, seq, 0, &body)).await;
    }

    /// The next frame's body, or `None` at EOF; fails after 5 s.
    pub async fn recv_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some((r, used)) = self.codec.framing().next_frame(&self.buf, 1 << 24).expect("framing") {
                let frame = self.buf[r].to_vec();
                self.buf.drain(..used);
                return Some(frame);
            }
            if let Some(ws) = &mut self.ws {
                if ws_unwrap(ws, self.codec, &mut self.buf) {
                    continue;
                }
                if ws.closed {
                    return None;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("the gateway sends something (or closes) within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            match &mut self.ws {
                Some(ws) => ws.rx.extend_from_slice(&chunk[..n]),
                None => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next envelope, or `None` at EOF; fails after 5 s.
    pub async fn recv(&mut self) -> Option<Envelope<'static>> {
        let frame = self.recv_frame().await?;
        Some(self.codec.decode(&frame).expect("the gateway sends valid frames").into_owned())
    }

    /// The next line of a line listener, without its line end.
    pub async fn recv_line(&mut self) -> Option<String> {
        self.recv_frame().await.map(|f| String::from_utf8(f).expect("the gateway writes UTF-8 lines"))
    }

    /// The framework payload of `env`.
    pub fn decode<M: portcullis_proto::framework::Payload>(&self, env: &Envelope<'_>) -> M {
        self.codec.payload_form().decode(&env.payload).expect("a framework payload")
    }

    /// The next frame is an unsequenced ERROR with `code`.
    pub async fn expect_error(&mut self, code: ErrorCode) -> (Envelope<'static>, ErrorMsg) {
        let env = self.recv().await.unwrap_or_else(|| panic!("expected ERROR {code:?}, got a close"));
        assert_eq!(env.cmd, cmd::ERROR, "expected ERROR {code:?}, got {env:?}");
        assert_eq!(env.flags, flags::RESPONSE);
        let e: ErrorMsg = self.decode(&env);
        assert_eq!(e.code, code as i32, "{e:?}");
        (env, e)
    }

    /// Every envelope until the gateway closes the connection.
    pub async fn recv_all(&mut self) -> Vec<Envelope<'static>> {
        let mut all = Vec::new();
        while let Some(env) = self.recv().await {
            all.push(env);
        }
        all
    }

    /// The gateway closes the connection with nothing more.
    pub async fn expect_eof(&mut self) {
        if let Some(env) = self.recv().await {
            panic!("expected the connection to close, got {env:?}");
        }
    }

    /// Logs in with `token`; the answer must be a LOGIN response.
    pub async fn login_with(&mut self, token: &str) -> LoginReply {
        self.request(cmd::LOGIN, 1, &LoginRequest { token: token.into(), ..Default::default() }).await;
        let env = self.recv().await.expect("a LOGIN answer");
        assert_eq!((env.cmd, env.seq, env.server_seq), (cmd::LOGIN, 1, 0), "{env:?}");
        self.decode(&env)
    }

    /// Logs in as `user` on a "pc".
    pub async fn login(&mut self, user: &str) -> LoginReply {
        self.login_with(&token(user)).await
    }

    /// Sends RESUME with `resume_token`; returns the answer.
    pub async fn resume(&mut self, seq: u32, resume_token: &str) -> Envelope<'static> {
        let req = ResumeRequest { resume_token: resume_token.into(), last_server_seq: 0, ..Default::default() };
        self.request(cmd::RESUME, seq, &req).await;
        self.recv().await.expect("a RESUME answer")
    }

    /// A HEARTBEAT, answered unsequenced.
    pub async fn heartbeat(&mut self, seq: u32) {
        self.send(&Envelope::new(cmd::HEARTBEAT, seq, 0, b"")).await;
        let env = self.recv().await.expect("a HEARTBEAT answer");
        assert_eq!((env.cmd, env.seq, env.flags, env.server_seq), (cmd::HEARTBEAT, seq, flags::RESPONSE, 0));
    }
    /// The gateway closes the connection, at most explaining why (ERROR or
    /// KICK frames) first.
    pub async fn expect_close(&mut self) {
        while let Some(env) = self.recv().await {
            assert!(matches!(env.cmd, cmd::ERROR | cmd::KICK), "only an explanation before the close: {env:?}");
        }
    }
}

/// The WebSocket frames that carry `bytes` of the codec's stream.
fn ws_wrap(ws: &mut RawWs, codec: Codec, mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match codec.framing() {
        portcullis_proto::framing::Framing::LengthPrefixed => {
            while !bytes.is_empty() {
                if ws.remaining > 0 {
                    let take = ws.remaining.min(bytes.len() as u64) as usize;
                    ws_masked(&mut out, &bytes[..take], ws.pos);
                    ws.pos += take;
                    ws.remaining -= take as u64;
                    bytes = &bytes[take..];
                    continue;
                }
                let take = (4 - ws.prefix.len()).min(bytes.len());
                ws.prefix.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if let Ok(prefix) = <[u8; 4]>::try_from(&ws.prefix[..]) {
                    ws.remaining = u64::from(u32::from_be_bytes(prefix));
                    ws.pos = 0;
                    ws.prefix.clear();
                    ws_head(&mut out, 0x2, true, ws.remaining);
                }
            }
        }
        portcullis_proto::framing::Framing::Lines => {
            while !bytes.is_empty() {
                let opcode = if ws.line_open { 0x0 } else { 0x1 };
                let (part, fin, rest) = match bytes.iter().position(|&b| b == b'\n') {
                    Some(i) => (&bytes[..i], true, &bytes[i + 1..]),
                    None => (bytes, false, &[][..]),
                };
                ws_head(&mut out, opcode, fin, part.len() as u64);
                ws_masked(&mut out, part, 0);
                ws.line_open = !fin;
                bytes = rest;
            }
        }
    }
    out
}

/// Moves one message received (if whole) into `buf`, framed as the codec
/// frames its stream; notes a close frame. Whether it found a frame.
fn ws_unwrap(ws: &mut RawWs, codec: Codec, buf: &mut Vec<u8>) -> bool {
    let rx = &ws.rx;
    if rx.len() < 2 || ws.closed {
        return false;
    }
    assert_eq!(rx[1] & 0x80, 0, "the gateway does not mask");
    let (len, at) = match rx[1] {
        126 if rx.len() >= 4 => (u16::from_be_bytes([rx[2], rx[3]]) as usize, 4),
        127 if rx.len() >= 10 => (u64::from_be_bytes(rx[2..10].try_into().expect("8 bytes")) as usize, 10),
        126 | 127 => return false,
        n => (n as usize, 2),
    };
    if rx.len() < at + len {
        return false;
    }
    let (b0, payload) = (rx[0], rx[at..at + len].to_vec());
    ws.rx.drain(..at + len);
    assert_eq!(b0 & 0x80, 0x80, "the gateway sends each message in one frame");
    let framing = codec.framing();
    match b0 & 0x0f {
        op @ (0x1 | 0x2) => {
            let want = if framing == portcullis_proto::framing::Framing::Lines { 0x1 } else { 0x2 };
            assert_eq!(op, want, "binary messages for binary codecs, text for line codecs");
            let mark = framing.begin(buf);
            buf.extend_from_slice(&payload);
            framing.finish(buf, mark);
        }
        0x8 => ws.closed = true,
        _ => {}
    }
    true
}
