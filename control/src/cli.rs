//! `portcullisctl`'s commands that go through the control plane's admin
//! API: one per admin call, human tables by default, `--json` for scripts.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use portcullis_proto::pb::admin as pb;
use serde::Serialize;

use crate::client::{self, Client};

/// Commands answered by `portcullis-control`.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// Dataplanes, workers, connections, sessions, refusals, the XDP filter.
    Status {
        /// Only this dataplane.
        #[arg(long, default_value = "")]
        node: String,
    },
    /// Sessions: list (paged, filtered) or show one.
    Sessions {
        /// What to do.
        #[command(subcommand)]
        op: SessionsOp,
    },
    /// End a session, or every session of a user, with a KICK.
    Kick {
        /// The session id.
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        session: Option<u64>,
        /// Every session of this user.
        #[arg(long)]
        user: Option<String>,
        /// Sent to the client.
        #[arg(long, default_value = "kicked by an operator")]
        reason: String,
        /// Tell the client to reconnect and resume elsewhere.
        #[arg(long)]
        reconnect: bool,
    },
    /// Push a message to a user, a group or everyone (e.g. a maintenance
    /// notice).
    Push {
        /// A user.
        #[arg(long, group = "target")]
        user: Option<String>,
        /// A group.
        #[arg(long, group = "target")]
        group: Option<String>,
        /// Everyone logged in.
        #[arg(long, group = "target")]
        all: bool,
        /// Business command id the clients see.
        #[arg(long)]
        cmd: u32,
        /// Payload (text).
        #[arg(long, default_value = "")]
        payload: String,
    },
    /// Groups and their members.
    Groups {
        /// What to do.
        #[command(subcommand)]
        op: GroupsOp,
    },
    /// Game servers: list, add, remove, weight, drain, undrain.
    Backends {
        /// What to do.
        #[command(subcommand)]
        op: BackendsOp,
    },
    /// The route table.
    Routes {
        /// The dataplane (needed when control manages several).
        #[arg(long, default_value = "")]
        node: String,
    },
    /// Limits: show, or change live.
    Limits {
        /// What to do.
        #[command(subcommand)]
        op: LimitsOp,
    },
    /// Reload the configuration: validated first (a bad one is refused
    /// naming the key), then what can change live is applied and what needs
    /// a restart is listed.
    Reload {
        /// Send this file; without it each dataplane reads its own file again.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Validate and list the changes only.
        #[arg(long)]
        dry_run: bool,
        /// Only this dataplane.
        #[arg(long, default_value = "")]
        node: String,
    },
    /// Print events as they happen: logins, logouts, kicks, backends,
    /// filter blocks, reloads.
    Watch {
        /// Only these kinds (login, logout, kick, backend_up, backend_down,
        /// backend_drain, backend_undrain, filter_block, config_reload).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `sessions …`.
#[derive(Subcommand)]
pub enum SessionsOp {
    /// A page of sessions.
    List {
        /// Of this user.
        #[arg(long, default_value = "")]
        user: String,
        /// Members of this group.
        #[arg(long, default_value = "")]
        group: String,
        /// From this client address.
        #[arg(long, default_value = "")]
        address: String,
        /// Sessions per page.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// From an earlier page's "more" line.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only this dataplane.
        #[arg(long, default_value = "")]
        node: String,
    },
    /// One session.
    Show {
        /// Its id.
        session: u64,
    },
}

/// `groups …`.
#[derive(Subcommand)]
pub enum GroupsOp {
    /// Groups with their member counts.
    List,
    /// A group's member sessions.
    Members {
        /// The group.
        group: String,
    },
}

/// `backends …`.
#[derive(Subcommand)]
pub enum BackendsOp {
    /// Servers with health, links and requests in flight.
    List {
        /// The dataplane (needed when control manages several).
        #[arg(long, default_value = "")]
        node: String,
    },
    /// Add a server to a service.
    Add {
        /// Service.
        service: String,
        /// HOST:PORT.
        addr: String,
        /// Weight.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a server (requests in flight on it fail: drain it first).
    Remove {
        /// Service.
        service: String,
        /// HOST:PORT.
        addr: String,
    },
    /// Set a server's weight.
    Weight {
        /// Service.
        service: String,
        /// HOST:PORT.
        addr: String,
        /// New weight.
        weight: u32,
    },
    /// Give a server no new sessions (its sessions stay).
    Drain {
        /// Service.
        service: String,
        /// HOST:PORT.
        addr: String,
    },
    /// Give a drained server new sessions again.
    Undrain {
        /// Service.
        service: String,
        /// HOST:PORT.
        addr: String,
    },
}

/// `limits …`.
#[derive(Subcommand)]
pub enum LimitsOp {
    /// The `[limits]` in effect.
    Show {
        /// The dataplane (needed when control manages several).
        #[arg(long, default_value = "")]
        node: String,
    },
    /// Change limits live: KEY=VALUE… (keys of `[limits]`).
    Set {
        /// e.g. session_rate=100 ip_rate=500.
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

fn sessions(n: u64) -> String {
    format!("{n} session{}", if n == 1 { "" } else { "s" })
}

fn show_reload(r: &pb::ReloadReply) -> String {
    let mut out = String::new();
    out += &format!("applied: {}\n", if r.applied.is_empty() { "nothing".into() } else { r.applied.join(", ") });
    if !r.needs_restart.is_empty() {
        out += &format!("need a restart (not applied): {}\n", r.needs_restart.join(", "));
    }
    out
}

/// Runs one command against control.
pub async fn run(cmd: AdminCommand, mut api: Client, json: bool) -> anyhow::Result<()> {
    use pb::server_update::Op;
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    match cmd {
        AdminCommand::Status { node } => {
            let s = api.status(pb::StatusRequest { node }).await.map_err(status)?.into_inner();
            print(json, &s, client::show_status)?;
        }
        AdminCommand::Sessions { op: SessionsOp::List { user, group, address, page_size, page_token, node } } => {
            let req = pb::ListSessionsRequest { node, user_id: user, group, address, page_size, page_token };
            let page = api.list_sessions(req).await.map_err(status)?.into_inner();
            print(json, &page, client::show_sessions)?;
        }
        AdminCommand::Sessions { op: SessionsOp::Show { session } } => {
            let s = api.get_session(pb::SessionRef { session_id: session }).await.map_err(status)?.into_inner();
            let page = pb::SessionPage { sessions: vec![s], next_page_token: String::new() };
            print(json, &page.sessions[0], |_| client::show_sessions(&page))?;
        }
        AdminCommand::Kick { session, user, reason, reconnect } => {
            let req = pb::KickRequest {
                session_id: session.unwrap_or(0),
                user_id: user.unwrap_or_default(),
                reason,
                reconnect,
            };
            let n = api.kick(req).await.map_err(status)?.into_inner();
            print(json, &n, |n| format!("kicked {}\n", sessions(n.count)))?;
        }
        AdminCommand::Push { user, group, all, cmd, payload } => {
            use pb::push_request::Target;
            let target = match (user, group, all) {
                (Some(u), _, _) => Target::UserId(u),
                (_, Some(g), _) => Target::Group(g),
                (_, _, true) => Target::All(true),
                _ => anyhow::bail!("give --user, --group or --all"),
            };
            let req = pb::PushRequest { target: Some(target), cmd, payload: payload.into_bytes() };
            let n = api.push(req).await.map_err(status)?.into_inner();
            print(json, &n, |n| format!("pushed to {}\n", sessions(n.count)))?;
        }
        AdminCommand::Groups { op: GroupsOp::List } => {
            let g = api.list_groups(pb::ListGroupsRequest::default()).await.map_err(status)?.into_inner();
            print(json, &g, |g| {
                let rows: Vec<Vec<String>> =
                    g.groups.iter().map(|g| vec![g.name.clone(), g.members.to_string()]).collect();
                client::table(&["GROUP", "MEMBERS"], &rows)
            })?;
        }
        AdminCommand::Groups { op: GroupsOp::Members { group } } => {
            let req = pb::ListSessionsRequest { group, page_size: 10_000, ..Default::default() };
            let page = api.list_sessions(req).await.map_err(status)?.into_inner();
            print(json, &page, client::show_sessions)?;
        }
        AdminCommand::Backends { op } => {
            let update = |service: String, addr: String, op: Op, weight: u32| pb::ServerUpdate {
                node: String::new(),
                service,
                addr,
                op: op as i32,
                weight,
            };
            let req = match op {
                BackendsOp::List { node } => {
                    let b = api.list_backends(pb::BackendsRequest { node }).await.map_err(status)?.into_inner();
                    return print(json, &b, client::show_backends);
                }
                BackendsOp::Add { service, addr, weight } => update(service, addr, Op::Add, weight),
                BackendsOp::Remove { service, addr } => update(service, addr, Op::Remove, 0),
                BackendsOp::Weight { service, addr, weight } => update(service, addr, Op::SetWeight, weight),
                BackendsOp::Drain { service, addr } => update(service, addr, Op::Drain, 0),
                BackendsOp::Undrain { service, addr } => update(service, addr, Op::Undrain, 0),
            };
            let b = api.update_server(req).await.map_err(status)?.into_inner();
            print(json, &b, client::show_backends)?;
        }
        AdminCommand::Routes { node } => {
            let c = api.get_config(pb::ConfigRequest { node }).await.map_err(status)?.into_inner();
            print(json, &c.routes, |routes| {
                let rows: Vec<Vec<String>> =
                    routes.iter().map(|r| vec![format!("{}-{}", r.first, r.last), r.service.clone()]).collect();
                client::table(&["COMMANDS", "SERVICE"], &rows)
            })?;
        }
        AdminCommand::Limits { op: LimitsOp::Show { node } } => {
            let c = api.get_config(pb::ConfigRequest { node }).await.map_err(status)?.into_inner();
            let limits: std::collections::BTreeMap<_, _> = c.limits.into_iter().collect();
            print(json, &limits, |l| {
                let rows: Vec<Vec<String>> = l.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
                client::table(&["LIMIT", "VALUE"], &rows)
            })?;
        }
        AdminCommand::Limits { op: LimitsOp::Set { changes } } => {
            let mut limits = std::collections::HashMap::new();
            for c in changes {
                let (k, v) = c.split_once('=').ok_or_else(|| anyhow::anyhow!("{c:?}: expected KEY=VALUE"))?;
                limits.insert(k.trim().to_string(), v.trim().to_string());
            }
            let r = api
                .set_limits(pb::SetLimitsRequest { node: String::new(), limits })
                .await
                .map_err(status)?
                .into_inner();
            print(json, &r, show_reload)?;
        }
        AdminCommand::Reload { file, dry_run, node } => {
            let config_toml = match &file {
                Some(f) => std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
                None => String::new(),
            };
            let r = api.reload(pb::ReloadRequest { node, config_toml, dry_run }).await.map_err(status)?.into_inner();
            print(json, &r, show_reload)?;
        }
        AdminCommand::Watch { kinds, count } => {
            let mut stream = api.watch(pb::WatchRequest { after_seq: 0, kinds }).await.map_err(status)?.into_inner();
            let mut seen = 0;
            let mut out = std::io::stdout();
            while count.is_none_or(|c| seen < c) {
                let Some(e) = stream.message().await.map_err(status)? else { break };
                let line = if json { serde_json::to_string(&e)? } else { client::show_event(&e) };
                // Whoever reads the events may stop (`| head`): that ends the watch.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
                seen += 1;
            }
        }
    }
    Ok(())
}
