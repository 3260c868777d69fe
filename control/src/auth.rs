//! Who may call the admin API: bearer tokens from the control config, each
//! with a role, compared in constant time; and the count of every call by
//! method and outcome (for `/metrics` and `Status`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::config::{ControlConfig, Role};

/// The configured operators.
pub struct Operators {
    tokens: Vec<(String, Vec<u8>, Role)>,
}

impl Operators {
    /// The tokens of a validated config.
    pub fn from_config(c: &ControlConfig) -> anyhow::Result<Operators> {
        let tokens =
            c.api.tokens.iter().map(|t| Ok((t.name.clone(), t.secret()?, t.role))).collect::<anyhow::Result<_>>()?;
        Ok(Operators { tokens })
    }

    /// The role of the caller's `authorization: Bearer …` token. Every
    /// configured token is compared, each in constant time, so the answer
    /// takes as long whichever (if any) matches.
    pub fn role_of<T>(&self, req: &Request<T>) -> Option<(&str, Role)> {
        let header = req.metadata().get("authorization")?.to_str().ok()?;
        let presented = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer "))?.trim().as_bytes();
        let mut found = None;
        for (name, secret, role) in &self.tokens {
            if bool::from(secret.as_slice().ct_eq(presented)) {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }
}

/// Admin API calls by method and outcome.
#[derive(Default)]
pub struct ApiCalls(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl ApiCalls {
    /// Counts one call.
    pub fn count(&self, method: &'static str, outcome: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry((method, outcome)).or_default() += 1;
    }

    /// Every count: `(method, outcome, calls)`.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(&(m, o), &n)| (m, o, n)).collect()
    }

    /// Checks the caller may call `method` (which needs `need`), counting a
    /// refusal.
    pub fn authorize<T>(
        &self,
        ops: &Operators,
        req: &Request<T>,
        method: &'static str,
        need: Role,
    ) -> Result<(), Status> {
        match ops.role_of(req) {
            None => {
                self.count(method, "unauthenticated");
                Err(Status::unauthenticated("give an operator token: authorization: Bearer <token>"))
            }
            Some((name, role)) if role < need => {
                self.count(method, "permission_denied");
                tracing::warn!("operator {name:?} (role {role:?}) may not call {method}");
                Err(Status::permission_denied(format!("{method} needs the {need:?} role; this token has {role:?}")))
            }
            Some(_) => Ok(()),
        }
    }

    /// Counts the outcome of an authorized call.
    pub fn finish<T>(&self, method: &'static str, r: Result<T, Status>) -> Result<T, Status> {
        self.count(method, if r.is_ok() { "ok" } else { "error" });
        r
    }
}
