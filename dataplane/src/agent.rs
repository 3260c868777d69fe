//! The agent API (`schema/admin.proto`, service `Agent`): how the control
//! plane reads and steers this dataplane. gRPC over a Unix socket created
//! owner-only, served by a thread of its own (a small tokio runtime) that
//! reaches the workers through their inboxes ([`CrossMsg::Admin`]) and
//! reads their status reports; the workers never wait for it.
//!
//! gRPC rather than a framed protocol of our own: one schema and one
//! toolchain for the admin API and this one, server streaming for `Watch`,
//! deadlines and status codes for free, and a generated client for tests.
//!
//! Nothing here is needed to serve players: when the control plane is down
//! the dataplane runs on with its last configuration (including what the
//! control plane changed), and the event log keeps the last 4 096 events for
//! when it reconnects.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pb::agent_server::{Agent, AgentServer};
use portcullis_core::admin::{self, AdminAnswer, AdminOp, AdminReply, KickTarget, PushTarget, SessionFilter};
use portcullis_core::config::{Config, ServerConfig};
use portcullis_core::shard::{CrossMsg, Shared};
use portcullis_core::stats::LATENCY_BOUNDS;
use portcullis_proto::pb::admin as pb;
use tokio::sync::{oneshot, Notify};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::runtime::WorkerStatus;

/// How long a worker may take to answer an operator command.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest page of sessions.
const MAX_PAGE: usize = 10_000;

/// What the agent serves from.
pub struct AgentState {
    /// `gateway.name`.
    pub node: String,
    /// The IO backend's name.
    pub io: &'static str,
    /// The workers' shared state (inboxes, user index, event log).
    pub shared: Arc<Shared>,
    /// The workers' status reports.
    pub status: Arc<Mutex<Vec<WorkerStatus>>>,
    /// The running configuration.
    pub config: Mutex<Arc<Config>>,
    /// The file a reload without text reads.
    pub config_path: Option<PathBuf>,
    started: Instant,
    events: Arc<Notify>,
}

/// The running agent; dropping it stops it and removes its socket.
pub struct AgentHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AgentState {
    /// State for a running gateway.
    pub fn new(
        config: &Config,
        config_path: Option<PathBuf>,
        io: &'static str,
        shared: Arc<Shared>,
        status: Arc<Mutex<Vec<WorkerStatus>>>,
    ) -> AgentState {
        let events = Arc::new(Notify::new());
        let notify = events.clone();
        shared.events().set_listener(move || notify.notify_waiters());
        AgentState {
            node: config.gateway.name.clone(),
            io,
            shared,
            status,
            config: Mutex::new(Arc::new(config.clone())),
            config_path,
            started: Instant::now(),
            events,
        }
    }

