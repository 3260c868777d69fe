//! `portcullis-load`: drives clients through a gateway and the sample game
//! server on loopback and prints what it measured.
//!
//! - `--scenario echo` (default): N clients, each with `--depth` requests in
//!   flight, echo a payload for `--duration` seconds; prints messages/s and
//!   p50/p99/p999 round-trip latency (HdrHistogram).
//! - `--scenario raw-echo`: the same closed loop without a gateway's
//!   session: each client sends framed ECHO envelopes over its own TCP
//!   connection and expects the same bytes back — for a byte-echo server
//!   (`--scenario serve-echo`) behind a TCP proxy such as HAProxy, the
//!   baseline of the gateway benchmarks.
//! - `--scenario udp-echo`: the closed loop over UDP, one socket per client,
//!   against a UDP echo service (the gateway's `gateway.udp_echo`).
//! - `--scenario serve-echo`: a TCP and UDP byte-echo server on `--listen`.
//! - `--scenario demo`: a few simulated players chat in rooms, message each
//!   other and play with the shared counter, printed live.
//! - `--scenario idle`: `--clients` sessions log in and stay idle; prints
//!   the gateway's resident memory per session. With `--gateway ADDR
//!   --gateway-pid PID`, bare sockets log in to that gateway process and its
//!   RSS is read from /proc; without, the sessions log in to a gateway core
//!   in this process through its sans-IO API (same path minus the sockets,
//!   whose buffers are kernel memory, not RSS), so counts beyond the
//!   open-files limit can be measured.
//!
//! Without `--gateway`, `--workers` gateway workers and a sample game
//! server start in this process on loopback ports chosen by the OS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use portcullis_benches::players::{
    bound_socket, connect_from, connector_from, latency_histogram, token, wait_for_game_server, Pacer,
};
use portcullis_benches::procfs;
use portcullis_client::{Client, DirectDialer, Encryption, Event, Tls, TransportKind};
use portcullis_core::Config;
use portcullis_dataplane::RunningGateway;
use portcullis_proto::{Codec, Envelope};
use portcullis_sample_game_server::{room_group, SampleGame, CHAT_MESSAGE, CHAT_SAY, COUNTER_ADD, ECHO};

/// Load driver and demo players for Portcullis.
#[derive(Parser, Clone)]
#[command(version)]
struct Args {
    /// Gateway (protobuf listener) to drive; default: start one in-process.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Token secret of that gateway.
    #[arg(long, default_value = "portcullis-demo-secret-change-me")]
    secret: String,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = Scenario::Echo)]
    scenario: Scenario,
    /// Number of clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Requests each client keeps in flight (echo).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Payload size in bytes (echo).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up before measuring (echo).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Workers of the in-process gateway.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Process id of the `--gateway` (idle scenario: its RSS is measured).
    #[arg(long, requires = "gateway")]
    gateway_pid: Option<u32>,
    /// Address the echo server listens on (serve-echo; TCP and UDP).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Open client i from the routed veth harness's player address i mod N
    /// (10.88.1.1, 10.88.1.2, …: `portcullis-harness up --routed --sources N`),
    /// so that players arrive from many addresses through the router.
    #[arg(long, default_value_t = 0)]
    harness_sources: u32,
    /// Number of the first client (user ids and sources), so that several
    /// load drivers together hold more connections than one process may open.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Idle scenario: once every session is logged in, print `ready N` and
    /// keep the connections open this many seconds.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Open loop (echo, raw-echo): this many messages per second in all,
    /// spread evenly over the clients, each latency counted from when its
    /// message was due (so a stall delays the figures, not the load);
    /// 0: closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Also report the CPU time of this process (the dataplane) and of the
    /// whole machine over the measured seconds only.
    #[arg(long)]
    cpu_pid: Option<u32>,
    /// Encrypt the sessions (X25519 at login, then AES-GCM on every frame;
    /// the login fails if the gateway does not encrypt). Default: clear
    /// sessions, as before encryption existed.
    #[arg(long)]
    encrypt: bool,
    /// Transport of the gateway's listener: tcp, websocket, quic or kcp.
    #[arg(long, default_value = "tcp")]
    transport: TransportKind,
    /// QUIC: the gateway's certificate (PEM), trusted for the name `localhost`.
    #[arg(long)]
    ca: Option<String>,
    /// Echo unreliably (QUIC datagrams both ways; on other transports the
    /// stream), resending a request not answered within this many ms, as a
    /// game client does: latency is counted from the first send. 0: reliable
    /// echoes on the stream.
    #[arg(long, default_value_t = 0)]
    unreliable_resend_ms: u64,
}

