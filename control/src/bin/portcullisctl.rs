//! `portcullisctl`: the operator CLI.
//!
//! - `portcullisctl token --user alice` mints a login token with the
//!   gateway's secret (for tests and support).
//! - `portcullisctl check-config config/portcullis.toml` validates a config
//!   the way the dataplane will, without starting anything.
//! - `portcullisctl filter …` manages the XDP flood filter: attach/detach,
//!   counters and top sources, blocklist (with optional expiries, which the
//!   XDP program enforces by itself) and allowlist CIDRs, rates, gateway
//!   ports, threat feeds (`filter feed load|remove`, `filter feeds`). With `--control` (or `PORTCULLIS_CONTROL`) status and rules go
//!   through the control plane, which authorizes, counts and reports them;
//!   without it, portcullisctl opens the pinned maps itself (root, on the
//!   host: the way in when control is down).
//! - Every other command (`status`, `sessions`, `kick`, `push`, `groups`,
//!   `backends`, `routes`, `limits`, `reload`, `watch`) calls the control
//!   plane's admin API (`--control`, default `http://127.0.0.1:7400`) with
//!   the operator token of `--token` or `PORTCULLIS_TOKEN`; tables by
//!   default, `--json` for scripts.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use portcullis_common::FilterConfig;
use portcullis_core::Config;
use portcullis_proto::token::{sign, Claims};
use portcullis_xdp::{AttachMode, Cidr, Entry, Filter, List, Proto, Rules, PIN_DIR};

/// Operate Portcullis gateways.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The control plane's admin API, e.g. http://127.0.0.1:7400 (https://
    /// for TLS); also PORTCULLIS_CONTROL.
    #[arg(long, global = true)]
    control: Option<String>,
    /// Operator token (better: PORTCULLIS_TOKEN, which stays out of `ps`).
    #[arg(long, global = true)]
    token: Option<String>,
    /// PEM certificate to trust for an https:// control plane.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Print the API's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The control plane's address.
const DEFAULT_CONTROL: &str = "http://127.0.0.1:7400";

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
        /// Role for the command whitelist (`[security.whitelist]`); none:
        /// the gateway's `security.default_role`.
        #[arg(long, default_value = "")]
        role: String,
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
    /// Print a fresh random secret (for operator tokens and token secrets).
    Secret,
    #[command(flatten)]
    Admin(portcullis_control::cli::AdminCommand),
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
    /// Sources dropped entirely, for good or for a while.
    Block {
        #[command(subcommand)]
        op: BlockOp,
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
    /// Load or remove a threat-intelligence feed (plain CIDR lists, FireHOL
    /// .netset/.ipset, Spamhaus DROP/EDROP; IPv4 and IPv6).
    Feed {
        #[command(subcommand)]
        op: FeedOp,
    },
    /// The loaded threat feeds: entries, drops, when each was loaded.
    Feeds,
}

#[derive(Subcommand)]
enum FeedOp {
    /// Load a feed file under a name, or reload it: the filter then lists
    /// exactly the file's ranges for that feed (changed by difference, so
    /// ranges gone from the file are unblocked). Bad lines are skipped and
    /// reported; a file with no address is refused and the feed kept.
    Load {
        /// Name of the feed (letters, digits, '-', '_', '.').
        name: String,
        /// The file.
        file: PathBuf,
    },
    /// Unload a feed: its ranges are no longer dropped (unless another
    /// feed lists them).
    Remove {
        /// Name of the feed.
        name: String,
    },
}

#[derive(Subcommand)]
enum BlockOp {
    /// Block CIDRs (again: with the new expiry).
    Add {
        /// e.g. 203.0.113.0/24 2001:db8::/32 198.51.100.7
        #[arg(required = true)]
        cidrs: Vec<Cidr>,
        /// Unblock after this long (30s, 10m, 2h, 1d, or seconds); the XDP
        /// program lifts the block by itself. Without it: permanent.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Remove CIDRs.
    Remove {
        /// As added.
        #[arg(required = true)]
        cidrs: Vec<Cidr>,
    },
    /// List the blocked CIDRs and when each block ends (expired entries
    /// are removed first).
    List,
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

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?}: expected e.g. 30s, 10m, 2h, 1d or a number of seconds, above 0");
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)).filter(|s| *s > 0).ok_or_else(bad)?;
    Ok(Duration::from_secs(secs))
}

/// How long is left, rounded up to the second: `1h05m`, `9m59s`, `29s`.
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// When a block ends: `expires in 29s` or `permanent`.
fn show_expiry(e: &Entry) -> String {
    match e.expires_in {
        Some(left) => format!("expires in {}", show_duration(left)),
        None => "permanent".into(),
    }
}

