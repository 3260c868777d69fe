//! The admin API (`schema/admin.proto`, service `Admin`): authorizes the
//! caller, then answers from the dataplanes' agent APIs (merging when it
//! manages several) and from the XDP filter's maps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use portcullis_proto::pb::admin as pb;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{ApiCalls, Operators};
use crate::config::Role;
use crate::nodes::Node;

/// Everything the admin API serves from.
pub struct Control {
    /// Managed dataplanes.
    pub nodes: Vec<Node>,
    /// Operator tokens.
    pub operators: Operators,
    /// Call counts.
    pub calls: ApiCalls,
    /// The XDP filter's pin directory, if configured.
    pub filter: Option<PathBuf>,
    /// Events of every dataplane (and control's own filter changes).
    pub events: broadcast::Sender<pb::Event>,
}

/// The gRPC service.
#[derive(Clone)]
pub struct AdminService(pub Arc<Control>);

impl std::ops::Deref for AdminService {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.0
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A dataplane's error, naming it.
fn node_error(node: &Node, s: Status) -> Status {
    Status::new(s.code(), format!("dataplane {}: {}", node.name, s.message()))
}

impl Control {
    /// The nodes a request names: all for "", else that one.
    fn targets(&self, node: &str) -> Result<Vec<Node>, Status> {
        if node.is_empty() {
            return Ok(self.nodes.clone());
        }
        let n = self.nodes.iter().find(|n| n.name == node).cloned();
        n.map(|n| vec![n]).ok_or_else(|| Status::not_found(format!("no dataplane named {node:?}")))
    }

    /// Exactly one node: the one named, or the only one.
    fn single(&self, node: &str, what: &str) -> Result<Node, Status> {
        let mut t = self.targets(node)?;
        match t.len() {
            1 => Ok(t.remove(0)),
            0 => Err(Status::failed_precondition("this control plane manages no dataplane")),
            n => Err(Status::invalid_argument(format!(
                "{what}: name a dataplane (node); this control plane manages {n}"
            ))),
        }
    }

    /// Every node's status; unreachable ones are listed with why.
    pub async fn node_statuses(&self, node: &str) -> Result<(Vec<pb::NodeStatus>, Vec<pb::NodeError>), Status> {
        let mut ok = Vec::new();
        let mut down = Vec::new();
        for n in self.targets(node)? {
            match n.client.clone().status(pb::StatusRequest::default()).await {
                Ok(s) => ok.push(s.into_inner()),
                Err(e) => down.push(pb::NodeError { node: n.name.clone(), error: e.message().into() }),
            }
        }
        Ok((ok, down))
    }

