//! Sessions: created on connect, bound to a user at login, members of
//! groups; and the indexes that find them by user and by group.
//!
//! Ids are assigned by the core and never reused within a worker.

pub mod policy;
pub mod replay;

use std::collections::HashMap;
use std::time::Instant;

use portcullis_proto::Codec;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::security::rate_limit::TokenBucket;
use replay::ReplayBuffer;

/// Id of a session, unique within the gateway process.
pub type SessionId = u64;

use crate::conn::ConnId;

/// The user a session is logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBinding {
    /// User id from the authenticator.
    pub user_id: Box<str>,
    /// Device type from the authenticator.
    pub device: Box<str>,
    /// Role from the authenticator (the token's `role` claim, the auth
    /// service's answer); empty: the default role.
    pub role: Box<str>,
}

/// One player session. It lives on one worker; RESUME may move it whole to
/// another.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The connection carrying it; `None` while it waits for a RESUME.
    pub conn: Option<ConnId>,
    /// Codec of its connection (a RESUME must use the same).
    pub codec: Codec,
    /// Set at login.
    pub user: Option<UserBinding>,
    /// Groups it has joined.
    pub groups: Vec<Box<str>>,
    /// Time of the last frame received; the heartbeat deadline runs from it.
    pub last_seen: Instant,
    /// When its connection dropped, if it did.
    pub detached_at: Option<Instant>,
    /// Bit `i` set: the session sent requests over backend link `i % 64`,
    /// which is told when the session closes or moves.
    pub links_used: u64,
    /// `(service, link)` this session sticks to, for sticky services.
    pub sticky: Vec<(u16, u16)>,
    /// Sequenced server messages not yet acknowledged.
    pub replay: ReplayBuffer,
    /// Frame rate limit.
    pub rate: TokenBucket,
    /// Rate limit of messages from other players to it.
    pub peer_in: TokenBucket,
    /// The generation of its resume token: only the current one resumes.
    pub resume_generation: u32,
    /// When it logged in.
    pub logged_in_at: Option<Instant>,
    /// Its role for the command whitelist, as the whitelist's role bits.
    pub role_bits: u64,
    /// Rate buckets of the command classes it used, by class.
    pub class_buckets: Vec<TokenBucket>,
    /// Set if it is encrypted: what its connections' keys come from.
    pub crypto: Option<Box<crate::gateway::crypto::SessionCrypto>>,
}

impl Session {
    /// A new anonymous session on `conn`.
    pub fn new(id: SessionId, conn: ConnId, codec: Codec, now: Instant, burst: u32, peer_burst: u32) -> Session {
        Session {
            id,
            conn: Some(conn),
            codec,
            user: None,
            groups: Vec::new(),
            last_seen: now,
            detached_at: None,
            links_used: 0,
            sticky: Vec::new(),
            replay: ReplayBuffer::default(),
            rate: TokenBucket::full(burst, now),
            peer_in: TokenBucket::full(peer_burst, now),
            resume_generation: 0,
            logged_in_at: None,
            role_bits: 0,
            class_buckets: Vec::new(),
            crypto: None,
        }
    }

    /// The user id, if logged in.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_ref().map(|u| &*u.user_id)
    }
}

/// Why a group operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The session is in too many groups.
    #[error("a session may join at most {0} groups")]
    TooMany(usize),
}

/// All sessions of one worker and the user and group indexes.
///
/// User ids and group names come from clients, so their maps keep std's
/// randomly keyed hasher; session ids are ours, so they use a fast one.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: FxHashMap<SessionId, Session>,
    users: HashMap<Box<str>, Vec<SessionId>>,
    groups: HashMap<Box<str>, FxHashSet<SessionId>>,
}

impl SessionTable {
    /// Adds a session, indexing its user and groups.
    pub fn insert(&mut self, s: Session) {
        let id = s.id;
        if let Some(user) = &s.user {
            self.users.entry(user.user_id.clone()).or_default().push(id);
        }
        for g in &s.groups {
            self.groups.entry(g.clone()).or_default().insert(id);
        }
        self.sessions.insert(id, s);
    }

