//! Login authentication: the [`Authenticator`] trait and the built-in
//! signed-token authenticator.

use portcullis_proto::pb::client::LoginRequest;
use portcullis_proto::token;

use crate::session::UserBinding;

/// Decides whether a LOGIN is accepted and as whom.
pub trait Authenticator: Send {
    /// Checks a login request at `now_unix` (seconds since the epoch, from
    /// the core's clock, never read from the OS here).
    fn authenticate(&mut self, request: &LoginRequest, now_unix: u64) -> Result<UserBinding, AuthError>;
}

/// Why a login was refused; the message goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Accepts HMAC-SHA256 signed tokens (`portcullis_proto::token`).
pub struct TokenAuthenticator {
    secret: Vec<u8>,
}

impl TokenAuthenticator {
    /// An authenticator for tokens signed with `secret`.
    pub fn new(secret: Vec<u8>) -> Self {
        TokenAuthenticator { secret }
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&mut self, request: &LoginRequest, now_unix: u64) -> Result<UserBinding, AuthError> {
        let claims = token::verify(&self.secret, &request.token, now_unix).map_err(|e| AuthError(e.to_string()))?;
        Ok(UserBinding { user_id: claims.uid.into(), device: claims.dev.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_authenticator_binds_claims() {
        let mut a = TokenAuthenticator::new(b"0123456789abcdef".to_vec());
        let t = token::sign(b"0123456789abcdef", &token::Claims { uid: "u1".into(), dev: "ios".into(), exp: 100 });
        let b = a.authenticate(&LoginRequest { token: t.clone() }, 50).unwrap();
        assert_eq!((&*b.user_id, &*b.device), ("u1", "ios"));
        assert!(a.authenticate(&LoginRequest { token: t }, 100).unwrap_err().0.contains("expired"));
    }
}
