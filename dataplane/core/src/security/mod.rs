//! The check stage: every decoded client frame gets a [`Verdict`] before
//! the gateway handles it, from an ordered chain of links, configured per
//! listener (`[security] chain`, `[[security.listeners]]`). The first
//! refusal wins; every refusal is counted under its [`Reason`], and each
//! reason belongs to one link ([`Reason::link`]).
//!
//! 1. **compliance** ([`compliance`], always first) — the rules of
//!    `proto/PROTOCOL.md`: a length prefix over the listener's maximum
//!    closes the connection (FRAME_TOO_LARGE); a frame that does not decode
//!    is answered BAD_FRAME; flags a client may not set, a `server_seq`
//!    from a client, a route key over `gateway.max_name_bytes`: BAD_FRAME;
//!    commands other than HEARTBEAT, LOGIN, LOGOUT, RESUME and ACK before
//!    login: NOT_LOGGED_IN. Refused frames count against the connection,
//!    which is closed at `gateway.max_bad_frames`;
//! 2. **shutdown** (always) — business commands while the gateway shuts
//!    down: SHUTTING_DOWN;
//! 3. **rate** ([`rate`]) — before login the source address's token bucket,
//!    after it the session's and the user's, and per session a bucket for
//!    each command class (`[[security.classes]]`, e.g. chat 5/s):
//!    THROTTLED; a connection refused too often is closed as a flood;
//! 4. **behaviour** ([`behaviour`]) — scores per source address and per
//!    user that rise on refusals, bad frames, failed logins, logins and
//!    resumes and decay over time; past `throttle` business frames are
//!    refused THROTTLED, past `kick` the connections are kicked, past
//!    `block` the source is blocked at the NIC (XDP) for a while. Allowlisted
//!    sources are never scored;
//! 5. **whitelist** ([`whitelist`]) — which business commands each role may
//!    send in each session state: COMMAND_NOT_ALLOWED.
//!
//! Before the chain, frames of encrypted sessions are opened
//! (`gateway::crypto`): a frame that does not decrypt is refused
//! DECRYPT_FAILED, a clear one ENCRYPTION_REQUIRED, and the connection is
//! closed (counted under the link `encryption`).
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

pub mod behaviour;
pub mod compliance;
pub mod rate;
pub mod rate_limit;
pub mod whitelist;

use std::fmt::Display;
use std::net::IpAddr;

use portcullis_proto::pb::client::ErrorCode;
use portcullis_proto::Envelope;

use crate::cidr::Cidr;
use crate::config::security::{BehaviourConfig, ChainLink};
use crate::config::Config;
use crate::conn::ConnId;
use crate::gateway::{End, Gateway};
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
    /// The envelope breaks a rule of the protocol: a flag clients may not
    /// set, a `server_seq` from a client, a route key over the limit.
    BadEnvelope,
    /// A command that needs a logged-in session, before login.
    NotLoggedIn,
    /// A business command while the gateway shuts down.
    ShuttingDown,
    /// Over the session's or the source address's frame rate.
    Throttled,
    /// Over the session's rate for the command's class.
    CommandRate,
    /// A connection refused by a rate limit more often than
    /// `limits.max_refusals_per_sec` allows: it is closed.
    Flooding,
    /// The source's or user's behaviour score is past `throttle`.
    Suspicious,
    /// The source's or user's behaviour score is past `kick` or `block`:
    /// its connections are closed, new ones refused.
    Banned,
    /// The whitelist does not allow the command for the session's role
    /// and state.
    NotAllowed,
    /// A message from another player to a session whose replay buffer is
    /// half full.
    RecipientBacklog,
    /// A message from another player to a session past its inbound rate.
    RecipientRate,
    /// A direct message from a user to another past their pair's rate.
    PairRate,
    /// A sealed frame that does not authenticate (tampered, replayed,
    /// reordered), or a sealed frame on a session that is not encrypted:
    /// the connection is closed.
    DecryptFailed,
    /// A clear frame on an encrypted session (closed), or a LOGIN without a
    /// key on a listener that requires encryption.
    NotEncrypted,
}

