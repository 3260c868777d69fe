//! The dataplane's configuration (`config/portcullis.toml`).
//!
//! [`Config::load`] parses the file and then validates it as a whole; every
//! error names the key at fault and what was expected, e.g.
//! `routes[1].service: no service named "chat" (services: game)`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use portcullis_proto::{cmd, Codec};
use serde::Deserialize;

/// A configuration error, naming the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type…).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `routes[0].commands`.
        key: String,
        /// What was expected.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway-wide settings.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Client listeners; at least one.
    pub listeners: Vec<ListenerConfig>,
    /// How LOGIN is authenticated.
    pub auth: AuthConfig,
    /// Backend services (groups of game servers).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Route table: command ranges to services.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// Gateway-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Name of this gateway, sent to game servers in the link's Hello.
    pub name: String,
    /// A session with no frame for this long is closed (KICK "heartbeat timeout").
    pub heartbeat_timeout_ms: u64,
    /// Default maximum frame size of listeners.
    pub max_frame_bytes: usize,
    /// A client whose unsent output exceeds this is disconnected (slow consumer).
    pub max_outbound_bytes: usize,
    /// A connection sending this many undecodable frames in a row is closed.
    pub max_bad_frames: u32,
    /// Groups one session may be in.
    pub max_groups_per_session: usize,
    /// Longest group name or user id accepted, in bytes.
    pub max_name_bytes: usize,
    /// Delay before reconnecting a game-server link that went down.
    pub backend_reconnect_ms: u64,
    /// Requests to a game-server link whose unsent output exceeds this are
    /// refused with BACKEND_UNAVAILABLE.
    pub max_backend_outbound_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            name: "portcullis".into(),
            heartbeat_timeout_ms: 30_000,
            max_frame_bytes: portcullis_proto::framing::DEFAULT_MAX_FRAME,
            max_outbound_bytes: 4 << 20,
            max_bad_frames: 8,
            max_groups_per_session: 64,
            max_name_bytes: 128,
            backend_reconnect_ms: 1_000,
            max_backend_outbound_bytes: 64 << 20,
        }
    }
}

/// One client listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on, e.g. `0.0.0.0:7000`.
    pub bind: SocketAddr,
    /// Envelope codec of this listener.
    #[serde(default)]
    pub codec: Codec,
    /// Maximum frame size; defaults to `gateway.max_frame_bytes`.
    pub max_frame_bytes: Option<usize>,
}

/// How LOGIN is authenticated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum AuthConfig {
    /// Built-in HMAC-SHA256 signed tokens (see `portcullis_proto::token`).
    Token {
        /// The shared secret, inline…
        secret: Option<String>,
        /// …or the name of an environment variable holding it.
        secret_env: Option<String>,
    },
}

impl AuthConfig {
    /// The token secret, read from the config or the environment.
    pub fn token_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let AuthConfig::Token { secret, secret_env } = self;
        let secret = match (secret, secret_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| invalid("auth.secret_env", format!("environment variable {var} is not set")))?,
            _ => return Err(invalid("auth", "set exactly one of `secret` and `secret_env` for kind = \"token\"")),
        };
        if secret.len() < 16 {
            return Err(invalid("auth.secret", "the token secret must be at least 16 bytes"));
        }
        Ok(secret.into_bytes())
    }
}

/// A backend service: game servers that can serve the same commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name used by routes.
    pub name: String,
    /// Game-server addresses.
    pub servers: Vec<SocketAddr>,
    /// How requests are spread over the servers.
    #[serde(default)]
    pub balance: Balance,
}

/// Balancing policy of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each request to the next healthy server in turn.
    #[default]
    RoundRobin,
}

