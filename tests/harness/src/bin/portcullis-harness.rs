//! `portcullis-harness up|down|status|flood`: the veth harness by hand.

use clap::{Parser, Subcommand};
use portcullis_harness::{cleanup_stale, flood, list, Harness};

/// Build, inspect and tear down the veth test harness.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a harness and keep it until Enter is pressed (or stdin closes).
    Up,
    /// Remove every harness namespace (of any process).
    Down,
    /// List harness namespaces; stale ones are removed first.
    Status,
    /// Build a harness, send a flood from the players' side, tear it down.
    Flood {
        /// Packets.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Packets per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = portcullis_harness::unavailable() {
        anyhow::bail!("the harness cannot run here: {why}");
    }
    match Args::parse().command {
        Cmd::Up => {
            let h = Harness::up()?;
            println!(
                "players namespace {} ({} {}), gateway namespace {} ({} {})",
                h.players,
                portcullis_harness::PLAYER_IFACE,
                portcullis_harness::PLAYER_V4,
                h.gateway,
                portcullis_harness::GATEWAY_IFACE,
                portcullis_harness::GATEWAY_V4
            );
            println!("press Enter to tear it down");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        Cmd::Down => {
            for ns in list() {
                portcullis_harness::ip(&["netns", "del", &ns])?;
                println!("removed {ns}");
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
        Cmd::Flood { count, rate } => {
            let h = Harness::up()?;
            let f = flood::Flood {
                rate,
                ..flood::Flood::udp(
                    portcullis_harness::PLAYER_V4.into(),
                    portcullis_harness::GATEWAY_V4.into(),
                    7000,
                    count,
                )
            };
            let r = h.in_players(|| flood::run(portcullis_harness::PLAYER_IFACE, h.player_mac, h.gateway_mac, &f))?;
            println!(
                "sent {} packets in {:.2} s ({:.0} pps)",
                r.sent,
                r.elapsed.as_secs_f64(),
                r.sent as f64 / r.elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}
