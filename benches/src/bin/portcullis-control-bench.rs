//! `portcullis-control-bench`: what the control plane costs
//! (`benches/scripts/control-bench.sh` drives it).
//!
//! - `observe --seconds N`: what a monitored gateway sees — `/metrics`
//!   scraped every second and a `Watch` open for N seconds; prints the
//!   scrapes and events seen.
//! - `list --at-least N`: pages through every session with `ListSessions`
//!   (page sizes 1 000 and 10 000), timing each full listing, and prints the
//!   RSS of the dataplane and of control before and after.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use portcullis_benches::procfs;
use portcullis_proto::pb::admin as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The control plane's own cost.
#[derive(Parser)]
struct Args {
    /// Control's admin API.
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    control: String,
    /// Operator token (default: PORTCULLIS_TOKEN).
    #[arg(long)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scrape /metrics every second and keep a Watch open.
    Observe {
        /// Control's /metrics address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: SocketAddr,
        /// How long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Page through every session; time and memory.
    List {
        /// Sessions expected, at least.
        #[arg(long)]
        at_least: usize,
        /// The dataplane's pid (for its RSS).
        #[arg(long)]
        dataplane_pid: u32,
        /// Control's pid (for its RSS).
        #[arg(long)]
        control_pid: u32,
    },
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok(body.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = args.token.clone().or_else(|| std::env::var("PORTCULLIS_TOKEN").ok());
    let mut api = portcullis_control::client::connect(&args.control, token.as_deref(), None).await?;
    match args.command {
        Command::Observe { metrics, seconds } => {
            let mut watch = api.watch(pb::WatchRequest::default()).await?.into_inner();
            let events = tokio::spawn(async move {
                let mut n = 0u64;
                while let Ok(Some(_)) = watch.message().await {
                    n += 1;
                }
                n
            });
            let (mut scrapes, mut bytes) = (0, 0);
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < end {
                tick.tick().await;
                bytes += scrape(metrics).await.context("scraping /metrics")?;
                scrapes += 1;
            }
            events.abort();
            println!(
                "observed: {scrapes} scrapes of /metrics ({} KiB each), a Watch open {seconds} s",
                bytes / scrapes.max(1) / 1024
            );
        }
        Command::List { at_least, dataplane_pid, control_pid } => {
            let rss = || -> anyhow::Result<(u64, u64)> {
                Ok((procfs::rss_bytes(dataplane_pid)?, procfs::rss_bytes(control_pid)?))
            };
            let (d0, c0) = rss()?;
            println!("before: dataplane RSS {:.1} MiB, control RSS {:.1} MiB", mib(d0), mib(c0));
            for page_size in [1_000u32, 10_000] {
                let start = Instant::now();
                let (mut seen, mut pages, mut token) = (0usize, 0, String::new());
                let mut slowest = Duration::ZERO;
                loop {
                    let t = Instant::now();
                    let page = api
                        .list_sessions(pb::ListSessionsRequest { page_size, page_token: token, ..Default::default() })
                        .await?
                        .into_inner();
                    slowest = slowest.max(t.elapsed());
                    seen += page.sessions.len();
                    pages += 1;
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
                let took = start.elapsed();
                let (d, c) = rss()?;
                println!(
                    "ListSessions of {seen} sessions, {pages} pages of {page_size}: {:.0} ms in all, slowest page {:.1} ms | after: dataplane RSS {:.1} MiB (+{:.1}), control RSS {:.1} MiB (+{:.1})",
                    took.as_secs_f64() * 1e3,
                    slowest.as_secs_f64() * 1e3,
                    mib(d),
                    mib(d.saturating_sub(d0)),
                    mib(c),
                    mib(c.saturating_sub(c0)),
                );
                if seen < at_least {
                    bail!("listed {seen} sessions, expected at least {at_least}");
                }
            }
        }
    }
    Ok(())
}
