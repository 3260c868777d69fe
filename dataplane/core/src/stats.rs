//! Counters of the core. Every refused or dropped frame counts under the
//! reason it was refused for.

/// A struct of named monotonic `u64` counters, with `iter()` for metrics
/// and `+=` for totals over workers.
#[macro_export]
macro_rules! counters {
    ($(#[$sdoc:meta])* $ty:ident { $($(#[$doc:meta])* $name:ident,)* }) => {
        $(#[$sdoc])*
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct $ty {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl $ty {
            /// Every counter with its name, for metrics.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name),)*].into_iter()
            }
        }

        impl std::ops::AddAssign<&$ty> for $ty {
            fn add_assign(&mut self, other: &$ty) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

crate::counters! {
    /// Monotonic counters of one worker's core.
    Stats {
    /// Client connections accepted.
    connections,
    /// Client frames decoded.
    frames_in,
    /// Client frames queued for sending.
    frames_out,
    /// Successful logins.
    logins,
    /// Successful resumes.
    resumes,
    /// Messages replayed on resume.
    replayed,
    /// Business requests forwarded to game servers.
    requests,
    /// Replies from game servers delivered.
    replies,
    /// Pushes (from game servers or SEND_TO_*) delivered, counted per session.
    pushes,
    /// Messages sent to other workers.
    cross_worker,
    /// Sessions whose connection dropped, kept for RESUME.
    sessions_detached,
    /// Dropped sessions that were not resumed within the window.
    sessions_expired,
    /// Sessions ended by the multi-login policy.
    sessions_replaced,
    /// Refused: connections over a connection limit.
    drop_connection_limit,
    /// Refused: frames over a session or IP rate limit.
    drop_throttled,
    /// Dropped: frames that could not be decoded.
    drop_bad_frame,
    /// Dropped: frames over the maximum size (connection closed).
    drop_frame_too_large,
    /// Refused: business commands before login.
    drop_not_logged_in,
    /// Refused: commands without handler or route.
    drop_unknown_command,
    /// Refused: failed logins.
    drop_auth_failed,
    /// Refused: logins over the multi-login policy.
    drop_login_conflict,
    /// Refused: RESUMEs that could not be honoured.
    drop_resume_failed,
    /// Refused: framework payloads that could not be decoded or were invalid.
    drop_bad_payload,
    /// Refused: no healthy game server.
    drop_backend_unavailable,
    /// Answered with an error: requests in flight on a game server that went down.
    drop_backend_lost,
    /// Answered with an error: requests a game server did not answer in time.
    drop_backend_timeout,
    /// Refused: business commands during shutdown.
    drop_shutting_down,
    /// Dropped: replies or pushes for sessions that no longer exist.
    drop_session_gone,
    /// Dropped: replies that arrived after their request timed out.
    drop_late_reply,
    /// Dropped: datagrams from clients that were not one frame or came on
    /// an encrypted session, and unreliable frames to clients past their
    /// datagram backlog.
    drop_datagram,
    /// Dropped: undecodable frames from game servers (link closed).
    drop_bad_link_frame,
    /// Dropped: peer messages (SEND_TO_*) for a session with half its
    /// replay buffer unacknowledged.
    drop_recipient_backlog,
    /// Dropped: peer messages (SEND_TO_*) for a session past its inbound
    /// rate (`limits.peer_inbound_rate`).
    drop_recipient_rate,
    /// Dropped: direct messages from one user to another past their pair's
    /// rate (`limits.pair_rate`).
    drop_pair_rate,
    /// Refused: envelopes that break the protocol (client flags, server
    /// fields, route key size).
    drop_bad_envelope,
    /// Refused (connection closed): sealed frames that did not decrypt
    /// (tampered, replayed, reordered) or sealed frames on sessions that
    /// are not encrypted.
    drop_decrypt_failed,
    /// Refused: clear frames on encrypted sessions (connection closed) and
    /// LOGINs without a key on listeners that require encryption.
    drop_not_encrypted,
    /// Sessions encrypted at login.
    encrypted_logins,
    /// Refused: commands over their class's rate (`[[security.classes]]`).
    drop_command_rate,
    /// Refused: business frames of a source or user past its behaviour
    /// score's `throttle`.
    drop_suspicious,
    /// Refused: frames and connections of a source or user past `kick`
    /// or blocked.
    drop_banned,
    /// Refused: commands the whitelist does not allow.
    drop_not_allowed,
    /// Behaviour scores that crossed `throttle`.
    escalated_throttles,
    /// Behaviour scores that crossed `kick` (connections kicked).
    escalated_kicks,
    /// Sources blocked for their behaviour score.
    escalated_blocks,
    /// Connections closed as floods (refused by a rate limit more often
    /// than `limits.max_refusals_per_sec`).
    closed_flooding,
    /// Dropped: messages for another worker whose inbox was full.
    drop_inbox_full,
    /// Refused: RESUMEs with a token already used (tokens rotate).
    drop_resume_token_reused,
    /// Dropped (or, for answers, replaced by FRAME_TOO_LARGE): frames to a
    /// client over its listener's frame limit.
    drop_frame_too_large_out,
    /// Connections closed: not logged in within `gateway.login_timeout_ms`.
    login_timeouts,
    /// Connections closed: more output than allowed before login queued.
    drop_prelogin_output,
    /// Connections cut because the worker's client output passed its share
    /// of `limits.max_output_memory_bytes` (the biggest backlogs first).
    cut_output_memory,
    /// SEND_TO_* answered before every worker had counted its deliveries
    /// (a worker did not answer within a second).
    send_results_late,
    /// Sessions ended because their replay buffer overflowed.
    replay_overflows,
    /// Connections closed for missing their heartbeat deadline.
    heartbeat_timeouts,
    /// Connections closed because the client did not read its output.
    slow_consumers,
    /// Game-server links that went down (connect failures included).
    link_failures,
}
}

/// Upper bounds of the latency histograms' buckets, in seconds.
pub const LATENCY_BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram over [`LATENCY_BOUNDS`] (plus one bucket for what is
/// above the last bound); recording is a few comparisons and an add.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_ns: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&mut self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS.partition_point(|&b| b < s);
        self.buckets[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(d.as_nanos() as u64);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Cumulative counts per bound of [`LATENCY_BOUNDS`] (Prometheus `le`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.buckets[..LATENCY_BOUNDS.len()]
            .iter()
            .scan(0, |acc, &n| {
                *acc += n;
                Some(*acc)
            })
            .collect()
    }
}

impl std::ops::AddAssign<&Histogram> for Histogram {
    fn add_assign(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

/// The latency histograms of one worker.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    /// Game-server round trip (request sent to reply received), per service
    /// name.
    pub backend: Vec<(String, Histogram)>,
    /// A client's business request to its answer (a reply or an error).
    pub client_answer: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(100)); // exactly on the first bound
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(60));
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BOUNDS.len()], 1, "above the last bound");
        assert_eq!(h.cumulative()[1], 2);
        assert_eq!(*h.cumulative().last().unwrap(), 2, "+Inf is not a bound");
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum_ns, 60_000_201_000);
    }
}
