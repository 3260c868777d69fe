//! Multi-login policies: given a user's existing sessions and a new login,
//! which sessions end and whether the login is refused.
//!
//! Sessions whose connection dropped (waiting for a RESUME) never block a
//! login: when they collide they are ended first, whatever `on_conflict`
//! says — the client that logs in again has evidently given them up.

use crate::config::{MultiLogin, OnConflict};
use crate::session::SessionId;

/// An existing session of the user, as the user index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// Worker that owns it.
    pub worker: usize,
    /// Its id.
    pub session: SessionId,
    /// Its device type.
    pub device: Box<str>,
    /// Login order (smaller is older).
    pub order: u64,
    /// Whether its connection is up (false: waiting for a RESUME).
    pub connected: bool,
}

/// The outcome of a login under the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept; end these sessions first (oldest first).
    Accept {
        /// Sessions to end.
        replace: Vec<UserSession>,
    },
    /// Refuse the new login.
    Reject(String),
}

/// The multi-login policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Which sessions may coexist.
    pub multi_login: MultiLogin,
    /// Limit of `MultiDevice`.
    pub max_devices: usize,
    /// What a collision does.
    pub on_conflict: OnConflict,
}

impl Policy {
    /// Decides a login from `device` against the user's `existing` sessions.
    pub fn decide(&self, existing: &[UserSession], device: &str) -> Decision {
        let mut colliding: Vec<&UserSession> = match self.multi_login {
            MultiLogin::Single => existing.iter().collect(),
            MultiLogin::PerDeviceType => existing.iter().filter(|s| &*s.device == device).collect(),
            MultiLogin::MultiDevice => {
                let excess = (existing.len() + 1).saturating_sub(self.max_devices);
                // Free dropped sessions first, then the oldest connected ones.
                let mut by_age: Vec<&UserSession> = existing.iter().collect();
                by_age.sort_by_key(|s| (s.connected, s.order));
                by_age.truncate(excess);
                by_age
            }
        };
        colliding.sort_by_key(|s| s.order);
        let blocking = colliding.iter().filter(|s| s.connected).count();
        if blocking > 0 && self.on_conflict == OnConflict::RejectNew {
            return Decision::Reject(match self.multi_login {
                MultiLogin::Single => "already logged in on another device".into(),
                MultiLogin::PerDeviceType => format!("already logged in on another {device} device"),
                MultiLogin::MultiDevice => format!("already logged in on {} devices", self.max_devices),
            });
        }
        Decision::Accept { replace: colliding.into_iter().cloned().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(session: SessionId, device: &str, order: u64, connected: bool) -> UserSession {
        UserSession { worker: 0, session, device: device.into(), order, connected }
    }

    fn policy(multi_login: MultiLogin, on_conflict: OnConflict) -> Policy {
        Policy { multi_login, max_devices: 3, on_conflict }
    }

    fn replaced(d: Decision) -> Vec<SessionId> {
        match d {
            Decision::Accept { replace } => replace.iter().map(|s| s.session).collect(),
            Decision::Reject(why) => panic!("rejected: {why}"),
        }
    }

    #[test]
    fn single_device() {
        let existing = [s(1, "ios", 1, true)];
        assert_eq!(replaced(policy(MultiLogin::Single, OnConflict::KickOldest).decide(&existing, "pc")), [1]);
        let d = policy(MultiLogin::Single, OnConflict::RejectNew).decide(&existing, "pc");
        assert!(matches!(d, Decision::Reject(ref why) if why.contains("another device")), "{d:?}");
        assert_eq!(replaced(policy(MultiLogin::Single, OnConflict::RejectNew).decide(&[], "pc")), Vec::<u64>::new());
    }

    #[test]
    fn one_per_device_type() {
        let existing = [s(1, "ios", 1, true), s(2, "pc", 2, true)];
        let kick = policy(MultiLogin::PerDeviceType, OnConflict::KickOldest);
        assert_eq!(replaced(kick.decide(&existing, "ios")), [1]);
        assert_eq!(replaced(kick.decide(&existing, "android")), Vec::<u64>::new());
        let reject = policy(MultiLogin::PerDeviceType, OnConflict::RejectNew);
        assert!(matches!(reject.decide(&existing, "pc"), Decision::Reject(_)));
        assert_eq!(replaced(reject.decide(&existing, "web")), Vec::<u64>::new());
    }

    #[test]
    fn up_to_n_devices() {
        let existing = [s(5, "a", 10, true), s(6, "b", 3, true), s(7, "c", 7, true)];
        let kick = policy(MultiLogin::MultiDevice, OnConflict::KickOldest);
        assert_eq!(replaced(kick.decide(&existing, "d")), [6], "the oldest goes");
        assert_eq!(replaced(kick.decide(&existing[..2], "d")), Vec::<u64>::new());
        let reject = policy(MultiLogin::MultiDevice, OnConflict::RejectNew);
        assert!(matches!(reject.decide(&existing, "d"), Decision::Reject(ref w) if w.contains("3 devices")));
    }

    #[test]
    fn dropped_sessions_never_block_and_go_first() {
        let existing = [s(1, "ios", 1, true), s(2, "ios", 2, false), s(3, "pc", 3, true)];
        let reject = policy(MultiLogin::MultiDevice, OnConflict::RejectNew);
        assert_eq!(replaced(reject.decide(&existing, "web")), [2], "the dropped one makes room");
        let reject = policy(MultiLogin::PerDeviceType, OnConflict::RejectNew);
        assert!(matches!(reject.decide(&existing, "ios"), Decision::Reject(_)), "a live ios session blocks");
        let dropped_only = [s(2, "ios", 2, false)];
        assert_eq!(replaced(reject.decide(&dropped_only, "ios")), [2]);
    }
}
