//! Behaviour analysis: a score per source address and per user (on this
//! worker) that rises with what a well-behaved client rarely does — frames
//! refused by any link, protocol violations, failed logins, logins (churn),
//! resumes (storms) — and decays linearly (`security.behaviour`). What a
//! connection does before login counts against its address; after login,
//! against its user.
//!
//! Crossing a threshold escalates at once:
//!
//! - `throttle`: business frames of the source or user are refused
//!   THROTTLED (framework commands pass, so that it can log out);
//! - `kick`: every connection of the source (or session of the user) on
//!   this worker gets a KICK without reconnect; for `ban_secs` a kicked
//!   source is on probation: a new connection from it that sends anything
//!   but LOGIN or RESUME first is closed BLOCKED, and each such close
//!   scores, so that a source that keeps coming back climbs to `block`
//!   while a player behind the same address still logs in;
//! - `block`: the source is blocked for `block_secs` — the gateway refuses
//!   it on every worker ([`crate::shard::Shared::block`]) and, when the XDP
//!   filter is configured, the dataplane puts it in the filter's blocklist
//!   with that expiry, so that its packets are dropped at the NIC. A user
//!   past `block` is kicked and has the source of the connection that
//!   pushed it there blocked. An address other players are logged in from
//!   is never blocked (it is a NAT): it stays on probation instead.
//!
//! Allowlisted sources (`security.allowlist`) are never scored, throttled,
//! kicked or blocked by this link.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Frame, Reason, Verdict};
use crate::admin::EventKind;
use crate::conn::ConnId;
use crate::gateway::Gateway;
use crate::session::SessionId;

/// What raises a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A frame refused by a link.
    Refusal,
    /// A frame that breaks the protocol.
    BadFrame,
    /// A failed login.
    FailedLogin,
    /// A successful login.
    Login,
    /// A RESUME.
    Resume,
}

/// A decaying score.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Score {
    points: f32,
    at: Instant,
}

impl Score {
    fn value(&self, now: Instant, decay: f32) -> f32 {
        (self.points - now.saturating_duration_since(self.at).as_secs_f32() * decay).max(0.0)
    }
}

/// Scores of one worker.
#[derive(Debug, Default)]
pub(crate) struct Scores {
    pub(crate) by_ip: rustc_hash::FxHashMap<IpAddr, Score>,
    pub(crate) by_user: rustc_hash::FxHashMap<Box<str>, Score>,
    /// Kicked sources, refused until then.
    banned: rustc_hash::FxHashMap<IpAddr, Instant>,
    /// Until when some score may be over `throttle`: before it, frames look
    /// their scores up; after it, no lookup is needed.
    hot_until: Option<Instant>,
}

impl Scores {
    /// Forgets scores that decayed to zero.
    pub(crate) fn sweep(&mut self, now: Instant, decay: f32) {
        self.by_ip.retain(|_, s| s.value(now, decay) > 0.0);
        self.by_user.retain(|_, s| s.value(now, decay) > 0.0);
        self.banned.retain(|_, until| *until > now);
        if self.hot_until.is_some_and(|t| t <= now) {
            self.hot_until = None;
        }
    }

    /// The score of `ip` at `now`.
    pub(crate) fn of_ip(&self, ip: IpAddr, now: Instant, decay: f32) -> f32 {
        self.by_ip.get(&ip).map_or(0.0, |s| s.value(now, decay))
    }

    /// Whether `ip` was kicked less than `ban_secs` ago.
    pub(crate) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        !self.banned.is_empty() && self.banned.get(&ip).is_some_and(|until| *until > now)
    }

    /// Adds `points` to a score; returns the old and the new value.
    fn add<K: std::hash::Hash + Eq>(
        map: &mut rustc_hash::FxHashMap<K, Score>,
        key: K,
        points: f32,
        now: Instant,
        decay: f32,
    ) -> (f32, f32) {
        let s = map.entry(key).or_insert(Score { points: 0.0, at: now });
        let old = s.value(now, decay);
        *s = Score { points: old + points, at: now };
        (old, old + points)
    }
}

/// The highest threshold a score went past, if it crossed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Crossed {
    Throttle,
    Kick,
    Block,
}