    /// Every node's game servers (for metrics); unreachable nodes skipped.
    pub async fn backends(&self) -> Vec<(String, pb::BackendList)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if let Ok(b) = n.client.clone().list_backends(pb::BackendsRequest::default()).await {
                out.push((n.name.clone(), b.into_inner()));
            }
        }
        out
    }

    /// The filter's state, or "not configured".
    pub fn filter_state(&self, top: usize) -> pb::FilterState {
        match &self.filter {
            Some(dir) => crate::filter::state(dir, top),
            None => pb::FilterState { error: "no [filter] in the control config".into(), ..Default::default() },
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

macro_rules! guarded {
    ($self:ident, $req:ident, $method:literal, $role:expr, $body:expr) => {{
        $self.calls.authorize(&$self.operators, &$req, $method, $role)?;
        let r: Result<_, Status> = async { $body }.await;
        $self.calls.finish($method, r.map(Response::new))
    }};
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        guarded!(self, req, "Status", Role::Read, {
            let (nodes, unreachable) = self.node_statuses(&req.get_ref().node).await?;
            let api_calls = self
                .calls
                .snapshot()
                .into_iter()
                .map(|(m, o, n)| pb::Counter { name: o.into(), value: n, label: m.into() })
                .collect();
            Ok(pb::ClusterStatus { nodes, unreachable, filter: Some(self.filter_state(10)), api_calls })
        })
    }

    async fn list_sessions(&self, req: Request<pb::ListSessionsRequest>) -> Result<Response<pb::SessionPage>, Status> {
        guarded!(self, req, "ListSessions", Role::Read, {
            let r = req.get_ref();
            let nodes = self.targets(&r.node)?;
            let want = match r.page_size {
                0 => 100,
                n => n.min(10_000),
            };
            // The token is `node index:that node's token`.
            let (mut i, mut token) = match r.page_token.split_once(':') {
                Some((i, t)) => (
                    i.parse::<usize>().map_err(|_| Status::invalid_argument("page_token: not from an earlier page"))?,
                    t.to_string(),
                ),
                None if r.page_token.is_empty() => (0, String::new()),
                None => return Err(Status::invalid_argument("page_token: not from an earlier page")),
            };
            let mut sessions = Vec::new();
            while i < nodes.len() && (sessions.len() as u32) < want {
                let page = nodes[i]
                    .client
                    .clone()
                    .list_sessions(pb::ListSessionsRequest {
                        page_size: want - sessions.len() as u32,
                        page_token: token.clone(),
                        node: String::new(),
                        ..r.clone()
                    })
                    .await
                    .map_err(|e| node_error(&nodes[i], e))?
                    .into_inner();
                sessions.extend(page.sessions);
                if page.next_page_token.is_empty() {
                    i += 1;
                    token.clear();
                } else {
                    token = page.next_page_token;
                }
            }
            let next_page_token = if i < nodes.len() { format!("{i}:{token}") } else { String::new() };
            Ok(pb::SessionPage { sessions, next_page_token })
        })
    }

    async fn get_session(&self, req: Request<pb::SessionRef>) -> Result<Response<pb::SessionInfo>, Status> {
        guarded!(self, req, "GetSession", Role::Read, {
            for n in &self.nodes {
                match n.client.clone().get_session(*req.get_ref()).await {
                    Ok(s) => return Ok(s.into_inner()),
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => return Err(node_error(n, e)),
                }
            }
            Err(Status::not_found(format!("no session {}", req.get_ref().session_id)))
        })
    }

    async fn kick(&self, req: Request<pb::KickRequest>) -> Result<Response<pb::Count>, Status> {
        guarded!(self, req, "Kick", Role::Admin, {
            let mut count = 0;
            for n in &self.nodes {
                count += n
                    .client
                    .clone()
                    .kick(req.get_ref().clone())
                    .await
                    .map_err(|e| node_error(n, e))?
                    .into_inner()
                    .count;
            }
            if count == 0 && req.get_ref().session_id != 0 {
                return Err(Status::not_found(format!("no session {}", req.get_ref().session_id)));
            }
            Ok(pb::Count { count })
        })
    }

    async fn push(&self, req: Request<pb::PushRequest>) -> Result<Response<pb::Count>, Status> {
        guarded!(self, req, "Push", Role::Admin, {
            let mut count = 0;
            for n in &self.nodes {
                count += n
                    .client
                    .clone()
                    .push(req.get_ref().clone())
                    .await
                    .map_err(|e| node_error(n, e))?
                    .into_inner()
                    .count;
            }
            Ok(pb::Count { count })
        })
    }

    async fn list_groups(&self, req: Request<pb::ListGroupsRequest>) -> Result<Response<pb::GroupList>, Status> {
        guarded!(self, req, "ListGroups", Role::Read, {
            let mut merged: BTreeMap<String, u64> = BTreeMap::new();
            for n in self.targets(&req.get_ref().node)? {
                let groups =
                    n.client.clone().list_groups(req.get_ref().clone()).await.map_err(|e| node_error(&n, e))?;
                for g in groups.into_inner().groups {
                    *merged.entry(g.name).or_default() += g.members;
                }
            }
            Ok(pb::GroupList {
                groups: merged.into_iter().map(|(name, members)| pb::GroupInfo { name, members }).collect(),
            })
        })
    }

    async fn list_backends(&self, req: Request<pb::BackendsRequest>) -> Result<Response<pb::BackendList>, Status> {
        guarded!(self, req, "ListBackends", Role::Read, {
            let n = self.single(&req.get_ref().node, "ListBackends")?;
            Ok(n.client.clone().list_backends(req.get_ref().clone()).await.map_err(|e| node_error(&n, e))?.into_inner())
        })
    }

    async fn update_server(&self, req: Request<pb::ServerUpdate>) -> Result<Response<pb::BackendList>, Status> {
        guarded!(self, req, "UpdateServer", Role::Admin, {
            let mut last = pb::BackendList::default();
            for n in self.targets(&req.get_ref().node)? {
                last = n
                    .client
                    .clone()
                    .update_server(req.get_ref().clone())
                    .await
                    .map_err(|e| node_error(&n, e))?
                    .into_inner();
            }
            Ok(last)
        })
    }

    async fn get_config(&self, req: Request<pb::ConfigRequest>) -> Result<Response<pb::ConfigView>, Status> {
        guarded!(self, req, "GetConfig", Role::Read, {
            let n = self.single(&req.get_ref().node, "GetConfig")?;
            Ok(n.client.clone().get_config(req.get_ref().clone()).await.map_err(|e| node_error(&n, e))?.into_inner())
        })
    }

    async fn set_limits(&self, req: Request<pb::SetLimitsRequest>) -> Result<Response<pb::ReloadReply>, Status> {
        guarded!(self, req, "SetLimits", Role::Admin, {
            let mut last = pb::ReloadReply::default();
            for n in self.targets(&req.get_ref().node)? {
                last = n
                    .client
                    .clone()
                    .set_limits(req.get_ref().clone())
                    .await
                    .map_err(|e| node_error(&n, e))?
                    .into_inner();
            }
            Ok(last)
        })
    }

    async fn reload(&self, req: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadReply>, Status> {
        guarded!(self, req, "Reload", Role::Admin, {
            // Validate everywhere first: a config one node refuses is applied
            // to none.
            let nodes = self.targets(&req.get_ref().node)?;
            for n in &nodes {
                let dry = pb::ReloadRequest { dry_run: true, ..req.get_ref().clone() };
                n.client.clone().reload(dry).await.map_err(|e| node_error(n, e))?;
            }
            let mut last = pb::ReloadReply::default();
            for n in &nodes {
                last = n.client.clone().reload(req.get_ref().clone()).await.map_err(|e| node_error(n, e))?.into_inner();
            }
            Ok(last)
        })
    }

    async fn filter_status(&self, req: Request<pb::FilterStatusRequest>) -> Result<Response<pb::FilterState>, Status> {
        guarded!(self, req, "FilterStatus", Role::Read, {
            let top = match req.get_ref().top {
                0 => 10,
                n => n as usize,
            };
            Ok(self.filter_state(top))
        })
    }

    async fn filter_update(&self, req: Request<pb::FilterChange>) -> Result<Response<pb::FilterState>, Status> {
        guarded!(self, req, "FilterUpdate", Role::Admin, {
            let dir =
                self.filter.as_ref().ok_or_else(|| Status::failed_precondition("no [filter] in the control config"))?;
            let detail = crate::filter::change(dir, req.get_ref())?;
            let _ = self.events.send(pb::Event {
                node: "control".into(),
                unix_ms: unix_ms(),
                kind: "filter_block".into(),
                address: req.get_ref().cidrs.join(" "),
                detail,
                ..Default::default()
            });
            Ok(crate::filter::state(dir, 10))
        })
    }

    type WatchStream = EventStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        guarded!(self, req, "Watch", Role::Read, {
            let kinds = req.get_ref().kinds.clone();
            let mut rx = self.events.subscribe();
            let (tx, out) = tokio::sync::mpsc::channel(256);
            tokio::spawn(async move {
                loop {
                    let e = tokio::select! {
                        e = rx.recv() => e,
                        _ = tx.closed() => return,
                    };
                    let e = match e {
                        Ok(e) => e,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ =
                                tx.send(Err(Status::data_loss(format!("this watcher fell {n} events behind")))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if (kinds.is_empty() || kinds.contains(&e.kind)) && tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)) as EventStream)
        })
    }
}