    /// The session, if it exists.
    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// The session, mutably.
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Every session, to change what the indexes do not cover.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.sessions.values_mut()
    }

    /// Binds a logged-in user to a session and indexes it.
    pub fn bind_user(&mut self, id: SessionId, user: UserBinding) {
        if let Some(s) = self.sessions.get_mut(&id) {
            self.users.entry(user.user_id.clone()).or_default().push(id);
            s.user = Some(user);
        }
    }

    /// Sessions of a user (empty if none).
    pub fn of_user(&self, user_id: &str) -> &[SessionId] {
        self.users.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// Members of a group.
    pub fn members(&self, group: &str) -> impl Iterator<Item = SessionId> + '_ {
        self.groups.get(group).into_iter().flatten().copied()
    }

    /// Number of groups with at least one member.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Number of distinct logged-in users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Adds a session to a group. Returns whether it was not a member yet.
    pub fn join(&mut self, id: SessionId, group: &str, max_groups: usize) -> Result<bool, GroupError> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Ok(false);
        };
        if s.groups.iter().any(|g| &**g == group) {
            return Ok(false);
        }
        if s.groups.len() >= max_groups {
            return Err(GroupError::TooMany(max_groups));
        }
        s.groups.push(group.into());
        self.groups.entry(group.into()).or_default().insert(id);
        Ok(true)
    }

    /// Removes a session from a group. Returns whether it was a member.
    pub fn leave(&mut self, id: SessionId, group: &str) -> bool {
        let Some(s) = self.sessions.get_mut(&id) else { return false };
        let before = s.groups.len();
        s.groups.retain(|g| &**g != group);
        Self::unindex_group(&mut self.groups, id, group);
        before != s.groups.len()
    }

    fn unindex_group(groups: &mut HashMap<Box<str>, FxHashSet<SessionId>>, id: SessionId, group: &str) {
        if let Some(members) = groups.get_mut(group) {
            members.remove(&id);
            if members.is_empty() {
                groups.remove(group);
            }
        }
    }

    /// Removes a session, its groups and its user index entry.
    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        for g in &s.groups {
            Self::unindex_group(&mut self.groups, id, g);
        }
        if let Some(user) = &s.user {
            if let Some(list) = self.users.get_mut(&user.user_id) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.users.remove(&user.user_id);
                }
            }
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u64) -> ConnId {
        ConnId::new(crate::Transport::KernelTcp, n)
    }

    fn user(id: &str) -> UserBinding {
        UserBinding { user_id: id.into(), device: "pc".into(), role: "".into() }
    }

    #[test]
    fn indexes_follow_sessions() {
        let now = Instant::now();
        let mut t = SessionTable::default();
        t.insert(Session::new(1, conn(10), Codec::Protobuf, now, 1, 1));
        t.insert(Session::new(2, conn(20), Codec::Protobuf, now, 1, 1));
        t.bind_user(1, user("alice"));
        t.bind_user(2, user("alice"));
        assert_eq!(t.of_user("alice"), &[1, 2]);
        assert!(t.join(1, "room", 4).unwrap());
        assert!(!t.join(1, "room", 4).unwrap());
        t.join(2, "room", 4).unwrap();
        let mut m: Vec<_> = t.members("room").collect();
        m.sort();
        assert_eq!(m, [1, 2]);
        assert!(t.leave(2, "room"));
        assert!(!t.leave(2, "room"));
        assert_eq!(t.members("room").collect::<Vec<_>>(), [1]);
        let s1 = t.remove(1).unwrap();
        assert_eq!(t.of_user("alice"), &[2]);
        t.insert(s1);
        assert_eq!(t.of_user("alice"), &[2, 1], "re-inserting re-indexes");
        assert_eq!(t.members("room").collect::<Vec<_>>(), [1]);
        t.remove(1);
        assert_eq!(t.members("room").count(), 0);
        assert_eq!(t.group_count(), 0);
        t.remove(2);
        assert_eq!(t.user_count(), 0);
    }

    #[test]
    fn group_limit() {
        let mut t = SessionTable::default();
        t.insert(Session::new(1, conn(1), Codec::Protobuf, Instant::now(), 1, 1));
        assert!(t.join(1, "a", 1).unwrap());
        assert_eq!(t.join(1, "b", 1), Err(GroupError::TooMany(1)));
    }
}
