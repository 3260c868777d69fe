//! `portcullis-attack`: replays attacks against a running gateway on
//! loopback and prints, for an idle baseline and for each attack, what the
//! gateway process holds and what its legitimate players felt, so that runs
//! can be compared:
//!
//! - the gateway's resident memory (`VmRSS` of `/proc/PID/status`) at the
//!   start of the phase and its peak during it, and the peak over the
//!   baseline's;
//! - the gateway's open file descriptors (entries of `/proc/PID/fd`), peak;
//! - the CPU seconds the gateway and the whole machine spent in the phase
//!   (on one machine, the attackers' CPU is the gateway's and the
//!   players' too);
//! - the legitimate players' messages sent and lost, their p99 latencies,
//!   and how far those are from the baseline's.
//!
//! `--players` (20) legitimate players, logged in from 127.0.0.1, play
//! through every phase: each sends ECHO round trips through the sample game
//! server (`--echo-rate` per second, latency of the round trip) and
//! SEND_TO_USER messages to the other players (`--p2p-rate` per second,
//! latency from send to delivery). Every message is counted when sent and
//! when received, so losses are exact: an ECHO is lost unless its answer
//! came back intact, a P2P message unless its recipient got it. Messages
//! are sent open loop, and a late one counts from when it was due; the
//! notes say when the players could not even send most of the messages due.
//! A player whose connection drops resumes its session (`resumed`), as the
//! client SDK is made to.
//!
//! The phases (`--phase-secs` each, default 12; `--quick`: 3 s and a tenth
//! of the connections):
//!
//! 1. `baseline` — no attack;
//! 2. `prelogin-memory` — 200 connections that never log in and never read
//!    (4 KiB receive buffers), each sending business commands as fast as it
//!    can, every one of which the gateway answers with an ERROR;
//! 3. `trickle` — 2 000 connections that never log in, sending one byte of
//!    a frame every 5 s;
//! 4. `partial-frames` — 200 connections that send the 4-byte length prefix
//!    of a 64 KiB frame and all of the frame but its last byte, then hold;
//! 5. `fd-exhaustion` — as many connections as can be opened (up to 20 000)
//!    from 127.0.0.2–127.0.0.4, never logging in, held by child processes
//!    of this binary (`--child`, at most 10 000 each: one process may open
//!    20 000 files);
//! 6. `nat-junk` — 600 connections from the players' own address
//!    (127.0.0.1) that never log in and send ACK frames as fast as they can;
//! 7. `recipient-spam` — one user logged in on 4 devices sends SEND_TO_USERS
//!    naming every legitimate player, 8 requests in flight per device.
//!
//! Attackers of phases 2–4 and 7 come from addresses of their own,
//! 127.N.x.y for phase N, at most `--per-source` (50) connections per
//! address: below the gateway's per-address limits, so these phases test
//! its gateway-wide bounds, as attackers with many addresses would. An
//! attacker connection that the gateway closes is opened again 200 ms
//! later, until the phase ends. Attackers that read report the ERROR the
//! gateway sent last before closing them (LOGIN_TIMEOUT, THROTTLED, …).
//!
//! After each attack the driver waits (at most `--settle-secs`) until the
//! gateway's descriptors are back within 16 of where they were before the
//! first phase, and says so if they are not.
//!
//! Output (stdout): one row per phase, then notes and the targets met.
//! Targets: under every pre-login attack (2–6) the gateway's RSS stays
//! within 64 MiB of the baseline's; under every attack the legitimate
//! players lose nothing and their p99 latencies stay within 2× the
//! baseline's. Progress goes to stderr.
//!
//! Every loop ends by itself: attackers at the end of their phase, waits
//! after a bounded time. Traffic goes to the `--gateway` address only, which
//! must be a loopback address.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use portcullis_benches::players::{
    bound_socket, connect_from, connector_from, device_token, latency_histogram, token, wait_for_game_server, Pacer,
};
use portcullis_benches::procfs;
use portcullis_client::{Client, ClientError, ErrorCode, Event, TransportKind};
use portcullis_proto::pb::client::Error as ErrorMsg;
use portcullis_proto::{cmd, Codec, Envelope};
use portcullis_sample_game_server::ECHO;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at};

/// Replays attacks against a running gateway (loopback) and reports its
/// memory and descriptors and its legitimate players' latency and losses.
#[derive(Parser, Clone)]
#[command(version)]
struct Args {
    /// The gateway's protobuf listener (a loopback address).
    #[arg(long, default_value = "127.0.0.1:7000")]
    gateway: SocketAddr,
    /// Process id of the gateway (its /proc entries are read).
    #[arg(long, required_unless_present = "child")]
    gateway_pid: Option<u32>,
    /// Token secret of the gateway.
    #[arg(long, default_value = "portcullis-demo-secret-change-me")]
    secret: String,
    /// Seconds each phase lasts [default: 12; 3 with --quick].
    #[arg(long)]
    phase_secs: Option<u64>,
    /// Short phases (3 s) and a tenth of the attack connections.
    #[arg(long)]
    quick: bool,
    /// The phases to run, in order (the baseline always runs first).
    #[arg(long, value_enum, value_delimiter = ',')]
    phases: Vec<Phase>,
    /// Legitimate players.
    #[arg(long, default_value_t = 20)]
    players: usize,
    /// ECHO round trips per second per player.
    #[arg(long, default_value_t = 50)]
    echo_rate: u32,
    /// SEND_TO_USER messages per second per player.
    #[arg(long, default_value_t = 10)]
    p2p_rate: u32,
    /// Attack connections per source address (phases 2-4).
    #[arg(long, default_value_t = 50)]
    per_source: usize,
    /// Run the legitimate players on this CPU only (put the gateway there
    /// too, e.g. with taskset), so that what the attackers cost this
    /// machine is not charged to the gateway.
    #[arg(long)]
    players_cpu: Option<usize>,
    /// Run the attackers (and their kernel work) on this CPU only.
    #[arg(long)]
    attack_cpu: Option<usize>,
    /// Longest wait for the gateway's descriptors to come back after an
    /// attack [default: 30; 10 with --quick].
    #[arg(long)]
    settle_secs: Option<u64>,
    /// Child mode of the fd-exhaustion phase: open connections and hold them.
    #[arg(long, hide = true)]
    child: bool,
    /// Child mode: connections to open.
    #[arg(long, hide = true, default_value_t = 0)]
    child_count: usize,
    /// Child mode: number of the first connection (source address rotation).
    #[arg(long, hide = true, default_value_t = 0)]
    child_first: usize,
}

