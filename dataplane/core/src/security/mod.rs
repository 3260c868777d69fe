//! The check stage: every decoded client frame gets a [`Verdict`] before
//! the gateway handles it, from an ordered chain of links. The security
//! chain of `DESIGN.md` grows here: each new check is one more link.
//!
//! The chain, in order (the first refusal wins):
//!
//! 1. **compliance** — a length prefix over the listener's maximum closes
//!    the connection (FRAME_TOO_LARGE: the stream cannot be resynchronised);
//!    a frame that does not decode is answered with BAD_FRAME and counted
//!    against the connection, which is closed at `gateway.max_bad_frames`.
//!    Frames the framework commands refuse later (bad payloads, failed
//!    logins, unknown commands) count the same way, and before login so
//!    does every ERROR the connection is sent;
//! 2. **rate** — before login, the source address's token bucket (shared by
//!    the strangers behind one address; a connection's first LOGIN or RESUME
//!    is not charged to it); after it, the session's and the
//!    user's, so that junk from a shared address cannot throttle the players
//!    behind it: THROTTLED; a connection refused more often than
//!    `limits.max_refusals_per_sec` (burst `max_refusals_burst`) is closed
//!    as a flood, ending its session;
//! 3. **shutdown** — business commands while the gateway shuts down:
//!    SHUTTING_DOWN;
//! 4. **login** — commands other than HEARTBEAT, LOGIN, LOGOUT, RESUME and
//!    ACK need a logged-in session: NOT_LOGGED_IN.
//!
//! A frame refused by the rate link is not looked at further; any other
//! frame's piggy-backed acknowledgement counts even when a later link
//! refuses the frame.
//!
//! Deliveries have a check of their own ([`Gateway::check_peer_delivery`]):
//! a message from another player is dropped for a session whose replay
//! buffer is half full, or — sent to its user, not to a group — past its
//! inbound rate (`limits.peer_inbound_rate`), so that no player can flood
//! another or end its session.
//!
//! Every refusal is counted under its [`Reason`].

pub mod rate_limit;

use std::fmt::Display;
use std::net::IpAddr;

use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::{cmd, Envelope};

use crate::conn::ConnId;
use crate::gateway::{End, Gateway};
use crate::security::rate_limit::TokenBucket;
use crate::session::SessionId;
use crate::stats::Stats;

/// Why a check refused a frame or a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The frame's length prefix is over the listener's maximum: the
    /// stream cannot be resynchronised.
    FrameTooLarge,
    /// The frame did not decode in the connection's codec.
    BadFrame,
    /// The frame's framework payload did not decode or was invalid.
    BadPayload,
    /// Over the session's or the source address's frame rate.
    Throttled,
    /// A business command while the gateway shuts down.
    ShuttingDown,
    /// A command that needs a logged-in session, before login.
    NotLoggedIn,
    /// A message from another player to a session whose replay buffer is
    /// half full.
    RecipientBacklog,
    /// A message from another player to a session past its inbound rate.
    RecipientRate,
    /// A direct message from a user to another past their pair's rate.
    PairRate,
    /// A connection refused by a rate limit more often than
    /// `limits.max_refusals_per_sec` allows: it is closed.
    Flooding,
}

impl Reason {
    /// The ERROR code a refused client sees.
    pub fn code(self) -> ErrorCode {
        match self {
            Reason::FrameTooLarge => ErrorCode::FrameTooLarge,
            Reason::BadFrame => ErrorCode::BadFrame,
            Reason::BadPayload => ErrorCode::BadPayload,
            Reason::Throttled => ErrorCode::Throttled,
            Reason::ShuttingDown => ErrorCode::ShuttingDown,
            Reason::NotLoggedIn => ErrorCode::NotLoggedIn,
            Reason::RecipientBacklog | Reason::RecipientRate | Reason::PairRate | Reason::Flooding => {
                ErrorCode::Throttled
            }
        }
    }

    /// What the ERROR frame says when the check has nothing more specific.
    pub fn message(self) -> &'static str {
        match self {
            Reason::FrameTooLarge => "frame too large",
            Reason::BadFrame => "undecodable frame",
            Reason::BadPayload => "bad payload",
            Reason::Throttled => "rate limit exceeded: slow down",
            Reason::ShuttingDown => "gateway shutting down: reconnect to another gateway",
            Reason::NotLoggedIn => "log in first",
            Reason::RecipientBacklog => "the recipient is not keeping up",
            Reason::RecipientRate => "the recipient gets too many messages",
            Reason::PairRate => "too many messages to this user",
            Reason::Flooding => "flooding: far over the rate limit for too long; closed",
        }
    }

    /// Counts one refusal.
    pub fn count(self, stats: &mut Stats) {
        *match self {
            Reason::FrameTooLarge => &mut stats.drop_frame_too_large,
            Reason::BadFrame => &mut stats.drop_bad_frame,
            Reason::BadPayload => &mut stats.drop_bad_payload,
            Reason::Throttled => &mut stats.drop_throttled,
            Reason::ShuttingDown => &mut stats.drop_shutting_down,
            Reason::NotLoggedIn => &mut stats.drop_not_logged_in,
            Reason::RecipientBacklog => &mut stats.drop_recipient_backlog,
            Reason::RecipientRate => &mut stats.drop_recipient_rate,
            Reason::PairRate => &mut stats.drop_pair_rate,
            Reason::Flooding => &mut stats.closed_flooding,
        } += 1;
    }
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Go on.
    Pass,
    /// Drop without an answer (counted).
    Drop(Reason),
    /// Refuse with an ERROR frame; the connection stays.
    Respond(Reason),
    /// Refuse with an ERROR frame, then close the connection and end its
    /// session.
    Close(Reason),
}

