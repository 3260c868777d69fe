//! The client envelope: what every frame between a player and the gateway
//! carries (see `schema/client.proto`).

use std::borrow::Cow;

use crate::pb::client::{Flag, FrameworkCommand, Reserved};

/// Command ids. `0..FIRST_BUSINESS` are framework commands handled inside
/// the gateway; the rest are business commands routed to game servers.
pub mod cmd {
    use super::*;

    /// Keep-alive.
    pub const HEARTBEAT: u32 = FrameworkCommand::Heartbeat as u32;
    /// Log in with a token.
    pub const LOGIN: u32 = FrameworkCommand::Login as u32;
    /// End the session.
    pub const LOGOUT: u32 = FrameworkCommand::Logout as u32;
    /// Notification that the session is being closed by the gateway.
    pub const KICK: u32 = FrameworkCommand::Kick as u32;
    /// Join a group.
    pub const JOIN_GROUP: u32 = FrameworkCommand::JoinGroup as u32;
    /// Leave a group.
    pub const LEAVE_GROUP: u32 = FrameworkCommand::LeaveGroup as u32;
    /// Send to every session of a user.
    pub const SEND_TO_USER: u32 = FrameworkCommand::SendToUser as u32;
    /// Send to every session of several users.
    pub const SEND_TO_USERS: u32 = FrameworkCommand::SendToUsers as u32;
    /// Send to every member of a group.
    pub const SEND_TO_GROUP: u32 = FrameworkCommand::SendToGroup as u32;
    /// Acknowledge server messages.
    pub const ACK: u32 = FrameworkCommand::Ack as u32;
    /// Resume a dropped session.
    pub const RESUME: u32 = FrameworkCommand::Resume as u32;
    /// An error answer.
    pub const ERROR: u32 = FrameworkCommand::Error as u32;
    /// The first business command id.
    pub const FIRST_BUSINESS: u32 = Reserved::FirstBusinessCommand as u32;

    /// Whether `cmd` is in the framework range.
    pub fn is_framework(cmd: u32) -> bool {
        cmd < FIRST_BUSINESS
    }

    /// The name of a framework command, as in the `.proto` (`"LOGIN"`).
    pub fn name(cmd: u32) -> Option<&'static str> {
        if cmd == 0 {
            return None;
        }
        FrameworkCommand::try_from(cmd as i32).ok().map(|c| c.as_str_name())
    }

    /// The id of a framework command named as in the `.proto`.
    pub fn from_name(name: &str) -> Option<u32> {
        FrameworkCommand::from_str_name(name).filter(|c| *c != FrameworkCommand::FrameworkUnspecified).map(|c| c as u32)
    }
}

/// Envelope flag bits.
pub mod flags {
    use super::*;

    /// The frame answers the request with the same `seq`.
    pub const RESPONSE: u32 = Flag::Response as u32;
    /// The frame was pushed, unsolicited.
    pub const PUSH: u32 = Flag::Push as u32;
    /// The payload is sealed with the session's keys (see
    /// [`crate::crypto`]); set by both sides on encrypted sessions.
    pub const ENCRYPTED: u32 = Flag::Encrypted as u32;
    /// The frame travelled (or is to travel) as a QUIC datagram: not
    /// sequenced, not replayed, possibly lost.
    pub const UNRELIABLE: u32 = Flag::Unreliable as u32;
    /// The flags a client may set; the gateway refuses a frame with any
    /// other (protocol compliance).
    pub const CLIENT: u32 = ENCRYPTED | UNRELIABLE;
}

/// A decoded envelope. Binary codecs borrow `payload` and `route_key` from
/// the frame; textual codecs may own them when unescaping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope<'a> {
    /// Command id (see [`cmd`]).
    pub cmd: u32,
    /// Sequence number of the request (echoed by its response).
    pub seq: u32,
    /// Bit set of [`flags`].
    pub flags: u32,
    /// Opaque payload.
    pub payload: Cow<'a, [u8]>,
    /// Optional routing key.
    pub route_key: Option<Cow<'a, [u8]>>,
    /// Gateway to client: the session's sequence number of this message (0:
    /// not sequenced).
    pub server_seq: u64,
    /// Client to gateway: highest `server_seq` processed (0: none).
    pub ack: u64,
}

impl<'a> Envelope<'a> {
    /// An envelope borrowing its payload.
    pub fn new(cmd: u32, seq: u32, flags: u32, payload: &'a [u8]) -> Self {
        Envelope { cmd, seq, flags, payload: Cow::Borrowed(payload), route_key: None, server_seq: 0, ack: 0 }
    }

    /// The same envelope with a routing key.
    pub fn with_route_key(mut self, key: &'a [u8]) -> Self {
        self.route_key = Some(Cow::Borrowed(key));
        self
    }

    /// The routing key as a slice, if any.
    pub fn route_key(&self) -> Option<&[u8]> {
        self.route_key.as_deref()
    }

    /// A copy that owns its bytes.
    pub fn into_owned(self) -> Envelope<'static> {
        Envelope {
            cmd: self.cmd,
            seq: self.seq,
            flags: self.flags,
            payload: Cow::Owned(self.payload.into_owned()),
            route_key: self.route_key.map(|k| Cow::Owned(k.into_owned())),
            server_seq: self.server_seq,
            ack: self.ack,
        }
    }

    /// Whether the RESPONSE flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    /// Whether the ENCRYPTED flag is set.
    pub fn is_encrypted(&self) -> bool {
        self.flags & flags::ENCRYPTED != 0
    }

    /// Whether the PUSH flag is set.
    pub fn is_push(&self) -> bool {
        self.flags & flags::PUSH != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_command_names_round_trip() {
        for id in 1..=12 {
            let name = cmd::name(id).expect("every id 1..=12 is named");
            assert_eq!(cmd::from_name(name), Some(id));
        }
        assert_eq!(cmd::name(0), None);
        assert_eq!(cmd::name(13), None);
        assert_eq!(cmd::from_name("FRAMEWORK_UNSPECIFIED"), None);
        assert_eq!(cmd::LOGIN, 2);
        assert_eq!(cmd::ERROR, 12);
        assert!(cmd::is_framework(999));
        assert!(!cmd::is_framework(cmd::FIRST_BUSINESS));
    }
}
