//! Rate: token buckets per source address (before login), per session and
//! per user (after it), per session and command class, and — on delivery —
//! per recipient and per pair of users.

use portcullis_proto::cmd;

use super::rate_limit::TokenBucket;
use super::{Frame, Reason, Verdict};
use crate::config::security::CommandClass;
use crate::gateway::Gateway;
use crate::session::SessionId;

/// The command classes of `[[security.classes]]`, compiled: command ranges
/// sorted, each with its class.
#[derive(Debug, Clone, Default)]
pub(crate) struct Classes {
    /// `(first, last, class)`, sorted by `first`, not overlapping.
    ranges: Vec<(u32, u32, u16)>,
    /// `(rate, burst)` of each class.
    pub(crate) limits: Vec<(u32, u32)>,
}

impl Classes {
    pub(crate) fn new(classes: &[CommandClass]) -> Classes {
        let mut ranges = Vec::new();
        for (i, c) in classes.iter().enumerate() {
            for spec in &c.commands {
                let (a, b) = match *spec {
                    crate::config::security::CommandSpec::One(c) => (c, c),
                    crate::config::security::CommandSpec::Range([a, b]) => (a, b),
                };
                ranges.push((a, b, i as u16));
            }
        }
        // The first class listed wins where ranges overlap.
        ranges.sort_by_key(|&(a, _, class)| (a, class));
        Classes { ranges, limits: classes.iter().map(|c| (c.rate, c.burst)).collect() }
    }

    /// The class of `command`, if any.
    pub(crate) fn of(&self, command: u32) -> Option<usize> {
        if self.ranges.is_empty() {
            return None;
        }
        let end = self.ranges.partition_point(|&(a, _, _)| a <= command);
        self.ranges[..end].iter().filter(|&&(_, b, _)| command <= b).map(|&(_, _, c)| c as usize).min()
    }
}

impl Gateway {
    /// Rate: before login the source address's token bucket; after it the
    /// session's and the user's, then the session's bucket of the command's
    /// class.
    pub(super) fn check_rate(&mut self, f: &Frame<'_, '_>) -> Verdict {
        let now = self.now;
        let allowed = match self.sessions.get_mut(f.session) {
            Some(s) if s.user.is_some() => {
                let (rate, burst) = self.limits.session_rate;
                let user = s.user.as_ref().map(|u| &u.user_id).expect("logged in");
                s.rate.allow(now, rate, burst) && {
                    let (rate, burst) = self.limits.user_rate;
                    match self.user_buckets.get_mut(user) {
                        Some(b) => b.allow(now, rate, burst),
                        None => {
                            let mut b = TokenBucket::full(burst, now);
                            let allowed = b.allow(now, rate, burst);
                            self.user_buckets.insert(user.clone(), b);
                            allowed
                        }
                    }
                }
            }
            _ => {
                // A connection's first LOGIN or RESUME is not charged to its
                // address: strangers sharing it cannot keep a player out.
                let first_try = matches!(f.env.cmd, cmd::LOGIN | cmd::RESUME)
                    && self.conns.get_mut(&f.conn).is_some_and(|c| !std::mem::replace(&mut c.tried_login, true));
                let (rate, burst) = self.limits.ip_rate;
                first_try || self.ip_buckets.get_mut(&f.ip).is_none_or(|(b, _)| b.allow(now, rate, burst))
            }
        };
        let classed_out = allowed && !self.check_class(f);
        let allowed = allowed && !classed_out;
        let (rate, burst) = self.limits.refusals;
        if allowed {
            Verdict::Pass
        } else if self.conns.get_mut(&f.conn).is_none_or(|c| c.refusals.allow(now, rate, burst)) {
            Verdict::Respond(if classed_out { Reason::CommandRate } else { Reason::Throttled })
        } else {
            // Far over its rate for long: a flood, not a burst.
            Verdict::Close(Reason::Flooding)
        }
    }

    /// Rate per command class: whether the session may send one more
    /// command of the frame's class (true for unclassed commands).
    fn check_class(&mut self, f: &Frame<'_, '_>) -> bool {
        let Some(class) = self.security.classes.of(f.env.cmd) else { return true };
        let (rate, burst) = self.security.classes.limits[class];
        let now = self.now;
        let Some(s) = self.sessions.get_mut(f.session) else { return true };
        if s.class_buckets.len() <= class {
            let limits = &self.security.classes.limits;
            let len = limits.len();
            s.class_buckets.extend((s.class_buckets.len()..len).map(|i| TokenBucket::full(limits[i].1, now)));
        }
        s.class_buckets[class].allow(now, rate, burst)
    }

    /// Recipients protected, sender side: whether `sender` may send one more
    /// direct message to `recipient` (the pair's bucket, so that no sender
    /// uses up a recipient's whole inbound rate).
    pub(crate) fn check_pair(&mut self, sender: &str, recipient: &str) -> Verdict {
        let key = std::hash::BuildHasher::hash_one(&self.pair_hasher, (sender, recipient));
        let (rate, burst) = self.limits.pair_rate;
        let now = self.now;
        let bucket = self.pair_buckets.entry(key).or_insert_with(|| TokenBucket::full(burst, now));
        if bucket.allow(now, rate, burst) {
            Verdict::Pass
        } else {
            Verdict::Drop(Reason::PairRate)
        }
    }

    /// Recipients protected: a message from another player is dropped for
    /// a logged-in session whose replay buffer is half full (in messages or
    /// bytes), or, if it was sent to the session's user (SEND_TO_USER(S),
    /// not a group the session chose to join), past its inbound rate.
    pub(crate) fn check_peer_delivery(&mut self, session: SessionId, cmd: u32, payload_len: usize) -> Verdict {
        let (messages, bytes) = (self.limits.replay_messages, self.limits.replay_bytes);
        let (rate, burst) = self.limits.peer_rate;
        let Some(s) = self.sessions.get_mut(session).filter(|s| s.user.is_some()) else { return Verdict::Pass };
        if s.replay.len() >= messages / 2 || s.replay.len_bytes() + payload_len >= bytes / 2 {
            Verdict::Drop(Reason::RecipientBacklog)
        } else if cmd != cmd::SEND_TO_GROUP && !s.peer_in.allow(self.now, rate, burst) {
            Verdict::Drop(Reason::RecipientRate)
        } else {
            Verdict::Pass
        }
    }
}