/// The phases, in their default order.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Phase {
    /// No attack.
    Baseline,
    /// Connections that never log in and never read, provoking ERRORs.
    PreloginMemory,
    /// Connections that send one byte every 5 s and never log in.
    Trickle,
    /// Connections that send most of a 64 KiB frame and hold.
    PartialFrames,
    /// As many connections as can be opened, never logged in.
    FdExhaustion,
    /// ACK floods before login from the players' own address.
    NatJunk,
    /// One user on 4 devices spamming the players with SEND_TO_USERS.
    RecipientSpam,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Baseline,
        Phase::PreloginMemory,
        Phase::Trickle,
        Phase::PartialFrames,
        Phase::FdExhaustion,
        Phase::NatJunk,
        Phase::RecipientSpam,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::PreloginMemory => "prelogin-memory",
            Phase::Trickle => "trickle",
            Phase::PartialFrames => "partial-frames",
            Phase::FdExhaustion => "fd-exhaustion",
            Phase::NatJunk => "nat-junk",
            Phase::RecipientSpam => "recipient-spam",
        }
    }

    /// 1-7, as in the module documentation; also the second byte of the
    /// phase's attacker addresses.
    fn number(self) -> u8 {
        Phase::ALL.iter().position(|&p| p == self).map_or(0, |i| i as u8 + 1)
    }

    /// Whether the attack is made of connections that never log in.
    fn prelogin(self) -> bool {
        matches!(
            self,
            Phase::PreloginMemory | Phase::Trickle | Phase::PartialFrames | Phase::FdExhaustion | Phase::NatJunk
        )
    }
}

/// Targets: RSS over the baseline's under a pre-login attack, and p99 over
/// the baseline's under any attack.
const MAX_RSS_GROWTH: u64 = 64 << 20;
const MAX_P99_FACTOR: f64 = 2.0;
/// Descriptors over the starting count that still count as "back".
const FDS_SLACK: usize = 16;
/// An attacker connection closed by the gateway is opened again after this.
const REOPEN_AFTER: Duration = Duration::from_millis(200);
/// Connect timeout of attacker connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The legitimate players' request timeout (a request not answered by
/// then is lost).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per fd-exhaustion child process.
const PER_CHILD: usize = 10_000;
/// Source addresses of the fd-exhaustion phase: 127.0.0.2 and on.
const FD_SOURCES: usize = 3;
/// Trickling attackers send a byte this often.
const TRICKLE_EVERY: Duration = Duration::from_secs(5);
/// Declared length of the partial frames: 64 KiB less the length prefix,
/// under the default frame limit however it is counted.
const PARTIAL_FRAME: usize = 64 * 1024 - 4;
/// User id of the recipient-spam attacker.
const SPAMMER: &str = "spammer";
const SPAM_DEVICES: usize = 4;
const SPAM_IN_FLIGHT: usize = 8;

fn main() {
    let args = Args::parse();
    let result = if args.child { child(&args) } else { run(&args) };
    if let Err(e) = result {
        eprintln!("portcullis-attack: {e:#}");
        std::process::exit(1);
    }
}

/// What one run is made of, from the arguments.
struct Plan {
    phases: Vec<Phase>,
    phase: Duration,
    settle: Duration,
    /// Share of the attack connection counts (1 or 0.1).
    scale: f64,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let chosen = if args.phases.is_empty() { &Phase::ALL[..] } else { &args.phases[..] };
        let mut phases = vec![Phase::Baseline];
        for &p in chosen {
            if !phases.contains(&p) {
                phases.push(p);
            }
        }
        Plan {
            phases,
            phase: Duration::from_secs(args.phase_secs.unwrap_or(if args.quick { 3 } else { 12 })),
            settle: Duration::from_secs(args.settle_secs.unwrap_or(if args.quick { 10 } else { 30 })),
            scale: if args.quick { 0.1 } else { 1.0 },
        }
    }

    /// `n` attack connections, scaled.
    fn count(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.gateway.ip().is_loopback(),
        "--gateway {} is not a loopback address: this driver attacks loopback only",
        args.gateway
    );
    ensure!(args.players >= 2, "--players must be at least 2 (they message each other)");
    ensure!(
        args.echo_rate > 0 && args.p2p_rate > 0 && args.per_source > 0,
        "rates and --per-source must be at least 1"
    );
    let pid = args.gateway_pid.context("--gateway-pid is required")?;
    let plan = Plan::new(args);
    ensure!(!plan.phase.is_zero(), "--phase-secs must be at least 1");
    procfs::rss_bytes(pid)
        .and_then(|_| procfs::open_fds(pid))
        .with_context(|| format!("cannot read the gateway process {pid} (--gateway-pid) in /proc"))?;
    std::net::TcpStream::connect_timeout(&args.gateway, Duration::from_secs(2)).with_context(|| {
        format!("cannot reach the gateway at {} (is portcullis-dataplane running there?)", args.gateway)
    })?;
    let files = procfs::raise_open_files_limit().context("raising the open-files limit")?;

    let legit_rt = runtime("legit", args.players_cpu)?;
    let attack_rt = runtime("attack", args.attack_cpu)?;
    // The attack futures run on this thread (block_on), and the
    // fd-exhaustion children inherit its CPUs.
    if let Some(cpu) = args.attack_cpu {
        pin_to(cpu).context("pinning the attackers")?;
    }
    eprintln!("logging in {} players from 127.0.0.1 to {} …", args.players, args.gateway);
    let players = legit_rt.block_on(Players::connect(args, plan.phases.len()))?;
    let fds0 = procfs::open_fds(pid).context("the gateway's descriptors")?;
    println!(
        "portcullis-attack: gateway {} (pid {pid}), {} players ({} ECHO/s + {} P2P/s each), {} phase(s) of {} s{}",
        args.gateway,
        args.players,
        args.echo_rate,
        args.p2p_rate,
        plan.phases.len(),
        plan.phase.as_secs(),
        if args.quick { ", quick: a tenth of the connections" } else { "" },
    );
    println!("{}", Row::HEADER);

    let mut rows: Vec<Row> = Vec::new();
    let mut notes = Vec::new();
    for (idx, &phase) in plan.phases.iter().enumerate() {
        if idx > 0 {
            notes.extend(settle(pid, fds0, plan.settle, plan.phases[idx - 1])?);
        }
        eprintln!("phase {}/{}: {} ({} s)", idx + 1, plan.phases.len(), phase.name(), plan.phase.as_secs());
        let rss_start = procfs::rss_bytes(pid).with_context(|| format!("the gateway (pid {pid}) is gone"))?;
        let usage_start = Usage::now(pid);
        let sampler = Sampler::start(pid);
        let legit = legit_rt.block_on(async { players.start(idx) });
        let deadline = Instant::now() + plan.phase;
        let attack = match phase {
            Phase::FdExhaustion => fd_exhaustion(args, plan.count(20_000), files, deadline),
            _ => attack_rt.block_on(attack(args, &plan, phase, &players.names, deadline)),
        };
        let usage = Usage::now(pid).since(&usage_start);
        let outcome = legit_rt.block_on(players.finish(legit));
        let (rss_peak, fds_peak) = sampler
            .stop()
            .with_context(|| format!("the gateway (pid {pid}) is gone: it ended during the {} phase", phase.name()))?;
        let row = Row { phase, rss_start, rss_peak: rss_peak.max(rss_start), fds_peak, usage, legit: outcome, attack };
        println!("{}", row.line(rows.first()));
        notes.extend(row.notes());
        rows.push(row);
    }
    if plan.phases.len() > 1 {
        notes.extend(settle(pid, fds0, plan.settle, plan.phases[plan.phases.len() - 1])?);
    }
    legit_rt.block_on(players.logout());
    legit_rt.shutdown_timeout(Duration::from_secs(1));
    attack_rt.shutdown_timeout(Duration::from_secs(1));

    if !notes.is_empty() {
        println!("notes:");
        for n in &notes {
            println!("  {n}");
        }
    }
    let (met, missed): (Vec<&Row>, Vec<&Row>) = rows.iter().skip(1).partition(|r| r.failures(rows.first()).is_empty());
    println!(
        "targets: pre-login attacks RSS <= baseline + {} MiB; every attack: no legit loss, p99 <= {MAX_P99_FACTOR}x baseline",
        MAX_RSS_GROWTH >> 20
    );
    println!(
        "  met: {}\n  missed: {}",
        list(met.iter().map(|r| r.phase.name().to_string())),
        list(missed.iter().map(|r| format!("{} ({})", r.phase.name(), r.failures(rows.first()).join("+"))))
    );
    Ok(())
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A tokio runtime of one worker thread, on `cpu` only if given: the
/// legitimate players and the attackers each get their own, so that neither
/// starves the other inside this process.
fn runtime(name: &str, cpu: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).thread_name(name).enable_all();
    if let Some(cpu) = cpu {
        builder.on_thread_start(move || {
            if let Err(e) = pin_to(cpu) {
                eprintln!("cannot pin a thread to CPU {cpu}: {e}");
            }
        });
    }
    Ok(builder.build()?)
}

