//! Session encryption: an X25519 key agreement in LOGIN, keys per
//! connection and per direction from HKDF-SHA256, every payload sealed with
//! AES-GCM (`ring`: AES-NI/VAES and CLMUL where the CPU has them). No
//! cryptography is written here; this module only fixes the inputs.
//!
//! The key schedule (`proto/PROTOCOL.md` §14, test vectors in
//! `proto/crypto-vectors.json`):
//!
//! 1. LOGIN carries the client's ephemeral X25519 public key `ck`; the
//!    gateway answers with its own `sk`. Both compute the shared secret
//!    `dh = X25519(own private key, peer public key)` (an all-zero result is
//!    refused).
//! 2. The **session secret** `S = HKDF-SHA256(IKM = dh, salt = ck ‖ sk,
//!    info = "portcullis v1 session", L = 32)`. It lives as long as the
//!    session, across RESUMEs.
//! 3. The **connection keys** of a login or a resume, from a client part `c`
//!    and a server part `s` (at login `ck` and `sk`; at RESUME the two fresh
//!    32-byte nonces exchanged in ResumeRequest and ResumeReply):
//!    `PRK = HKDF-Extract(salt = c ‖ s, IKM = S)`, then for each direction
//!    `d` in `c2s`, `s2c`: `key_d = HKDF-Expand(PRK, "portcullis v1 <cipher>
//!    <d> key", 16 or 32)` and `iv_d = HKDF-Expand(PRK, "portcullis v1
//!    <cipher> <d> iv", 12)`, `<cipher>` being `aes-128-gcm` or `aes-256-gcm`.
//! 4. Each direction numbers the frames it seals from 0 (the **frame
//!    counter**). The 96-bit nonce of frame `n` is `iv_d XOR (0u32 ‖ n as
//!    u64 big-endian)`. A receiver expects frame `n` next: a replayed,
//!    dropped, reordered or forged frame fails authentication.
//! 5. The associated data is the envelope without its payload
//!    ([`associated_data`]); the sealed payload is the ciphertext followed by
//!    the 16-byte tag.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{self, KeyType, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{flags, Envelope};

/// Length of an X25519 public key, of the shared secret and of the session
/// secret.
pub const KEY_LEN: usize = 32;
/// Length of the nonces exchanged in RESUME.
pub const RESUME_NONCE_LEN: usize = 32;
/// Length of the AES-GCM tag appended to every sealed payload.
pub const TAG_LEN: usize = 16;
/// Length of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the associated data before the route key.
pub const AD_FIXED_LEN: usize = 29;

/// HKDF info of the session secret.
pub const SESSION_INFO: &[u8] = b"portcullis v1 session";

/// The AEAD of a session, chosen per listener by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum Cipher {
    /// AES-128-GCM (the default).
    #[default]
    #[serde(rename = "aes-128-gcm")]
    Aes128Gcm,
    /// AES-256-GCM.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl Cipher {
    /// Both ciphers.
    pub const ALL: [Cipher; 2] = [Cipher::Aes128Gcm, Cipher::Aes256Gcm];

    /// The name used in configuration, in LoginReply/ResumeReply and in the
    /// HKDF info strings.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "aes-128-gcm",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The cipher of a name.
    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a cryptographic step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A public key or nonce of the wrong length, or an X25519 key that
    /// gives an all-zero shared secret.
    #[error("not a usable X25519 public key")]
    BadKey,
    /// The system's random number generator failed.
    #[error("the random number generator failed")]
    Random,
    /// The frame did not authenticate: tampered, replayed, reordered, or
    /// sealed with other keys.
    #[error("the frame does not decrypt: tampered, replayed, reordered or under other keys")]
    Decrypt,
    /// 2⁶⁴ frames were sealed with these keys.
    #[error("the frame counter is exhausted")]
    Exhausted,
}

/// One side's ephemeral X25519 key pair, used once.
pub struct KeyShare {
    private: EphemeralPrivateKey,
    public: [u8; KEY_LEN],
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyShare").field("public", &self.public).finish_non_exhaustive()
    }
}

impl KeyShare {
    /// A fresh key pair from the system's random number generator.
    pub fn generate() -> Result<KeyShare, CryptoError> {
        Self::generate_with(&SystemRandom::new())
    }