impl Reason {
    /// The ERROR code a refused client sees.
    pub fn code(self) -> ErrorCode {
        match self {
            Reason::FrameTooLarge => ErrorCode::FrameTooLarge,
            Reason::BadFrame | Reason::BadEnvelope => ErrorCode::BadFrame,
            Reason::BadPayload => ErrorCode::BadPayload,
            Reason::ShuttingDown => ErrorCode::ShuttingDown,
            Reason::NotLoggedIn => ErrorCode::NotLoggedIn,
            Reason::NotAllowed => ErrorCode::CommandNotAllowed,
            Reason::Banned => ErrorCode::Blocked,
            Reason::DecryptFailed => ErrorCode::DecryptFailed,
            Reason::NotEncrypted => ErrorCode::EncryptionRequired,
            Reason::Throttled
            | Reason::CommandRate
            | Reason::Suspicious
            | Reason::RecipientBacklog
            | Reason::RecipientRate
            | Reason::PairRate
            | Reason::Flooding => ErrorCode::Throttled,
        }
    }

    /// What the ERROR frame says when the check has nothing more specific.
    pub fn message(self) -> &'static str {
        match self {
            Reason::FrameTooLarge => "frame too large",
            Reason::BadFrame => "undecodable frame",
            Reason::BadPayload => "bad payload",
            Reason::BadEnvelope => "envelope breaks the protocol",
            Reason::Throttled => "rate limit exceeded: slow down",
            Reason::CommandRate => "too many commands of this kind: slow down",
            Reason::ShuttingDown => "gateway shutting down: reconnect to another gateway",
            Reason::NotLoggedIn => "log in first",
            Reason::Suspicious => "too many refused frames or failed logins: slow down",
            Reason::Banned => "blocked for abusive behaviour",
            Reason::NotAllowed => "command not allowed",
            Reason::RecipientBacklog => "the recipient is not keeping up",
            Reason::RecipientRate => "the recipient gets too many messages",
            Reason::PairRate => "too many messages to this user",
            Reason::Flooding => "flooding: far over the rate limit for too long; closed",
            Reason::DecryptFailed => "the frame does not decrypt",
            Reason::NotEncrypted => "this listener requires encryption",
        }
    }

    /// The link of the chain (or the delivery check) that gives it.
    pub fn link(self) -> &'static str {
        match self {
            Reason::FrameTooLarge
            | Reason::BadFrame
            | Reason::BadPayload
            | Reason::BadEnvelope
            | Reason::NotLoggedIn => ChainLink::Compliance.name(),
            Reason::ShuttingDown => "shutdown",
            Reason::Throttled | Reason::CommandRate | Reason::Flooding => ChainLink::Rate.name(),
            Reason::Suspicious | Reason::Banned => ChainLink::Behaviour.name(),
            Reason::NotAllowed => ChainLink::Whitelist.name(),
            Reason::RecipientBacklog | Reason::RecipientRate | Reason::PairRate => "delivery",
            Reason::DecryptFailed | Reason::NotEncrypted => "encryption",
        }
    }

    /// Whether the frame broke the protocol (scored as a bad frame by the
    /// behaviour link, not as a mere refusal).
    fn is_protocol_violation(self) -> bool {
        matches!(
            self,
            Reason::FrameTooLarge | Reason::BadFrame | Reason::BadPayload | Reason::BadEnvelope | Reason::DecryptFailed
        )
    }

    /// Counts one refusal.
    pub fn count(self, stats: &mut Stats) {
        *match self {
            Reason::FrameTooLarge => &mut stats.drop_frame_too_large,
            Reason::BadFrame => &mut stats.drop_bad_frame,
            Reason::BadPayload => &mut stats.drop_bad_payload,
            Reason::BadEnvelope => &mut stats.drop_bad_envelope,
            Reason::Throttled => &mut stats.drop_throttled,
            Reason::CommandRate => &mut stats.drop_command_rate,
            Reason::ShuttingDown => &mut stats.drop_shutting_down,
            Reason::NotLoggedIn => &mut stats.drop_not_logged_in,
            Reason::Suspicious => &mut stats.drop_suspicious,
            Reason::Banned => &mut stats.drop_banned,
            Reason::NotAllowed => &mut stats.drop_not_allowed,
            Reason::RecipientBacklog => &mut stats.drop_recipient_backlog,
            Reason::RecipientRate => &mut stats.drop_recipient_rate,
            Reason::PairRate => &mut stats.drop_pair_rate,
            Reason::Flooding => &mut stats.closed_flooding,
            Reason::DecryptFailed => &mut stats.drop_decrypt_failed,
            Reason::NotEncrypted => &mut stats.drop_not_encrypted,
        } += 1;
    }
}