/// A route: an inclusive range of business commands to a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `[first, last]` command ids, inclusive.
    pub commands: [u32; 2],
    /// Name of the service.
    pub service: String,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_string(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        for (key, value) in [
            ("gateway.heartbeat_timeout_ms", g.heartbeat_timeout_ms as usize),
            ("gateway.max_frame_bytes", g.max_frame_bytes),
            ("gateway.max_outbound_bytes", g.max_outbound_bytes),
            ("gateway.max_bad_frames", g.max_bad_frames as usize),
            ("gateway.max_name_bytes", g.max_name_bytes),
            ("gateway.backend_reconnect_ms", g.backend_reconnect_ms as usize),
            ("gateway.max_backend_outbound_bytes", g.max_backend_outbound_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if g.max_frame_bytes > u32::MAX as usize {
            return Err(invalid("gateway.max_frame_bytes", "must fit in 32 bits"));
        }
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "configure at least one [[listeners]]"));
        }
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                return Err(invalid(format!("listeners[{i}].bind"), format!("{} is bound twice", l.bind)));
            }
            if l.max_frame_bytes == Some(0) || l.max_frame_bytes.is_some_and(|m| m > u32::MAX as usize) {
                return Err(invalid(format!("listeners[{i}].max_frame_bytes"), "must be 1..=4294967295"));
            }
        }
        self.auth.token_secret()?;
        let mut names = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(invalid(format!("services[{i}].name"), format!("{:?} is empty or used twice", s.name)));
            }
            if s.servers.is_empty() {
                return Err(invalid(format!("services[{i}].servers"), "list at least one game-server address"));
            }
        }
        let known = || self.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        let mut ranges: Vec<(u32, u32, usize)> = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let [first, last] = r.commands;
            let key = format!("routes[{i}].commands");
            if first > last {
                return Err(invalid(key, format!("[{first}, {last}] is not an increasing range")));
            }
            if cmd::is_framework(first) {
                return Err(invalid(
                    key,
                    format!("business commands start at {}; {first} is a framework command id", cmd::FIRST_BUSINESS),
                ));
            }
            if let Some((f, l, j)) = ranges.iter().find(|(f, l, _)| first <= *l && *f <= last) {
                return Err(invalid(key, format!("[{first}, {last}] overlaps routes[{j}] = [{f}, {l}]")));
            }
            ranges.push((first, last, i));
            if !names.contains(r.service.as_str()) {
                return Err(invalid(
                    format!("routes[{i}].service"),
                    format!("no service named {:?} (services: {})", r.service, known()),
                ));
            }
        }
        Ok(())
    }

    /// The maximum frame size of listener `i`.
    pub fn max_frame(&self, i: usize) -> usize {
        self.listeners[i].max_frame_bytes.unwrap_or(self.gateway.max_frame_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[listeners]]
        bind = "127.0.0.1:7000"
        [auth]
        kind = "token"
        secret = "0123456789abcdef"
        [[services]]
        name = "game"
        servers = ["127.0.0.1:9000"]
        [[routes]]
        commands = [1000, 1999]
        service = "game"
    "#;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portcullis.toml");
        let c = Config::load(Path::new(path)).unwrap();
        assert!(!c.listeners.is_empty());
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(GOOD, "t").unwrap();
        assert_eq!(c.gateway.max_frame_bytes, 64 * 1024);
        assert_eq!(c.listeners[0].codec, Codec::Protobuf);
        assert_eq!(c.max_frame(0), 64 * 1024);
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&GOOD.replace("[1000, 1999]", "[10, 1999]"));
        assert!(e.contains("routes[0].commands") && e.contains("framework"), "{e}");
        let e = err(&GOOD.replace("service = \"game\"", "service = \"chat\""));
        assert!(e.contains("routes[0].service") && e.contains("chat") && e.contains("game"), "{e}");
        let e = err(&GOOD.replace("0123456789abcdef", "short"));
        assert!(e.contains("auth.secret"), "{e}");
        let e = err(&GOOD.replace("bind = ", "bnid = "));
        assert!(e.contains("bnid"), "{e}");
        let e = err(&GOOD.replace("\"127.0.0.1:7000\"", "\"nowhere\""));
        assert!(e.contains("bind") || e.contains("listeners"), "{e}");
        let e = err(&format!("{GOOD}\n[[routes]]\ncommands = [1500, 2500]\nservice = \"game\""));
        assert!(e.contains("routes[1].commands") && e.contains("overlaps"), "{e}");
        let e = err(&format!("{GOOD}\n[gateway]\nheartbeat_timeout_ms = 0"));
        assert!(e.contains("gateway.heartbeat_timeout_ms"), "{e}");
        let e = err(&GOOD
            .replace("codec", "x")
            .replace("bind = \"127.0.0.1:7000\"", "bind = \"127.0.0.1:7000\"\ncodec = \"xml\""));
        assert!(e.contains("xml") && e.contains("protobuf"), "{e}");
    }
}
