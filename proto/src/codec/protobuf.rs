//! The envelope in protobuf, read as a borrowed view and written straight
//! into the output buffer (see [`crate::wire`]).

use std::borrow::Cow;

use crate::wire::{self, Reader};
use crate::{DecodeError, Envelope};

const CMD: u32 = 1;
const SEQ: u32 = 2;
const FLAGS: u32 = 3;
const PAYLOAD: u32 = 4;
const ROUTE_KEY: u32 = 5;
const SERVER_SEQ: u32 = 6;
const ACK: u32 = 7;

pub(super) fn decode(frame: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let mut env = Envelope::default();
    let mut r = Reader::new(frame);
    while let Some((field, value)) = r.next_field()? {
        match field {
            CMD => env.cmd = value.as_u32("cmd")?,
            SEQ => env.seq = value.as_u32("seq")?,
            FLAGS => env.flags = value.as_u32("flags")?,
            PAYLOAD => env.payload = Cow::Borrowed(value.as_bytes("payload")?),
            ROUTE_KEY => env.route_key = Some(Cow::Borrowed(value.as_bytes("route_key")?)),
            SERVER_SEQ => env.server_seq = value.as_u64("server_seq")?,
            ACK => env.ack = value.as_u64("ack")?,
            _ => {} // unknown fields are skipped, as protobuf requires
        }
    }
    Ok(env)
}

pub(super) fn encode(env: &Envelope<'_>, out: &mut Vec<u8>) {
    out.reserve(env.payload.len() + env.route_key().map_or(0, <[u8]>::len) + 24);
    wire::put_uint(out, CMD, env.cmd.into());
    wire::put_uint(out, SEQ, env.seq.into());
    wire::put_uint(out, FLAGS, env.flags.into());
    wire::put_bytes(out, PAYLOAD, &env.payload);
    if let Some(key) = env.route_key() {
        wire::put_bytes_always(out, ROUTE_KEY, key);
    }
    wire::put_uint(out, SERVER_SEQ, env.server_seq);
    wire::put_uint(out, ACK, env.ack);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::client::Envelope as PbEnvelope;
    use prost::Message;

    #[test]
    fn agrees_with_prost_both_ways() {
        let cases = [
            PbEnvelope::default(),
            PbEnvelope { cmd: 1001, seq: 9, flags: 1, payload: b"abc".to_vec(), ..Default::default() },
            PbEnvelope { server_seq: u64::MAX, ack: 300, ..Default::default() },
            PbEnvelope {
                cmd: u32::MAX,
                seq: u32::MAX,
                flags: 2,
                payload: vec![0; 300],
                route_key: Some(b"room".to_vec()),
                server_seq: 12,
                ack: 11,
            },
            PbEnvelope { route_key: Some(Vec::new()), ..Default::default() },
        ];
        for pb in cases {
            let bytes = pb.encode_to_vec();
            let view = decode(&bytes).unwrap();
            assert_eq!(view.cmd, pb.cmd);
            assert_eq!(view.seq, pb.seq);
            assert_eq!(view.flags, pb.flags);
            assert_eq!(&*view.payload, &pb.payload[..]);
            assert_eq!(view.route_key(), pb.route_key.as_deref());
            assert_eq!((view.server_seq, view.ack), (pb.server_seq, pb.ack));
            let mut ours = Vec::new();
            encode(&view, &mut ours);
            assert_eq!(ours, bytes, "byte-identical to prost");
        }
    }

    #[test]
    fn wrong_field_types_are_errors() {
        // cmd (field 1) as a length-delimited field.
        assert_eq!(decode(&[0x0a, 0x01, 0x00]), Err(DecodeError::Field("cmd")));
        // payload (field 4) as a varint.
        assert_eq!(decode(&[0x20, 0x01]), Err(DecodeError::Field("payload")));
        // cmd beyond u32.
        assert_eq!(decode(&[0x08, 0x80, 0x80, 0x80, 0x80, 0x10]), Err(DecodeError::Field("cmd")));
    }
}
