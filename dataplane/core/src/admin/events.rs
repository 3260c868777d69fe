//! The event log of one gateway process: logins, logouts, kicks, game
//! servers going up, down or draining, config reloads. Workers append; the
//! agent API reads from a sequence number on and is told when there is
//! more. The last [`EVENT_CAPACITY`] events are held, so a control plane
//! that reconnects after a short absence misses none.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Events held for readers that come back.
pub const EVENT_CAPACITY: usize = 4096;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A session logged in.
    Login,
    /// A session ended (logout, close, expiry, kick).
    Logout,
    /// A session was kicked (by an operator or by another login).
    Kick,
    /// A worker's link to a game server came up.
    BackendUp,
    /// A worker's link to a game server went down.
    BackendDown,
    /// A game server was drained (by an operator or by itself).
    BackendDrain,
    /// A game server takes new sessions again.
    BackendUndrain,
    /// The configuration changed.
    ConfigReload,
    /// A source was blocked (at the NIC when the XDP filter is there) for
    /// its behaviour.
    FilterBlock,
}

impl EventKind {
    /// The name used in the API (`login`, `backend_down`…).
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Login => "login",
            EventKind::Logout => "logout",
            EventKind::Kick => "kick",
            EventKind::BackendUp => "backend_up",
            EventKind::BackendDown => "backend_down",
            EventKind::BackendDrain => "backend_drain",
            EventKind::BackendUndrain => "backend_undrain",
            EventKind::ConfigReload => "config_reload",
            EventKind::FilterBlock => "filter_block",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Increasing from 1 within the process.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The worker it happened on.
    pub worker: u32,
    /// The session, for session events.
    pub session: u64,
    /// The user, for session events.
    pub user: String,
    /// The client's or the game server's address.
    pub address: String,
    /// Reason, service or details.
    pub detail: String,
}

/// The log. Appending takes a short lock; nothing on the message path
/// appends except logins and session ends.
#[derive(Default)]
pub struct EventLog {
    ring: Mutex<(u64, VecDeque<Event>)>,
    listener: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl EventLog {
    /// Appends an event (its `seq` is assigned here) and tells the listener.
    pub fn push(&self, mut event: Event) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.0 += 1;
            event.seq = ring.0;
            if ring.1.len() == EVENT_CAPACITY {
                ring.1.pop_front();
            }
            ring.1.push_back(event);
        }
        if let Some(f) = self.listener.get() {
            f();
        }
    }

    /// Events with a sequence number above `after`, oldest first, at most
    /// `max`.
    pub fn after(&self, after: u64, max: usize) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let skip = ring.1.partition_point(|e| e.seq <= after);
        ring.1.iter().skip(skip).take(max).cloned().collect()
    }

    /// The newest sequence number (0 before any event).
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Installs the function called after each append (once).
    pub fn set_listener(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> Event {
        Event {
            seq: 0,
            unix_ms: 0,
            kind,
            worker: 0,
            session: 0,
            user: String::new(),
            address: String::new(),
            detail: String::new(),
        }
    }

    #[test]
    fn readers_resume_after_the_last_seq_they_saw_and_old_events_fall_off() {
        let log = EventLog::default();
        for _ in 0..EVENT_CAPACITY + 10 {
            log.push(ev(EventKind::Login));
        }
        log.push(ev(EventKind::Kick));
        assert_eq!(log.last_seq(), EVENT_CAPACITY as u64 + 11);
        let tail = log.after(EVENT_CAPACITY as u64 + 9, 10);
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [EVENT_CAPACITY as u64 + 10, EVENT_CAPACITY as u64 + 11]
        );
        assert_eq!(tail[1].kind, EventKind::Kick);
        let all = log.after(0, usize::MAX);
        assert_eq!(all.len(), EVENT_CAPACITY);
        assert_eq!(all[0].seq, 12, "the oldest were dropped");
    }
}
