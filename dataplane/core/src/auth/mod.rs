//! Login authentication: the [`Authenticator`] trait, the built-in
//! signed-token authenticator and the delegate-to-backend authenticator.

use std::time::Duration;

use portcullis_proto::pb::client::LoginRequest;
use portcullis_proto::pb::link::AuthResult;
use portcullis_proto::token;
use prost::Message;

use crate::config::{AuthConfig, Config, ConfigError};
use crate::session::UserBinding;

/// How a login proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStart {
    /// Decided at once.
    Done(Result<UserBinding, AuthError>),
    /// The core forwards the request to a server of `service` and hands its
    /// reply to [`Authenticator::complete`]; no answer within `timeout`
    /// fails the login.
    Delegate {
        /// Backend service name.
        service: String,
        /// How long to wait.
        timeout: Duration,
    },
}

/// Decides whether a LOGIN is accepted and as whom.
pub trait Authenticator: Send {
    /// Starts checking a login request at `now_unix` (seconds since the
    /// epoch, from the core's clock, never read from the OS here).
    fn authenticate(&mut self, request: &LoginRequest, now_unix: u64) -> AuthStart;

    /// Finishes a delegated login with the auth service's reply payload.
    fn complete(&mut self, _reply: &[u8]) -> Result<UserBinding, AuthError> {
        Err(AuthError("this authenticator does not delegate".into()))
    }
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
    fn authenticate(&mut self, request: &LoginRequest, now_unix: u64) -> AuthStart {
        AuthStart::Done(
            token::verify(&self.secret, &request.token, now_unix)
                .map(|c| UserBinding { user_id: c.uid.into(), device: c.dev.into(), role: c.role.into() })
                .map_err(|e| AuthError(e.to_string())),
        )
    }
}

/// Forwards the LOGIN to an auth service behind the router (a game server
/// handling command LOGIN) and binds the user id it returns in an
/// `AuthResult`.
pub struct DelegateAuthenticator {
    service: String,
    timeout: Duration,
}

impl DelegateAuthenticator {
    /// Delegates to `service`, waiting at most `timeout`.
    pub fn new(service: String, timeout: Duration) -> Self {
        DelegateAuthenticator { service, timeout }
    }
}

impl Authenticator for DelegateAuthenticator {
    fn authenticate(&mut self, _request: &LoginRequest, _now_unix: u64) -> AuthStart {
        AuthStart::Delegate { service: self.service.clone(), timeout: self.timeout }
    }

    fn complete(&mut self, reply: &[u8]) -> Result<UserBinding, AuthError> {
        let r =
            AuthResult::decode(reply).map_err(|_| AuthError("the auth service sent an undecodable answer".into()))?;
        if r.user_id.is_empty() {
            return Err(AuthError("the auth service returned no user id".into()));
        }
        Ok(UserBinding { user_id: r.user_id.into(), device: r.device.into(), role: r.role.into() })
    }
}

/// The authenticator a config asks for.
pub fn from_config(config: &Config) -> Result<Box<dyn Authenticator>, ConfigError> {
    Ok(match &config.auth {
        AuthConfig::Token { .. } => Box::new(TokenAuthenticator::new(config.auth.token_secret()?)),
        AuthConfig::Delegate { service, timeout_ms } => {
            Box::new(DelegateAuthenticator::new(service.clone(), Duration::from_millis(*timeout_ms)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_authenticator_binds_claims() {
        let mut a = TokenAuthenticator::new(b"0123456789abcdef".to_vec());
        let t = token::sign(
            b"0123456789abcdef",
            &token::Claims { uid: "u1".into(), dev: "ios".into(), exp: 100, role: String::new() },
        );
        let AuthStart::Done(Ok(b)) = a.authenticate(&LoginRequest { token: t.clone(), ..Default::default() }, 50)
        else {
            panic!()
        };
        assert_eq!((&*b.user_id, &*b.device), ("u1", "ios"));
        let AuthStart::Done(Err(e)) = a.authenticate(&LoginRequest { token: t, ..Default::default() }, 100) else {
            panic!()
        };
        assert!(e.0.contains("expired"));
    }

    #[test]
    fn delegate_authenticator_reads_the_auth_result() {
        let mut a = DelegateAuthenticator::new("auth".into(), Duration::from_secs(1));
        assert!(matches!(a.authenticate(&LoginRequest::default(), 0), AuthStart::Delegate { .. }));
        let ok = AuthResult { user_id: "bob".into(), device: "pc".into(), role: String::new() }.encode_to_vec();
        assert_eq!(&*a.complete(&ok).unwrap().user_id, "bob");
        assert!(a.complete(&AuthResult::default().encode_to_vec()).is_err());
        assert!(a.complete(&[0xff]).is_err());
    }
}
