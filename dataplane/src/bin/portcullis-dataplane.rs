//! `portcullis-dataplane --config config/portcullis.toml --io kernel`

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use portcullis_core::{Config, Stats};
use portcullis_dataplane::agent::AgentState;
use portcullis_dataplane::io::IoStats;
use portcullis_dataplane::runtime::{stop_on_signals, RunningGateway, WorkerStatus};

/// The Portcullis dataplane: serves players and forwards their commands to game servers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "config/portcullis.toml")]
    config: PathBuf,
    /// IO backend [default: afxdp when the config has an `[afxdp]` section
    /// and this build the AF_XDP backend, else kernel].
    #[arg(long, value_enum)]
    io: Option<IoKind>,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 5)]
    status_every: u64,
    /// Run in this network namespace (`ip netns` name). Unlike `ip netns
    /// exec`, only the network namespace changes, so bpffs pins stay visible.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum IoKind {
    /// Ordinary kernel sockets (epoll), one thread per worker.
    Kernel,
    /// AF_XDP rings and a userspace TCP stack, one worker per queue of the
    /// `[afxdp]` interface (the XDP filter must be attached there).
    Afxdp,
    /// DPDK (EAL arguments, port and queues from `[dpdk]`) and a userspace
    /// TCP stack, one worker per queue.
    Dpdk,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("portcullis-dataplane: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    if let Some(ns) = &args.netns {
        // Before any thread starts: the workers inherit it.
        portcullis_xdp::netns::enter(ns)?;
    }
    let stop = stop_on_signals().context("installing signal handlers")?;
    let io = args.io.unwrap_or(if config.afxdp.is_some() && cfg!(feature = "afxdp") {
        IoKind::Afxdp
    } else {
        IoKind::Kernel
    });
    let gateway = match io {
        IoKind::Kernel => RunningGateway::start(&config)?,
        #[cfg(feature = "afxdp")]
        IoKind::Afxdp => RunningGateway::start_afxdp(&config)?,
        #[cfg(not(feature = "afxdp"))]
        IoKind::Afxdp => anyhow::bail!("this build has no AF_XDP backend: rebuild with --features afxdp"),
        #[cfg(feature = "dpdk")]
        IoKind::Dpdk => RunningGateway::start_dpdk(&config)?,
        #[cfg(not(feature = "dpdk"))]
        IoKind::Dpdk => anyhow::bail!("this build has no DPDK backend: rebuild with --features dpdk"),
    };
    for (l, addr) in config.listeners.iter().zip(&gateway.addrs) {
        let max = l.max_frame_bytes.unwrap_or(config.gateway.max_frame_bytes);
        tracing::info!("listening on {addr} ({} codec, max frame {max} bytes)", l.codec);
    }
    for s in &config.services {
        let servers: Vec<_> = s.servers.iter().map(|s| s.addr()).collect();
        tracing::info!(
            "service {:?}: {:?} balancing{} over {servers:?}",
            s.name,
            s.balance,
            if s.sticky { ", sticky" } else { "" }
        );
    }
    tracing::info!("{} worker(s) running", gateway.status().len());
    let io_name = match io {
        IoKind::Kernel => "kernel",
        IoKind::Afxdp => "afxdp",
        IoKind::Dpdk => "dpdk",
    };
    let _agent = match &config.agent.socket {
        Some(path) => {
            let state = AgentState::new(
                &config,
                Some(args.config.clone()),
                io_name,
                gateway.shared().clone(),
                gateway.status_reports(),
            );
            // Players do not depend on the control plane: without its
            // socket the dataplane serves on, unmanaged, and says so.
            match state.serve(std::path::Path::new(path)) {
                Ok(agent) => Some(agent),
                Err(e) => {
                    tracing::error!(
                        "agent.socket = {path}: {e}; serving without the agent API (portcullis-control cannot manage this dataplane)"
                    );
                    None
                }
            }
        }
        None => None,
    };
    let every = Duration::from_secs(args.status_every);
    let (mut next_status, mut last) = (Instant::now() + every, totals(&gateway.status()));
    while !stop.load(Ordering::Relaxed) && gateway.is_running() {
        std::thread::sleep(Duration::from_millis(100));
        if args.status_every > 0 && Instant::now() >= next_status {
            next_status += every;
            let workers = gateway.status();
            let now = totals(&workers);
            print_status(&workers, &now, &last, every, gateway.shared().user_count());
            last = now;
        }
    }
    tracing::info!("shutting down: clients are told to reconnect elsewhere");
    gateway.stop()?;
    tracing::info!("shut down");
    Ok(())
}

