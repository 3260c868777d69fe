//! The backend link between gateway workers and game servers
//! (`schema/link.proto`): length-prefixed `LinkFrame`s over TCP.
//!
//! The gateway reads game-server frames as borrowed views
//! ([`ServerFrame::decode`]) and writes requests straight into the link's
//! output buffer ([`encode_request`]); other frames and the game-server side
//! (the backend SDK) use the prost types in [`crate::pb::link`].

use prost::Message;

use crate::framing::Framing;
use crate::pb::link::{link_frame, LinkFrame};
use crate::wire::{self, Reader};
use crate::DecodeError;

/// Field numbers of `LinkFrame`'s `kind`.
mod kind {
    pub const REQUEST: u32 = 2;
    pub const REPLY: u32 = 10;
    pub const PUSH_TO_SESSION: u32 = 11;
    pub const PUSH_TO_USER: u32 = 12;
    pub const PUSH_TO_GROUP: u32 = 13;
    pub const BROADCAST: u32 = 14;
    pub const PONG: u32 = 15;
    pub const STATUS: u32 = 16;
}

/// A frame from a game server, borrowing from the link's input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// The answer to a request.
    Reply {
        /// Session that sent the request.
        session_id: u64,
        /// Command of the answer.
        cmd: u32,
        /// Sequence number of the request.
        seq: u32,
        /// Business payload.
        payload: &'a [u8],
        /// Non-zero: the game server failed the request.
        error: u32,
        /// Explanation of `error`.
        error_message: &'a str,
        /// The request's id on this link.
        request_id: u64,
        /// Complete the request without answering the client.
        silent: bool,
    },
    /// A push to one session.
    PushToSession {
        /// Target session.
        session_id: u64,
        /// Command.
        cmd: u32,
        /// Business payload.
        payload: &'a [u8],
        /// Send as a QUIC datagram where the connection can take one.
        unreliable: bool,
    },
    /// A push to every session of a user.
    PushToUser {
        /// Target user.
        user_id: &'a str,
        /// Command.
        cmd: u32,
        /// Business payload.
        payload: &'a [u8],
        /// Send as a QUIC datagram where the connection can take one.
        unreliable: bool,
    },
    /// A push to every member of a group.
    PushToGroup {
        /// Target group.
        group: &'a str,
        /// Command.
        cmd: u32,
        /// Business payload.
        payload: &'a [u8],
        /// Send as a QUIC datagram where the connection can take one.
        unreliable: bool,
    },
    /// A push to every logged-in session.
    Broadcast {
        /// Command.
        cmd: u32,
        /// Business payload.
        payload: &'a [u8],
        /// Send as a QUIC datagram where the connection can take one.
        unreliable: bool,
    },
    /// Answer to a health-check ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The game server's state.
    Status {
        /// No new sessions, please.
        draining: bool,
    },
}

/// Fields of one server frame body, as read.
#[derive(Default)]
struct Fields<'a> {
    id: u64,
    cmd: u32,
    seq: u32,
    payload: &'a [u8],
    text: &'a str,
    error: u32,
    request_id: u64,
    flag: bool,
    unreliable: bool,
}