/// One decoded frame as the chain sees it.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a, 'e> {
    /// Its connection.
    pub conn: ConnId,
    /// The connection's session.
    pub session: SessionId,
    /// The connection's source address.
    pub ip: IpAddr,
    /// The decoded envelope.
    pub env: &'a Envelope<'e>,
}

/// A link of the chain.
type Link = fn(&mut Gateway, &Frame<'_, '_>) -> Verdict;

/// The chain after compliance (decoding), in order.
const CHAIN: [Link; 3] = [Gateway::check_rate, Gateway::check_shutdown, Gateway::check_login];

/// Commands a session may send before it logs in.
fn allowed_before_login(command: u32) -> bool {
    matches!(command, cmd::HEARTBEAT | cmd::LOGIN | cmd::LOGOUT | cmd::RESUME | cmd::ACK)
}

impl Gateway {
    /// Runs a decoded frame through the chain; the first refusal wins.
    pub(crate) fn check_frame(&mut self, frame: &Frame<'_, '_>) -> Verdict {
        for link in CHAIN {
            let verdict = link(self, frame);
            if verdict != Verdict::Pass {
                return verdict;
            }
        }
        Verdict::Pass
    }

    /// Carries out a refusal of a frame of `conn` (answering `cmd`/`seq`)
    /// and counts it; `detail` replaces the reason's standard message.
    /// `Pass` does nothing.
    pub(crate) fn apply_verdict(
        &mut self,
        conn: ConnId,
        (cmd, seq): (u32, u32),
        verdict: Verdict,
        detail: Option<&dyn Display>,
    ) {
        let (reason, close) = match verdict {
            Verdict::Pass => return,
            Verdict::Drop(reason) => return reason.count(&mut self.stats),
            Verdict::Respond(reason) => (reason, false),
            Verdict::Close(reason) => (reason, true),
        };
        reason.count(&mut self.stats);
        match detail {
            Some(d) => self.send_error(conn, cmd, seq, reason.code(), &d.to_string()),
            None => self.send_error(conn, cmd, seq, reason.code(), reason.message()),
        }
        if close {
            self.close(conn, End::Session);
        }
    }

    /// Compliance: a frame refused with `reason` (answered with `detail`)
    /// counts against its connection ([`Gateway::count_bad_frame`]).
    /// Returns whether the connection is still open.
    #[must_use]
    pub(crate) fn bad_frame(
        &mut self,
        conn: ConnId,
        (cmd, seq): (u32, u32),
        reason: Reason,
        detail: &dyn Display,
    ) -> bool {
        self.apply_verdict(conn, (cmd, seq), Verdict::Respond(reason), Some(detail));
        self.count_bad_frame(conn)
    }

    /// Compliance: counts a refused (and already answered) frame against
    /// its connection, which closes, ending its session, at
    /// `gateway.max_bad_frames`. Returns whether it is still open. Before
    /// login the answer (an ERROR) counted already.
    #[must_use]
    pub(crate) fn count_bad_frame(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        if !c.logged_in {
            return !c.closing;
        }
        c.bad_frames += 1;
        if c.bad_frames >= self.limits.max_bad_frames {
            self.close(conn, End::Session);
            return false;
        }
        true
    }

    /// Compliance before login: an ERROR was sent to a connection that
    /// has not logged in; it counts as a bad frame.
    pub(crate) fn count_error_before_login(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.bad_frames += 1;
        if c.bad_frames >= self.limits.max_bad_frames {
            self.close(conn, End::Session);
        }
    }

    /// Rate: before login the source address's token bucket; after it the
    /// session's and the user's.
    fn check_rate(&mut self, f: &Frame<'_, '_>) -> Verdict {
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
        let (rate, burst) = self.limits.refusals;
        if allowed {
            Verdict::Pass
        } else if self.conns.get_mut(&f.conn).is_none_or(|c| c.refusals.allow(now, rate, burst)) {
            Verdict::Respond(Reason::Throttled)
        } else {
            // Far over its rate for long: a flood, not a burst.
            Verdict::Close(Reason::Flooding)
        }
    }

    /// Shutdown: no new business requests.
    fn check_shutdown(&mut self, f: &Frame<'_, '_>) -> Verdict {
        if self.is_shutting_down() && !cmd::is_framework(f.env.cmd) {
            Verdict::Respond(Reason::ShuttingDown)
        } else {
            Verdict::Pass
        }
    }

    /// Login: only a few commands before it.
    fn check_login(&mut self, f: &Frame<'_, '_>) -> Verdict {
        let logged_in = self.sessions.get(f.session).is_some_and(|s| s.user.is_some());
        if logged_in || allowed_before_login(f.env.cmd) {
            Verdict::Pass
        } else {
            Verdict::Respond(Reason::NotLoggedIn)
        }
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
