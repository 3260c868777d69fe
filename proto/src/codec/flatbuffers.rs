//! The envelope in FlatBuffers (`schema/envelope.fbs`), verified before it
//! is read; payload and routing key are borrowed from the frame.

use std::borrow::Cow;
use std::cell::RefCell;

use ::flatbuffers::FlatBufferBuilder;

use super::envelope_generated::portcullis::fb;
use crate::{DecodeError, Envelope};

thread_local! {
    /// One builder per thread, reset between frames, so encoding does not
    /// allocate once it has grown to the largest frame seen.
    static BUILDER: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(256));
}

pub(super) fn decode(frame: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let fb = fb::root_as_envelope(frame).map_err(|_| DecodeError::Malformed)?;
    Ok(Envelope {
        cmd: fb.cmd(),
        seq: fb.seq(),
        flags: fb.flags(),
        payload: Cow::Borrowed(fb.payload().map_or(&[][..], |v| v.bytes())),
        route_key: fb.route_key().map(|v| Cow::Borrowed(v.bytes())),
        server_seq: fb.server_seq(),
        ack: fb.ack(),
    })
}

pub(super) fn encode(env: &Envelope<'_>, out: &mut Vec<u8>) {
    BUILDER.with_borrow_mut(|b| {
        b.reset();
        let payload = (!env.payload.is_empty()).then(|| b.create_vector(&env.payload));
        let route_key = env.route_key().map(|k| b.create_vector(k));
        let root = fb::Envelope::create(
            b,
            &fb::EnvelopeArgs {
                cmd: env.cmd,
                seq: env.seq,
                flags: env.flags,
                payload,
                route_key,
                server_seq: env.server_seq,
                ack: env.ack,
            },
        );
        fb::finish_envelope_buffer(b, root);
        out.extend_from_slice(b.finished_data());
    });
}