/// The blocklist after removing expired entries.
fn blocklist(rules: &mut Rules) -> anyhow::Result<Vec<Entry>> {
    rules.purge_expired()?;
    Ok(rules.blocked()?)
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

/// A client of the control plane named by `--control` or
/// `PORTCULLIS_CONTROL` (default [`DEFAULT_CONTROL`]).
async fn connect(args: &Args, control: Option<String>) -> anyhow::Result<portcullis_control::client::Client> {
    let url = control.unwrap_or_else(|| DEFAULT_CONTROL.into());
    let token = args.token.clone().or_else(|| std::env::var("PORTCULLIS_TOKEN").ok()).filter(|t| !t.is_empty());
    if token.is_none() {
        anyhow::bail!(
            "give an operator token: --token or PORTCULLIS_TOKEN (the `[[api.tokens]]` of the control config)"
        );
    }
    portcullis_control::client::connect(&url, token.as_deref(), args.ca.as_deref()).await
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn run(mut args: Args) -> anyhow::Result<()> {
    let control = args.control.clone().or_else(|| std::env::var("PORTCULLIS_CONTROL").ok()).filter(|c| !c.is_empty());
    let command = std::mem::replace(&mut args.command, Command::Secret);
    match command {
        Command::Admin(cmd) => {
            return block_on(async {
                let api = connect(&args, control).await?;
                portcullis_control::cli::run(cmd, api, args.json).await
            })
        }
        Command::Filter { command, .. } if control.is_some() && !command.is_local_only() => {
            return block_on(async {
                let api = connect(&args, control).await?;
                filter_via_control(api, command, args.json).await
            })
        }
        Command::Secret => {
            let mut key = [0u8; 32];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
            println!("{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>());
            return Ok(());
        }
        command => args.command = command,
    }
    match args.command {
        Command::Token { config, user, device, ttl, role } => {
            let config = Config::load(&config)?;
            anyhow::ensure!(!user.is_empty(), "--user must not be empty");
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl;
            println!("{}", sign(&config.auth.token_secret()?, &Claims { uid: user, dev: device, exp, role }));
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
        Command::Filter { pin_dir, command } => filter(Filter::at(pin_dir), command, args.json)?,
        Command::Admin(_) | Command::Secret => unreachable!("handled above"),
    }
    Ok(())
}

impl FilterCommand {
    /// Commands that work on this host's interfaces and pins only.
    fn is_local_only(&self) -> bool {
        // Feeds are files on this host, loaded into this host's pins.
        matches!(
            self,
            FilterCommand::Attach { .. }
                | FilterCommand::Detach { .. }
                | FilterCommand::Purge
                | FilterCommand::Feed { .. }
                | FilterCommand::Feeds
        )
    }
}

/// A filter command through the control plane's admin API.
async fn filter_via_control(
    mut api: portcullis_control::client::Client,
    command: FilterCommand,
    json: bool,
) -> anyhow::Result<()> {
    use portcullis_proto::pb::admin::{filter_change::Op, FilterChange, FilterStatusRequest};
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    let cidrs = |c: Vec<Cidr>| c.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let change = |op: Op| FilterChange { op: op as i32, ..Default::default() };
    let req = match command {
        FilterCommand::Status { top } => {
            let s = api.filter_status(FilterStatusRequest { top: top as u32 }).await.map_err(status)?.into_inner();
            return show(json, &s);
        }
        FilterCommand::Block { op: BlockOp::Add { cidrs: c, ttl } } => {
            FilterChange { cidrs: cidrs(c), ttl_ms: ttl.map_or(0, |t| t.as_millis() as u64), ..change(Op::Block) }
        }
        FilterCommand::Block { op: BlockOp::Remove { cidrs: c } } => {
            FilterChange { cidrs: cidrs(c), ..change(Op::Unblock) }
        }
        FilterCommand::Allow { op: ListOp::Add { cidrs: c } } => FilterChange { cidrs: cidrs(c), ..change(Op::Allow) },
        FilterCommand::Allow { op: ListOp::Remove { cidrs: c } } => {
            FilterChange { cidrs: cidrs(c), ..change(Op::Disallow) }
        }
        FilterCommand::Block { op: BlockOp::List } | FilterCommand::Allow { op: ListOp::List } => {
            let s = api.filter_status(FilterStatusRequest { top: 0 }).await.map_err(status)?.into_inner();
            return show(json, &s);
        }
        FilterCommand::Rate { udp, syn } => FilterChange {
            udp_rate: udp.map(|r| r.0),
            udp_burst: udp.map(|r| r.1),
            syn_rate: syn.map(|r| r.0),
            syn_burst: syn.map(|r| r.1),
            ..change(Op::SetRates)
        },
        FilterCommand::Port { op, ports } => FilterChange {
            ports: ports.iter().map(|(p, n)| format!("{}:{n}", if *p == Proto::Udp { "udp" } else { "tcp" })).collect(),
            ..change(if matches!(op, PortOp::Add) { Op::AddPort } else { Op::RemovePort })
        },
        FilterCommand::Attach { .. }
        | FilterCommand::Detach { .. }
        | FilterCommand::Purge
        | FilterCommand::Feed { .. }
        | FilterCommand::Feeds => {
            unreachable!("local only")
        }
    };
    let s = api.filter_update(req).await.map_err(status)?.into_inner();
    show(json, &s)
}

fn show(json: bool, s: &portcullis_proto::pb::admin::FilterState) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        print!("{}", portcullis_control::client::show_filter(s));
    }
    Ok(())
}

fn filter(f: Filter, command: FilterCommand, json: bool) -> anyhow::Result<()> {
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
            let blocked: Vec<String> =
                blocklist(&mut rules)?.iter().map(|e| format!("{} ({})", e.cidr, show_expiry(e))).collect();
            println!("blocked: {}", blocked.join(", "));
            let allowed: Vec<String> = rules.list(List::Allow)?.iter().map(|c| c.to_string()).collect();
            println!("allowed: {}", allowed.join(" "));
            let feeds = rules.feeds()?;
            let shown: Vec<String> = feeds
                .iter()
                .map(|f| format!("{} ({} entries, {} dropped)", f.name, f.entries_v4 + f.entries_v6, f.drops))
                .collect();
            println!("threat feeds: {}", shown.join(", "));
            println!("top sources over their rate (packets dropped):");
            for s in rules.top_sources(top)? {
                println!("  {:<40} {:>12}", s.addr, s.dropped);
            }
        }
        FilterCommand::Block { op } => block_op(&mut f.rules()?, op)?,
        FilterCommand::Allow { op } => list_op(&mut f.rules()?, List::Allow, op)?,
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
        FilterCommand::Feed { op: FeedOp::Load { name, file } } => {
            let started = std::time::Instant::now();
            let parsed = portcullis_xdp::feeds::load_file(&file)?;
            if parsed.bad_lines > 0 {
                eprintln!(
                    "warning: {} bad line(s) skipped:\n{}",
                    parsed.bad_lines,
                    parsed.describe_bad(&file.display().to_string())
                );
            }
            let parsed_in = started.elapsed();
            let report = f.rules()?.sync_feed(&name, &parsed.entries)?;
            let (v4, v6) = parsed.counts();
            println!(
                "feed {name}: {} entries ({v4} IPv4, {v6} IPv6) from {}: +{} −{}; parsed in {} ms, loaded in {} ms",
                report.entries,
                file.display(),
                report.added,
                report.removed,
                parsed_in.as_millis(),
                (started.elapsed() - parsed_in).as_millis()
            );
        }
        FilterCommand::Feed { op: FeedOp::Remove { name } } => match f.rules()?.remove_feed(&name)? {
            Some(r) => println!("feed {name} removed ({} entries)", r.removed),
            None => anyhow::bail!("no feed named {name:?} is loaded (see portcullisctl filter feeds)"),
        },
        FilterCommand::Feeds => {
            let feeds = f.rules()?.feeds()?;
            let now = SystemTime::now();
            if json {
                let list: Vec<serde_json::Value> = feeds
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "name": f.name,
                            "id": f.id,
                            "entries_v4": f.entries_v4,
                            "entries_v6": f.entries_v6,
                            "drops": f.drops,
                            "loaded_unix_ms": f.loaded.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:>9} {:>9} {:>14}  LOADED", "FEED", "IPv4", "IPv6", "DROPPED");
                for f in feeds {
                    let ago = now.duration_since(f.loaded).unwrap_or_default();
                    println!(
                        "{:<24} {:>9} {:>9} {:>14}  {} ago",
                        f.name,
                        f.entries_v4,
                        f.entries_v6,
                        f.drops,
                        show_duration(ago.max(Duration::from_secs(1)))
                    );
                }
            }
        }
    }
    Ok(())
}

