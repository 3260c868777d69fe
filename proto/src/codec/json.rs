//! The envelope as one JSON object per line, for debugging:
//! `{"cmd":1001,"seq":1,"flags":0,"payload":"hi","route_key":"room-1"}`,
//! plus `server_seq` and `ack` when not zero.
//!
//! `payload` and `route_key` are text; bytes that are not UTF-8 travel in
//! `payload_b64` / `route_key_b64` (standard base64) instead.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{DecodeError, Envelope};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonEnvelope<'a> {
    #[serde(default)]
    cmd: u32,
    #[serde(default)]
    seq: u32,
    #[serde(default)]
    flags: u32,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    payload: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    route_key: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    route_key_b64: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    server_seq: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    ack: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn bytes_of<'a>(
    text: Option<Cow<'a, str>>,
    b64: Option<String>,
    field: &'static str,
) -> Result<Option<Cow<'a, [u8]>>, DecodeError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(DecodeError::Text(format!("`{field}` and `{field}_b64` are exclusive"))),
        (Some(Cow::Borrowed(s)), None) => Ok(Some(Cow::Borrowed(s.as_bytes()))),
        (Some(Cow::Owned(s)), None) => Ok(Some(Cow::Owned(s.into_bytes()))),
        (None, Some(b)) => {
            B64.decode(b).map(|v| Some(Cow::Owned(v))).map_err(|e| DecodeError::Text(format!("`{field}_b64`: {e}")))
        }
        (None, None) => Ok(None),
    }
}

fn text_or_b64(bytes: &[u8]) -> (Option<Cow<'_, str>>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(Cow::Borrowed(s)), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

pub(super) fn decode(frame: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let j: JsonEnvelope<'_> = serde_json::from_slice(frame).map_err(|e| DecodeError::Text(e.to_string()))?;
    Ok(Envelope {
        cmd: j.cmd,
        seq: j.seq,
        flags: j.flags,
        payload: bytes_of(j.payload, j.payload_b64, "payload")?.unwrap_or_default(),
        route_key: bytes_of(j.route_key, j.route_key_b64, "route_key")?,
        server_seq: j.server_seq,
        ack: j.ack,
    })
}

pub(super) fn encode(env: &Envelope<'_>, out: &mut Vec<u8>) {
    let (payload, payload_b64) = if env.payload.is_empty() { (None, None) } else { text_or_b64(&env.payload) };
    let (route_key, route_key_b64) = env.route_key().map_or((None, None), text_or_b64);
    let j = JsonEnvelope {
        cmd: env.cmd,
        seq: env.seq,
        flags: env.flags,
        payload,
        payload_b64,
        route_key,
        route_key_b64,
        server_seq: env.server_seq,
        ack: env.ack,
    };
    serde_json::to_writer(out, &j).expect("writing JSON into a Vec cannot fail");
}
