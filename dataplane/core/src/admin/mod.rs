//! Operator commands: what the dataplane's agent API asks of a worker
//! (list and kick sessions, push, game servers, a new configuration), sent
//! through the worker's inbox like any cross-worker message and answered
//! through a callback; and the [`events`] log that operators watch.
//!
//! A command for "everyone" goes to every worker; each does its own part
//! and the agent sums or merges the answers.

pub mod events;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::backend::LinkState;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::session::{Session, SessionId};
pub use events::{Event, EventKind, EventLog};

/// Which sessions a listing includes (every filter set must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Sessions of this user.
    pub user: Option<String>,
    /// Members of this group.
    pub group: Option<String>,
    /// Sessions whose connection comes from this address.
    pub address: Option<std::net::IpAddr>,
}

/// Whom a kick ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickTarget {
    /// One session.
    Session(SessionId),
    /// Every session of a user.
    User(String),
}

/// Whom a push reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// Every session of a user.
    User(String),
    /// Every member of a group.
    Group(String),
    /// Every logged-in session.
    All,
}

/// A command for one worker.
#[derive(Debug)]
pub enum AdminOp {
    /// Sessions matching `filter` with an id above `after`, in id order, at
    /// most `limit`.
    ListSessions {
        /// Which sessions.
        filter: SessionFilter,
        /// Page start (exclusive).
        after: SessionId,
        /// Page size.
        limit: usize,
    },
    /// End sessions with a KICK.
    Kick {
        /// Whom.
        target: KickTarget,
        /// Sent in the KICK.
        reason: String,
        /// Tell the client to reconnect.
        reconnect: bool,
    },
    /// Push a business message.
    Push {
        /// Whom.
        target: PushTarget,
        /// Command id the clients see.
        cmd: u32,
        /// Payload.
        payload: Arc<[u8]>,
    },
    /// The worker's game-server links.
    Links,
    /// Stop (or resume) giving new sessions to a game server.
    Drain {
        /// The server.
        addr: SocketAddr,
        /// Drained or not.
        drained: bool,
    },
    /// Apply a validated configuration's live parts (see
    /// [`Config::restart_needed`] for the others).
    ApplyConfig(Arc<Config>),
}

/// What a session looks like to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Id.
    pub id: SessionId,
    /// Worker.
    pub worker: u32,
    /// User, if logged in.
    pub user: String,
    /// Device.
    pub device: String,
    /// Peer address of its connection, if connected.
    pub address: Option<std::net::IpAddr>,
    /// Groups.
    pub groups: Vec<String>,
    /// Login time, ms since the Unix epoch (0 before login).
    pub logged_in_unix_ms: u64,
    /// Sequenced messages not yet acknowledged.
    pub unacked: usize,
}

/// What a game-server link looks like to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// Service name.
    pub service: String,
    /// Server address.
    pub addr: SocketAddr,
    /// Weight.
    pub weight: u32,
    /// Up, connecting or down.
    pub up: bool,
    /// A connect is under way.
    pub connecting: bool,
    /// Drained by an operator.
    pub drained: bool,
    /// Announced draining by the server.
    pub draining: bool,
    /// Requests awaiting its answer.
    pub in_flight: usize,
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswer {
    /// For [`AdminOp::ListSessions`].
    Sessions(Vec<SessionView>),
    /// Sessions kicked or pushed to.
    Count(usize),
    /// For [`AdminOp::Links`].
    Links(Vec<LinkView>),
    /// Done.
    Done,
}

/// Where a worker sends its answer (a callback, so the core needs no
/// channel type of the caller's runtime).
pub struct AdminReply(Box<dyn FnOnce(AdminAnswer) + Send>);

impl AdminReply {
    /// A reply that calls `f` with the answer.
    pub fn new(f: impl FnOnce(AdminAnswer) + Send + 'static) -> AdminReply {
        AdminReply(Box::new(f))
    }
}

impl fmt::Debug for AdminReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminReply")
    }
}