/// Keeps the calling thread (and what it forks) on `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // for any cpu below CPU_SETSIZE, which is checked first.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!("no CPU {cpu}")));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits (at most `bound`) until the gateway's descriptors are back within
/// [`FDS_SLACK`] of `fds0`; returns a note if they are not.
fn settle(pid: u32, fds0: usize, bound: Duration, after: Phase) -> anyhow::Result<Option<String>> {
    let start = Instant::now();
    loop {
        let fds = procfs::open_fds(pid).with_context(|| format!("the gateway (pid {pid}) is gone"))?;
        if fds <= fds0 + FDS_SLACK {
            eprintln!("  gateway descriptors back to {fds} in {:.1} s", start.elapsed().as_secs_f64());
            return Ok(None);
        }
        if start.elapsed() >= bound {
            return Ok(Some(format!(
                "after {}: the gateway still had {fds} descriptors {} s later (started with {fds0})",
                after.name(),
                bound.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Samples the gateway's RSS and descriptors every 200 ms on a thread of
/// its own; keeps the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<(u64, usize)>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut rss, mut fds) = (0, 0);
            loop {
                rss = rss.max(procfs::rss_bytes(pid)?);
                fds = fds.max(procfs::open_fds(pid)?);
                if halt.load(Ordering::Relaxed) {
                    return Ok((rss, fds));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Sampler { stop, thread }
    }

    /// Peak RSS (bytes) and descriptors; an error if the gateway went away.
    fn stop(self) -> std::io::Result<(u64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| Err(std::io::Error::other("the sampler panicked")))
    }
}

/// CPU seconds of the gateway and of the whole machine: totals so far, or
/// over a phase. `None` where /proc would not say.
#[derive(Clone, Copy)]
struct Usage(Option<(f64, f64)>);

impl Usage {
    fn now(pid: u32) -> Usage {
        Usage(procfs::cpu_seconds(pid).ok())
    }

    fn since(&self, start: &Usage) -> Usage {
        Usage(self.0.zip(start.0).map(|((p1, m1), (p0, m0))| (p1 - p0, m1 - m0)))
    }
}

/// One row of the report.
struct Row {
    phase: Phase,
    rss_start: u64,
    rss_peak: u64,
    fds_peak: usize,
    usage: Usage,
    legit: LegitOutcome,
    attack: String,
}

impl Row {
    const HEADER: &'static str = "phase            rss0_MiB  rss_MiB  d_rss_MiB  fds_peak  gw_cpu_s  all_cpu_s  legit_sent  legit_lost  resumed  echo_p99_us  p2p_p99_us  p99_x  targets          attack";

    fn mib(bytes: u64) -> f64 {
        bytes as f64 / f64::from(1 << 20)
    }

    /// The worse of the two p99 ratios to the baseline's.
    fn p99_factor(&self, base: &Row) -> f64 {
        let echo = self.legit.echo_p99 as f64 / base.legit.echo_p99.max(1) as f64;
        let p2p = self.legit.p2p_p99 as f64 / base.legit.p2p_p99.max(1) as f64;
        echo.max(p2p)
    }

    /// The targets this row missed (none for the baseline).
    fn failures(&self, base: Option<&Row>) -> Vec<&'static str> {
        let Some(base) = base.filter(|_| self.phase != Phase::Baseline) else { return Vec::new() };
        let mut f = Vec::new();
        if self.phase.prelogin() && self.rss_peak > base.rss_peak + MAX_RSS_GROWTH {
            f.push("rss");
        }
        if self.legit.lost() > 0 {
            f.push("loss");
        }
        if self.p99_factor(base) > MAX_P99_FACTOR {
            f.push("p99");
        }
        f
    }

    fn line(&self, base: Option<&Row>) -> String {
        let base_row = base.unwrap_or(self);
        let targets = if self.phase == Phase::Baseline {
            "-".to_string()
        } else {
            let f = self.failures(base);
            if f.is_empty() {
                "ok".into()
            } else {
                format!("missed:{}", f.join("+"))
            }
        };
        let (gw_cpu, all_cpu) = match self.usage.0 {
            Some((gw, all)) => (format!("{gw:.1}"), format!("{all:.1}")),
            None => ("-".into(), "-".into()),
        };
        format!(
            "{:<16} {:>8.1} {:>8.1} {:>10.1} {:>9} {:>9} {:>10} {:>11} {:>11} {:>8} {:>12} {:>11} {:>6.2}  {:<16} {}",
            self.phase.name(),
            Self::mib(self.rss_start),
            Self::mib(self.rss_peak),
            (self.rss_peak as f64 - base_row.rss_peak as f64) / f64::from(1 << 20),
            self.fds_peak,
            gw_cpu,
            all_cpu,
            self.legit.sent(),
            self.legit.lost(),
            self.legit.resumed,
            self.legit.echo_p99,
            self.legit.p2p_p99,
            self.p99_factor(base_row),
            targets,
            self.attack,
        )
    }

    fn notes(&self) -> Vec<String> {
        let l = &self.legit;
        let mut n = Vec::new();
        if l.lost() > 0 || !l.errors.is_empty() || l.sessions_lost > 0 {
            n.push(format!(
                "{}: legit lost {} of {} ECHO and {} of {} P2P; sessions lost {}; errors: {}",
                self.phase.name(),
                l.echo_sent - l.echo_ok,
                l.echo_sent,
                l.p2p_sent.saturating_sub(l.p2p_received),
                l.p2p_sent,
                l.sessions_lost,
                if l.errors.is_empty() { "none".into() } else { tally(&l.errors) }
            ));
        }
        if l.sent() < l.due * 9 / 10 {
            n.push(format!(
                "{}: the players could send only {} of the {} messages due (held up by the gateway)",
                self.phase.name(),
                l.sent(),
                l.due
            ));
        }
        if l.spam_received > 0 {
            n.push(format!("{}: the players received {} spam messages", self.phase.name(), l.spam_received));
        }
        n
    }
}

// ---------------------------------------------------------------------------
// The legitimate players.

/// What happened to the legitimate players' messages in one phase.
struct PhaseCounts {
    echo_sent: AtomicU64,
    echo_ok: AtomicU64,
    p2p_sent: AtomicU64,
    p2p_received: AtomicU64,
    spam_received: AtomicU64,
    resumed: AtomicU64,
    sessions_lost: AtomicU64,
    echo_latency: Mutex<Histogram<u64>>,
    p2p_latency: Mutex<Histogram<u64>>,
    /// Failures by kind ("echo THROTTLED", "p2p timeout", …).
    errors: Mutex<BTreeMap<String, u64>>,
}

impl PhaseCounts {
    fn new() -> PhaseCounts {
        PhaseCounts {
            echo_sent: AtomicU64::new(0),
            echo_ok: AtomicU64::new(0),
            p2p_sent: AtomicU64::new(0),
            p2p_received: AtomicU64::new(0),
            spam_received: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            sessions_lost: AtomicU64::new(0),
            echo_latency: Mutex::new(latency_histogram()),
            p2p_latency: Mutex::new(latency_histogram()),
            errors: Mutex::default(),
        }
    }

    fn error(&self, what: String) {
        *self.errors.lock().expect("errors lock").entry(what).or_default() += 1;
    }

    fn record(h: &Mutex<Histogram<u64>>, latency: Duration) {
        h.lock().expect("histogram lock").saturating_record(latency.as_micros() as u64);
    }
}

/// A phase's figures for the report.
struct LegitOutcome {
    /// Messages due at the players' rates while they played.
    due: u64,
    echo_sent: u64,
    echo_ok: u64,
    p2p_sent: u64,
    p2p_received: u64,
    spam_received: u64,
    resumed: u64,
    sessions_lost: u64,
    echo_p99: u64,
    p2p_p99: u64,
    errors: BTreeMap<String, u64>,
}

impl LegitOutcome {
    fn sent(&self) -> u64 {
        self.echo_sent + self.p2p_sent
    }

    fn lost(&self) -> u64 {
        (self.echo_sent - self.echo_ok) + self.p2p_sent.saturating_sub(self.p2p_received)
    }
}

/// What the players' event watchers share.
struct Shared {
    /// Per phase, in run order.
    counts: Vec<PhaseCounts>,
    /// Index of the phase running now.
    current: AtomicUsize,
    /// P2P payloads carry their send time as microseconds since this.
    epoch: Instant,
}

/// The legitimate players: logged in once, playing during each phase.
struct Players {
    clients: Vec<Client>,
    names: Arc<Vec<String>>,
    shared: Arc<Shared>,
    echo_rate: u32,
    p2p_rate: u32,
}

/// The players' traffic of one phase, running.
struct PhaseRun {
    idx: usize,
    started: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => code.as_str_name().to_string(),
        ClientError::Timeout(_) => "timeout".into(),
        ClientError::Closed => "connection closed".into(),
        ClientError::Io(_) => "io error".into(),
        ClientError::Decode(_) => "undecodable answer".into(),
        ClientError::NoSession => "no session".into(),
        ClientError::NotEncrypted => "not encrypted".into(),
        ClientError::Crypto(_) => "encryption".into(),
    }
}

/// `legit PHASE SEQ MICROS`: a P2P payload's phase and send time.
fn parse_p2p(payload: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.strip_prefix("legit ")?.split(' ');
    let phase = words.next()?.parse().ok()?;
    let _seq = words.next()?;
    Some((phase, words.next()?.parse().ok()?))
}

impl Players {
    /// Connects and logs in the players (`legit-0`, …) from 127.0.0.1, then
    /// checks that the gateway reaches the game server.
    async fn connect(args: &Args, phases: usize) -> anyhow::Result<Players> {
        let shared = Arc::new(Shared {
            counts: (0..phases).map(|_| PhaseCounts::new()).collect(),
            current: AtomicUsize::new(0),
            epoch: Instant::now(),
        });
        let names: Vec<String> = (0..args.players).map(|i| format!("legit-{i}")).collect();
        let mut clients = Vec::new();
        for name in &names {
            let connector = connector_from(Ipv4Addr::LOCALHOST.into(), TransportKind::Tcp);
            let connected = Client::connect_via(args.gateway, Codec::Protobuf, REQUEST_TIMEOUT, connector);
            let (client, events) = timeout(CONNECT_TIMEOUT, connected)
                .await
                .unwrap_or(Err(ClientError::Timeout(CONNECT_TIMEOUT)))
                .with_context(|| format!("connecting player {name} to {}", args.gateway))?;
            client
                .login(&token(&args.secret, name))
                .await
                .with_context(|| format!("logging in player {name} (is --secret the gateway's?)"))?;
            tokio::spawn(watch(client.clone(), events, shared.clone()));
            clients.push(client);
        }
        wait_for_game_server(&clients[0]).await.context("the gateway cannot reach a game server")?;
        Ok(Players { clients, names: Arc::new(names), shared, echo_rate: args.echo_rate, p2p_rate: args.p2p_rate })
    }

    /// Starts phase `idx`'s traffic: an ECHO loop and a P2P loop per player,
    /// spread evenly over each interval.
    fn start(&self, idx: usize) -> PhaseRun {
        self.shared.current.store(idx, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let n = self.clients.len();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (i, client) in self.clients.iter().enumerate() {
            let echo_every = Duration::from_secs(1) / self.echo_rate;
            let mut pacer = Pacer::new(start + echo_every * i as u32 / n as u32, echo_every);
            let (client_, shared, halt) = (client.clone(), self.shared.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let c = &shared.counts[idx];
                let payload = [0x5a; 64];
                while !halt.load(Ordering::Relaxed) {
                    let t = pacer.next().await;
                    if halt.load(Ordering::Relaxed) {
                        break;
                    }
                    c.echo_sent.fetch_add(1, Ordering::Relaxed);
                    match client_.call(ECHO, &payload).await {
                        Ok(back) if back == payload => {
                            c.echo_ok.fetch_add(1, Ordering::Relaxed);
                            PhaseCounts::record(&c.echo_latency, t.elapsed());
                        }
                        Ok(_) => c.error("echo: wrong answer".into()),
                        Err(e) => c.error(format!("echo: {}", error_kind(&e))),
                    }
                }
            }));
            let p2p_every = Duration::from_secs(1) / self.p2p_rate;
            let mut pacer = Pacer::new(start + p2p_every * i as u32 / n as u32, p2p_every);
            let (client, shared, halt, names) = (client.clone(), self.shared.clone(), stop.clone(), self.names.clone());
            tasks.push(tokio::spawn(async move {
                let c = &shared.counts[idx];
                let mut seq = 0usize;
                while !halt.load(Ordering::Relaxed) {
                    let t = pacer.next().await;
                    if halt.load(Ordering::Relaxed) {
                        break;
                    }
                    let to = &names[(i + 1 + seq % (n - 1)) % n];
                    seq += 1;
                    let payload = format!("legit {idx} {seq} {}", (t - shared.epoch).as_micros());
                    c.p2p_sent.fetch_add(1, Ordering::Relaxed);
                    match client.send_to_user(to, payload.as_bytes()).await {
                        Ok(0) => c.error("p2p: delivered to no session".into()),
                        Ok(_) => {}
                        Err(e) => c.error(format!("p2p: {}", error_kind(&e))),
                    }
                }
            }));
        }
        PhaseRun { idx, started: start, stop, tasks }
    }

    /// Stops the phase's traffic, waits (at most 3 s) for P2P messages
    /// still on their way, and sums up.
    async fn finish(&self, run: PhaseRun) -> LegitOutcome {
        run.stop.store(true, Ordering::Relaxed);
        let per_second = self.clients.len() as f64 * f64::from(self.echo_rate + self.p2p_rate);
        let due = (per_second * run.started.elapsed().as_secs_f64()) as u64;
        // Each loop ends after its request in flight (REQUEST_TIMEOUT at most).
        for t in run.tasks {
            let _ = t.await;
        }
        let c = &self.shared.counts[run.idx];
        let until = Instant::now() + Duration::from_secs(3);
        while c.p2p_received.load(Ordering::Relaxed) < c.p2p_sent.load(Ordering::Relaxed) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p99 = |h: &Mutex<Histogram<u64>>| h.lock().expect("histogram lock").value_at_quantile(0.99);
        LegitOutcome {
            echo_sent: c.echo_sent.load(Ordering::Relaxed),
            echo_ok: c.echo_ok.load(Ordering::Relaxed),
            p2p_sent: c.p2p_sent.load(Ordering::Relaxed),
            p2p_received: c.p2p_received.load(Ordering::Relaxed),
            spam_received: c.spam_received.load(Ordering::Relaxed),
            resumed: c.resumed.load(Ordering::Relaxed),
            sessions_lost: c.sessions_lost.load(Ordering::Relaxed),
            echo_p99: p99(&c.echo_latency),
            p2p_p99: p99(&c.p2p_latency),
            errors: c.errors.lock().expect("errors lock").clone(),
            due,
        }
    }

    /// Logs every player out (1 s each at most, all at once).
    async fn logout(&self) {
        let all = self.clients.iter().map(|c| timeout(Duration::from_secs(1), c.logout()));
        for f in all.collect::<Vec<_>>() {
            let _ = f.await;
        }
    }
}

/// Reads one player's events until its session ends: counts the P2P
/// messages and spam it receives and resumes a dropped connection.
async fn watch(client: Client, mut events: tokio::sync::mpsc::Receiver<Event>, shared: Arc<Shared>) {
    while let Some(event) = events.recv().await {
        let now = shared.current.load(Ordering::Relaxed);
        let c = &shared.counts[now];
        match event {
            Event::Delivery { from_user_id, payload, .. } => match parse_p2p(&payload) {
                Some((phase, sent_us)) if phase < shared.counts.len() => {
                    let c = &shared.counts[phase];
                    c.p2p_received.fetch_add(1, Ordering::Relaxed);
                    let sent = shared.epoch + Duration::from_micros(sent_us);
                    PhaseCounts::record(&c.p2p_latency, sent.elapsed());
                }
                _ if from_user_id == SPAMMER => {
                    c.spam_received.fetch_add(1, Ordering::Relaxed);
                }
                _ => c.error(format!("unexpected delivery from {from_user_id}")),
            },
            Event::Disconnected => {
                c.resumed.fetch_add(1, Ordering::Relaxed);
                let mut resumed = false;
                for _ in 0..3 {
                    match timeout(REQUEST_TIMEOUT, client.resume()).await {
                        Ok(Ok(_)) => {
                            resumed = true;
                            break;
                        }
                        Ok(Err(e)) => c.error(format!("resume: {}", error_kind(&e))),
                        Err(_) => c.error("resume: timeout".into()),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if !resumed {
                    c.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            Event::Kicked { reason, .. } => c.error(format!("kicked: {reason}")),
            Event::Closed => {
                c.sessions_lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Event::Error { code, .. } => c.error(format!("unsolicited {}", code.as_str_name())),
            Event::Push { .. } => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The attacks.

/// Runs `phase`'s attack until `deadline`; returns what the attackers did.
async fn attack(args: &Args, plan: &Plan, phase: Phase, players: &[String], deadline: Instant) -> String {
    let per_source = args.per_source;
    let spread = move |slot: usize| attacker_address(phase, slot / per_source);
    match phase {
        Phase::Baseline => {
            sleep_until(deadline.into()).await;
            "none".into()
        }
        Phase::PreloginMemory => {
            let n = plan.count(200);
            let s = slots(args.gateway, Behaviour::Junk, n, spread, deadline).await;
            format!("{n} conns never reading, {} ({:.0} MB of junk)", s.summary(), s.mb())
        }
        Phase::Trickle => {
            let n = plan.count(2_000);
            let s = slots(args.gateway, Behaviour::Trickle, n, spread, deadline).await;
            format!("{n} conns, 1 byte per {} s: {}", TRICKLE_EVERY.as_secs(), s.summary())
        }
        Phase::PartialFrames => {
            let n = plan.count(200);
            let s = slots(args.gateway, Behaviour::Partial, n, spread, deadline).await;
            format!("{n} conns holding {PARTIAL_FRAME}-byte frames less a byte: {}", s.summary())
        }
        Phase::NatJunk => {
            let n = plan.count(600);
            let s = slots(args.gateway, Behaviour::AckFlood, n, |_| Ipv4Addr::LOCALHOST.into(), deadline).await;
            format!("{n} conns from 127.0.0.1, {} ({:.0} MB of ACKs)", s.summary(), s.mb())
        }
        Phase::RecipientSpam => recipient_spam(args, players, deadline).await,
        Phase::FdExhaustion => unreachable!("run from child processes"),
    }
}

/// The `k`th source address of `phase`'s attackers: 127.N.x.y.
fn attacker_address(phase: Phase, k: usize) -> IpAddr {
    Ipv4Addr::new(127, phase.number(), (k / 254) as u8, (k % 254 + 1) as u8).into()
}

/// What one kind of attacker connection does once connected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Business commands before login, as fast as TCP takes them; never reads.
    Junk,
    /// One byte of a frame every [`TRICKLE_EVERY`].
    Trickle,
    /// Most of a 64 KiB frame, then nothing.
    Partial,
    /// ACK frames as fast as TCP takes them; reads and drops any answer.
    AckFlood,
}

/// What a phase's attacker connections did, counted across them.
#[derive(Default)]
struct SlotStats {
    opened: AtomicU64,
    connect_failures: AtomicU64,
    closed_by_gateway: AtomicU64,
    bytes: AtomicU64,
    /// Connections closed by the gateway, by the last ERROR it sent them.
    reasons: Mutex<BTreeMap<&'static str, u64>>,
}

impl SlotStats {
    /// Counts a connection the gateway closed, with what it had sent.
    fn closed(&self, received: Option<&[u8]>) {
        self.closed_by_gateway.fetch_add(1, Ordering::Relaxed);
        if let Some(received) = received {
            *self.reasons.lock().expect("reasons lock").entry(last_error(received)).or_default() += 1;
        }
    }

    fn summary(&self) -> String {
        let failed = self.connect_failures.load(Ordering::Relaxed);
        let reasons = self.reasons.lock().expect("reasons lock");
        format!(
            "{} opened, {} closed by the gateway{}{}",
            self.opened.load(Ordering::Relaxed),
            self.closed_by_gateway.load(Ordering::Relaxed),
            if reasons.is_empty() { String::new() } else { format!(" ({})", tally(&reasons)) },
            if failed > 0 { format!(", {failed} connects failed") } else { String::new() }
        )
    }

    fn mb(&self) -> f64 {
        self.bytes.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Runs `n` attacker connections (`source(i)` for the `i`th) until
/// `deadline`, each opened again [`REOPEN_AFTER`] after the gateway
/// closes it.
async fn slots(
    gateway: SocketAddr,
    behaviour: Behaviour,
    n: usize,
    source: impl Fn(usize) -> IpAddr,
    deadline: Instant,
) -> Arc<SlotStats> {
    let stats = Arc::new(SlotStats::default());
    let junk = Arc::new(junk_batch(behaviour));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (stats, junk, source) = (stats.clone(), junk.clone(), source(i));
        // Trickling connections start their bytes spread over the interval.
        let offset = TRICKLE_EVERY.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let opened = timeout_at(deadline.into(), open(gateway, source, behaviour)).await;
                let closed = match opened {
                    Err(_) => return,
                    Ok(Err(_)) => {
                        stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Ok(Ok(stream)) => {
                        stats.opened.fetch_add(1, Ordering::Relaxed);
                        let mut received = Vec::new();
                        let closed = match behaviour {
                            Behaviour::Junk => flood(stream, &junk, None, deadline, &stats).await,
                            Behaviour::AckFlood => flood(stream, &junk, Some(&mut received), deadline, &stats).await,
                            Behaviour::Trickle => trickle(stream, offset, &mut received, deadline, &stats).await,
                            Behaviour::Partial => send_and_hold(stream, &junk, &mut received, deadline, &stats).await,
                        };
                        if closed {
                            stats.closed((behaviour != Behaviour::Junk).then_some(&received[..]));
                        }
                        closed
                    }
                };
                if !closed {
                    return;
                }
                sleep_until((Instant::now() + REOPEN_AFTER).min(deadline).into()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stats
}

/// What an attacker connection writes: a batch of frames to repeat, or the
/// partial frame.
fn junk_batch(behaviour: Behaviour) -> Vec<u8> {
    let mut batch = Vec::new();
    match behaviour {
        Behaviour::Junk | Behaviour::AckFlood => {
            let (command, ack) = if behaviour == Behaviour::Junk { (ECHO, 0) } else { (cmd::ACK, 1) };
            let mut seq = 1;
            while batch.len() < 16 * 1024 {
                let env = Envelope { ack, ..Envelope::new(command, seq, 0, &[]) };
                Codec::Protobuf.encode(&env, &mut batch);
                seq += 1;
            }
        }
        Behaviour::Partial => {
            batch.extend_from_slice(&(PARTIAL_FRAME as u32).to_be_bytes());
            batch.resize(4 + PARTIAL_FRAME - 1, 0x2a);
        }
        Behaviour::Trickle => {}
    }
    batch
}

/// Opens an attacker connection from `source` (never-reading ones with a
/// 4 KiB receive buffer, so that what the gateway sends stays with it).
async fn open(gateway: SocketAddr, source: IpAddr, behaviour: Behaviour) -> std::io::Result<TcpStream> {
    let socket = bound_socket(source)?;
    if behaviour == Behaviour::Junk {
        socket.set_recv_buffer_size(4096)?;
    }
    timeout(CONNECT_TIMEOUT, connect_from(socket, gateway))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Writes `batch` over and over until `deadline` (false) or until the
/// gateway closes the connection (true). With `received`, also reads what
/// the gateway sends (keeping the start of it there), and once a write
/// fails, what is still on its way (200 ms at most): the ERROR that says
/// why.
async fn flood(
    stream: TcpStream,
    batch: &[u8],
    received: Option<&mut Vec<u8>>,
    deadline: Instant,
    stats: &SlotStats,
) -> bool {
    let (mut r, mut w) = stream.into_split();
    let writer = async {
        while w.write_all(batch).await.is_ok() {
            stats.bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    };
    let flooded = async {
        let Some(received) = received else { return writer.await };
        let mut buf = vec![0u8; 16 * 1024];
        let reader = async {
            while let Ok(n @ 1..) = r.read(&mut buf).await {
                keep(received, &buf[..n]);
            }
        };
        tokio::pin!(reader);
        tokio::select! {
            () = writer => { let _ = timeout(Duration::from_millis(200), &mut reader).await; }
            () = &mut reader => {}
        }
    };
    timeout_at(deadline.into(), flooded).await.is_ok()
}

/// Sends a frame's length prefix and then one byte of it every
/// [`TRICKLE_EVERY`], reading and dropping what the gateway sends, until
/// `deadline` (false) or the gateway closes the connection (true).
async fn trickle(
    mut stream: TcpStream,
    offset: Duration,
    received: &mut Vec<u8>,
    deadline: Instant,
    stats: &SlotStats,
) -> bool {
    // A 65 280-byte frame: never complete in a phase.
    const BYTES: [u8; 4] = [0x00, 0x00, 0xff, 0x00];
    let mut buf = [0u8; 4096];
    let mut next = Instant::now() + offset;
    for i in 0.. {
        // Wait for the next byte's time, watching for the gateway closing.
        loop {
            tokio::select! {
                () = sleep_until(next.min(deadline).into()) => break,
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => keep(received, &buf[..n]),
                },
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        let byte = BYTES.get(i).copied().unwrap_or(0x2a);
        if timeout_at(deadline.into(), stream.write_all(&[byte])).await.is_ok_and(|r| r.is_err()) {
            return true;
        }
        stats.bytes.fetch_add(1, Ordering::Relaxed);
        next += TRICKLE_EVERY;
    }
    false
}

/// Sends `bytes` once, then holds the connection (reading and dropping
/// what comes) until `deadline` (false) or the gateway closes it (true).
async fn send_and_hold(
    mut stream: TcpStream,
    bytes: &[u8],
    received: &mut Vec<u8>,
    deadline: Instant,
    stats: &SlotStats,
) -> bool {
    match timeout_at(deadline.into(), stream.write_all(bytes)).await {
        Err(_) => return false,
        Ok(Err(_)) => return true,
        Ok(Ok(())) => {
            stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
    let mut buf = [0u8; 4096];
    loop {
        match timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(n)) => keep(received, &buf[..n]),
        }
    }
}

/// Keeps what the gateway sent an attacker connection, its first 64 KiB.
fn keep(received: &mut Vec<u8>, bytes: &[u8]) {
    let room = (64 * 1024usize).saturating_sub(received.len());
    received.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// The code of the last ERROR frame in what the gateway sent (protobuf
/// framing), or "no ERROR".
fn last_error(received: &[u8]) -> &'static str {
    let (codec, mut pos, mut last) = (Codec::Protobuf, 0, "no ERROR");
    while let Ok(Some((range, used))) = codec.framing().next_frame(&received[pos..], received.len()) {
        if let Ok(env) = codec.decode(&received[pos + range.start..pos + range.end]) {
            if env.cmd == cmd::ERROR {
                if let Ok(e) = codec.payload_form().decode::<ErrorMsg>(&env.payload) {
                    last = ErrorCode::try_from(e.code).map_or("unknown ERROR", |c| c.as_str_name());
                }
            }
        }
        pos += used;
    }
    last
}

/// `NAME ×COUNT, …`
fn tally<K: std::fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    counts.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
}

/// One user (`spammer`) on [`SPAM_DEVICES`] devices sends SEND_TO_USERS
/// naming every player, [`SPAM_IN_FLIGHT`] requests in flight per device,
/// until `deadline`. A device the gateway closes logs in again 200 ms later,
/// as a persistent spammer would.
async fn recipient_spam(args: &Args, players: &[String], deadline: Instant) -> String {
    let names = Arc::new(players.to_vec());
    let stats = Arc::new(Mutex::new(SpamStats::default()));
    let devices: Vec<_> = (0..SPAM_DEVICES)
        .map(|d| tokio::spawn(spam_device(args.clone(), d, names.clone(), stats.clone(), deadline)))
        .collect();
    for d in devices {
        let _ = d.await;
    }
    let s = stats.lock().expect("spam stats lock");
    format!(
        "{SPAM_DEVICES} devices: {} SEND_TO_USERS naming {} players, {} logins, refused: {}, {} deliveries reported",
        s.sent,
        names.len(),
        s.logins,
        if s.refused.is_empty() { "none".into() } else { tally(&s.refused) },
        s.delivered,
    )
}

/// One device of the spammer, logging in again whenever it is closed.
async fn spam_device(args: Args, d: usize, names: Arc<Vec<String>>, stats: Arc<Mutex<SpamStats>>, deadline: Instant) {
    let source = attacker_address(Phase::RecipientSpam, d);
    while Instant::now() < deadline {
        let login = async {
            let (client, events) =
                Client::connect_via(args.gateway, Codec::Protobuf, REQUEST_TIMEOUT, connector_from(source, TransportKind::Tcp)).await?;
            client.login(&device_token(&args.secret, SPAMMER, &format!("device-{d}"))).await?;
            Ok::<_, ClientError>((client, events))
        };
        let Ok(Ok((client, mut events))) = timeout_at(deadline.into(), login).await else {
            let _ = timeout_at(deadline.into(), tokio::time::sleep(Duration::from_millis(200))).await;
            continue;
        };
        stats.lock().expect("spam stats lock").logins += 1;
        // The device's own events, dropped.
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        let workers: Vec<_> = (0..SPAM_IN_FLIGHT)
            .map(|_| {
                let (client, names, stats) = (client.clone(), names.clone(), stats.clone());
                tokio::spawn(async move {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    loop {
                        let r = match timeout_at(deadline.into(), client.send_to_users(&names, b"spam spam spam")).await
                        {
                            Err(_) => return,
                            Ok(r) => r,
                        };
                        let mut s = stats.lock().expect("spam stats lock");
                        s.sent += 1;
                        match r {
                            Ok(n) => s.delivered += u64::from(n),
                            Err(e) => {
                                *s.refused.entry(error_kind(&e)).or_default() += 1;
                                if matches!(e, ClientError::Closed) {
                                    return;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
        if Instant::now() >= deadline {
            let _ = timeout(Duration::from_secs(1), client.logout()).await;
        }
        drop(client);
        drain.abort();
        let _ = timeout_at(deadline.into(), tokio::time::sleep(Duration::from_millis(200))).await;
    }
}

/// What the spammer's requests got.
#[derive(Default)]
struct SpamStats {
    logins: u64,
    sent: u64,
    delivered: u64,
    refused: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------
// Descriptor exhaustion: child processes.

/// Starts child processes that open up to `total` connections and hold
/// them until `deadline`; returns what they managed.
fn fd_exhaustion(args: &Args, total: usize, files: u64, deadline: Instant) -> String {
    let per_child = PER_CHILD.min((files as usize).saturating_sub(200).max(1));
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return format!("cannot start child processes: {e}"),
    };
    let secs = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
    let (tx, rx) = mpsc::channel::<String>();
    let mut children: Vec<Child> = Vec::new();
    let mut first = 0;
    while first < total {
        let count = per_child.min(total - first);
        let spawned = Command::new(&exe)
            .args(["--child", "--gateway", &args.gateway.to_string(), "--phase-secs", &secs.to_string()])
            .args(["--child-count", &count.to_string(), "--child-first", &first.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = tx.send(format!("error cannot start a child process: {e}"));
                break;
            }
        };
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        children.push(child);
        first += count;
    }
    drop(tx);
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    // Closing their stdin ends the children's hold: each reports and exits.
    for c in &mut children {
        drop(c.stdin.take());
    }
    let mut lines = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    for c in &mut children {
        if !matches!(c.try_wait(), Ok(Some(_))) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
    let sum = |key: &str| -> u64 {
        lines.iter().filter_map(|l| l.strip_prefix(key)).filter_map(|v| v.split(' ').next()?.parse::<u64>().ok()).sum()
    };
    let stops: Vec<&str> = lines.iter().filter_map(|l| l.split_once(" stop: ").map(|(_, why)| why)).collect();
    let mut reasons = BTreeMap::<&str, u64>::new();
    for l in &lines {
        let counted = l.strip_prefix("closed ").and_then(|rest| rest.split_once(' '));
        if let Some((Ok(n), reason)) = counted.map(|(n, reason)| (n.parse::<u64>(), reason)) {
            *reasons.entry(reason).or_default() += n;
        }
    }
    let errors: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("error ")).collect();
    format!(
        "{} children, from 127.0.0.2-{}: {} of {total} opened, {} still open at the end{}{}{}",
        children.len(),
        1 + FD_SOURCES,
        sum("opened "),
        sum("still-open "),
        if reasons.is_empty() { String::new() } else { format!(" (closed: {})", tally(&reasons)) },
        if stops.is_empty() { String::new() } else { format!("; stopped: {}", stops.join("; ")) },
        if errors.is_empty() { String::new() } else { format!("; {}", errors.join("; ")) },
    )
}

/// Child mode: opens `--child-count` connections (from 127.0.0.2 and on,
/// in turn), never logging in; prints `opened N …`; holds them until stdin
/// closes (or the phase is long over); prints `still-open N`: those the
/// gateway did not close.
fn child(args: &Args) -> anyhow::Result<()> {
    ensure!(args.gateway.ip().is_loopback(), "--gateway {} is not a loopback address", args.gateway);
    procfs::raise_open_files_limit()?;
    let phase = Duration::from_secs(args.phase_secs.unwrap_or(12));
    let open_until = Instant::now() + phase;
    let mut conns = Vec::with_capacity(args.child_count);
    let (mut failed, mut in_a_row, mut stop) = (0u64, 0, String::new());
    for i in 0..args.child_count {
        if Instant::now() >= open_until {
            stop = "the phase ended".into();
            break;
        }
        let source = Ipv4Addr::new(127, 0, 0, 2 + ((args.child_first + i) % FD_SOURCES) as u8);
        let opened = bound_socket(source.into()).and_then(|s| {
            s.connect_timeout(&args.gateway.into(), Duration::from_secs(1))?;
            Ok(std::net::TcpStream::from(s))
        });
        match opened {
            Ok(c) => {
                conns.push(c);
                in_a_row = 0;
            }
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                stop = "this process's open-files limit".into();
                break;
            }
            Err(e) => {
                failed += 1;
                in_a_row += 1;
                if in_a_row >= 3 {
                    stop = format!("3 connects in a row failed ({e})");
                    break;
                }
            }
        }
    }
    let stop = if stop.is_empty() { String::new() } else { format!(" stop: {stop}") };
    println!("opened {} failed {failed}{stop}", conns.len());
    std::io::stdout().flush()?;
    // Hold until the parent closes our stdin, or a minute after the phase.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(phase + Duration::from_secs(60));
    let (mut open, mut reasons) = (0, BTreeMap::<&str, u64>::new());
    let mut buf = [0u8; 4096];
    for c in &mut conns {
        c.set_nonblocking(true)?;
        // Read what the gateway sent until it would block (open) or the end
        // of the stream (closed: by the last ERROR sent); 64 reads at most.
        let mut received = Vec::new();
        for _ in 0..64 {
            match c.read(&mut buf) {
                Ok(n @ 1..) => keep(&mut received, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    open += 1;
                    break;
                }
                Ok(0) | Err(_) => {
                    *reasons.entry(last_error(&received)).or_default() += 1;
                    break;
                }
            }
        }
    }
    for (reason, n) in reasons {
        println!("closed {n} {reason}");
    }
    println!("still-open {open}");
    Ok(())
}