fn block_op(rules: &mut Rules, op: BlockOp) -> anyhow::Result<()> {
    match op {
        BlockOp::Add { cidrs, ttl } => {
            for c in cidrs {
                rules.block_for(c, ttl)?;
                match ttl {
                    Some(ttl) => println!("blocked {c} for {}", show_duration(ttl)),
                    None => println!("blocked {c} permanently"),
                }
            }
        }
        BlockOp::Remove { cidrs } => list_op(rules, List::Block, ListOp::Remove { cidrs })?,
        BlockOp::List => {
            for e in blocklist(rules)? {
                println!("{:<20} {}", e.cidr.to_string(), show_expiry(&e));
            }
        }
    }
    Ok(())
}

fn list_op(rules: &mut Rules, list: List, op: ListOp) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_a_unit_or_seconds() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_ttl("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        for bad in ["0", "0s", "", "s", "10x", "-5", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_show_their_two_largest_units_rounded_up() {
        assert_eq!(show_duration(Duration::from_millis(28_001)), "29s");
        assert_eq!(show_duration(Duration::from_secs(599)), "9m59s");
        assert_eq!(show_duration(Duration::from_secs(3_900)), "1h05m");
        assert_eq!(show_duration(Duration::from_secs(90_000)), "1d01h");
    }
}