impl<'a> ServerFrame<'a> {
    /// Decodes one link frame body sent by a game server.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let mut outer = Reader::new(frame);
        let mut found = None;
        while let Some((field, value)) = outer.next_field()? {
            if matches!(field, kind::REPLY..=kind::STATUS) {
                found = Some((field, value.as_bytes("kind")?));
            }
        }
        let (kind, body) = found.ok_or(DecodeError::Missing("kind"))?;
        let mut f = Fields::default();
        let mut r = Reader::new(body);
        while let Some((field, v)) = r.next_field()? {
            match (kind, field) {
                (kind::REPLY | kind::PUSH_TO_SESSION, 1) | (kind::PONG, 1) => f.id = v.as_u64("id")?,
                (kind::PUSH_TO_USER, 1) => f.text = v.as_str("user_id")?,
                (kind::PUSH_TO_GROUP, 1) => f.text = v.as_str("group")?,
                (kind::BROADCAST, 1) | (kind::REPLY..=kind::PUSH_TO_GROUP, 2) => f.cmd = v.as_u32("cmd")?,
                (kind::REPLY, 3) => f.seq = v.as_u32("seq")?,
                (kind::REPLY, 4) | (kind::PUSH_TO_SESSION..=kind::PUSH_TO_GROUP, 3) | (kind::BROADCAST, 2) => {
                    f.payload = v.as_bytes("payload")?
                }
                (kind::REPLY, 5) => f.error = v.as_u32("error")?,
                (kind::REPLY, 6) => f.text = v.as_str("error_message")?,
                (kind::REPLY, 7) => f.request_id = v.as_u64("request_id")?,
                (kind::REPLY, 8) | (kind::STATUS, 1) => f.flag = v.as_u64("flag")? != 0,
                (kind::PUSH_TO_SESSION..=kind::PUSH_TO_GROUP, 4) | (kind::BROADCAST, 3) => {
                    f.unreliable = v.as_u64("unreliable")? != 0
                }
                _ => {}
            }
        }
        Ok(match kind {
            kind::REPLY => ServerFrame::Reply {
                session_id: f.id,
                cmd: f.cmd,
                seq: f.seq,
                payload: f.payload,
                error: f.error,
                error_message: f.text,
                request_id: f.request_id,
                silent: f.flag,
            },
            kind::PUSH_TO_SESSION => ServerFrame::PushToSession {
                session_id: f.id,
                cmd: f.cmd,
                payload: f.payload,
                unreliable: f.unreliable,
            },
            kind::PUSH_TO_USER => {
                ServerFrame::PushToUser { user_id: f.text, cmd: f.cmd, payload: f.payload, unreliable: f.unreliable }
            }
            kind::PUSH_TO_GROUP => {
                ServerFrame::PushToGroup { group: f.text, cmd: f.cmd, payload: f.payload, unreliable: f.unreliable }
            }
            kind::BROADCAST => ServerFrame::Broadcast { cmd: f.cmd, payload: f.payload, unreliable: f.unreliable },
            kind::PONG => ServerFrame::Pong { nonce: f.id },
            _ => ServerFrame::Status { draining: f.flag },
        })
    }
}

/// A client's business request, as forwarded to a game server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRef<'a> {
    /// Session that sent it.
    pub session_id: u64,
    /// User bound to that session.
    pub user_id: &'a str,
    /// Business command.
    pub cmd: u32,
    /// Client sequence number.
    pub seq: u32,
    /// Business payload, untouched.
    pub payload: &'a [u8],
    /// Routing key from the envelope.
    pub route_key: Option<&'a [u8]>,
    /// Unique per link, echoed by the reply.
    pub request_id: u64,
    /// The client sent it as a QUIC datagram.
    pub unreliable: bool,
}

/// Appends a length-prefixed `LinkFrame { request }` to `out` without
/// allocating (beyond growing `out`).
pub fn encode_request(req: &RequestRef<'_>, out: &mut Vec<u8>) {
    let body_len = wire::uint_len(1, req.session_id)
        + wire::bytes_len(2, req.user_id.len())
        + wire::uint_len(3, req.cmd.into())
        + wire::uint_len(4, req.seq.into())
        + wire::bytes_len(5, req.payload.len())
        + req.route_key.map_or(0, |k| wire::bytes_len_always(6, k.len()))
        + wire::uint_len(7, req.request_id)
        + wire::uint_len(8, req.unreliable.into());
    let mark = Framing::LengthPrefixed.begin(out);
    out.reserve(body_len + 6);
    wire::put_varint(out, u64::from(kind::REQUEST << 3 | u32::from(wire::LEN)));
    wire::put_varint(out, body_len as u64);
    wire::put_uint(out, 1, req.session_id);
    wire::put_bytes(out, 2, req.user_id.as_bytes());
    wire::put_uint(out, 3, req.cmd.into());
    wire::put_uint(out, 4, req.seq.into());
    wire::put_bytes(out, 5, req.payload);
    if let Some(key) = req.route_key {
        wire::put_bytes_always(out, 6, key);
    }
    wire::put_uint(out, 7, req.request_id);
    wire::put_uint(out, 8, req.unreliable.into());
    Framing::LengthPrefixed.finish(out, mark);
}