    /// Serves the agent API on a Unix socket at `path` (replacing a stale
    /// one, but not one another process still serves; mode 0600, its
    /// directory created 0700 if missing) on a thread of its own.
    pub fn serve(self, path: &Path) -> std::io::Result<AgentHandle> {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another process serves an agent API at {}", path.display()),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let std_listener = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        std_listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new().name("portcullis-agent".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("agent API on {shown}: {e}"),
                };
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let served = tonic::transport::Server::builder()
                    .add_service(AgentServer::new(AgentService(Arc::new(self))))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!("agent API on {shown} stopped: {e}");
                }
            })
        })?;
        tracing::info!("agent API on {} (owner only)", path.display());
        Ok(AgentHandle { stop: Some(stop_tx), thread: Some(thread), path: path.to_owned() })
    }

    fn running(&self) -> Arc<Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends an operator command to every worker and collects the answers.
    async fn ask_all(&self, op: impl Fn() -> AdminOp) -> Result<Vec<AdminAnswer>, Status> {
        let workers = self.shared.workers();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for w in 0..workers {
            let tx = tx.clone();
            let reply = AdminReply::new(move |a| {
                let _ = tx.send(a);
            });
            if self.shared.send(w, CrossMsg::Admin { op: op(), reply }).is_err() {
                return Err(Status::unavailable(format!("worker {w} is overloaded (its inbox is full); try again")));
            }
        }
        drop(tx);
        let mut answers = Vec::with_capacity(workers);
        let deadline = tokio::time::sleep(WORKER_TIMEOUT);
        tokio::pin!(deadline);
        while answers.len() < workers {
            tokio::select! {
                a = rx.recv() => match a {
                    Some(a) => answers.push(a),
                    None => return Err(Status::unavailable("a worker stopped before answering")),
                },
                _ = &mut deadline => return Err(Status::deadline_exceeded("a worker did not answer within 5 s")),
            }
        }
        Ok(answers)
    }

    /// Makes `config` the running configuration on every worker.
    async fn apply(&self, config: Config, detail: &str) -> Result<(), Status> {
        let config = Arc::new(config);
        self.ask_all(|| AdminOp::ApplyConfig(config.clone())).await?;
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.shared.events().push(admin::Event {
            seq: 0,
            unix_ms: unix_ms(),
            kind: admin::EventKind::ConfigReload,
            worker: 0,
            session: 0,
            user: String::new(),
            address: String::new(),
            detail: detail.into(),
        });
        Ok(())
    }

    async fn links(&self) -> Result<pb::BackendList, Status> {
        let config = self.running();
        let answers = self.ask_all(|| AdminOp::Links).await?;
        let workers = answers.len() as u32;
        let mut services: Vec<pb::ServiceInfo> = config
            .services
            .iter()
            .map(|s| pb::ServiceInfo {
                name: s.name.clone(),
                balance: format!("{:?}", s.balance),
                sticky: s.sticky,
                servers: s
                    .servers
                    .iter()
                    .map(|srv| pb::ServerInfo {
                        addr: srv.addr().to_string(),
                        weight: srv.weight(),
                        workers,
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect();
        let mut connecting: Vec<Vec<u32>> = services.iter().map(|s| vec![0; s.servers.len()]).collect();
        for answer in answers {
            let AdminAnswer::Links(links) = answer else { continue };
            for l in links {
                let Some(si) = services.iter().position(|s| s.name == l.service) else { continue };
                let addr = l.addr.to_string();
                let Some(vi) = services[si].servers.iter().position(|v| v.addr == addr) else { continue };
                let v = &mut services[si].servers[vi];
                v.links_up += u32::from(l.up);
                connecting[si][vi] += u32::from(l.connecting);
                v.in_flight += l.in_flight as u64;
                v.drained |= l.drained;
                v.draining |= l.draining;
            }
        }
        for (si, s) in services.iter_mut().enumerate() {
            for (vi, v) in s.servers.iter_mut().enumerate() {
                v.health = match (v.links_up, connecting[si][vi]) {
                    (up, _) if up == workers => "up",
                    (0, c) if c > 0 => "connecting",
                    (0, _) => "down",
                    _ => "partial",
                }
                .into();
            }
        }
        Ok(pb::BackendList { services })
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn counters<'a>(it: impl Iterator<Item = (&'a str, u64)>) -> Vec<pb::Counter> {
    it.map(|(name, value)| pb::Counter { name: name.into(), value, label: String::new() }).collect()
}

fn histogram(name: &str, label: &str, h: &portcullis_core::stats::Histogram) -> pb::Histogram {
    pb::Histogram {
        name: name.into(),
        label: label.into(),
        bounds_seconds: LATENCY_BOUNDS.to_vec(),
        counts: h.cumulative(),
        count: h.count(),
        sum_seconds: h.sum_ns as f64 / 1e9,
    }
}

fn session_info(node: &str, s: admin::SessionView) -> pb::SessionInfo {
    pb::SessionInfo {
        session_id: s.id,
        node: node.into(),
        worker: s.worker,
        user_id: s.user,
        device_id: s.device,
        address: s.address.map(|a| a.to_string()).unwrap_or_default(),
        connected: s.address.is_some(),
        groups: s.groups,
        logged_in_unix_ms: s.logged_in_unix_ms,
        unacked: s.unacked as u64,
    }
}

fn bad(key: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{key}: {e}"))
}

/// The gRPC service over the shared state (the watch tasks hold it too).
struct AgentService(Arc<AgentState>);

impl std::ops::Deref for AgentService {
    type Target = AgentState;
    fn deref(&self) -> &AgentState {
        &self.0
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let workers = status
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut latencies: Vec<pb::Histogram> =
                    w.latencies.backend.iter().map(|(s, h)| histogram("backend_request", s, h)).collect();
                latencies.push(histogram("client_answer", "", &w.latencies.client_answer));
                pb::WorkerStatus {
                    worker: i as u32,
                    connections: w.connections as u64,
                    sessions: w.sessions as u64,
                    groups: w.groups as u64,
                    links_up: w.links_up as u64,
                    in_flight: w.in_flight as u64,
                    output_bytes: w.output_bytes as u64,
                    counters: counters(w.stats.iter()),
                    io: counters(w.io.iter()),
                    latencies,
                }
            })
            .collect();
        Ok(Response::new(pb::NodeStatus {
            node: self.node.clone(),
            io: self.io.into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            workers,
            users: self.shared.user_count() as u64,
            groups: self.shared.groups().len() as u64,
            event_seq: self.shared.events().last_seq(),
        }))
    }

    async fn list_sessions(&self, r: Request<pb::ListSessionsRequest>) -> Result<Response<pb::SessionPage>, Status> {
        let r = r.into_inner();
        let limit = match r.page_size as usize {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        let after: u64 = match r.page_token.as_str() {
            "" => 0,
            t => t.parse().map_err(|_| bad("page_token", "not a token from an earlier page"))?,
        };
        let address: Option<IpAddr> = match r.address.as_str() {
            "" => None,
            a => Some(a.parse().map_err(|e| bad("address", e))?),
        };
        let filter = SessionFilter {
            user: Some(r.user_id).filter(|u| !u.is_empty()),
            group: Some(r.group).filter(|g| !g.is_empty()),
            address,
        };
        // One more than a page from each worker tells whether there is more.
        let answers =
            self.ask_all(|| AdminOp::ListSessions { filter: filter.clone(), after, limit: limit + 1 }).await?;
        let mut all: Vec<admin::SessionView> = answers
            .into_iter()
            .flat_map(|a| match a {
                AdminAnswer::Sessions(s) => s,
                _ => Vec::new(),
            })
            .collect();
        all.sort_unstable_by_key(|s| s.id);
        let more = all.len() > limit;
        all.truncate(limit);
        let next_page_token =
            if more { all.last().map(|s| s.id.to_string()).unwrap_or_default() } else { String::new() };
        let sessions = all.into_iter().map(|s| session_info(&self.node, s)).collect();
        Ok(Response::new(pb::SessionPage { sessions, next_page_token }))
    }

    async fn get_session(&self, r: Request<pb::SessionRef>) -> Result<Response<pb::SessionInfo>, Status> {
        let id = r.into_inner().session_id;
        let answers = self
            .ask_all(|| AdminOp::ListSessions {
                filter: SessionFilter::default(),
                after: id.saturating_sub(1),
                limit: 1,
            })
            .await?;
        answers
            .into_iter()
            .flat_map(|a| match a {
                AdminAnswer::Sessions(s) => s,
                _ => Vec::new(),
            })
            .find(|s| s.id == id)
            .map(|s| Response::new(session_info(&self.node, s)))
            .ok_or_else(|| Status::not_found(format!("no session {id}")))
    }

    async fn kick(&self, r: Request<pb::KickRequest>) -> Result<Response<pb::Count>, Status> {
        let r = r.into_inner();
        let target = match (r.session_id, r.user_id.as_str()) {
            (0, "") => return Err(Status::invalid_argument("give a session_id or a user_id")),
            (id, "") => KickTarget::Session(id),
            (0, user) => KickTarget::User(user.into()),
            _ => return Err(Status::invalid_argument("give a session_id or a user_id, not both")),
        };
        let reason = if r.reason.is_empty() { "kicked by an operator".to_string() } else { r.reason };
        let answers = self
            .ask_all(|| AdminOp::Kick { target: target.clone(), reason: reason.clone(), reconnect: r.reconnect })
            .await?;
        Ok(Response::new(pb::Count { count: sum(&answers) }))
    }

    async fn push(&self, r: Request<pb::PushRequest>) -> Result<Response<pb::Count>, Status> {
        let r = r.into_inner();
        let target = match r.target {
            Some(pb::push_request::Target::UserId(u)) if !u.is_empty() => PushTarget::User(u),
            Some(pb::push_request::Target::Group(g)) if !g.is_empty() => PushTarget::Group(g),
            Some(pb::push_request::Target::All(true)) => PushTarget::All,
            _ => return Err(Status::invalid_argument("give a target: user_id, group, or all = true")),
        };
        if r.cmd < portcullis_proto::cmd::FIRST_BUSINESS {
            return Err(bad(
                "cmd",
                format!(
                    "{} is a framework command id; pushes carry business ids (>= {})",
                    r.cmd,
                    portcullis_proto::cmd::FIRST_BUSINESS
                ),
            ));
        }
        let payload: Arc<[u8]> = r.payload.into();
        let answers =
            self.ask_all(|| AdminOp::Push { target: target.clone(), cmd: r.cmd, payload: payload.clone() }).await?;
        Ok(Response::new(pb::Count { count: sum(&answers) }))
    }

    async fn list_groups(&self, _: Request<pb::ListGroupsRequest>) -> Result<Response<pb::GroupList>, Status> {
        let mut groups: Vec<pb::GroupInfo> =
            self.shared.groups().into_iter().map(|(name, members)| pb::GroupInfo { name, members }).collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::GroupList { groups }))
    }

    async fn list_backends(&self, _: Request<pb::BackendsRequest>) -> Result<Response<pb::BackendList>, Status> {
        Ok(Response::new(self.links().await?))
    }

    async fn update_server(&self, r: Request<pb::ServerUpdate>) -> Result<Response<pb::BackendList>, Status> {
        use pb::server_update::Op;
        let r = r.into_inner();
        let addr: SocketAddr = r.addr.parse().map_err(|e| bad("addr", e))?;
        let running = self.running();
        let Some(si) = running.services.iter().position(|s| s.name == r.service) else {
            return Err(Status::not_found(format!("no service {:?}", r.service)));
        };
        let position = running.services[si].servers.iter().position(|s| s.addr() == addr);
        let op = Op::try_from(r.op).unwrap_or(Op::Unspecified);
        let mut config = (*running).clone();
        let servers = &mut config.services[si].servers;
        match (op, position) {
            (Op::Drain | Op::Undrain, Some(_)) => {
                let drained = op == Op::Drain;
                self.ask_all(|| AdminOp::Drain { addr, drained }).await?;
                return Ok(Response::new(self.links().await?));
            }
            (Op::Add, None) => servers.push(ServerConfig::Weighted { addr, weight: r.weight.max(1) }),
            (Op::Add, Some(_)) => return Err(Status::already_exists(format!("{addr} is already in {:?}", r.service))),
            (Op::Remove, Some(i)) => {
                servers.remove(i);
            }
            (Op::SetWeight, Some(i)) => servers[i] = ServerConfig::Weighted { addr, weight: r.weight },
            (Op::Unspecified, _) => {
                return Err(Status::invalid_argument("op: give add, remove, set_weight, drain or undrain"))
            }
            (_, None) => return Err(Status::not_found(format!("{addr} is not a server of {:?}", r.service))),
        }
        config.validate().map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.apply(config, &format!("{:?} {addr} in service {:?}", op, r.service)).await?;
        Ok(Response::new(self.links().await?))
    }

    async fn get_config(&self, _: Request<pb::ConfigRequest>) -> Result<Response<pb::ConfigView>, Status> {
        let config = self.running();
        let routes = config
            .routes
            .iter()
            .map(|r| pb::RouteInfo { first: r.commands[0], last: r.commands[1], service: r.service.clone() })
            .collect();
        let limits = toml::Value::try_from(&config.limits)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .map(|t| t.into_iter().map(|(k, v)| (k, v.to_string())).collect())
            .unwrap_or_default();
        Ok(Response::new(pb::ConfigView { node: self.node.clone(), routes, limits, toml: config.to_toml_redacted() }))
    }

    async fn set_limits(&self, r: Request<pb::SetLimitsRequest>) -> Result<Response<pb::ReloadReply>, Status> {
        let r = r.into_inner();
        if r.limits.is_empty() {
            return Err(Status::invalid_argument("limits: give at least one KEY=VALUE"));
        }
        let running = self.running();
        let config = running
            .with_limits(r.limits.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (applied, needs_restart) = running.changes(&config);
        if !needs_restart.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{} cannot change while running",
                needs_restart.join(", ")
            )));
        }
        self.apply(config, &format!("limits: {}", applied.join(", "))).await?;
        Ok(Response::new(pb::ReloadReply { node: self.node.clone(), applied, needs_restart }))
    }

    async fn reload(&self, r: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadReply>, Status> {
        let r = r.into_inner();
        let new = if r.config_toml.is_empty() {
            let path = self.config_path.as_ref().ok_or_else(|| {
                Status::failed_precondition("this dataplane has no config file to read: send the config's text")
            })?;
            Config::load(path)
        } else {
            Config::parse(&r.config_toml, "the reloaded config")
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let running = self.running();
        let (applied, needs_restart) = running.changes(&new);
        if !r.dry_run && !applied.is_empty() {
            let mut effective = new;
            effective.keep_restart_keys(&running);
            self.apply(effective, &format!("reload: {}", applied.join(", "))).await?;
        }
        Ok(Response::new(pb::ReloadReply { node: self.node.clone(), applied, needs_restart }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, r: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        let r = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (state, node) = (Arc::clone(&self.0), self.node.clone());
        let last = state.shared.events().last_seq();
        let mut after = match r.after_seq {
            // Only what happens from now on.
            0 => last,
            // A sequence number from before this dataplane restarted: all
            // that is held.
            n if n > last => 0,
            n => n,
        };
        tokio::spawn(async move {
            loop {
                let notified = state.events.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let batch = state.shared.events().after(after, 256);
                if batch.is_empty() {
                    tokio::select! {
                        _ = notified => continue,
                        _ = tx.closed() => return,
                    }
                }
                for e in batch {
                    after = e.seq;
                    if !r.kinds.is_empty() && !r.kinds.iter().any(|k| k == e.kind.name()) {
                        continue;
                    }
                    let event = pb::Event {
                        seq: e.seq,
                        node: node.clone(),
                        unix_ms: e.unix_ms,
                        kind: e.kind.name().into(),
                        session_id: e.session,
                        user_id: e.user,
                        address: e.address,
                        detail: e.detail,
                        worker: e.worker,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn sum(answers: &[AdminAnswer]) -> u64 {
    answers
        .iter()
        .map(|a| match a {
            AdminAnswer::Count(n) => *n as u64,
            _ => 0,
        })
        .sum()
}
