//! The control plane's own configuration (`config/control.toml`): where the
//! admin API and `/metrics` listen, the operator tokens and their roles,
//! TLS, the dataplanes it manages, and the XDP filter's pin directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole control configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The admin API.
    pub api: ApiConfig,
    /// Prometheus `/metrics`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The dataplanes this control plane manages (one per NIC).
    #[serde(default)]
    pub dataplanes: Vec<DataplaneConfig>,
    /// The XDP filter; none: filter calls answer FAILED_PRECONDITION.
    pub filter: Option<FilterConfig>,
}

/// The admin API's listener and callers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the gRPC admin API.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the API is served over TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Operator tokens; at least one.
    pub tokens: Vec<TokenConfig>,
}

/// One operator token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and counts (never the token itself).
    pub name: String,
    /// The token inline…
    pub token: Option<String>,
    /// …or from an environment variable…
    pub token_env: Option<String>,
    /// …or from a file (its first line).
    pub token_file: Option<PathBuf>,
    /// What it may do.
    pub role: Role,
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Status, listings, watch, metrics.
    Read,
    /// Everything, including kicks, pushes, backends, limits, reloads and
    /// filter rules.
    Admin,
}

/// Prometheus `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint (loopback by default); none: off.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) }
    }
}

/// One managed dataplane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Its name in the API (usually its `gateway.name`).
    pub name: String,
    /// Its agent socket (`agent.socket` of its config).
    pub socket: PathBuf,
}

/// The XDP filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Where its maps are pinned.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}

fn default_pin_dir() -> PathBuf {
    portcullis_xdp::PIN_DIR.into()
}

/// Shortest operator token accepted.
pub const MIN_TOKEN_BYTES: usize = 16;

impl ControlConfig {
    /// Reads and validates a control config; errors name the key.
    pub fn load(path: &Path) -> anyhow::Result<ControlConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read control config {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates control config text.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<ControlConfig> {
        let c: ControlConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("control config {origin}: {e}"))?;
        if c.api.tokens.is_empty() {
            anyhow::bail!("control config key `api.tokens`: give at least one operator token");
        }
        if c.api.tls_cert.is_some() != c.api.tls_key.is_some() {
            anyhow::bail!("control config key `api.tls_cert`/`api.tls_key`: give both or neither");
        }
        for (i, t) in c.api.tokens.iter().enumerate() {
            t.secret().map_err(|e| anyhow::anyhow!("control config key `api.tokens[{i}]` ({}): {e}", t.name))?;
        }
        let mut names: Vec<&str> = c.dataplanes.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            anyhow::bail!("control config key `dataplanes`: the name {:?} is used twice", w[0]);
        }
        Ok(c)
    }
}

impl TokenConfig {
    /// The token's bytes, from wherever the config says.
    pub fn secret(&self) -> anyhow::Result<Vec<u8>> {
        let token = match (&self.token, &self.token_env, &self.token_file) {
            (Some(t), None, None) => t.clone(),
            (None, Some(var), None) => {
                std::env::var(var).map_err(|_| anyhow::anyhow!("environment variable {var} is not set"))?
            }
            (None, None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            _ => anyhow::bail!("set exactly one of `token`, `token_env` and `token_file`"),
        };
        if token.len() < MIN_TOKEN_BYTES {
            anyhow::bail!(
                "a token must be at least {MIN_TOKEN_BYTES} bytes (`portcullisctl secret` prints a fresh one)"
            );
        }
        Ok(token.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "a-token-of-at-least-16-bytes";

    fn api(tokens: &str) -> String {
        format!("[api]\nlisten = \"127.0.0.1:0\"\n{tokens}\n")
    }

    #[test]
    fn the_shipped_control_config_is_valid() {
        std::env::set_var("PORTCULLIS_ADMIN_TOKEN", TOKEN);
        let c = ControlConfig::parse(include_str!("../../config/control.toml"), "config/control.toml").unwrap();
        assert_eq!(c.dataplanes[0].name, "portcullis-1");
        assert_eq!(c.api.tokens[0].role, Role::Admin);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn bad_configs_are_refused_naming_the_key() {
        let err = |text: &str| ControlConfig::parse(text, "test").unwrap_err().to_string();
        assert!(err(&api("tokens = []")).contains("api.tokens"));
        let short = api("[[api.tokens]]\nname = \"x\"\ntoken = \"short\"\nrole = \"read\"");
        assert!(err(&short).contains("api.tokens[0]") && err(&short).contains("16 bytes"));
        let two_sources =
            api(&format!("[[api.tokens]]\nname = \"x\"\ntoken = \"{TOKEN}\"\ntoken_env = \"X\"\nrole = \"read\""));
        assert!(err(&two_sources).contains("exactly one"));
        let bad_role = api(&format!("[[api.tokens]]\nname = \"x\"\ntoken = \"{TOKEN}\"\nrole = \"root\""));
        assert!(err(&bad_role).contains("role"), "{}", err(&bad_role));
        let ok = api(&format!("[[api.tokens]]\nname = \"x\"\ntoken = \"{TOKEN}\"\nrole = \"read\""));
        let dup = format!(
            "{ok}[[dataplanes]]\nname = \"a\"\nsocket = \"/a\"\n[[dataplanes]]\nname = \"a\"\nsocket = \"/b\"\n"
        );
        assert!(err(&dup).contains("used twice"));
        let half_tls = ok.replace("[api]\n", "[api]\ntls_cert = \"/c.pem\"\n");
        assert!(err(&half_tls).contains("tls_key"));
    }
}
