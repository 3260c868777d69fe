//! Messages between workers: P2P and group deliveries to sessions of other
//! workers (each worker reports how many sessions took one, and the sender
//! is answered with the sum), forwarded game-server answers, multi-login
//! kicks, and the hand-over of a session to the worker where its client
//! resumed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_proto::pb::client::SendResult;
use portcullis_proto::{flags, Envelope};

use super::{Gateway, Waiting};
use crate::conn::ConnId;
use crate::session::SessionId;
use crate::shard::{CrossMsg, DeliveryMsg, Receipt};

/// Messages handled per call, so that one busy inbox cannot starve IO.
const INBOX_BATCH: usize = 4096;

/// How long a SEND_TO_* answer waits for the other workers' counts; a
/// worker that has not reported by then counts zero.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The SEND_TO_* request an answer is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendRequest {
    pub(crate) conn: ConnId,
    pub(crate) session: SessionId,
    pub(crate) cmd: u32,
    pub(crate) seq: u32,
}

/// A SEND_TO_* answer waiting for other workers' counts.
#[derive(Debug)]
pub(crate) struct PendingSend {
    request: SendRequest,
    delivered: usize,
    /// Workers that have not reported yet.
    waiting: usize,
    deadline: Instant,
}

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
            CrossMsg::Deliver { sessions, msg, receipt } => {
                let (here, away): (Vec<SessionId>, Vec<SessionId>) =
                    sessions.into_iter().partition(|s| self.sessions.get(*s).is_some());
                let delivered = self.deliver_to(&here, &msg);
                let mut passed_on = 0;
                for s in away {
                    if let Some(&(worker, _)) = self.handed_over.get(&s) {
                        let msg = CrossMsg::Deliver { sessions: vec![s], msg: msg.clone(), receipt };
                        passed_on += usize::from(self.send_cross(worker, msg).is_none());
                    }
                }
                self.report(receipt, delivered, passed_on);
            }
            CrossMsg::GroupDeliver { exclude, msg, receipt } => {
                let mut targets = std::mem::take(&mut self.targets);
                targets.clear();
                targets.extend(self.sessions.members(&msg.group).filter(|s| *s != exclude));
                let delivered = self.deliver_to(&targets, &msg);
                self.targets = targets;
                self.report(receipt, delivered, 0);
            }
            CrossMsg::Delivered { id, delivered, passed_on } => {
                let Some(p) = self.pending_sends.get_mut(&id) else { return };
                p.delivered += delivered;
                p.waiting = p.waiting + passed_on - 1;
                if p.waiting == 0 {
                    let p = self.pending_sends.remove(&id).expect("present");
                    self.send_result(p.request, p.delivered);
                }
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
                    self.push_to(&[session], cmd, &payload, f & flags::UNRELIABLE);
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
            CrossMsg::ResumeRequest { session, generation, last_seq, codec, reply_to, seq } => {
                let answer = match self.release_for_resume(session, generation, last_seq, codec) {
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
            CrossMsg::Admin { op, reply } => self.on_admin(op, reply),
        }
    }

    /// Reports a delivery's count to the sender's worker (to itself, too,
    /// when part of the message came back to it).
    fn report(&mut self, receipt: Receipt, delivered: usize, passed_on: usize) {
        let msg = CrossMsg::Delivered { id: receipt.id, delivered, passed_on };
        if receipt.worker == self.worker {
            self.on_cross(msg);
        } else {
            self.send_cross(receipt.worker, msg);
        }
    }

    /// Delivers a SEND_TO_USER(S) message to sessions anywhere: local ones
    /// directly, others through their worker's ring; `request` is answered
    /// with how many sessions took it once every worker has counted.
    pub(crate) fn deliver_anywhere(&mut self, request: SendRequest, targets: &[(usize, SessionId)], msg: DeliveryMsg) {
        let msg = Arc::new(msg);
        let local: Vec<SessionId> = targets.iter().filter(|t| t.0 == self.worker).map(|t| t.1).collect();
        let delivered = self.deliver_to(&local, &msg);
        let receipt = Receipt { worker: self.worker, id: self.next_send };
        let me = self.worker;
        let mut waiting = 0;
        for worker in (0..self.shared.workers()).filter(|w| *w != me) {
            let sessions: Vec<SessionId> = targets.iter().filter(|t| t.0 == worker).map(|t| t.1).collect();
            if !sessions.is_empty() {
                let msg = CrossMsg::Deliver { sessions, msg: msg.clone(), receipt };
                waiting += usize::from(self.send_cross(worker, msg).is_none());
            }
        }
        self.await_receipts(request, delivered, waiting);
    }

    /// Delivers a SEND_TO_GROUP message to the group's members on every
    /// worker except `exclude`; `request` is answered with how many
    /// sessions took it once every worker has counted.
    pub(crate) fn deliver_to_group(&mut self, request: SendRequest, exclude: SessionId, msg: DeliveryMsg) {
        let counts = self.shared.group_counts(&msg.group);
        let msg = Arc::new(msg);
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend(self.sessions.members(&msg.group).filter(|s| *s != exclude));
        let delivered = self.deliver_to(&targets, &msg);
        self.targets = targets;
        let receipt = Receipt { worker: self.worker, id: self.next_send };
        let mut waiting = 0;
        for (worker, &n) in counts.iter().enumerate() {
            if worker != self.worker && n > 0 {
                let msg = CrossMsg::GroupDeliver { exclude, msg: msg.clone(), receipt };
                waiting += usize::from(self.send_cross(worker, msg).is_none());
            }
        }
        self.await_receipts(request, delivered, waiting);
    }

    /// Answers `request` now if no other worker is to report, else once
    /// they have (or at the receipt timeout).
    fn await_receipts(&mut self, request: SendRequest, delivered: usize, waiting: usize) {
        if waiting == 0 {
            return self.send_result(request, delivered);
        }
        let id = self.next_send;
        self.next_send += 1;
        let deadline = self.now + RECEIPT_TIMEOUT;
        self.pending_sends.insert(id, PendingSend { request, delivered, waiting, deadline });
    }

    /// Answers the SEND_TO_* requests whose workers did not all report in
    /// time with what was counted.
    pub(crate) fn expire_pending_sends(&mut self) {
        let now = self.now;
        let late: Vec<u64> = self.pending_sends.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            let p = self.pending_sends.remove(&id).expect("listed");
            self.stats.send_results_late += 1;
            self.send_result(p.request, p.delivered);
        }
    }

    /// Answers a SEND_TO_* request with how many sessions took the message,
    /// if its connection still carries the session that sent it.
    fn send_result(&mut self, r: SendRequest, delivered: usize) {
        if self.conns.get(&r.conn).is_none_or(|c| c.session != r.session) {
            return;
        }
        let result = SendResult { delivered: delivered as u32 };
        self.send_payload(r.conn, Envelope::new(r.cmd, r.seq, flags::RESPONSE, &[]), &result, true);
    }
}
