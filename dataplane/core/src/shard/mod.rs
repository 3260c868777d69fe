//! What the workers of one gateway share: the concurrent user index, group
//! member counts, connection counters, the directory of sessions that moved
//! worker, and one bounded lock-free inbox ring per worker for cross-worker
//! delivery.
//!
//! Sessions themselves are sharded: each lives on one worker and only that
//! worker touches it. Nothing here is locked on the single-worker message
//! path; the maps are sharded (dashmap) and touched on login, logout, join,
//! leave, connect, and by P2P lookups.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_queue::ArrayQueue;
use dashmap::DashMap;
use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::Codec;

use crate::conn::ConnId;
use crate::session::policy::{Decision, Policy, UserSession};
use crate::session::{Session, SessionId};

/// A session id is `process (16 bits) ‖ worker (8 bits) ‖ counter (40 bits)`:
/// the process part is random per gateway process, so that game servers
/// linked to several gateways never see two sessions with one id.
pub const WORKER_SHIFT: u32 = 40;
/// Where the per-process part of a session id starts.
pub const PROCESS_SHIFT: u32 = 48;

/// Capacity of each worker's inbox ring.
pub const INBOX_CAPACITY: usize = 64 * 1024;

/// A message for a session delivered by another player (SEND_TO_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryMsg {
    /// The SEND_TO_* command it was sent with.
    pub cmd: u32,
    /// Sender.
    pub from_user_id: String,
    /// Group, for group messages.
    pub group: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Where a worker that delivered a SEND_TO_* message reports how many
/// sessions took it: the sender's worker, which answers the sender once
/// every worker has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The sender's worker.
    pub worker: usize,
    /// The answer waiting there.
    pub id: u64,
}

