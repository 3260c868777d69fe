//! Counters of the core. Every refused or dropped frame counts under the
//! reason it was refused for.

/// Monotonic counters of one worker's core.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub connections: u64,
    /// Client frames decoded.
    pub frames_in: u64,
    /// Client frames queued for sending.
    pub frames_out: u64,
    /// Successful logins.
    pub logins: u64,
    /// Business requests forwarded to game servers.
    pub requests: u64,
    /// Replies from game servers delivered.
    pub replies: u64,
    /// Pushes (from game servers or SEND_TO_*) delivered, counted per session.
    pub pushes: u64,
    /// Dropped: frames that could not be decoded.
    pub drop_bad_frame: u64,
    /// Dropped: frames over the maximum size (connection closed).
    pub drop_frame_too_large: u64,
    /// Refused: business commands before login.
    pub drop_not_logged_in: u64,
    /// Refused: commands without handler or route.
    pub drop_unknown_command: u64,
    /// Refused: failed logins.
    pub drop_auth_failed: u64,
    /// Refused: framework payloads that could not be decoded or were invalid.
    pub drop_bad_payload: u64,
    /// Refused: no healthy game server.
    pub drop_backend_unavailable: u64,
    /// Dropped: replies or pushes for sessions that no longer exist.
    pub drop_session_gone: u64,
    /// Dropped: undecodable frames from game servers (link closed).
    pub drop_bad_link_frame: u64,
    /// Sessions closed for missing their heartbeat deadline.
    pub heartbeat_timeouts: u64,
    /// Connections closed because the client did not read its output.
    pub slow_consumers: u64,
    /// Game-server links that went down.
    pub link_failures: u64,
}
