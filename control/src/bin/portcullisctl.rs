//! `portcullisctl`: the operator CLI.
//!
//! - `portcullisctl token --user alice` mints a login token with the
//!   gateway's secret (for tests and support).
//! - `portcullisctl check-config config/portcullis.toml` validates a config
//!   the way the dataplane will, without starting anything.
//! - `portcullisctl filter …` manages the XDP flood filter through its
//!   pinned maps: attach/detach, counters and top sources, blocklist and
//!   allowlist CIDRs, rates, gateway ports.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use portcullis_common::FilterConfig;
use portcullis_core::Config;
use portcullis_proto::token::{sign, Claims};
use portcullis_xdp::{AttachMode, Cidr, Filter, List, Proto, PIN_DIR};

/// Operate Portcullis gateways.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a login token signed with the gateway's token secret.
    Token {
        /// Config whose `[auth]` secret signs the token.
        #[arg(long, default_value = "config/portcullis.toml")]
        config: PathBuf,
        /// User id.
        #[arg(long)]
        user: String,
        /// Device type (multi-login policies tell devices apart by it).
        #[arg(long, default_value = "pc")]
        device: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Validate a configuration file.
    CheckConfig {
        /// The file.
        path: PathBuf,
    },
    /// The XDP flood filter.
    Filter {
        /// Where the filter's program link and maps are pinned (bpffs).
        #[arg(long, default_value = PIN_DIR, global = true)]
        pin_dir: PathBuf,
        #[command(subcommand)]
        command: FilterCommand,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Load the program and attach it to an interface (pinned: it stays
    /// attached after this command exits). Rules and counters of an earlier
    /// load are kept.
    Attach {
        /// Interface.
        #[arg(long)]
        iface: String,
        /// Network namespace of the interface (`ip netns` name).
        #[arg(long)]
        netns: Option<String>,
        /// Fail rather than fall back to SKB mode.
        #[arg(long)]
        native: bool,
    },
    /// Detach the program from an interface (rules and counters stay pinned).
    Detach {
        /// Interface.
        #[arg(long)]
        iface: String,
        /// Network namespace of the interface.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Counters per reason, rates, ports, lists and the top sources.
    Status {
        /// How many top sources to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Sources dropped entirely.
    Block {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Sources that bypass the rate limits.
    Allow {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Set per-source rates to gateway ports, as RATE/BURST packets per
    /// second (0 turns a limit off).
    Rate {
        /// UDP packets per second per source, e.g. 1000/2000.
        #[arg(long, value_parser = parse_rate)]
        udp: Option<(u32, u32)>,
        /// TCP SYNs per second per source, e.g. 50/100.
        #[arg(long, value_parser = parse_rate)]
        syn: Option<(u32, u32)>,
    },
    /// Gateway ports: traffic to them is rate-limited and goes to AF_XDP.
    Port {
        /// `add` or `remove`.
        #[arg(value_enum)]
        op: PortOp,
        /// PROTO:PORT, e.g. udp:7000 tcp:7000.
        #[arg(value_parser = parse_port, required = true)]
        ports: Vec<(Proto, u16)>,
    },
    /// Remove every attachment and pinned map (rules and counters are lost).
    Purge,
}

#[derive(Subcommand)]
enum ListOp {
    /// Add CIDRs.
    Add {
        /// e.g. 203.0.113.0/24 2001:db8::/32 198.51.100.7
        #[arg(required = true)]
        cidrs: Vec<Cidr>,
    },
    /// Remove CIDRs.
    Remove {
        /// As added.
        #[arg(required = true)]
        cidrs: Vec<Cidr>,
    },
    /// List the CIDRs.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum PortOp {
    Add,
    Remove,
}

fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("bad rate {s:?}: expected RATE/BURST packets per second, e.g. 1000/2000 (0/0 for no limit)");
    let (r, b) = s.split_once('/').ok_or_else(bad)?;
    let (rate, burst) = (r.trim().parse::<u32>().map_err(|_| bad())?, b.trim().parse::<u32>().map_err(|_| bad())?);
    if rate > 0 && burst == 0 {
        return Err(format!("bad rate {s:?}: a rate above 0 needs a burst of at least 1"));
    }
    Ok((rate, burst))
}

fn parse_port(s: &str) -> Result<(Proto, u16), String> {
    let bad = || format!("bad port {s:?}: expected udp:PORT or tcp:PORT, e.g. udp:7000");
    let (proto, port) = s.split_once(':').ok_or_else(bad)?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "udp" => Proto::Udp,
        "tcp" => Proto::Tcp,
        _ => return Err(bad()),
    };
    let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    Ok((proto, port))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("portcullisctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Token { config, user, device, ttl } => {
            let config = Config::load(&config)?;
            anyhow::ensure!(!user.is_empty(), "--user must not be empty");
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl;
            println!("{}", sign(&config.auth.token_secret()?, &Claims { uid: user, dev: device, exp }));
        }
        Command::CheckConfig { path } => {
            let c = Config::load(&path)?;
            println!(
                "{}: ok ({} listener(s), {} service(s), {} route(s))",
                path.display(),
                c.listeners.len(),
                c.services.len(),
                c.routes.len()
            );
        }
        Command::Filter { pin_dir, command } => filter(Filter::at(pin_dir), command)?,
    }
    Ok(())
}

fn filter(f: Filter, command: FilterCommand) -> anyhow::Result<()> {
    match command {
        FilterCommand::Attach { iface, netns, native } => {
            if let Some(ns) = &netns {
                portcullis_xdp::netns::enter(ns)?;
            }
            let mode = f.attach(&iface, native)?;
            let mode = match mode {
                AttachMode::Native => "native",
                AttachMode::Skb => "SKB (generic)",
            };
            println!("attached to {iface} in {mode} mode; pinned, it stays attached after this command exits");
        }
        FilterCommand::Detach { iface, netns } => {
            if let Some(ns) = &netns {
                portcullis_xdp::netns::enter(ns)?;
            }
            f.detach(&iface)?;
            println!("detached from {iface}");
        }
        FilterCommand::Status { top } => {
            let rules = f.rules()?;
            println!("attached to: {}", f.attached().join(", "));
            for (verdict, n) in rules.counters()? {
                println!("  {:<18} {n}", verdict.name());
            }
            let r = rules.rates()?;
            let show = |rate: u32, burst: u32| {
                if rate == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{rate}/s burst {burst}")
                }
            };
            println!("rates: udp {}, syn {}", show(r.udp_rate, r.udp_burst), show(r.syn_rate, r.syn_burst));
            let ports: Vec<String> = rules
                .ports()?
                .iter()
                .map(|(p, n)| format!("{}:{n}", if *p == Proto::Udp { "udp" } else { "tcp" }))
                .collect();
            println!("gateway ports: {}", ports.join(" "));
            let mut rules = rules;
            for (name, list) in [("blocked", List::Block), ("allowed", List::Allow)] {
                let cidrs: Vec<String> = rules.list(list)?.iter().map(|c| c.to_string()).collect();
                println!("{name}: {}", cidrs.join(" "));
            }
            println!("top sources over their rate (packets dropped):");
            for s in rules.top_sources(top)? {
                println!("  {:<40} {:>12}", s.addr, s.dropped);
            }
        }
        FilterCommand::Block { op } => list_op(&f, List::Block, op)?,
        FilterCommand::Allow { op } => list_op(&f, List::Allow, op)?,
        FilterCommand::Rate { udp, syn } => {
            anyhow::ensure!(udp.is_some() || syn.is_some(), "give --udp RATE/BURST and/or --syn RATE/BURST");
            let mut rules = f.rules()?;
            let mut cfg: FilterConfig = rules.rates()?;
            if let Some((r, b)) = udp {
                (cfg.udp_rate, cfg.udp_burst) = (r, b);
            }
            if let Some((r, b)) = syn {
                (cfg.syn_rate, cfg.syn_burst) = (r, b);
            }
            rules.set_rates(cfg)?;
            println!("rates set: udp {}/{} syn {}/{}", cfg.udp_rate, cfg.udp_burst, cfg.syn_rate, cfg.syn_burst);
        }
        FilterCommand::Port { op, ports } => {
            let mut rules = f.rules()?;
            for (proto, port) in ports {
                match op {
                    PortOp::Add => rules.add_port(proto, port)?,
                    PortOp::Remove => {
                        rules.remove_port(proto, port)?;
                    }
                }
            }
            println!("ok");
        }
        FilterCommand::Purge => {
            f.purge()?;
            println!("purged");
        }
    }
    Ok(())
}

fn list_op(f: &Filter, list: List, op: ListOp) -> anyhow::Result<()> {
    let mut rules = f.rules()?;
    match op {
        ListOp::Add { cidrs } => {
            for c in cidrs {
                rules.add(list, c)?;
                println!("added {c}");
            }
        }
        ListOp::Remove { cidrs } => {
            for c in cidrs {
                if rules.remove(list, c)? {
                    println!("removed {c}");
                } else {
                    println!("{c} was not listed");
                }
            }
        }
        ListOp::List => {
            for c in rules.list(list)? {
                println!("{c}");
            }
        }
    }
    Ok(())
}