    /// A key pair from `rng` (tests and test vectors use a fixed one).
    pub fn generate_with(rng: &dyn SecureRandom) -> Result<KeyShare, CryptoError> {
        let private = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| CryptoError::Random)?;
        let public = private.compute_public_key().map_err(|_| CryptoError::Random)?;
        let public = public.as_ref().try_into().map_err(|_| CryptoError::Random)?;
        Ok(KeyShare { private, public })
    }

    /// The public key, sent to the peer.
    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// The X25519 shared secret with the peer's public key; consumes the
    /// private key.
    pub fn agree(self, peer: &[u8]) -> Result<SharedSecret, CryptoError> {
        if peer.len() != KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        let peer = UnparsedPublicKey::new(&X25519, peer);
        agreement::agree_ephemeral(self.private, &peer, |dh| {
            let mut out = [0; KEY_LEN];
            out.copy_from_slice(dh);
            SharedSecret(out)
        })
        .map_err(|_| CryptoError::BadKey)
    }
}

/// The raw X25519 output of a handshake.
pub struct SharedSecret([u8; KEY_LEN]);

impl SharedSecret {
    /// Its bytes (for test vectors).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for SharedSecret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// The secret of an encrypted session, from its LOGIN handshake; every
/// connection of the session (the login's and each resume's) derives its
/// keys from it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecret([u8; KEY_LEN]);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

impl Drop for SessionSecret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// An HKDF output length.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 expands to at most 255 * 32 bytes; these are at most 32");
}

impl SessionSecret {
    /// `S = HKDF-SHA256(IKM = dh, salt = client_key ‖ server_key, info =
    /// "portcullis v1 session", L = 32)`.
    pub fn derive(dh: &SharedSecret, client_key: &[u8], server_key: &[u8]) -> SessionSecret {
        let mut salt = [0u8; 2 * KEY_LEN];
        let n = client_key.len().min(KEY_LEN);
        let m = server_key.len().min(KEY_LEN);
        salt[..n].copy_from_slice(&client_key[..n]);
        salt[n..n + m].copy_from_slice(&server_key[..m]);
        let prk = Salt::new(HKDF_SHA256, &salt[..n + m]).extract(&dh.0);
        let mut out = [0; KEY_LEN];
        expand(&prk, &[SESSION_INFO], &mut out);
        SessionSecret(out)
    }

    /// A secret from its bytes (test vectors; a session moved between
    /// processes).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SessionSecret {
        SessionSecret(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The raw key and IV of one direction (`"c2s"` or `"s2c"`), for test
    /// vectors and for clients that bring their own AEAD.
    pub fn key_material(
        &self,
        cipher: Cipher,
        client_part: &[u8],
        server_part: &[u8],
        direction: &str,
    ) -> (Vec<u8>, [u8; NONCE_LEN]) {
        let mut salt = Vec::with_capacity(client_part.len() + server_part.len());
        salt.extend_from_slice(client_part);
        salt.extend_from_slice(server_part);
        let prk = Salt::new(HKDF_SHA256, &salt).extract(&self.0);
        let name = cipher.name().as_bytes();
        let mut key = vec![0; cipher.key_len()];
        expand(&prk, &[b"portcullis v1 ", name, b" ", direction.as_bytes(), b" key"], &mut key);
        let mut iv = [0; NONCE_LEN];
        expand(&prk, &[b"portcullis v1 ", name, b" ", direction.as_bytes(), b" iv"], &mut iv);
        (key, iv)
    }

    /// The ciphers of one connection: at login `client_part` and
    /// `server_part` are the two public keys, at RESUME the two nonces.
    pub fn connection_keys(&self, cipher: Cipher, client_part: &[u8], server_part: &[u8]) -> ConnectionKeys {
        let c2s = self.key_material(cipher, client_part, server_part, "c2s");
        let s2c = self.key_material(cipher, client_part, server_part, "s2c");
        ConnectionKeys {
            cipher,
            client_to_server: FrameCipher::new(cipher, &c2s.0, c2s.1),
            server_to_client: FrameCipher::new(cipher, &s2c.0, s2c.1),
        }
    }
}

/// The two directions of an encrypted connection.
#[derive(Debug)]
pub struct ConnectionKeys {
    /// The AEAD.
    pub cipher: Cipher,
    /// Frames from the client.
    pub client_to_server: FrameCipher,
    /// Frames from the gateway.
    pub server_to_client: FrameCipher,
}

/// A fresh random nonce for RESUME.
pub fn resume_nonce() -> Result<[u8; RESUME_NONCE_LEN], CryptoError> {
    let mut n = [0; RESUME_NONCE_LEN];
    SystemRandom::new().fill(&mut n).map_err(|_| CryptoError::Random)?;
    Ok(n)
}

/// Appends the associated data of a frame: everything of the envelope but
/// its payload, big-endian — `cmd` (4 bytes), `seq` (4), `flags` (4, the
/// ENCRYPTED bit included), `server_seq` (8), `ack` (8), then one byte 0 (no
/// route key) or 1 followed by the route key's bytes.
pub fn associated_data(env: &Envelope<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&env.cmd.to_be_bytes());
    out.extend_from_slice(&env.seq.to_be_bytes());
    out.extend_from_slice(&env.flags.to_be_bytes());
    out.extend_from_slice(&env.server_seq.to_be_bytes());
    out.extend_from_slice(&env.ack.to_be_bytes());
    match env.route_key() {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            out.extend_from_slice(key);
        }
    }
}

