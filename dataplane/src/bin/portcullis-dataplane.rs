//! `portcullis-dataplane --config config/portcullis.toml --io kernel`

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use portcullis_dataplane::auth::TokenAuthenticator;
use portcullis_dataplane::io::kernel::KernelIo;
use portcullis_dataplane::{Config, Gateway};

/// The Portcullis dataplane: serves players and forwards their commands to game servers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "config/portcullis.toml")]
    config: PathBuf,
    /// IO backend.
    #[arg(long, value_enum, default_value_t = IoKind::Kernel)]
    io: IoKind,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 5)]
    status_every: u64,
    /// Seconds allowed for the shutdown after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum IoKind {
    /// Ordinary kernel sockets (epoll).
    Kernel,
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
    let secret = config.auth.token_secret()?;
    let IoKind::Kernel = args.io;
    let mut io = KernelIo::bind(&config)?;
    for (l, addr) in config.listeners.iter().zip(io.local_addrs()) {
        tracing::info!(
            "listening on {addr} ({} codec, max frame {} bytes)",
            l.codec,
            l.max_frame_bytes.unwrap_or(config.gateway.max_frame_bytes)
        );
    }
    for s in &config.services {
        tracing::info!("service {:?}: {} game server(s) {:?}", s.name, s.servers.len(), s.servers);
    }
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock before 1970")?.as_secs();
    let mut core = Gateway::new(&config, Box::new(TokenAuthenticator::new(secret)), Instant::now(), unix);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handler")?;
    }
    let every = Duration::from_secs(args.status_every);
    let mut next_status = Instant::now() + every;
    let mut last = core.stats().clone();
    portcullis_dataplane::io::run(&mut io, &mut core, &stop, Duration::from_secs(args.drain_secs), |now, core| {
        if args.status_every == 0 || now < next_status {
            return;
        }
        next_status = now + every;
        let s = core.stats();
        let secs = every.as_secs_f64();
        tracing::info!(
            "sessions {} users {} groups {} links up {} | in {:.0}/s out {:.0}/s requests {:.0}/s | refused: bad frame {} not logged in {} auth {} unknown cmd {} no backend {} slow consumer {} heartbeat {}",
            core.sessions().len(), core.sessions().user_count(), core.sessions().group_count(), core.links_up(),
            (s.frames_in - last.frames_in) as f64 / secs, (s.frames_out - last.frames_out) as f64 / secs,
            (s.requests - last.requests) as f64 / secs,
            s.drop_bad_frame, s.drop_not_logged_in, s.drop_auth_failed, s.drop_unknown_command,
            s.drop_backend_unavailable, s.slow_consumers, s.heartbeat_timeouts,
        );
        last = s.clone();
    })?;
    tracing::info!("shut down");
    Ok(())
}
