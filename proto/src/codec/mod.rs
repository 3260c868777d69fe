//! Envelope codecs, chosen per listener.
//!
//! | codec | framing | framework payloads |
//! |---|---|---|
//! | `protobuf` (default) | length-prefixed | protobuf |
//! | `flatbuffers` | length-prefixed | protobuf |
//! | `json` | lines | JSON |
//! | `text` | lines | JSON |
//!
//! `encode` appends one complete frame (framing included) to a buffer, so a
//! connection's output is a single growing `Vec<u8>`.

mod flatbuffers;
mod json;
mod protobuf;
mod text;

#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
mod envelope_generated;

use crate::framework::PayloadForm;
use crate::{DecodeError, Envelope, Framing};

/// An envelope codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Protobuf (`schema/client.proto`), zero-copy decoding.
    #[default]
    Protobuf,
    /// FlatBuffers (`schema/envelope.fbs`), zero-copy decoding.
    Flatbuffers,
    /// One JSON object per line, for debugging.
    Json,
    /// `CMD SEQ [FLAGS [ROUTE_KEY [PAYLOAD]]]` per line, for debugging.
    Text,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 4] = [Codec::Protobuf, Codec::Flatbuffers, Codec::Json, Codec::Text];

    /// How frames of this codec are delimited.
    pub fn framing(self) -> Framing {
        match self {
            Codec::Protobuf | Codec::Flatbuffers => Framing::LengthPrefixed,
            Codec::Json | Codec::Text => Framing::Lines,
        }
    }

    /// How framework payloads are encoded on listeners of this codec.
    pub fn payload_form(self) -> PayloadForm {
        match self {
            Codec::Protobuf | Codec::Flatbuffers => PayloadForm::Protobuf,
            Codec::Json | Codec::Text => PayloadForm::Json,
        }
    }

    /// Decodes one frame's body (without its framing).
    pub fn decode(self, frame: &[u8]) -> Result<Envelope<'_>, DecodeError> {
        match self {
            Codec::Protobuf => protobuf::decode(frame),
            Codec::Flatbuffers => flatbuffers::decode(frame),
            Codec::Json => json::decode(frame),
            Codec::Text => text::decode(frame),
        }
    }

    /// Appends `env` as one complete frame, framing included.
    pub fn encode(self, env: &Envelope<'_>, out: &mut Vec<u8>) {
        let framing = self.framing();
        let mark = framing.begin(out);
        match self {
            Codec::Protobuf => protobuf::encode(env, out),
            Codec::Flatbuffers => flatbuffers::encode(env, out),
            Codec::Json => json::encode(env, out),
            Codec::Text => text::encode(env, out),
        }
        framing.finish(out, mark);
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Protobuf => "protobuf",
            Codec::Flatbuffers => "flatbuffers",
            Codec::Json => "json",
            Codec::Text => "text",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;
    use std::borrow::Cow;

    fn samples() -> Vec<Envelope<'static>> {
        vec![
            Envelope::default(),
            Envelope::new(1001, 7, 0, b"hello world"),
            Envelope::new(cmd::LOGIN, u32::MAX, 3, b"{\"token\":\"x\"}"),
            Envelope::new(2000, 1, 2, &[0, 159, 146, 150, b'\n', b'\\', 255]).with_route_key(b"room-1"),
            Envelope::new(1000, 2, 0, b"").with_route_key(b""),
            Envelope::new(1000, 3, 0, b"line\nbreak and \\ back\r"),
            Envelope { server_seq: 7, ..Envelope::new(1000, 4, 2, b"sequenced") },
            Envelope { server_seq: u64::MAX, ack: 5, ..Envelope::new(cmd::ACK, 0, 0, b"") },
            Envelope { ack: 9, ..Envelope::new(1000, 5, 0, b"acked") },
        ]
    }

    #[test]
    fn every_codec_round_trips_every_sample() {
        for codec in Codec::ALL {
            for env in samples() {
                let mut out = Vec::new();
                codec.encode(&env, &mut out);
                let (range, used) = codec
                    .framing()
                    .next_frame(&out, usize::MAX)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{codec}: incomplete frame for {env:?}"));
                assert_eq!(used, out.len(), "{codec}: one frame");
                let back = codec
                    .decode(&out[range])
                    .unwrap_or_else(|e| panic!("{codec}: {e} for {env:?}: {:?}", String::from_utf8_lossy(&out)));
                assert_eq!(back, env, "{codec}");
            }
        }
    }

    #[test]
    fn binary_codecs_borrow_the_payload() {
        for codec in [Codec::Protobuf, Codec::Flatbuffers] {
            let mut out = Vec::new();
            codec.encode(&Envelope::new(1001, 1, 0, b"payload").with_route_key(b"k"), &mut out);
            let env = codec.decode(&out[4..]).unwrap();
            assert!(matches!(env.payload, Cow::Borrowed(_)), "{codec}");
            assert!(matches!(env.route_key, Some(Cow::Borrowed(_))), "{codec}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz target goes further.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for codec in Codec::ALL {
                let _ = codec.decode(&bytes);
            }
        }
    }
}
