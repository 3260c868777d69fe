//! Session encryption in the core (`proto/PROTOCOL.md` §14): the LOGIN
//! handshake, the keys of each connection, opening what clients send and
//! sealing what they are sent.
//!
//! - A session is encrypted when its LOGIN carried a `client_key` on a
//!   listener whose `encryption` is not `"off"`; a `"required"` listener
//!   refuses a LOGIN without one (ENCRYPTION_REQUIRED). The session keeps
//!   its [`SessionCrypto`] (the secret and the cipher) across RESUMEs; each
//!   connection has its own [`ConnectionKeys`], from the handshake's public
//!   keys at login and from fresh nonces at each RESUME.
//! - Every frame sent to a connection with keys after the LOGIN (or
//!   RESUME) answer is sealed ([`encode_frame`]); the replay buffer keeps
//!   frames in the clear and they are sealed again for the connection that
//!   replays them.
//! - Every frame from a connection with keys must carry the ENCRYPTED flag
//!   and open with the next counter ([`Gateway::open_frame`]): a clear
//!   frame is refused ENCRYPTION_REQUIRED, a frame that does not open
//!   DECRYPT_FAILED, and the connection is closed, its session ended. This
//!   runs before the security chain, so the chain and the handlers only see
//!   plaintext.
//!
//! Per message the hot path allocates nothing: payloads are sealed and
//! opened in two buffers of the worker, reused.

use std::borrow::Cow;

use portcullis_proto::crypto::{Cipher, ConnectionKeys, CryptoError, KeyShare, SessionSecret};
use portcullis_proto::{flags, Codec, Envelope};

use super::Gateway;
use crate::conn::ConnId;
use crate::security::Reason;

/// The encryption of a session: what its connections derive their keys
/// from. It moves with the session (RESUME on another worker).
#[derive(Debug, Clone)]
pub struct SessionCrypto {
    /// From the LOGIN handshake.
    pub secret: SessionSecret,
    /// The AEAD chosen by the listener of the login.
    pub cipher: Cipher,
}

/// What the gateway's side of a LOGIN handshake produced.
pub(crate) struct Handshake {
    /// Sent in LoginReply.server_key.
    pub(crate) server_key: [u8; 32],
    pub(crate) session: SessionCrypto,
    pub(crate) keys: ConnectionKeys,
}

/// The gateway's side of the handshake with a client's public key.
pub(crate) fn handshake(client_key: &[u8], cipher: Cipher) -> Result<Handshake, CryptoError> {
    let share = KeyShare::generate()?;
    let server_key = *share.public_key();
    let dh = share.agree(client_key)?;
    let secret = SessionSecret::derive(&dh, client_key, &server_key);
    let keys = secret.connection_keys(cipher, client_key, &server_key);
    Ok(Handshake { server_key, session: SessionCrypto { secret, cipher }, keys })
}

/// Appends `env` to `out` as one frame of `codec`: as is without keys,
/// else with the ENCRYPTED flag and its payload sealed (through `buf`, a
/// reused buffer) under the next counter of the gateway's direction.
pub(crate) fn encode_frame(
    codec: Codec,
    keys: Option<&mut ConnectionKeys>,
    env: &Envelope<'_>,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) {
    let Some(keys) = keys else { return codec.encode(env, out) };
    let header = Envelope {
        cmd: env.cmd,
        seq: env.seq,
        flags: env.flags | flags::ENCRYPTED,
        payload: Cow::Borrowed(&[]),
        route_key: env.route_key.as_deref().map(Cow::Borrowed),
        server_seq: env.server_seq,
        ack: env.ack,
    };
    buf.clear();
    buf.extend_from_slice(&env.payload);
    keys.server_to_client.seal(&header, buf).expect("2^64 frames cannot be sent on one connection");
    codec.encode(&Envelope { payload: Cow::Borrowed(&buf[..]), ..header }, out);
}

impl Gateway {
    /// Whether `conn` is encrypted (it has keys).
    pub(crate) fn is_encrypted(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.keys.is_some())
    }

    /// Opens a frame of `conn` into `plain`. Refuses a sealed frame on a
    /// connection without keys and a clear frame on one with keys.
    pub(crate) fn open_frame(
        &mut self,
        conn: ConnId,
        env: &Envelope<'_>,
        plain: &mut Vec<u8>,
    ) -> Result<(), (Reason, &'static str)> {
        let keys = self.conns.get_mut(&conn).and_then(|c| c.keys.as_deref_mut());
        match keys {
            None => Err((Reason::DecryptFailed, "an ENCRYPTED frame on a session that is not encrypted")),
            Some(_) if !env.is_encrypted() => {
                Err((Reason::NotEncrypted, "a frame without the ENCRYPTED flag on an encrypted session"))
            }
            Some(keys) => {
                plain.clear();
                plain.extend_from_slice(&env.payload);
                let len = keys
                    .client_to_server
                    .open(env, plain)
                    .map_err(|_| {
                        (Reason::DecryptFailed, "the frame does not decrypt: tampered, replayed or reordered")
                    })?
                    .len();
                plain.truncate(len);
                Ok(())
            }
        }
    }
}