impl Gateway {
    /// Behaviour: business frames of a source or user past `throttle` are
    /// refused; past `kick` the connection is closed; past `block` the
    /// source is blocked (again, if its block expired while its score
    /// stayed that high).
    pub(super) fn check_behaviour(&mut self, f: &Frame<'_, '_>) -> Verdict {
        // A stranger from a kicked source is on probation: it logs in (or
        // resumes) first, or goes.
        if !matches!(f.env.cmd, portcullis_proto::cmd::LOGIN | portcullis_proto::cmd::RESUME)
            && self.on_probation(f.conn, f.ip)
        {
            return Verdict::Close(Reason::Banned);
        }
        let Some(hot) = self.scores.hot_until else { return Verdict::Pass };
        if self.now >= hot || portcullis_proto::cmd::is_framework(f.env.cmd) {
            return Verdict::Pass;
        }
        let b = &self.security.behaviour;
        // Players by their user's score, strangers by their address's.
        let score = match self.sessions.get(f.session).and_then(|s| s.user_id()) {
            Some(user) => self.scores.by_user.get(user).map_or(0.0, |s| s.value(self.now, b.decay_per_sec)),
            None => self.scores.of_ip(f.ip, self.now, b.decay_per_sec),
        };
        if score >= b.block {
            Verdict::Escalate(Reason::Banned)
        } else if score >= b.kick {
            Verdict::Close(Reason::Banned)
        } else if score >= b.throttle {
            Verdict::Respond(Reason::Suspicious)
        } else {
            Verdict::Pass
        }
    }

    /// Scores `event` against the user of `conn` if it is logged in, else
    /// against its source address.
    pub(crate) fn score_conn(&mut self, conn: ConnId, event: Event) {
        let Some(c) = self.conns.get(&conn) else { return };
        let (ip, session) = (c.ip, c.session);
        self.score(ip, session, event);
    }

    /// Scores `event` against the user of `session` if it is logged in,
    /// else against `ip`, escalating at once when a threshold is crossed.
    /// Players are scored as users, not by address, so that one cheater
    /// behind a carrier NAT does not get the players who share its address
    /// throttled or kicked; only a user past `block` gets its address
    /// blocked.
    pub(crate) fn score(&mut self, ip: IpAddr, session: SessionId, event: Event) {
        if self.security.allowlisted(ip) {
            return;
        }
        let b = &self.security.behaviour;
        let points = match event {
            Event::Refusal => b.refusal,
            Event::BadFrame => b.bad_frame,
            Event::FailedLogin => b.failed_login,
            Event::Login => b.login,
            Event::Resume => b.resume,
        };
        if points <= 0.0 {
            return;
        }
        let (now, decay) = (self.now, b.decay_per_sec);
        match self.sessions.get(session).and_then(|s| s.user_id()).map(Box::<str>::from) {
            Some(user) => {
                let score = Scores::add(&mut self.scores.by_user, user.clone(), points, now, decay);
                if let Some(crossed) = self.crossed(score) {
                    self.escalate_user(&user, ip, crossed, score.1);
                }
            }
            None => {
                let score = Scores::add(&mut self.scores.by_ip, ip, points, now, decay);
                if let Some(crossed) = self.crossed(score) {
                    self.escalate_source(ip, crossed, score.1);
                }
            }
        }
    }

    /// The highest threshold between `old` and `new`, and keeps
    /// `hot_until` past the time the new score decays under `throttle`.
    fn crossed(&mut self, (old, new): (f32, f32)) -> Option<Crossed> {
        let b = &self.security.behaviour;
        if new >= b.throttle {
            let secs = if b.decay_per_sec > 0.0 { (new - b.throttle) / b.decay_per_sec + 1.0 } else { 1e9 };
            let until = self.now + Duration::from_secs_f32(secs.min(1e9));
            self.scores.hot_until = Some(self.scores.hot_until.map_or(until, |t| t.max(until)));
        }
        [(b.block, Crossed::Block), (b.kick, Crossed::Kick), (b.throttle, Crossed::Throttle)]
            .into_iter()
            .find(|&(threshold, _)| old < threshold && new >= threshold)
            .map(|(_, c)| c)
    }

