//! `portcullis-harness up|down|status|flood`: the veth harness by hand and
//! from scripts (the demo).

use std::net::IpAddr;

use clap::{Parser, Subcommand, ValueEnum};
use portcullis_harness::{cleanup_stale, flood, list, Harness, Options, GATEWAY_V4, PLAYER_IFACE};

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
    }
    Ok(())
}