fn totals(workers: &[WorkerStatus]) -> (Stats, IoStats) {
    let (mut t, mut io) = (Stats::default(), IoStats::default());
    for w in workers {
        t += &w.stats;
        io += &w.io;
    }
    (t, io)
}

fn print_status(
    workers: &[WorkerStatus],
    (s, io): &(Stats, IoStats),
    (last, last_io): &(Stats, IoStats),
    every: Duration,
    users: usize,
) {
    let secs = every.as_secs_f64();
    let rate = |now: u64, before: u64| (now - before) as f64 / secs;
    let sessions: usize = workers.iter().map(|w| w.sessions).sum();
    let conns: usize = workers.iter().map(|w| w.connections).sum();
    tracing::info!(
        "connections {conns} sessions {sessions} users {users} links up {} | in {:.0}/s out {:.0}/s requests {:.0}/s cross-worker {:.0}/s | resumes {} detached {} expired {} replaced {} | refused: bad frame {} throttled {} not logged in {} auth {} conflict {} unknown cmd {} no backend {} backend lost {} timeout {} slow consumer {} heartbeat {}",
        workers.iter().map(|w| w.links_up).sum::<usize>(),
        rate(s.frames_in, last.frames_in),
        rate(s.frames_out, last.frames_out),
        rate(s.requests, last.requests),
        rate(s.cross_worker, last.cross_worker),
        s.resumes, s.sessions_detached, s.sessions_expired, s.sessions_replaced,
        s.drop_bad_frame, s.drop_throttled, s.drop_not_logged_in, s.drop_auth_failed, s.drop_login_conflict,
        s.drop_unknown_command, s.drop_backend_unavailable, s.drop_backend_lost, s.drop_backend_timeout,
        s.slow_consumers, s.heartbeat_timeouts,
    );
    tracing::info!(
        "before login: login timeouts {} output over budget {} | recipients protected: backlog {} rate {} | output memory {} KiB, cut {} | frames over the limit not sent {} | resume tokens reused {} | late SEND_TO answers {} | descriptor reserve refusals {}",
        s.login_timeouts, s.drop_prelogin_output, s.drop_recipient_backlog, s.drop_recipient_rate,
        workers.iter().map(|w| w.output_bytes).sum::<usize>() / 1024, s.cut_output_memory,
        s.drop_frame_too_large_out, s.drop_resume_token_reused, s.send_results_late, io.refused_fd_reserve,
    );
    if io.ws_upgrades + io.ws_refused_upgrades > 0 {
        tracing::info!(
            "websocket: upgrades {:.0}/s | refused upgrades {} protocol errors {} messages over the limit {} TLS failures {}",
            rate(io.ws_upgrades, last_io.ws_upgrades),
            io.ws_refused_upgrades, io.ws_protocol_errors, io.ws_too_big, io.ws_tls_errors,
        );
    }
    if io.polls > 0 {
        // A kernel-bypass backend: its rings.
        let polls = (io.polls - last_io.polls).max(1) as f64;
        tracing::info!(
            "rings: rx {:.0} frames/s {:.1} MB/s tx {:.0} frames/s {:.1} MB/s | idle rounds {:.0} % sleeps {:.0}/s | kicks {:.0}/s tx ring full {} frames exhausted {} | kernel: rx dropped {} rx ring full {} fill ring empty {} invalid {}",
            rate(io.rx_frames, last_io.rx_frames),
            rate(io.rx_bytes, last_io.rx_bytes) / 1e6,
            rate(io.tx_frames, last_io.tx_frames),
            rate(io.tx_bytes, last_io.tx_bytes) / 1e6,
            (io.idle_polls - last_io.idle_polls) as f64 * 100.0 / polls,
            rate(io.idle_sleeps, last_io.idle_sleeps),
            rate(io.tx_kicks, last_io.tx_kicks),
            io.tx_ring_full, io.tx_frames_exhausted,
            io.kernel_rx_dropped, io.kernel_rx_ring_full, io.kernel_fill_ring_empty, io.kernel_invalid_descs,
        );
        tracing::info!(
            "stack: {} connections in {} shards, {} with buffers in memory | SYN cookies sent {} accepted {} | frames handed to their flow's worker {} | refused: max connections {} no next hop {} worker inbox full {}",
            io.stack_connections, io.stack_shards, io.stack_buffers_backed, io.syn_cookies_sent, io.syn_cookies_accepted, io.frames_forwarded,
            io.drop_syn_max_connections, io.drop_no_next_hop, io.drop_forward_full,
        );
    }
}