impl Args {
    /// The source address of client `i`, if clients bind one.
    fn source(&self, i: usize) -> Option<std::net::IpAddr> {
        (self.harness_sources > 0)
            .then(|| portcullis_harness::routed_v4(((self.first + i) % self.harness_sources as usize) as u32).into())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Closed-loop echo through the game server.
    Echo,
    /// Closed-loop echo of framed envelopes, no session (through a proxy).
    RawEcho,
    /// Closed-loop UDP echo.
    UdpEcho,
    /// A TCP and UDP byte-echo server.
    ServeEcho,
    /// Live demo of players chatting and playing.
    Demo,
    /// Idle sessions: memory per session.
    Idle,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.depth == 0 || args.duration == 0 || args.workers == 0 {
        bail!("--clients, --depth, --duration and --workers must be at least 1");
    }
    if args.scenario == Scenario::Idle {
        return match (args.gateway, args.gateway_pid) {
            (Some(addr), Some(pid)) => idle_sockets(&args, addr, pid),
            (None, _) => idle_in_memory(&args),
            (Some(_), None) => bail!("--scenario idle with --gateway needs --gateway-pid to measure"),
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        if args.scenario == Scenario::ServeEcho {
            return serve_echo(args.listen).await;
        }
        let (addr, _local) = match args.gateway {
            Some(addr) => (addr, None),
            None => {
                let local = start_local(&args.secret, args.workers).await?;
                (local.0.addrs[0], Some(local))
            }
        };
        match args.scenario {
            Scenario::Echo => echo(&args, addr).await,
            Scenario::RawEcho => raw_echo(&args, addr).await,
            Scenario::UdpEcho => udp_echo(&args, addr).await,
            Scenario::Demo => demo(&args, addr).await,
            Scenario::Idle | Scenario::ServeEcho => unreachable!("handled above"),
        }
    })
}

/// Starts a sample game server and a gateway worker on loopback.
async fn start_local(secret: &str, workers: usize) -> anyhow::Result<(RunningGateway, SocketAddr)> {
    let game = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let game_addr = game.local_addr()?;
    tokio::spawn(portcullis_backend_sdk::serve(game, SampleGame::default()));
    let text = format!(
        "[gateway]\nworkers = {workers}\nmax_outbound_bytes = 67108864\nheartbeat_timeout_ms = 600000\n\
         [limits]\nsession_rate = 1000000\nsession_burst = 1000000\nuser_rate = 1000000\nuser_burst = 1000000\n\
         max_connections_per_ip = 1000000\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[auth]\nkind = \"token\"\n\
         secret = \"{secret}\"\n[[services]]\nname = \"game\"\nservers = [\"{game_addr}\"]\n\
         [[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n"
    );
    let config = Config::parse(&text, "portcullis-load")?;
    let gateway = tokio::task::spawn_blocking(move || RunningGateway::start(&config)).await??;
    eprintln!("in-process gateway ({workers} worker(s)) on {} → sample game server on {game_addr}", gateway.addrs[0]);
    Ok((gateway, game_addr))
}

/// Connects and logs in `n` clients, retrying while the gateway's game-server
/// link comes up.
async fn connect_all(
    args: &Args,
    addr: SocketAddr,
    prefix: &str,
) -> anyhow::Result<Vec<(Client, tokio::sync::mpsc::Receiver<Event>)>> {
    let mut clients = Vec::with_capacity(args.clients);
    let tls = args.ca.as_deref().map(|ca| Tls::from_pem_file(ca, "localhost")).transpose()?;
    for i in 0..args.clients {
        let connector = match args.source(i) {
            Some(source) => connector_from(source, args.transport, tls.clone()),
            None => portcullis_client::connector_tls(args.transport, Arc::new(DirectDialer), tls.clone()),
        };
        let connected = Client::connect_via(addr, Codec::Protobuf, Duration::from_secs(10), connector).await;
        let (c, events) = connected.with_context(|| format!("connecting client {i} to {addr}"))?;
        c.set_encryption(if args.encrypt { Encryption::Required } else { Encryption::Off });
        if (i + 1) % 2_000 == 0 {
            eprintln!("  {} clients logged in", i + 1);
        }
        c.login(&token(&args.secret, &format!("{prefix}{i}"))).await.with_context(|| format!("login of client {i}"))?;
        clients.push((c, events));
    }
    wait_for_game_server(&clients[0].0).await.context("the gateway cannot reach a game server")?;
    Ok(clients)
}

async fn echo(args: &Args, addr: SocketAddr) -> anyhow::Result<()> {
    eprintln!(
        "echo: {} clients × depth {}, {}-byte payload, {} s warm-up + {} s measured, gateway {addr}",
        args.clients, args.depth, args.payload, args.warmup, args.duration
    );
    let clients = connect_all(args, addr, "load-").await?;
    let payload = vec![0x5a; args.payload];
    let mut loops = Vec::new();
    for (c, _events) in &clients {
        for _ in 0..args.depth {
            let (c, payload) = (c.clone(), payload.clone());
            let resend = Duration::from_millis(args.unreliable_resend_ms);
            loops.push(move || {
                let (c, payload) = (c.clone(), payload.clone());
                async move {
                    if resend.is_zero() {
                        return matches!(c.call(ECHO, &payload).await, Ok(back) if back == payload);
                    }
                    // Up to 50 tries: a gateway that answers none is a failure.
                    for _ in 0..50 {
                        match c.call_unreliable(ECHO, &payload, resend).await {
                            Ok(back) => return back == payload,
                            Err(portcullis_client::ClientError::Timeout(_)) => continue,
                            Err(_) => return false,
                        }
                    }
                    false
                }
            });
        }
    }
    let label = format!(
        "echo {} clients depth {} payload {} B{}{}{}",
        args.clients,
        args.depth,
        args.payload,
        if args.encrypt { " encrypted" } else { "" },
        if args.unreliable_resend_ms > 0 {
            format!(" unreliable resend {} ms", args.unreliable_resend_ms)
        } else {
            String::new()
        },
        if args.gateway.is_none() { format!(" workers {}", args.workers) } else { String::new() }
    );
    no_failures(closed_loop(args, &label, loops).await?)
}

/// Closed-loop echo of framed ECHO envelopes, one TCP connection per
/// client, no login: what a byte-echo server behind a TCP proxy answers.
async fn raw_echo(args: &Args, addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    eprintln!("raw-echo: {} connections, {}-byte payload, via {addr}", args.clients, args.payload);
    let mut frame = Vec::new();
    let payload = vec![0x5a; args.payload];
    Codec::Protobuf.encode(&Envelope::new(ECHO, 1, 0, &payload), &mut frame);
    let mut loops = Vec::new();
    for i in 0..args.clients {
        let stream = match args.source(i) {
            Some(source) => connect_from(bound_socket(source)?, addr).await,
            None => tokio::net::TcpStream::connect(addr).await,
        }
        .with_context(|| format!("connecting {i} to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream = Arc::new(tokio::sync::Mutex::new(stream));
        let frame = Arc::new(frame.clone());
        loops.push(move || {
            let (stream, frame) = (stream.clone(), frame.clone());
            async move {
                let mut s = stream.lock().await;
                let mut back = vec![0u8; frame.len()];
                s.write_all(&frame).await.is_ok() && s.read_exact(&mut back).await.is_ok() && back == *frame
            }
        });
    }
    no_failures(
        closed_loop(args, &format!("raw-echo {} connections payload {} B", args.clients, args.payload), loops).await?,
    )
}

/// Closed-loop UDP echo, one socket per client; a datagram not back within
/// a second counts as an error.
async fn udp_echo(args: &Args, addr: SocketAddr) -> anyhow::Result<()> {
    eprintln!("udp-echo: {} sockets, {}-byte datagrams, to {addr}", args.clients, args.payload);
    let mut loops = Vec::new();
    for _ in 0..args.clients {
        let socket = tokio::net::UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
        socket.connect(addr).await?;
        let socket = Arc::new(socket);
        let payload = Arc::new(vec![0x5a; args.payload]);
        loops.push(move || {
            let (socket, payload) = (socket.clone(), payload.clone());
            async move {
                let mut back = vec![0u8; payload.len() + 1];
                if socket.send(&payload).await.is_err() {
                    return false;
                }
                match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut back)).await {
                    Ok(Ok(n)) => back[..n] == payload[..],
                    _ => false,
                }
            }
        });
    }
    // UDP may lose datagrams: they are reported, not fatal.
    closed_loop(args, &format!("udp-echo {} sockets payload {} B", args.clients, args.payload), loops).await.map(drop)
}

/// A byte-echo server on `addr`, TCP and UDP, until killed.
async fn serve_echo(addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding TCP {addr}"))?;
    let udp = tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("binding UDP {addr}"))?;
    eprintln!("echo server on {addr} (TCP and UDP)");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    loop {
        let (mut s, _) = tcp.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Runs every round-trip loop for warm-up + duration and prints the rate
/// and latency of the measured part. Each call of a loop is one round trip
/// and says whether the right answer came back; returns how many did not.
async fn closed_loop<L, F>(args: &Args, label: &str, loops: Vec<L>) -> anyhow::Result<u64>
where
    L: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let n_loops = loops.len();
    for round_trip in loops {
        let (measuring, stop, errors) = (measuring.clone(), stop.clone(), errors.clone());
        // Open loop: this loop's messages are due every `interval`, its
        // first at a phase of its own.
        let interval = (args.rate > 0).then(|| Duration::from_secs_f64(n_loops as f64 / args.rate as f64));
        let phase = interval.map(|i| i.mul_f64(tasks.len() as f64 / n_loops as f64));
        tasks.push(tokio::spawn(async move {
            let mut h = latency_histogram();
            let mut pacer = interval.map(|i| Pacer::new(Instant::now() + phase.unwrap_or_default(), i));
            while !stop.load(Ordering::Relaxed) {
                let t = match &mut pacer {
                    Some(pacer) => pacer.next().await,
                    None => Instant::now(),
                };
                if round_trip().await {
                    if measuring.load(Ordering::Relaxed) {
                        h.saturating_record(t.elapsed().as_micros() as u64);
                    }
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            h
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu_before = args.cpu_pid.map(procfs::cpu_seconds).transpose()?;
    let start = Instant::now();
    for s in 1..=args.duration {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        eprint!(".");
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu = match (args.cpu_pid, cpu_before) {
        (Some(pid), Some((p0, m0))) => {
            let (p1, m1) = procfs::cpu_seconds(pid)?;
            format!("  cpu {:.2} machine {:.2}", p1 - p0, m1 - m0)
        }
        _ => String::new(),
    };
    stop.store(true, Ordering::Relaxed);
    let mut total = latency_histogram();
    for t in tasks {
        total.add(t.await?)?;
    }
    eprintln!();
    let errors = errors.load(Ordering::Relaxed);
    let mode = if args.rate > 0 { format!(" open loop at {} msg/s", args.rate) } else { String::new() };
    println!(
        "{label}{mode}: {:.0} msg/s  p50 {} µs  p99 {} µs  p999 {} µs  max {} µs  ({} round trips, {errors} failed){cpu}",
        total.len() as f64 / elapsed.as_secs_f64(),
        total.value_at_quantile(0.50),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        total.max(),
        total.len(),
    );
    Ok(errors)
}

/// Over TCP every round trip must succeed.
fn no_failures(failed: u64) -> anyhow::Result<()> {
    if failed > 0 {
        bail!("{failed} round trips failed");
    }
    Ok(())
}

#[derive(Default)]
struct DemoCounts {
    chat_sent: AtomicU64,
    group_sent: AtomicU64,
    p2p_sent: AtomicU64,
    echo_ok: AtomicU64,
    counter_adds: AtomicU64,
    received: AtomicU64,
    failures: AtomicU64,
}

async fn demo(args: &Args, addr: SocketAddr) -> anyhow::Result<()> {
    const ROOMS: [&str; 3] = ["lobby", "arena", "market"];
    let players = args.clients.min(50);
    println!("demo: {players} players in rooms {ROOMS:?} for {} s through gateway {addr}", args.duration);
    let args = Args { clients: players, ..args.clone() };
    let clients = connect_all(&args, addr, "player-").await?;
    let counts = Arc::new(DemoCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (c, mut events)) in clients.into_iter().enumerate() {
        let room = ROOMS[i % ROOMS.len()];
        c.join(&room_group(room)).await?;
        let (seen, counts, stop) = (counts.clone(), counts.clone(), stop.clone());
        let show = i < 3; // print what the first few players see
        let me = format!("player-{i}");
        // An operator may kick a player (the demo does): it stops playing.
        let kicked = Arc::new(AtomicBool::new(false));
        let was_kicked = kicked.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                seen.received.fetch_add(1, Ordering::Relaxed);
                if let Event::Kicked { reason, .. } = &e {
                    println!("  {me} was kicked: {reason}");
                    was_kicked.store(true, Ordering::Relaxed);
                    return;
                }
                if !show {
                    continue;
                }
                match e {
                    Event::Push { cmd: CHAT_MESSAGE, payload } => {
                        println!("  {me} sees [{room}] {}", String::from_utf8_lossy(&payload))
                    }
                    Event::Delivery { from_user_id, group, payload, .. } => {
                        let to = if group.is_empty() { "privately".to_string() } else { format!("in {group}") };
                        println!("  {me} gets from {from_user_id} {to}: {}", String::from_utf8_lossy(&payload))
                    }
                    Event::Push { cmd, payload } if cmd != CHAT_MESSAGE => {
                        println!("  {me} gets a notice ({cmd}): {}", String::from_utf8_lossy(&payload))
                    }
                    Event::Closed => return,
                    other => println!("  {me}: {other:?}"),
                }
            }
        }));
        let players = args.clients;
        tasks.push(tokio::spawn(async move {
            let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            while !stop.load(Ordering::Relaxed) && !kicked.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(400 + next() % 800)).await;
                let ok = match next() % 5 {
                    0 => c
                        .call_keyed(CHAT_SAY, room.as_bytes(), format!("gg from room {room}").as_bytes())
                        .await
                        .map(|_| &counts.chat_sent),
                    1 => c
                        .send_to_group(&room_group(room), b"anyone up for a match?", false)
                        .await
                        .map(|_| &counts.group_sent),
                    2 => {
                        let other = (i + 1 + next() as usize % players.saturating_sub(1).max(1)) % players;
                        let to = format!("player-{other}");
                        c.send_to_user(&to, b"psst, trade?").await.map(|_| &counts.p2p_sent)
                    }
                    3 => c.call(ECHO, b"ping").await.map(|_| &counts.echo_ok),
                    _ => c.call(COUNTER_ADD, b"1").await.map(|_| &counts.counter_adds),
                };
                match ok {
                    Ok(counter) => counter.fetch_add(1, Ordering::Relaxed),
                    Err(_)
                        if {
                            // The KICK may be read just after the close failed a request.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            kicked.load(Ordering::Relaxed)
                        } =>
                    {
                        break
                    }
                    Err(e) => {
                        eprintln!("  player-{i}: request failed: {e}");
                        counts.failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            drop(c);
        }));
    }
    let start = Instant::now();
    for s in 1..=args.duration {
        tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
        let c = &counts;
        println!(
            "[{s:>3}s] sent: chat {} group {} p2p {} echo {} counter {} | received {} | failures {}",
            c.chat_sent.load(Ordering::Relaxed),
            c.group_sent.load(Ordering::Relaxed),
            c.p2p_sent.load(Ordering::Relaxed),
            c.echo_ok.load(Ordering::Relaxed),
            c.counter_adds.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
            c.failures.load(Ordering::Relaxed),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let failures = counts.failures.load(Ordering::Relaxed);
    if failures > 0 {
        bail!("{failures} requests failed during the demo");
    }
    println!("demo finished: every request was answered");
    Ok(())
}

fn login_frame(secret: &str, user: &str) -> Vec<u8> {
    use portcullis_proto::pb::client::LoginRequest;
    use portcullis_proto::{cmd, Codec, Envelope};
    let login = Codec::Protobuf
        .payload_form()
        .encode_to_vec(&LoginRequest { token: token(secret, user), ..Default::default() });
    let mut frame = Vec::new();
    Codec::Protobuf.encode(&Envelope::new(cmd::LOGIN, 1, 0, &login), &mut frame);
    frame
}

fn report_idle(n: usize, workers: &str, before: u64, after: u64) {
    println!(
        "idle {n} sessions, {workers}: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per idle session",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / n as f64
    );
}

/// Idle sessions logged in to gateway cores in this process through the
/// sans-IO API, spread over `--workers` cores as SO_REUSEPORT would.
fn idle_in_memory(args: &Args) -> anyhow::Result<()> {
    use portcullis_core::shard::Shared;
    use portcullis_core::Gateway;
    let text = format!(
        "[gateway]\nworkers = {}\n[limits]\nmax_connections_per_ip = 100000000\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [auth]\nkind = \"token\"\nsecret = \"{}\"\n",
        args.workers, args.secret
    );
    let config = Config::parse(&text, "portcullis-load idle")?;
    let shared = Shared::new(args.workers, [7; 32]);
    let now = Instant::now();
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let before = procfs::rss_bytes("self")?;
    let mut cores: Vec<Gateway> = (0..args.workers)
        .map(|w| {
            let auth = portcullis_core::auth::from_config(&config).expect("token auth");
            Gateway::new(&config, w, shared.clone(), auth, now, unix)
        })
        .collect();
    for i in 0..args.clients {
        let core = &mut cores[i % args.workers];
        let conn = portcullis_core::ConnId::new(portcullis_core::Transport::KernelTcp, i as u64);
        let peer = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40_000));
        core.handle_connect(now, conn, 0, peer);
        core.handle_data(now, conn, &login_frame(&args.secret, &format!("idle-{i}")));
        while let Some(out) = core.poll_output() {
            if let portcullis_core::Output::Transmit(c) = out {
                let n = core.outbound(c).len();
                core.consume(c, n);
            }
        }
    }
    let logged_in: u64 = cores.iter().map(|c| c.stats().logins).sum();
    anyhow::ensure!(logged_in == args.clients as u64, "only {logged_in} of {} logins succeeded", args.clients);
    let after = procfs::rss_bytes("self")?;
    report_idle(args.clients, &format!("{} in-memory core(s)", args.workers), before, after);
    drop(cores);
    Ok(())
}

/// Idle bare-socket sessions logged in to a gateway process.
fn idle_sockets(args: &Args, addr: SocketAddr, pid: u32) -> anyhow::Result<()> {
    use portcullis_proto::{cmd, Codec};
    use std::io::{Read, Write};
    let n = args.clients;
    let pid = pid.to_string();
    let before = procfs::rss_bytes(&pid)?;
    let mut socks = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        // 127.0.0.x: a new source address every 10 000 clients (numbered
        // from --first, so that drivers run one after another do not meet
        // each other's closed ports), so the ephemeral ports of one address
        // do not run out (or the harness's).
        let source = SocketAddr::new(
            args.source(i)
                .unwrap_or(std::net::Ipv4Addr::new(127, 0, 0, 1 + ((args.first + i) / 10_000 % 250) as u8).into()),
            0,
        );
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&source.into())?;
        socket.connect(&addr.into()).with_context(|| format!("connection {i} from {source} (open-files limit?)"))?;
        let mut stream: std::net::TcpStream = socket.into();
        stream.write_all(&login_frame(&args.secret, &format!("idle-{}", args.first + i)))?;
        socks.push(stream);
        if (i + 1) % 5_000 == 0 {
            eprintln!("  {} sessions connected ({:.1} s)", i + 1, started.elapsed().as_secs_f64());
        }
    }
    // Every login must be answered before measuring.
    let mut buf = [0u8; 4096];
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = 0;
        while got < 4 || got < 4 + u32::from_be_bytes(buf[..4].try_into()?) as usize {
            let k = s.read(&mut buf[got..]).with_context(|| format!("login answer of session {i}"))?;
            anyhow::ensure!(k > 0, "session {i} was closed instead of logged in");
            got += k;
        }
        let len = u32::from_be_bytes(buf[..4].try_into()?) as usize;
        let env = Codec::Protobuf
            .decode(&buf[4..4 + len])
            .map_err(|e| anyhow::anyhow!("login answer of session {i}: {e}"))?;
        anyhow::ensure!(env.cmd == cmd::LOGIN, "session {i} got command {} instead of a LOGIN answer", env.cmd);
    }
    if args.hold > 0 {
        println!("ready {n}");
        std::io::Write::flush(&mut std::io::stdout())?;
        std::thread::sleep(Duration::from_secs(args.hold));
        return Ok(());
    }
    std::thread::sleep(Duration::from_secs(1));
    report_idle(n, &format!("gateway process {pid}"), before, procfs::rss_bytes(&pid)?);
    Ok(())
}