/// The chain link a core counter (`drop_*`, `closed_flooding`) belongs to,
/// for metrics labels; `None` for counters that are not refusals.
pub fn link_of_counter(name: &str) -> Option<&'static str> {
    let reason = match name {
        "drop_frame_too_large" => Reason::FrameTooLarge,
        "drop_bad_frame" => Reason::BadFrame,
        "drop_bad_payload" => Reason::BadPayload,
        "drop_bad_envelope" => Reason::BadEnvelope,
        "drop_not_logged_in" => Reason::NotLoggedIn,
        "drop_shutting_down" => Reason::ShuttingDown,
        "drop_throttled" => Reason::Throttled,
        "drop_command_rate" => Reason::CommandRate,
        "closed_flooding" => Reason::Flooding,
        "drop_suspicious" => Reason::Suspicious,
        "drop_banned" => Reason::Banned,
        "drop_not_allowed" => Reason::NotAllowed,
        "drop_recipient_backlog" => Reason::RecipientBacklog,
        "drop_recipient_rate" => Reason::RecipientRate,
        "drop_pair_rate" => Reason::PairRate,
        "drop_decrypt_failed" => Reason::DecryptFailed,
        "drop_not_encrypted" => Reason::NotEncrypted,
        _ => return None,
    };
    Some(reason.link())
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
    /// Refuse with an ERROR frame and escalate against the source: every
    /// connection of the source address on this worker is closed and the
    /// address blocked (at the NIC when the XDP filter is configured) for
    /// `security.behaviour.block_secs`.
    Escalate(Reason),
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

/// The configured links, as a bit set of [`ChainLink`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain(u8);

impl Chain {
    fn of(links: &[ChainLink]) -> Chain {
        Chain(links.iter().fold(0, |bits, l| bits | 1 << *l as u8))
    }

    fn has(self, link: ChainLink) -> bool {
        self.0 & 1 << link as u8 != 0
    }
}

/// The security settings of one worker, compiled from `[security]`.
#[derive(Debug, Clone)]
pub(crate) struct Security {
    /// The chain of each listener, by index.
    pub(crate) chains: Vec<Chain>,
    pub(crate) allowlist: Vec<Cidr>,
    pub(crate) behaviour: BehaviourConfig,
    pub(crate) classes: rate::Classes,
    pub(crate) whitelist: whitelist::Whitelist,
}

impl Security {
    pub(crate) fn new(config: &Config) -> Security {
        let s = &config.security;
        Security {
            chains: config.listeners.iter().map(|l| Chain::of(&s.chain_of(l.bind))).collect(),
            allowlist: s.allowlist(),
            behaviour: s.behaviour.clone(),
            classes: rate::Classes::new(&s.classes),
            whitelist: whitelist::Whitelist::new(&s.whitelist, &s.default_role),
        }
    }

