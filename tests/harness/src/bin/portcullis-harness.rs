//! `portcullis-harness up|down|status|flood|lossy`: the veth harness by hand
//! and from scripts (the demo).

use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use portcullis_harness::{cleanup_stale, flood, list, lossy, Harness, Options, GATEWAY_V4, PLAYER_IFACE};

/// Build, inspect and tear down the veth test harness; send floods.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a harness. With --owner-pid it stays after this command and is
    /// removed by `down` (or as stale once that process is gone); without,
    /// it stays until Enter is pressed.
    Up {
        /// Process that owns the harness (a script's `$$`).
        #[arg(long)]
        owner_pid: Option<u32>,
        /// Put the players behind a router namespace, on subnets of their
        /// own (10.88.0.0/16, fd88::/48), as in the field.
        #[arg(long)]
        routed: bool,
        /// Extra player source addresses per family on a routed harness.
        #[arg(long, default_value_t = 50)]
        sources: u32,
        /// Queues of the gateway's veth (one AF_XDP worker each).
        #[arg(long, default_value_t = 1)]
        queues: u32,
    },
    /// Remove harness namespaces: those of one owner, or all.
    Down {
        /// Only this owner's.
        #[arg(long)]
        owner_pid: Option<u32>,
    },
    /// List harness namespaces; stale ones are removed first.
    Status,
    /// Send a flood from the players' side of a harness.
    Flood {
        /// Harness name (as printed by `up`); default: build a temporary one.
        #[arg(long)]
        name: Option<String>,
        /// What to send.
        #[arg(long, value_enum, default_value = "udp")]
        kind: FloodKind,
        /// Source address (may be spoofed); default the players' main address.
        #[arg(long)]
        source: Option<IpAddr>,
        /// Spread over this many consecutive IPv4 sources from --source.
        #[arg(long, default_value_t = 1)]
        sources: u32,
        /// Destination port.
        #[arg(long, default_value_t = 7000)]
        port: u16,
        /// Packets.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Packets per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Delay and drop every packet the router of a routed harness forwards,
    /// in both directions (a userspace stand-in for `tc netem`, which this
    /// kernel lacks), until Ctrl-C / SIGTERM or --for-secs; undone on exit.
    Lossy {
        /// Harness name (as printed by `up --routed`).
        #[arg(long)]
        name: String,
        /// One-way delay in milliseconds, each direction.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Loss in percent (0–100), each direction independently.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Seed of the loss generators (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        for_secs: Option<u64>,
        /// Packets held per direction at most; more are dropped.
        #[arg(long, default_value_t = 100_000)]
        queue_limit: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FloodKind {
    Udp,
    Syn,
    Malformed,
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = portcullis_harness::unavailable() {
        anyhow::bail!("the harness cannot run here: {why}");
    }
    match Args::parse().command {
        Cmd::Up { owner_pid, routed, sources, queues } => {
            let options = Options { queues, routed, sources };
            let h = Harness::up_with_for(owner_pid.unwrap_or_else(std::process::id), options)?;
            println!("{}", h.name);
            let (v4, v6) = h.player_addrs;
            let extra = h.sources().len();
            match &h.router {
                None => eprintln!(
                    "players: {} ({PLAYER_IFACE} {v4} {v6} +{extra} sources), gateway side: {} (veth-g {GATEWAY_V4})",
                    h.players, h.gateway
                ),
                Some(r) => eprintln!(
                    "players: {} ({PLAYER_IFACE} {v4} {v6} +{extra} sources) → router {r} → gateway side: {} (veth-g {GATEWAY_V4})",
                    h.players, h.gateway
                ),
            }
            if owner_pid.is_some() {
                h.keep();
            } else {
                eprintln!("press Enter to tear it down");
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            }
        }
        Cmd::Down { owner_pid } => {
            let prefix = owner_pid.map(|p| format!("{}{p}-", portcullis_harness::PREFIX));
            for ns in list().into_iter().filter(|n| prefix.as_ref().is_none_or(|p| n.starts_with(p))) {
                portcullis_harness::ip(&["netns", "del", &ns])?;
                eprintln!("removed {ns}");
            }
        }
        Cmd::Status => {
            for ns in cleanup_stale() {
                println!("removed stale {ns}");
            }
            for ns in list() {
                println!("{ns}");
            }
        }
        Cmd::Flood { name, kind, source, sources, port, count, rate } => {
            let h = match &name {
                Some(n) => Harness::open(n)?,
                None => Harness::up()?,
            };
            let source = source.unwrap_or(IpAddr::V4(h.player_addrs.0));
            let dst =
                if source.is_ipv4() { IpAddr::V4(GATEWAY_V4) } else { IpAddr::V6(portcullis_harness::GATEWAY_V6) };
            let srcs = match source {
                IpAddr::V4(v4) if sources > 1 => flood::Flood::spoofed(v4, sources),
                other => vec![other],
            };
            let kind = match kind {
                FloodKind::Udp => flood::Kind::Udp,
                FloodKind::Syn => flood::Kind::Syn,
                FloodKind::Malformed => flood::Kind::MalformedIhl,
            };
            let f = flood::Flood { kind, sources: srcs, rate, ..flood::Flood::udp(source, dst, port, count) };
            let r = h.in_players(|| flood::run(PLAYER_IFACE, h.player_mac, h.players_next_hop, &f))?;
            println!(
                "sent {} packets in {:.2} s ({:.0} pps)",
                r.sent,
                r.elapsed.as_secs_f64(),
                r.sent as f64 / r.elapsed.as_secs_f64()
            );
            if name.is_some() {
                h.keep();
            }
        }
        Cmd::Lossy { name, delay_ms, loss, seed, for_secs, queue_limit } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            });
            let options = lossy::LossyOptions { delay: Duration::from_millis(delay_ms), loss, seed, queue_limit };
            // Block SIGINT and SIGTERM before any thread starts (threads
            // inherit the mask), then wait for them here: Drop undoes it all.
            let signals = block_signals(&[libc::SIGINT, libc::SIGTERM]);
            let handle = lossy::start(&name, options)?;
            println!("lossy: {}: delay {delay_ms} ms, loss {loss} % each way (seed {seed})", handle.router());
            match wait_signal(&signals, for_secs.map(Duration::from_secs)) {
                Some(signal) => eprintln!("lossy: signal {signal}, undoing"),
                None => eprintln!("lossy: time is up, undoing"),
            }
            let stats = handle.stats();
            drop(handle);
            for (way, s) in [("players → gateway", stats.to_gateway), ("gateway → players", stats.to_players)] {
                println!(
                    "lossy: {way}: {} received, {} dropped, {} overflowed, {} forwarded",
                    s.received, s.dropped, s.overflowed, s.forwarded
                );
            }
        }
    }
    Ok(())
}

/// Blocks `signals` in this thread (and the threads it starts from now on).
fn block_signals(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked `signals` (forever, or up to `limit`).
fn wait_signal(signals: &libc::sigset_t, limit: Option<Duration>) -> Option<libc::c_int> {
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return None;
        }
        let timeout =
            left.map(|l| libc::timespec { tv_sec: l.as_secs() as libc::time_t, tv_nsec: l.subsec_nanos().into() });
        // SAFETY: a valid signal set; a valid or null timeout; no siginfo wanted.
        let signal = unsafe {
            libc::sigtimedwait(
                signals,
                std::ptr::null_mut(),
                timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _),
            )
        };
        if signal > 0 {
            return Some(signal);
        }
        // EAGAIN: timed out (checked above); EINTR: wait again.
    }
}