    fn escalate_source(&mut self, ip: IpAddr, crossed: Crossed, score: f32) {
        let detail = format!("behaviour score {score:.0} of {ip}");
        match crossed {
            Crossed::Throttle => self.stats.escalated_throttles += 1,
            Crossed::Kick => {
                self.stats.escalated_kicks += 1;
                let until = self.now + Duration::from_secs(self.security.behaviour.ban_secs);
                self.scores.banned.insert(ip, until);
                self.kick_source(ip, &format!("{detail}: kicked"), false);
            }
            Crossed::Block => self.block_source(ip, &detail),
        }
    }

    /// Whether players are logged in from `ip` on any worker, besides those
    /// this worker is closing (the address is shared, a NAT: blocking it
    /// would shut them out).
    fn has_players(&self, ip: IpAddr) -> bool {
        let closing = self.conns.values().filter(|c| c.ip == ip && c.logged_in && c.closing).count();
        self.shared.players_from(ip) > closing
    }

    /// Whether `conn` is a stranger from a kicked source: on probation, it
    /// logs in (or resumes) first, or goes.
    pub(crate) fn on_probation(&self, conn: ConnId, ip: IpAddr) -> bool {
        self.scores.is_banned(ip, self.now) && self.conns.get(&conn).is_some_and(|c| !c.logged_in)
    }

    fn escalate_user(&mut self, user: &str, ip: IpAddr, crossed: Crossed, score: f32) {
        let detail = format!("behaviour score {score:.0} of user {user}");
        if crossed == Crossed::Throttle {
            self.stats.escalated_throttles += 1;
            return;
        }
        if crossed == Crossed::Kick {
            self.stats.escalated_kicks += 1;
        }
        let sessions: Vec<SessionId> = self.sessions.of_user(user).to_vec();
        for s in sessions {
            self.kick_session(s, &format!("{detail}: kicked"));
        }
        if crossed == Crossed::Block {
            self.block_source(ip, &detail);
        }
    }

    /// Closes the connections of `ip` on this worker with a KICK: those not
    /// logged in, or all with `players` (players are scored as users: a
    /// stranger's garbage must not get the players behind its NAT kicked).
    fn kick_source(&mut self, ip: IpAddr, reason: &str, players: bool) {
        let conns: Vec<(ConnId, SessionId)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ip == ip && !c.closing && (players || !c.logged_in))
            .map(|(id, c)| (*id, c.session))
            .collect();
        for (conn, session) in conns {
            if self.sessions.get(session).is_some_and(|s| s.user.is_some()) {
                self.kick_session(session, reason);
            } else {
                self.kick(conn, reason, false);
            }
        }
    }

    /// Blocks `ip` for `security.behaviour.block_secs` (allowlisted sources
    /// never): every worker refuses it, the XDP filter (if configured)
    /// drops its packets, its connections here are kicked, and a
    /// `filter_block` event tells operators. An address other players are
    /// logged in from (a NAT) is not blocked: its strangers are kicked and
    /// it stays on probation for `ban_secs`.
    pub(crate) fn block_source(&mut self, ip: IpAddr, detail: &str) {
        if self.security.allowlisted(ip) {
            return;
        }
        if !self.shared.is_blocked(ip, self.now) && self.has_players(ip) {
            let until = self.now + Duration::from_secs(self.security.behaviour.ban_secs);
            if self.scores.banned.insert(ip, until).is_none() {
                self.stats.escalated_kicks += 1;
                tracing::warn!("{detail}: not blocked, players are logged in from it; its strangers are kicked");
            }
            return self.kick_source(ip, Reason::Banned.message(), false);
        }
        let ttl = Duration::from_secs(self.security.behaviour.block_secs);
        if !self.shared.block(ip, self.now, ttl) {
            // Blocked already (by another link or worker): just close.
            return self.kick_source(ip, Reason::Banned.message(), true);
        }
        self.stats.escalated_blocks += 1;
        let detail = format!("{detail}: blocked for {} s", ttl.as_secs());
        tracing::warn!("{detail}");
        self.event(EventKind::FilterBlock, 0, "", &ip.to_string(), &detail);
        self.kick_source(ip, Reason::Banned.message(), true);
    }
}