impl Gateway {
    /// Carries out an operator command and answers it.
    pub(crate) fn on_admin(&mut self, op: AdminOp, reply: AdminReply) {
        let answer = match op {
            AdminOp::ListSessions { filter, after, limit } => {
                AdminAnswer::Sessions(self.list_sessions(&filter, after, limit))
            }
            AdminOp::Kick { target, reason, reconnect } => {
                let targets = match target {
                    KickTarget::Session(id) => vec![id],
                    KickTarget::User(user) => self.sessions.of_user(&user).to_vec(),
                };
                let mut n = 0;
                for id in targets {
                    n += usize::from(self.kick_session_with(id, &reason, reconnect));
                }
                AdminAnswer::Count(n)
            }
            AdminOp::Push { target, cmd, payload } => {
                let mut targets = std::mem::take(&mut self.targets);
                targets.clear();
                match target {
                    PushTarget::User(user) => targets.extend_from_slice(self.sessions.of_user(&user)),
                    PushTarget::Group(group) => targets.extend(self.sessions.members(&group)),
                    PushTarget::All => targets.extend(self.sessions.iter().filter(|s| s.user.is_some()).map(|s| s.id)),
                }
                let n = self.push_to(&targets, cmd, &payload, 0);
                self.targets = targets;
                AdminAnswer::Count(n)
            }
            AdminOp::Links => AdminAnswer::Links(self.link_views()),
            AdminOp::Drain { addr, drained } => {
                let mut changed = false;
                for l in self.links.iter_mut().filter(|l| l.addr == addr && l.state != LinkState::Retired) {
                    changed |= l.drained != drained;
                    l.drained = drained;
                }
                if changed && self.worker == 0 {
                    let kind = if drained { EventKind::BackendDrain } else { EventKind::BackendUndrain };
                    self.event(kind, 0, "", &addr.to_string(), "by an operator");
                }
                AdminAnswer::Done
            }
            AdminOp::ApplyConfig(config) => {
                self.apply_config(&config);
                AdminAnswer::Done
            }
        };
        (reply.0)(answer);
    }

    fn list_sessions(&self, filter: &SessionFilter, after: SessionId, limit: usize) -> Vec<SessionView> {
        let matches = |s: &&Session| {
            s.id > after
                && filter.user.as_ref().is_none_or(|u| s.user_id() == Some(u.as_str()))
                && filter.group.as_ref().is_none_or(|g| s.groups.iter().any(|x| **x == **g))
                && filter.address.is_none_or(|a| s.conn.and_then(|c| self.conns.get(&c)).is_some_and(|c| c.ip == a))
        };
        // The smallest candidate set the indexes give.
        let candidates: Box<dyn Iterator<Item = &Session>> = match (&filter.user, &filter.group) {
            (Some(user), _) => Box::new(self.sessions.of_user(user).iter().filter_map(|id| self.sessions.get(*id))),
            (None, Some(group)) => Box::new(self.sessions.members(group).filter_map(|id| self.sessions.get(id))),
            (None, None) => Box::new(self.sessions.iter()),
        };
        let mut ids: Vec<SessionId> = candidates.filter(matches).map(|s| s.id).collect();
        // Only the page is sorted, whatever the number of sessions.
        if ids.len() > limit {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.session_view(id)).collect()
    }

    fn session_view(&self, id: SessionId) -> Option<SessionView> {
        let s = self.sessions.get(id)?;
        Some(SessionView {
            id,
            worker: self.worker as u32,
            user: s.user.as_ref().map(|u| u.user_id.to_string()).unwrap_or_default(),
            device: s.user.as_ref().map(|u| u.device.to_string()).unwrap_or_default(),
            address: s.conn.and_then(|c| self.conns.get(&c)).map(|c| c.ip),
            groups: s.groups.iter().map(|g| g.to_string()).collect(),
            logged_in_unix_ms: s.logged_in_at.map_or(0, |t| self.unix_time_ms(t)),
            unacked: s.replay.len(),
        })
    }

    pub(crate) fn link_views(&self) -> Vec<LinkView> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.state != LinkState::Retired)
            .map(|(id, l)| LinkView {
                service: self.router.services()[l.service].name.clone(),
                addr: l.addr,
                weight: self.router.services()[l.service].weight(id),
                up: l.state == LinkState::Up,
                connecting: l.state == LinkState::Connecting,
                drained: l.drained,
                draining: l.draining,
                in_flight: l.inflight.len(),
            })
            .collect()
    }

    /// Records an event in the process's log.
    pub(crate) fn event(&self, kind: EventKind, session: SessionId, user: &str, address: &str, detail: &str) {
        self.shared.events().push(Event {
            seq: 0,
            unix_ms: self.unix_time_ms(self.now),
            kind,
            worker: self.worker as u32,
            session,
            user: user.into(),
            address: address.into(),
            detail: detail.into(),
        });
    }
}
