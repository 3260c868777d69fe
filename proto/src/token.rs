//! Signed login tokens of the built-in authenticator.
//!
//! A token is `T "." base64url(HMAC-SHA256(secret, T))` with `T =
//! base64url(claims)` (the MAC covers the base64url text, no padding)
//! where `claims` is the JSON `{"uid":"alice","dev":"ios","exp":1700000000}`
//! (`exp` in Unix seconds; an optional `"role"` names the user's role for
//! the command whitelist). Auth services mint them with [`sign`]; the gateway
//! checks them with [`verify`] (constant-time MAC comparison).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub uid: String,
    /// Device type (`ios`, `android`, `pc`…), used by multi-login policies.
    #[serde(default)]
    pub dev: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Role for the gateway's command whitelist (`admin`, `moderator`…);
    /// absent: the gateway's default role.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `claims.mac` in base64url.
    #[error("token is not of the form <claims>.<mac> in base64url")]
    Format,
    /// The MAC does not match: wrong secret or altered claims.
    #[error("token signature does not match")]
    Signature,
    /// The claims are not the expected JSON.
    #[error("token claims are malformed")]
    Claims,
    /// Expired at the given Unix second.
    #[error("token expired at {0}")]
    Expired(u64),
    /// An empty user id.
    #[error("token has an empty user id")]
    EmptyUser,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Mints a token for `claims` with `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let body = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let mut m = mac(secret);
    m.update(body.as_bytes());
    format!("{body}.{}", B64.encode(m.finalize().into_bytes()))
}

/// Checks a token's signature and expiry at `now_unix` (seconds).
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Claims, TokenError> {
    let (body, sig) = token.split_once('.').ok_or(TokenError::Format)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Format)?;
    let mut m = mac(secret);
    m.update(body.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
    let json = B64.decode(body).map_err(|_| TokenError::Format)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Claims)?;
    if claims.uid.is_empty() {
        return Err(TokenError::EmptyUser);
    }
    if claims.exp <= now_unix {
        return Err(TokenError::Expired(claims.exp));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims { uid: "alice".into(), dev: "ios".into(), exp: 1000, role: String::new() }
    }

    #[test]
    fn signed_tokens_verify_until_expiry() {
        let t = sign(b"secret", &claims());
        assert_eq!(verify(b"secret", &t, 999), Ok(claims()));
        assert_eq!(verify(b"secret", &t, 1000), Err(TokenError::Expired(1000)));
    }

    #[test]
    fn tampering_and_wrong_secrets_are_refused() {
        let t = sign(b"secret", &claims());
        assert_eq!(verify(b"other", &t, 0), Err(TokenError::Signature));
        let forged = sign(b"secret", &Claims { uid: "mallory".into(), ..claims() });
        let (forged_body, _) = forged.split_once('.').unwrap();
        let (_, sig) = t.split_once('.').unwrap();
        assert_eq!(verify(b"secret", &format!("{forged_body}.{sig}"), 0), Err(TokenError::Signature));
        assert_eq!(verify(b"secret", "garbage", 0), Err(TokenError::Format));
        assert_eq!(verify(b"secret", "a.!!!", 0), Err(TokenError::Format));
        let empty = sign(b"secret", &Claims { uid: String::new(), ..claims() });
        assert_eq!(verify(b"secret", &empty, 0), Err(TokenError::EmptyUser));
    }
}

/// A resume token for generation `generation` of `session_id`:
/// `base64url(id (8 bytes BE) ‖ generation (4 bytes BE) ‖ first 16 bytes of
/// HMAC-SHA256(key, id ‖ generation))`. Only the gateway that holds `key`
/// can mint or check one; a session accepts only its current generation, so
/// a token works for one RESUME.
pub fn resume_token(key: &[u8], session_id: u64, generation: u32) -> String {
    let mut raw = session_id.to_be_bytes().to_vec();
    raw.extend_from_slice(&generation.to_be_bytes());
    let mut m = mac(key);
    m.update(&raw);
    let tag = m.finalize().into_bytes();
    raw.extend_from_slice(&tag[..16]);
    B64.encode(raw)
}

/// The session and generation a resume token names, if `key` signed it.
pub fn verify_resume_token(key: &[u8], token: &str) -> Option<(u64, u32)> {
    let raw = B64.decode(token).ok()?;
    if raw.len() != 28 {
        return None;
    }
    let (body, tag) = raw.split_at(12);
    let mut m = mac(key);
    m.update(body);
    m.verify_truncated_left(tag).ok()?;
    let (id, generation) = body.split_at(8);
    Some((u64::from_be_bytes(id.try_into().ok()?), u32::from_be_bytes(generation.try_into().ok()?)))
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    #[test]
    fn resume_tokens_name_their_session_and_generation_and_resist_forgery() {
        let t = resume_token(b"k1", 42, 3);
        assert_eq!(verify_resume_token(b"k1", &t), Some((42, 3)));
        assert_ne!(resume_token(b"k1", 42, 4), t, "each generation has its own token");
        assert_eq!(verify_resume_token(b"k2", &t), None);
        let mut raw = B64.decode(&t).unwrap();
        raw[7] ^= 1;
        assert_eq!(verify_resume_token(b"k1", &B64.encode(&raw)), None, "another session id");
        let mut raw = B64.decode(&t).unwrap();
        raw[11] ^= 1;
        assert_eq!(verify_resume_token(b"k1", &B64.encode(&raw)), None, "another generation");
        assert_eq!(verify_resume_token(b"k1", "short"), None);
        assert_eq!(verify_resume_token(b"k1", ""), None);
    }
}
