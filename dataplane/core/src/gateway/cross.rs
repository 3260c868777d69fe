//! Messages between workers: P2P and group deliveries to sessions of other
//! workers, forwarded game-server answers, multi-login kicks, and the
//! hand-over of a session to the worker where its client resumed.

use std::sync::Arc;
use std::time::Instant;

use portcullis_proto::{flags, Envelope};

use super::{Gateway, Waiting};
use crate::session::SessionId;
use crate::shard::{CrossMsg, DeliveryMsg};

/// Messages handled per call, so that one busy inbox cannot starve IO.
const INBOX_BATCH: usize = 4096;

impl Gateway {
    /// Handles messages other workers sent to this one.
    pub fn handle_inbox(&mut self, now: Instant) {
        self.now = now;
        for _ in 0..INBOX_BATCH {
            let Some(msg) = self.shared.recv(self.worker) else { return };
            self.on_cross(msg);
        }
    }

    /// Queues a message for another worker; counted as dropped if its ring
    /// is full. Returns the message back in that case.
    pub(crate) fn send_cross(&mut self, worker: usize, msg: CrossMsg) -> Option<CrossMsg> {
        match self.shared.send(worker, msg) {
            Ok(()) => {
                self.stats.cross_worker += 1;
                None
            }
            Err(msg) => {
                self.stats.drop_inbox_full += 1;
                crate::warn_limited!("inbox of worker {worker} full: dropped a cross-worker message");
                Some(msg)
            }
        }
    }

    fn on_cross(&mut self, msg: CrossMsg) {
        match msg {
            CrossMsg::Deliver { sessions, msg } => {
                let (here, away): (Vec<SessionId>, Vec<SessionId>) =
                    sessions.into_iter().partition(|s| self.sessions.get(*s).is_some());
                self.deliver_to(&here, &msg);
                for s in away {
                    if let Some(&(worker, _)) = self.handed_over.get(&s) {
                        self.send_cross(worker, CrossMsg::Deliver { sessions: vec![s], msg: msg.clone() });
                    }
                }
            }
            CrossMsg::GroupDeliver { exclude, msg } => {
                let mut targets = std::mem::take(&mut self.targets);
                targets.clear();
                targets.extend(self.sessions.members(&msg.group).filter(|s| *s != exclude));
                self.deliver_to(&targets, &msg);
                self.targets = targets;
            }
            CrossMsg::Forward { session, cmd, seq, flags: f, payload } => {
                if self.sessions.get(session).is_none() {
                    match self.handed_over.get(&session) {
                        Some(&(worker, _)) => {
                            self.send_cross(worker, CrossMsg::Forward { session, cmd, seq, flags: f, payload });
                        }
                        None => self.stats.drop_session_gone += 1,
                    }
                    return;
                }
                if f & flags::PUSH != 0 {
                    self.push_to(&[session], cmd, &payload);
                } else {
                    self.stats.replies += 1;
                    self.deliver(session, &mut Envelope::new(cmd, seq, f, &payload));
                }
            }
            CrossMsg::Error { session, cmd, seq, code, message } => {
                self.error_to_session(session, cmd, seq, code, &message)
            }
            CrossMsg::Kick { session, reason } => {
                if self.sessions.get(session).is_none() {
                    if let Some(&(worker, _)) = self.handed_over.get(&session) {
                        self.send_cross(worker, CrossMsg::Kick { session, reason });
                    }
                    return;
                }
                self.stats.sessions_replaced += 1;
                self.kick_session(session, &reason);
            }
            CrossMsg::ResumeRequest { session, last_seq, codec, reply_to, seq } => {
                let answer = match self.release_for_resume(session, last_seq, codec) {
                    Ok(s) => CrossMsg::ResumeGranted { conn: reply_to.1, seq, session: Box::new(s) },
                    Err(reason) => CrossMsg::ResumeRefused { conn: reply_to.1, seq, reason },
                };
                let granted = matches!(answer, CrossMsg::ResumeGranted { .. });
                match self.send_cross(reply_to.0, answer) {
                    // The requester cannot hear us: keep the session here.
                    Some(CrossMsg::ResumeGranted { session, .. }) => self.adopt_detached(*session),
                    // The grant is queued first; only then does everyone
                    // route to the new owner, and what still reaches us
                    // follows the grant into the same ring.
                    None if granted => {
                        self.shared.session_moved(session, reply_to.0);
                        self.handed_over.insert(session, (reply_to.0, self.now));
                    }
                    _ => {}
                }
            }
            CrossMsg::ResumeGranted { conn, seq, session } => {
                if self.conns.get(&conn).is_some_and(|c| matches!(c.waiting, Waiting::Resume(_))) {
                    self.complete_resume(conn, seq, *session)
                } else {
                    // The connection gave up (or timed out) meanwhile.
                    self.adopt_detached(*session)
                }
            }
            CrossMsg::ResumeRefused { conn, seq, reason } => self.resume_refused(conn, seq, &reason),
        }
    }

    /// Delivers a SEND_TO_USER(S) message to sessions anywhere: local ones
    /// directly, others through their worker's ring. Returns how many
    /// sessions it was sent to.
    pub(crate) fn deliver_anywhere(&mut self, targets: &[(usize, SessionId)], msg: DeliveryMsg) -> usize {
        let msg = Arc::new(msg);
        let local: Vec<SessionId> = targets.iter().filter(|t| t.0 == self.worker).map(|t| t.1).collect();
        let mut sent = self.deliver_to(&local, &msg);
        let me = self.worker;
        for worker in (0..self.shared.workers()).filter(|w| *w != me) {
            let sessions: Vec<SessionId> = targets.iter().filter(|t| t.0 == worker).map(|t| t.1).collect();
            if sessions.is_empty() {
                continue;
            }
            let n = sessions.len();
            if self.send_cross(worker, CrossMsg::Deliver { sessions, msg: msg.clone() }).is_none() {
                sent += n;
            }
        }
        sent
    }

    /// Delivers a SEND_TO_GROUP message to the group's members on every
    /// worker except `exclude`. Returns how many sessions it was sent to.
    pub(crate) fn deliver_to_group(&mut self, exclude: SessionId, msg: DeliveryMsg) -> usize {
        let counts = self.shared.group_counts(&msg.group);
        let msg = Arc::new(msg);
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend(self.sessions.members(&msg.group).filter(|s| *s != exclude));
        let mut sent = self.deliver_to(&targets, &msg);
        self.targets = targets;
        for (worker, &n) in counts.iter().enumerate() {
            if worker == self.worker || n == 0 {
                continue;
            }
            if self.send_cross(worker, CrossMsg::GroupDeliver { exclude, msg: msg.clone() }).is_none() {
                sent += n as usize;
            }
        }
        sent
    }
}