/// Appends any link frame, length-prefixed, using prost.
pub fn encode_frame(kind: link_frame::Kind, out: &mut Vec<u8>) {
    let mark = Framing::LengthPrefixed.begin(out);
    LinkFrame { kind: Some(kind) }.encode(out).expect("a Vec grows to fit any message");
    Framing::LengthPrefixed.finish(out, mark);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::link::{Broadcast, PushToGroup, PushToSession, PushToUser, Reply, Request};

    fn body(kind: link_frame::Kind) -> Vec<u8> {
        LinkFrame { kind: Some(kind) }.encode_to_vec()
    }

    #[test]
    fn request_encoding_matches_prost() {
        for (route_key, unreliable) in [(None, false), (Some(&b"room"[..]), true), (Some(&b""[..]), false)] {
            let req = RequestRef {
                session_id: 1 << 40,
                user_id: "alice",
                cmd: 1001,
                seq: 77,
                payload: &[9; 200],
                route_key,
                request_id: 99,
                unreliable,
            };
            let mut ours = Vec::new();
            encode_request(&req, &mut ours);
            let pb = Request {
                session_id: req.session_id,
                user_id: "alice".into(),
                cmd: 1001,
                seq: 77,
                payload: vec![9; 200],
                route_key: route_key.map(<[u8]>::to_vec),
                request_id: 99,
                unreliable,
            };
            let mut theirs = Vec::new();
            encode_frame(link_frame::Kind::Request(pb), &mut theirs);
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn server_frames_decode_like_prost_encodes_them() {
        let reply = Reply {
            session_id: 5,
            cmd: 1001,
            seq: 3,
            payload: b"pong".to_vec(),
            error: 2,
            error_message: "nope".into(),
            request_id: 17,
            silent: true,
        };
        assert_eq!(
            ServerFrame::decode(&body(link_frame::Kind::Reply(reply))).unwrap(),
            ServerFrame::Reply {
                session_id: 5,
                cmd: 1001,
                seq: 3,
                payload: b"pong",
                error: 2,
                error_message: "nope",
                request_id: 17,
                silent: true,
            }
        );
        let push = PushToSession { session_id: 9, cmd: 1500, payload: b"x".to_vec(), unreliable: true };
        assert_eq!(
            ServerFrame::decode(&body(link_frame::Kind::PushToSession(push))).unwrap(),
            ServerFrame::PushToSession { session_id: 9, cmd: 1500, payload: b"x", unreliable: true }
        );
        let push = PushToUser { user_id: "bob".into(), cmd: 1501, payload: b"y".to_vec(), unreliable: false };
        assert_eq!(
            ServerFrame::decode(&body(link_frame::Kind::PushToUser(push))).unwrap(),
            ServerFrame::PushToUser { user_id: "bob", cmd: 1501, payload: b"y", unreliable: false }
        );
        let push = PushToGroup { group: "room".into(), cmd: 1502, payload: b"z".to_vec(), unreliable: true };
        assert_eq!(
            ServerFrame::decode(&body(link_frame::Kind::PushToGroup(push))).unwrap(),
            ServerFrame::PushToGroup { group: "room", cmd: 1502, payload: b"z", unreliable: true }
        );
        let all = Broadcast { cmd: 1503, payload: b"w".to_vec(), unreliable: true };
        assert_eq!(
            ServerFrame::decode(&body(link_frame::Kind::Broadcast(all))).unwrap(),
            ServerFrame::Broadcast { cmd: 1503, payload: b"w", unreliable: true }
        );
    }

    #[test]
    fn health_and_status_frames() {
        use crate::pb::link::{Pong, Status};
        let pong = body(link_frame::Kind::Pong(Pong { nonce: 42 }));
        assert_eq!(ServerFrame::decode(&pong).unwrap(), ServerFrame::Pong { nonce: 42 });
        let status = body(link_frame::Kind::Status(Status { draining: true }));
        assert_eq!(ServerFrame::decode(&status).unwrap(), ServerFrame::Status { draining: true });
        let status = body(link_frame::Kind::Status(Status { draining: false }));
        assert_eq!(ServerFrame::decode(&status).unwrap(), ServerFrame::Status { draining: false });
    }

    #[test]
    fn gateway_bound_kinds_and_garbage_are_refused() {
        let req = body(link_frame::Kind::Request(Request::default()));
        assert_eq!(ServerFrame::decode(&req), Err(DecodeError::Missing("kind")));
        assert!(ServerFrame::decode(&[0x52, 0x02, 0x08]).is_err());
        assert!(ServerFrame::decode(&[0x52, 0x02, 0x0a, 0x05]).is_err());
    }
}
