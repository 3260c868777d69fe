//! A sample game server used by the demo, the tests and the benchmarks.
//!
//! | command | payload | answer |
//! |---|---|---|
//! | [`ECHO`] | anything | the same bytes |
//! | [`CHAT_SAY`] | text; routing key = room | `ok`, and a [`CHAT_MESSAGE`] push `"<user>: <text>"` to group `room:<room>` |
//! | [`COUNTER_ADD`] | decimal delta (empty: 1) | the new value, decimal |
//! | [`COUNTER_GET`] | — | the value, decimal |
//! | [`STREAM`] | decimal count N | `ok`, then N pushes [`STREAM_ITEM`] `"0"`…`"N-1"` to the session, one per millisecond |
//! | [`STATE_STREAM`] | decimal count N | `ok`, then N **unreliable** pushes [`STATE_UPDATE`] `"0"`…`"N-1"`, one per millisecond (QUIC datagrams where the player's connection takes them) |
//! | `LOGIN` (2) | delegated login: token `demo:<user>[:<device>]` | the user, for `auth.kind = "delegate"` gateways |
//!
//! Players join a room's group with the framework's JOIN_GROUP
//! (`room:<room>`) to hear its chat.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use portcullis_backend_sdk::{Handler, LoginRequest, Pusher, Request, Response, LOGIN};
use prost::Message;

/// Echoes the payload.
pub const ECHO: u32 = 1000;
/// Says something in a chat room.
pub const CHAT_SAY: u32 = 1101;
/// Push: a chat line.
pub const CHAT_MESSAGE: u32 = 1102;
/// Adds to the shared counter.
pub const COUNTER_ADD: u32 = 1200;
/// Reads the shared counter.
pub const COUNTER_GET: u32 = 1201;

/// Starts a stream of pushes to the caller.
pub const STREAM: u32 = 1300;
/// Push: one item of a stream.
pub const STREAM_ITEM: u32 = 1301;
/// Starts a stream of unreliable pushes to the caller.
pub const STATE_STREAM: u32 = 1302;
/// Push (unreliable): one state update.
pub const STATE_UPDATE: u32 = 1303;

/// Error code for commands this server does not know.
pub const ERR_UNKNOWN_COMMAND: u32 = 404;
/// Error code for malformed requests.
pub const ERR_BAD_REQUEST: u32 = 400;

/// The group a chat room's players join.
pub fn room_group(room: &str) -> String {
    format!("room:{room}")
}

/// The sample game.
#[derive(Default, Clone)]
pub struct SampleGame {
    counter: Arc<AtomicI64>,
}

impl SampleGame {
    /// The counter's current value.
    pub fn counter(&self) -> i64 {
        self.counter.load(Ordering::Relaxed)
    }
}

impl Handler for SampleGame {
    async fn on_request(&self, req: Request, push: &Pusher) -> Response {
        match req.cmd {
            ECHO => Response::reply(req.payload),
            CHAT_SAY => {
                let Some(room) =
                    req.route_key.as_deref().and_then(|k| std::str::from_utf8(k).ok()).filter(|r| !r.is_empty())
                else {
                    return Response::error(ERR_BAD_REQUEST, "CHAT_SAY needs the room as routing key");
                };
                let mut line = format!("{}: ", req.user_id).into_bytes();
                line.extend_from_slice(&req.payload);
                match push.to_group(&room_group(room), CHAT_MESSAGE, line).await {
                    Ok(_) => Response::reply(&b"ok"[..]),
                    Err(e) => Response::error(500, e.to_string()),
                }
            }
            COUNTER_ADD => {
                let delta = if req.payload.is_empty() {
                    Ok(1)
                } else {
                    std::str::from_utf8(&req.payload).ok().and_then(|s| s.trim().parse::<i64>().ok()).ok_or(())
                };
                match delta {
                    Ok(d) => Response::reply((self.counter.fetch_add(d, Ordering::Relaxed) + d).to_string()),
                    Err(()) => Response::error(ERR_BAD_REQUEST, "COUNTER_ADD takes a decimal integer"),
                }
            }
            COUNTER_GET => Response::reply(self.counter().to_string()),
            STREAM | STATE_STREAM => {
                let Some(count) = std::str::from_utf8(&req.payload).ok().and_then(|s| s.trim().parse::<u32>().ok())
                else {
                    return Response::error(ERR_BAD_REQUEST, "STREAM takes a decimal count");
                };
                let (push, item) =
                    if req.cmd == STREAM { (push.clone(), STREAM_ITEM) } else { (push.unreliable(), STATE_UPDATE) };
                let session = req.session_id;
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    for i in 0..count {
                        tick.tick().await;
                        if push.to_session(session, item, i.to_string()).await.is_err() {
                            return;
                        }
                    }
                });
                Response::reply(&b"ok"[..])
            }
            LOGIN => {
                let token = LoginRequest::decode(&req.payload[..]).map(|l| l.token).unwrap_or_default();
                let mut parts = token.split(':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("demo"), Some(user), device) if !user.is_empty() => {
                        Response::authenticated(user, device.unwrap_or("pc"))
                    }
                    _ => Response::error(403, "unknown demo credentials (use demo:<user>[:<device>])"),
                }
            }
            other => Response::error(ERR_UNKNOWN_COMMAND, format!("the sample game has no command {other}")),
        }
    }
}