/// Seals or opens the frames of one direction of a connection, numbering
/// them. Reuses its associated-data buffer: no allocation per frame once
/// the longest route key has been seen.
pub struct FrameCipher {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    counter: u64,
    ad: Vec<u8>,
}

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCipher").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl FrameCipher {
    /// A cipher with a raw key (16 or 32 bytes, per `cipher`) and IV.
    ///
    /// # Panics
    /// If the key's length is not the cipher's.
    pub fn new(cipher: Cipher, key: &[u8], iv: [u8; NONCE_LEN]) -> FrameCipher {
        let key = UnboundKey::new(cipher.algorithm(), key).expect("key length matches the cipher");
        FrameCipher { key: LessSafeKey::new(key), iv, counter: 0, ad: Vec::with_capacity(AD_FIXED_LEN + 32) }
    }

    /// The number of the next frame.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The nonce of frame `n`: the IV XOR `n` in its last 8 bytes.
    pub fn nonce(&self, n: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.iv;
        for (b, c) in nonce[4..].iter_mut().zip(n.to_be_bytes()) {
            *b ^= c;
        }
        nonce
    }

    /// Seals the next frame: `in_out` holds the payload and gets the
    /// ciphertext and tag; `env` is the envelope as it will be sent (its
    /// `flags` with [`flags::ENCRYPTED`]; its payload is not looked at).
    pub fn seal(&mut self, env: &Envelope<'_>, in_out: &mut Vec<u8>) -> Result<(), CryptoError> {
        debug_assert!(env.flags & flags::ENCRYPTED != 0, "a sealed frame carries the ENCRYPTED flag");
        if self.counter == u64::MAX {
            return Err(CryptoError::Exhausted);
        }
        self.ad.clear();
        associated_data(env, &mut self.ad);
        let nonce = Nonce::assume_unique_for_key(self.nonce(self.counter));
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&self.ad[..]), in_out)
            .map_err(|_| CryptoError::Exhausted)?;
        self.counter += 1;
        Ok(())
    }

    /// Takes back the number of the frame just sealed, whose output was
    /// thrown away without leaving the process (a frame over the frame
    /// limit), so that the peer's count stays in step.
    pub fn unseal_last(&mut self) {
        self.counter -= 1;
    }

    /// Opens the next frame: `in_out` holds the sealed payload (ciphertext
    /// and tag); returns the plaintext, in place. `env` is the envelope as
    /// received. A failure leaves the counter where it was.
    pub fn open<'b>(&mut self, env: &Envelope<'_>, in_out: &'b mut [u8]) -> Result<&'b mut [u8], CryptoError> {
        self.ad.clear();
        associated_data(env, &mut self.ad);
        let nonce = Nonce::assume_unique_for_key(self.nonce(self.counter));
        let plain = self.key.open_in_place(nonce, Aad::from(&self.ad[..]), in_out).map_err(|_| CryptoError::Decrypt)?;
        self.counter += 1;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: Cipher) -> (ConnectionKeys, ConnectionKeys, SessionSecret) {
        let (c, s) = (KeyShare::generate().unwrap(), KeyShare::generate().unwrap());
        let (ck, sk) = (*c.public_key(), *s.public_key());
        let cs = SessionSecret::derive(&c.agree(&sk).unwrap(), &ck, &sk);
        let ss = SessionSecret::derive(&s.agree(&ck).unwrap(), &ck, &sk);
        assert_eq!(cs, ss, "both sides agree");
        (cs.connection_keys(cipher, &ck, &sk), ss.connection_keys(cipher, &ck, &sk), ss)
    }

    fn sealed(keys: &mut FrameCipher, env: &Envelope<'_>) -> Vec<u8> {
        let mut buf = env.payload.to_vec();
        keys.seal(env, &mut buf).unwrap();
        buf
    }

    #[test]
    fn seal_open_both_directions_and_ciphers() {
        for cipher in Cipher::ALL {
            let (mut client, mut server, _) = pair(cipher);
            for i in 0..5u32 {
                let env = Envelope::new(1000 + i, i, flags::ENCRYPTED, b"hello").with_route_key(b"room");
                let mut wire = sealed(&mut client.client_to_server, &env);
                assert_eq!(wire.len(), 5 + TAG_LEN);
                assert_eq!(server.client_to_server.open(&env, &mut wire).unwrap(), b"hello");
                let back =
                    Envelope { server_seq: u64::from(i) + 1, ..Envelope::new(1000, i, 1 | flags::ENCRYPTED, b"") };
                let mut wire = sealed(&mut server.server_to_client, &back);
                assert_eq!(client.server_to_client.open(&back, &mut wire).unwrap(), b"");
            }
        }
    }

    #[test]
    fn tampered_replayed_reordered_and_wrong_direction_fail() {
        let (mut client, mut server, _) = pair(Cipher::Aes128Gcm);
        let env = Envelope::new(1000, 1, flags::ENCRYPTED, b"payload");
        let first = sealed(&mut client.client_to_server, &env);
        let second = sealed(&mut client.client_to_server, &env);
        // Reordered: the second frame first.
        assert_eq!(server.client_to_server.open(&env, &mut second.clone()), Err(CryptoError::Decrypt));
        // Tampered payload, tampered header.
        let mut bad = first.clone();
        bad[0] ^= 1;
        assert_eq!(server.client_to_server.open(&env, &mut bad), Err(CryptoError::Decrypt));
        let other = Envelope::new(1001, 1, flags::ENCRYPTED, b"");
        assert_eq!(server.client_to_server.open(&other, &mut first.clone()), Err(CryptoError::Decrypt));
        let keyed = env.clone().with_route_key(b"");
        assert_eq!(server.client_to_server.open(&keyed, &mut first.clone()), Err(CryptoError::Decrypt));
        // The wrong direction's keys.
        assert_eq!(server.server_to_client.open(&env, &mut first.clone()), Err(CryptoError::Decrypt));
        // In order it works; then the same frame again (a replay) fails.
        assert!(server.client_to_server.open(&env, &mut first.clone()).is_ok());
        assert_eq!(server.client_to_server.open(&env, &mut first.clone()), Err(CryptoError::Decrypt));
        assert!(server.client_to_server.open(&env, &mut second.clone()).is_ok());
    }

    #[test]
    fn resume_keys_differ_per_nonce_and_from_login() {
        let (login, _, secret) = pair(Cipher::Aes256Gcm);
        let (a, b) = (resume_nonce().unwrap(), resume_nonce().unwrap());
        let mut r1 = secret.connection_keys(Cipher::Aes256Gcm, &a, &b);
        let mut r2 = secret.connection_keys(Cipher::Aes256Gcm, &b, &a);
        let env = Envelope::new(1000, 1, flags::ENCRYPTED, b"x");
        let mut wire = sealed(&mut r1.client_to_server, &env);
        assert!(r2.client_to_server.open(&env, &mut wire.clone()).is_err());
        let mut login = login;
        assert!(login.client_to_server.open(&env, &mut wire.clone()).is_err());
        assert!(r1.server_to_client.open(&env, &mut wire).is_err());
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert_eq!(KeyShare::generate().unwrap().agree(&[1; 31]).err(), Some(CryptoError::BadKey));
        // The all-zero point has small order: its shared secret is zero.
        assert_eq!(KeyShare::generate().unwrap().agree(&[0; 32]).err(), Some(CryptoError::BadKey));
    }

    #[test]
    fn cipher_names_round_trip() {
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_name(c.name()), Some(c));
        }
        assert_eq!(Cipher::from_name("aes-192-gcm"), None);
        assert_eq!((Cipher::Aes128Gcm.key_len(), Cipher::Aes256Gcm.key_len()), (16, 32));
    }
}
