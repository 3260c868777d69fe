//! Payloads of the framework commands (`LoginRequest`, `GroupRequest`…,
//! generated from `schema/client.proto` into [`crate::pb::client`]).
//!
//! Binary listeners carry them in protobuf; the JSON and text listeners carry
//! them as JSON objects with the same field names, so that a person can type
//! `LOGIN 1 0 - {"token":"…"}` into `nc`.

use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::DecodeError;

/// How framework payloads are encoded on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadForm {
    /// Protobuf, as in `schema/client.proto`.
    Protobuf,
    /// JSON with the `.proto` field names.
    Json,
}

/// A framework payload message: protobuf and JSON.
pub trait Payload: Message + Default + Serialize + DeserializeOwned {}
impl<T: Message + Default + Serialize + DeserializeOwned> Payload for T {}

impl PayloadForm {
    /// Decodes a framework payload.
    pub fn decode<M: Payload>(self, bytes: &[u8]) -> Result<M, DecodeError> {
        match self {
            PayloadForm::Protobuf => M::decode(bytes).map_err(|_| DecodeError::Malformed),
            PayloadForm::Json if bytes.is_empty() => Ok(M::default()),
            PayloadForm::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Text(e.to_string())),
        }
    }

    /// Appends an encoded framework payload to `out`.
    pub fn encode<M: Payload>(self, msg: &M, out: &mut Vec<u8>) {
        match self {
            PayloadForm::Protobuf => msg.encode(out).expect("a Vec grows to fit any message"),
            PayloadForm::Json => serde_json::to_writer(out, msg).expect("writing JSON into a Vec cannot fail"),
        }
    }

    /// Encodes a framework payload into a new buffer.
    pub fn encode_to_vec<M: Payload>(self, msg: &M) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(msg, &mut out);
        out
    }
}

/// Serde form of `bytes` fields in JSON payloads: UTF-8 text as is, other
/// bytes as `"base64:<standard base64>"`.
pub mod text_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    const PREFIX: &str = "base64:";

    /// Serializes bytes as text.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.starts_with(PREFIX) => s.serialize_str(text),
            _ => s.serialize_str(&format!("{PREFIX}{}", B64.encode(bytes))),
        }
    }

    /// Deserializes bytes from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        match text.strip_prefix(PREFIX) {
            Some(b64) => B64.decode(b64).map_err(serde::de::Error::custom),
            None => Ok(text.into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::client::{Delivery, GroupRequest, LoginRequest};

    #[test]
    fn both_forms_round_trip() {
        let d = Delivery { from_user_id: "alice".into(), group: "room".into(), payload: vec![0xff, 0, 1] };
        for form in [PayloadForm::Protobuf, PayloadForm::Json] {
            let bytes = form.encode_to_vec(&d);
            assert_eq!(form.decode::<Delivery>(&bytes).unwrap(), d, "{form:?}");
        }
        let text = Delivery { payload: b"hi there".to_vec(), ..Default::default() };
        let json = String::from_utf8(PayloadForm::Json.encode_to_vec(&text)).unwrap();
        assert!(json.contains("\"payload\":\"hi there\""), "{json}");
    }

    #[test]
    fn json_is_forgiving_about_missing_fields_but_not_garbage() {
        let g: GroupRequest = PayloadForm::Json.decode(br#"{"group":"lobby"}"#).unwrap();
        assert_eq!(g.group, "lobby");
        let l: LoginRequest = PayloadForm::Json.decode(b"{}").unwrap();
        assert_eq!(l.token, "");
        assert!(PayloadForm::Json.decode::<GroupRequest>(b"{").is_err());
        assert!(PayloadForm::Protobuf.decode::<GroupRequest>(&[0x0a, 9]).is_err());
    }
}