    /// Whether `ip` is on the allowlist: never scored nor escalated.
    pub(crate) fn allowlisted(&self, ip: IpAddr) -> bool {
        self.allowlist.iter().any(|c| c.contains(ip))
    }
}

impl Gateway {
    /// Runs a decoded frame through the chain of its connection's listener;
    /// the first refusal wins.
    pub(crate) fn check_frame(&mut self, chain: Chain, frame: &Frame<'_, '_>) -> Verdict {
        const LINKS: [(Option<ChainLink>, Link); 5] = [
            (None, Gateway::check_compliance),
            (None, Gateway::check_shutdown),
            (Some(ChainLink::Rate), Gateway::check_rate),
            (Some(ChainLink::Behaviour), Gateway::check_behaviour),
            (Some(ChainLink::Whitelist), Gateway::check_whitelist),
        ];
        for (link, check) in LINKS {
            if link.is_none_or(|l| chain.has(l)) {
                let verdict = check(self, frame);
                if verdict != Verdict::Pass {
                    return verdict;
                }
            }
        }
        Verdict::Pass
    }

    /// Carries out a refusal of a frame of `conn` (answering `cmd`/`seq`),
    /// counts it and scores it against the source and the user; `detail`
    /// replaces the reason's standard message. `Pass` does nothing.
    pub(crate) fn apply_verdict(
        &mut self,
        conn: ConnId,
        (cmd, seq): (u32, u32),
        verdict: Verdict,
        detail: Option<&dyn Display>,
    ) {
        let (reason, end) = match verdict {
            Verdict::Pass => return,
            Verdict::Drop(reason) => return reason.count(&mut self.stats),
            Verdict::Respond(reason) => (reason, None),
            Verdict::Close(reason) => (reason, Some(false)),
            Verdict::Escalate(reason) => (reason, Some(true)),
        };
        reason.count(&mut self.stats);
        match detail {
            Some(d) => self.send_error(conn, cmd, seq, reason.code(), &d.to_string()),
            None => self.send_error(conn, cmd, seq, reason.code(), reason.message()),
        }
        match end {
            None => {}
            Some(false) => self.close(conn, End::Session),
            Some(true) => {
                if let Some(ip) = self.conns.get(&conn).map(|c| c.ip) {
                    self.block_source(ip, reason.message());
                }
                self.close(conn, End::Session);
            }
        }
        // Refusals that are the behaviour link's own are not scored again,
        // except strangers closed on probation: a source that keeps coming
        // back climbs to a block.
        let stranger = self.conns.get(&conn).filter(|c| !c.logged_in).map(|c| c.ip);
        if let (Reason::Banned, Some(ip)) = (reason, stranger) {
            self.score_conn(conn, behaviour::Event::Refusal);
            // Past `block` while it had players: blocked once they are gone.
            let b = &self.security.behaviour;
            if self.scores.of_ip(ip, self.now, b.decay_per_sec) >= b.block && !self.shared.is_blocked(ip, self.now) {
                self.block_source(ip, "behaviour score past block");
            }
        } else if !matches!(reason, Reason::Suspicious | Reason::Banned) {
            let event =
                if reason.is_protocol_violation() { behaviour::Event::BadFrame } else { behaviour::Event::Refusal };
            self.score_conn(conn, event);
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
        let on_probation = self.conns.get(&conn).is_some_and(|c| self.on_probation(conn, c.ip));
        if on_probation {
            self.apply_verdict(conn, (cmd, seq), Verdict::Close(Reason::Banned), None);
            return false;
        }
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

    /// Shutdown: no new business requests.
    fn check_shutdown(&mut self, f: &Frame<'_, '_>) -> Verdict {
        if self.is_shutting_down() && !portcullis_proto::cmd::is_framework(f.env.cmd) {
            Verdict::Respond(Reason::ShuttingDown)
        } else {
            Verdict::Pass
        }
    }
}