/// A message from one worker to another.
#[derive(Debug)]
pub enum CrossMsg {
    /// Deliver to these sessions of the receiving worker.
    Deliver {
        /// Target sessions.
        sessions: Vec<SessionId>,
        /// The message.
        msg: Arc<DeliveryMsg>,
        /// Where to report the count.
        receipt: Receipt,
    },
    /// Deliver to the receiving worker's members of `msg.group`.
    GroupDeliver {
        /// Session not to deliver to (the sender), or 0.
        exclude: SessionId,
        /// The message.
        msg: Arc<DeliveryMsg>,
        /// Where to report the count.
        receipt: Receipt,
    },
    /// The count of a [`CrossMsg::Deliver`] or [`CrossMsg::GroupDeliver`].
    Delivered {
        /// The answer it is for.
        id: u64,
        /// Sessions of the reporting worker that took the message.
        delivered: usize,
        /// Workers the reporting one passed part of it on to (sessions that
        /// moved there), each of which reports too.
        passed_on: usize,
    },
    /// A game server's answer or push for a session that lives on the
    /// receiving worker (it arrived on another worker's link).
    Forward {
        /// Target.
        session: SessionId,
        /// Command.
        cmd: u32,
        /// Request sequence number (0 for pushes).
        seq: u32,
        /// Envelope flags.
        flags: u32,
        /// Payload.
        payload: Vec<u8>,
    },
    /// An ERROR for a session that lives on the receiving worker.
    Error {
        /// Target.
        session: SessionId,
        /// Command answered.
        cmd: u32,
        /// Request sequence number.
        seq: u32,
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// End a session (another login replaced it).
    Kick {
        /// Target.
        session: SessionId,
        /// Reason sent in the KICK.
        reason: String,
    },
    /// A RESUME for a session of the receiving worker arrived elsewhere.
    ResumeRequest {
        /// The session.
        session: SessionId,
        /// The generation of the token presented.
        generation: u32,
        /// Highest server_seq the client processed.
        last_seq: u64,
        /// Codec of the new connection.
        codec: Codec,
        /// Worker and connection waiting for the answer.
        reply_to: (usize, ConnId),
        /// The RESUME frame's seq.
        seq: u32,
    },
    /// The session, detached from its old worker, for the waiting connection.
    ResumeGranted {
        /// The waiting connection.
        conn: ConnId,
        /// The RESUME frame's seq.
        seq: u32,
        /// The whole session.
        session: Box<Session>,
    },
    /// An operator command (from the agent API).
    Admin {
        /// What to do.
        op: crate::admin::AdminOp,
        /// Where to answer.
        reply: crate::admin::AdminReply,
    },
    /// The RESUME cannot be honoured.
    ResumeRefused {
        /// The waiting connection.
        conn: ConnId,
        /// The RESUME frame's seq.
        seq: u32,
        /// Why.
        reason: String,
    },
}

/// One worker's inbox.
pub struct Inbox {
    ring: ArrayQueue<CrossMsg>,
    sleeping: AtomicBool,
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// State shared by the workers of one gateway process.
pub struct Shared {
    inboxes: Box<[Inbox]>,
    users: DashMap<Box<str>, Vec<UserSession>>,
    groups: DashMap<Box<str>, Box<[u32]>>,
    moved: DashMap<SessionId, usize>,
    conns_total: AtomicUsize,
    conns_per_ip: DashMap<IpAddr, usize>,
    /// Of those, the connections that have not logged in.
    prelogin_per_ip: DashMap<IpAddr, usize>,
    login_order: AtomicU64,
    resume_key: [u8; 32],
    events: crate::admin::EventLog,
    /// Sources blocked by the behaviour link, until when.
    blocked: DashMap<IpAddr, std::time::Instant>,
    /// Where blocks go beyond the gateway (the XDP filter), if anywhere.
    block_sink: OnceLock<BlockSink>,
}

/// Called with each new block (source, duration) — by the worker that
/// decided it, so it must not wait long: hand it to another thread.
pub type BlockSink = Box<dyn Fn(IpAddr, std::time::Duration) + Send + Sync>;

impl Shared {
    /// Shared state for `workers` workers. `resume_key` signs resume tokens;
    /// it should come from a CSPRNG at start-up.
    pub fn new(workers: usize, resume_key: [u8; 32]) -> Arc<Shared> {
        let inboxes = (0..workers)
            .map(|_| Inbox {
                ring: ArrayQueue::new(INBOX_CAPACITY),
                sleeping: AtomicBool::new(false),
                waker: OnceLock::new(),
            })
            .collect();
        Arc::new(Shared {
            inboxes,
            users: DashMap::new(),
            groups: DashMap::new(),
            moved: DashMap::new(),
            conns_total: AtomicUsize::new(0),
            conns_per_ip: DashMap::new(),
            prelogin_per_ip: DashMap::new(),
            login_order: AtomicU64::new(1),
            resume_key,
            events: crate::admin::EventLog::default(),
            blocked: DashMap::new(),
            block_sink: OnceLock::new(),
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// The event log (logins, kicks, game servers…).
    pub fn events(&self) -> &crate::admin::EventLog {
        &self.events
    }

    /// The key of resume tokens.
    pub fn resume_key(&self) -> &[u8; 32] {
        &self.resume_key
    }

    /// The first session id of `worker`: the process part comes from the
    /// (random) resume key.
    pub fn session_base(&self, worker: usize) -> u64 {
        let process = u64::from(u16::from_le_bytes([self.resume_key[30], self.resume_key[31]]));
        (process << PROCESS_SHIFT) | ((worker as u64) << WORKER_SHIFT)
    }

    // ----- blocked sources -------------------------------------------------

    /// Installs where blocks go beyond the gateway (once).
    pub fn set_block_sink(&self, sink: impl Fn(IpAddr, std::time::Duration) + Send + Sync + 'static) {
        let _ = self.block_sink.set(Box::new(sink));
    }

    /// Blocks `ip` from `now` for `ttl` on every worker and hands it to the
    /// block sink; false if it was blocked already.
    pub fn block(&self, ip: IpAddr, now: std::time::Instant, ttl: std::time::Duration) -> bool {
        let until = now + ttl;
        let fresh = match self.blocked.entry(ip) {
            dashmap::Entry::Occupied(mut e) if *e.get() > now => {
                let longer = until > *e.get();
                if longer {
                    e.insert(until);
                }
                false
            }
            dashmap::Entry::Occupied(mut e) => {
                e.insert(until);
                true
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(until);
                true
            }
        };
        if fresh {
            if let Some(sink) = self.block_sink.get() {
                sink(ip, ttl);
            }
            // Forget expired blocks now and then (blocks are rare).
            self.blocked.retain(|_, t| *t > now);
        }
        fresh
    }

    /// Whether `ip` is blocked at `now`.
    pub fn is_blocked(&self, ip: IpAddr, now: std::time::Instant) -> bool {
        !self.blocked.is_empty() && self.blocked.get(&ip).is_some_and(|t| *t > now)
    }

    /// Sources blocked at `now`, with the time left.
    pub fn blocked(&self, now: std::time::Instant) -> Vec<(IpAddr, std::time::Duration)> {
        self.blocked.iter().filter(|e| *e.value() > now).map(|e| (*e.key(), *e.value() - now)).collect()
    }

    // ----- inboxes -------------------------------------------------------

    /// Installs the function that wakes `worker` from its IO wait.
    pub fn set_waker(&self, worker: usize, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.inboxes[worker].waker.set(Box::new(wake));
    }

    /// Queues a message for `worker`, waking it if it sleeps; gives the
    /// message back if the ring is full.
    pub fn send(&self, worker: usize, msg: CrossMsg) -> Result<(), CrossMsg> {
        let inbox = &self.inboxes[worker];
        inbox.ring.push(msg)?;
        if inbox.sleeping.swap(false, Ordering::AcqRel) {
            if let Some(wake) = inbox.waker.get() {
                wake();
            }
        }
        Ok(())
    }

    /// Takes the next message for `worker`.
    pub fn recv(&self, worker: usize) -> Option<CrossMsg> {
        self.inboxes[worker].ring.pop()
    }

    /// Messages waiting for `worker`.
    pub fn pending(&self, worker: usize) -> usize {
        self.inboxes[worker].ring.len()
    }

    /// `worker` is about to wait for IO: returns false (do not wait) if its
    /// inbox already has messages.
    #[must_use]
    pub fn prepare_sleep(&self, worker: usize) -> bool {
        let inbox = &self.inboxes[worker];
        inbox.sleeping.store(true, Ordering::Release);
        if inbox.ring.is_empty() {
            true
        } else {
            inbox.sleeping.store(false, Ordering::Release);
            false
        }
    }

    /// `worker` woke up.
    pub fn woke(&self, worker: usize) {
        self.inboxes[worker].sleeping.store(false, Ordering::Release);
    }

    // ----- sessions --------------------------------------------------------

    /// The worker that owns a session now.
    pub fn owner_of(&self, session: SessionId) -> usize {
        self.moved.get(&session).map_or(((session >> WORKER_SHIFT) & 0xff) as usize, |w| *w)
    }

    /// Records that a session now lives on `worker`.
    pub fn session_moved(&self, session: SessionId, worker: usize) {
        if ((session >> WORKER_SHIFT) & 0xff) as usize == worker {
            self.moved.remove(&session);
        } else {
            self.moved.insert(session, worker);
        }
    }

    // ----- users -----------------------------------------------------------

    /// Logs `session` of `user` in under `policy`, atomically per user:
    /// returns the sessions to end, or the refusal.
    pub fn login(&self, policy: &Policy, user: &str, device: &str, worker: usize, session: SessionId) -> Decision {
        let mut entry = self.users.entry(user.into()).or_default();
        let decision = policy.decide(&entry, device);
        if let Decision::Accept { replace } = &decision {
            entry.retain(|s| !replace.iter().any(|r| r.session == s.session));
            let order = self.login_order.fetch_add(1, Ordering::Relaxed);
            entry.push(UserSession { worker, session, device: device.into(), order, connected: true });
        }
        let empty = entry.is_empty();
        drop(entry);
        if empty {
            self.users.remove_if(user, |_, v| v.is_empty());
        }
        decision
    }

    /// Every session of a user, on every worker.
    pub fn sessions_of(&self, user: &str) -> Vec<UserSession> {
        self.users.get(user).map(|v| v.clone()).unwrap_or_default()
    }

    /// Updates where a session of `user` lives and whether it is connected.
    pub fn set_user_session(&self, user: &str, session: SessionId, worker: usize, connected: bool) {
        if let Some(mut list) = self.users.get_mut(user) {
            if let Some(s) = list.iter_mut().find(|s| s.session == session) {
                s.worker = worker;
                s.connected = connected;
            }
        }
    }

    /// Removes a session of `user` from the index.
    pub fn logout(&self, user: &str, session: SessionId) {
        if let Some(mut list) = self.users.get_mut(user) {
            list.retain(|s| s.session != session);
        }
        self.users.remove_if(user, |_, v| v.is_empty());
        self.moved.remove(&session);
    }

    /// Number of users with at least one session.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    // ----- groups ----------------------------------------------------------

    /// Counts a member of `group` on `worker` (+1 or -1).
    pub fn group_member(&self, group: &str, worker: usize, joined: bool) {
        let workers = self.workers();
        let mut counts = self.groups.entry(group.into()).or_insert_with(|| vec![0; workers].into());
        counts[worker] = if joined { counts[worker] + 1 } else { counts[worker].saturating_sub(1) };
        let empty = counts.iter().all(|&c| c == 0);
        drop(counts);
        if empty {
            self.groups.remove_if(group, |_, c| c.iter().all(|&n| n == 0));
        }
    }

    /// Members of `group` per worker (empty if none).
    pub fn group_counts(&self, group: &str) -> Box<[u32]> {
        self.groups.get(group).map(|c| c.clone()).unwrap_or_default()
    }

    /// Every group with members, and its members over all workers.
    pub fn groups(&self) -> Vec<(String, u64)> {
        self.groups.iter().map(|e| (e.key().to_string(), e.value().iter().map(|&n| u64::from(n)).sum())).collect()
    }

    // ----- connections -------------------------------------------------------

    /// Admits a connection from `ip` under the limits — the gateway's, the
    /// address's, and the address's for connections not logged in —
    /// counting it as not logged in.
    pub fn admit(
        &self,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
        max_prelogin_per_ip: usize,
    ) -> Result<(), &'static str> {
        if self.conns_total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.conns_total.fetch_sub(1, Ordering::AcqRel);
            return Err("the gateway is at its connection limit");
        }
        let mut n = self.conns_per_ip.entry(ip).or_insert(0);
        let mut prelogin = self.prelogin_per_ip.entry(ip).or_insert(0);
        let refused = if *n >= max_per_ip {
            Some("too many connections from this address")
        } else if *prelogin >= max_prelogin_per_ip {
            Some("too many connections from this address that have not logged in")
        } else {
            None
        };
        if let Some(why) = refused {
            drop((n, prelogin));
            self.prelogin_per_ip.remove_if(&ip, |_, n| *n == 0);
            self.conns_total.fetch_sub(1, Ordering::AcqRel);
            return Err(why);
        }
        *n += 1;
        *prelogin += 1;
        Ok(())
    }

    /// An admitted connection from `ip` logged in (or resumed).
    pub fn logged_in(&self, ip: IpAddr) {
        decrement(&self.prelogin_per_ip, ip);
    }

    /// Forgets an admitted connection.
    pub fn release(&self, ip: IpAddr, logged_in: bool) {
        self.conns_total.fetch_sub(1, Ordering::AcqRel);
        decrement(&self.conns_per_ip, ip);
        if !logged_in {
            decrement(&self.prelogin_per_ip, ip);
        }
    }

    /// Connections from `ip` that are logged in, on every worker.
    pub fn players_from(&self, ip: IpAddr) -> usize {
        let all = self.conns_per_ip.get(&ip).map_or(0, |n| *n);
        all.saturating_sub(self.prelogin_per_ip.get(&ip).map_or(0, |n| *n))
    }

    /// Admitted connections of the gateway.
    pub fn connections(&self) -> usize {
        self.conns_total.load(Ordering::Acquire)
    }
}

/// Counts one connection of `ip` less, forgetting the address at zero.
fn decrement(counts: &DashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(mut n) = counts.get_mut(&ip) {
        *n = n.saturating_sub(1);
    }
    counts.remove_if(&ip, |_, n| *n == 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MultiLogin, OnConflict};

    #[test]
    fn session_ids_differ_between_processes_and_name_their_worker() {
        let (mut k1, mut k2) = ([0u8; 32], [0u8; 32]);
        k1[31] = 1;
        k2[31] = 2;
        let (a, b) = (Shared::new(2, k1), Shared::new(2, k2));
        assert_ne!(a.session_base(0), b.session_base(0));
        assert_ne!(a.session_base(0), a.session_base(1));
        assert_eq!(a.owner_of(a.session_base(1) | 42), 1);
        assert_eq!(b.owner_of(b.session_base(0) | 42), 0);
    }

    #[test]
    fn connection_limits_total_and_per_ip() {
        let s = Shared::new(1, [0; 32]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(s.admit(a, 3, 2, 9).is_ok());
        assert!(s.admit(a, 3, 2, 9).is_ok());
        assert_eq!(s.admit(a, 3, 2, 9), Err("too many connections from this address"));
        assert!(s.admit(b, 3, 2, 9).is_ok());
        assert_eq!(s.admit(b, 3, 2, 9), Err("the gateway is at its connection limit"));
        s.release(a, false);
        assert!(s.admit(b, 3, 2, 9).is_ok());
        assert_eq!(s.connections(), 3);
    }

    #[test]
    fn strangers_of_an_address_are_limited_apart_from_its_players() {
        let s = Shared::new(1, [0; 32]);
        let nat: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(s.admit(nat, 100, 100, 2).is_ok());
        assert!(s.admit(nat, 100, 100, 2).is_ok());
        assert_eq!(s.admit(nat, 100, 100, 2), Err("too many connections from this address that have not logged in"));
        // One logs in: room for another stranger, and the player stays.
        s.logged_in(nat);
        assert!(s.admit(nat, 100, 100, 2).is_ok());
        assert!(s.admit(nat, 100, 100, 2).is_err());
        s.release(nat, false);
        s.release(nat, false);
        assert!(s.admit(nat, 100, 100, 2).is_ok());
        assert_eq!(s.connections(), 2, "the player and the new stranger");
        s.release(nat, true);
        s.release(nat, false);
        assert_eq!(s.connections(), 0);
        assert!(s.conns_per_ip.is_empty() && s.prelogin_per_ip.is_empty());
    }

    #[test]
    fn user_index_applies_the_policy_atomically() {
        let s = Shared::new(2, [0; 32]);
        let p = Policy { multi_login: MultiLogin::Single, max_devices: 5, on_conflict: OnConflict::KickOldest };
        assert_eq!(s.login(&p, "al", "pc", 0, 1), Decision::Accept { replace: vec![] });
        let Decision::Accept { replace } = s.login(&p, "al", "ios", 1, 2) else { panic!() };
        assert_eq!(replace.iter().map(|r| (r.worker, r.session)).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(s.sessions_of("al").iter().map(|r| r.session).collect::<Vec<_>>(), [2]);
        s.logout("al", 2);
        assert_eq!(s.user_count(), 0);
    }

    #[test]
    fn group_counts_and_inbox() {
        let s = Shared::new(2, [0; 32]);
        s.group_member("g", 1, true);
        s.group_member("g", 1, true);
        s.group_member("g", 0, true);
        assert_eq!(&*s.group_counts("g"), &[1, 2]);
        s.group_member("g", 1, false);
        s.group_member("g", 1, false);
        s.group_member("g", 0, false);
        assert!(s.group_counts("g").is_empty());
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        s.set_waker(1, move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        assert!(s.prepare_sleep(1));
        assert!(s.send(1, CrossMsg::Kick { session: 1, reason: "x".into() }).is_ok());
        assert!(s.send(1, CrossMsg::Kick { session: 2, reason: "y".into() }).is_ok());
        assert_eq!(woken.load(Ordering::Relaxed), 1, "woken once while asleep");
        assert!(!s.prepare_sleep(1), "messages are waiting");
        assert!(matches!(s.recv(1), Some(CrossMsg::Kick { session: 1, .. })));
        assert!(matches!(s.recv(1), Some(CrossMsg::Kick { session: 2, .. })));
        assert!(s.recv(1).is_none());
    }
}
