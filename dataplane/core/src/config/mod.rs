//! The dataplane's configuration (`config/portcullis.toml`).
//!
//! [`Config::load`] parses the file and then validates it as a whole; every
//! error names the key at fault and what was expected, e.g.
//! `routes[1].service: no service named "chat" (services: game)`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

pub use portcullis_proto::crypto::Cipher;
use portcullis_proto::{cmd, Codec};
use serde::{Deserialize, Serialize};

pub mod security;
pub use security::SecurityConfig;
pub mod transport;
pub use transport::{KcpConfig, ListenerTransport};

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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway-wide settings.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Multi-login and resume.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Connection and rate limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Game-server links: timeouts, health checks, reconnects.
    #[serde(default)]
    pub backends: BackendsConfig,
    /// The userspace TCP stack of the kernel-bypass backends.
    #[serde(default)]
    pub userspace_tcp: UserspaceTcpConfig,
    /// The AF_XDP backend (`--io afxdp`).
    pub afxdp: Option<AfXdpConfig>,
    /// The DPDK backend (`--io dpdk`).
    pub dpdk: Option<DpdkConfig>,
    /// The agent API the control plane talks to.
    #[serde(default)]
    pub agent: AgentConfig,
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
    /// The check stage: chains, behaviour scores, rate classes, command
    /// whitelist, threat feeds.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// Gateway-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Name of this gateway, sent to game servers in the link's Hello.
    pub name: String,
    /// Worker threads, each with its own listeners (SO_REUSEPORT), sessions
    /// and game-server links.
    pub workers: usize,
    /// After SIGTERM: time allowed to answer in-flight requests, tell
    /// clients to reconnect elsewhere and flush, before exiting.
    pub shutdown_deadline_ms: u64,
    /// A connection with no frame for this long gets ERROR HEARTBEAT_TIMEOUT
    /// and is closed; a logged-in session waits for RESUME.
    pub heartbeat_timeout_ms: u64,
    /// Default maximum frame size of listeners.
    pub max_frame_bytes: usize,
    /// A client whose unsent output exceeds this is disconnected (slow consumer).
    pub max_outbound_bytes: usize,
    /// A connection is closed at this many refused frames (undecodable, bad
    /// payloads, failed logins, unknown commands — and, before login, any
    /// frame answered with an ERROR); the count restarts at login.
    pub max_bad_frames: u32,
    /// A connection that has not logged in (or resumed) this long after it
    /// opened gets LOGIN_TIMEOUT and is closed, whatever it sends.
    pub login_timeout_ms: u64,
    /// Output queued for a connection that has not logged in, bytes at
    /// most: past it the connection is closed.
    pub max_outbound_before_login_bytes: usize,
    /// The longest frame a connection may send before it logs in (a LOGIN
    /// or RESUME), bytes; the listener's limit if lower.
    pub max_frame_before_login_bytes: usize,
    /// Groups one session may be in.
    pub max_groups_per_session: usize,
    /// Longest group name or user id accepted, in bytes.
    pub max_name_bytes: usize,
    /// A UDP echo service on this address (every datagram goes back to its
    /// sender), served on the players' path — the kernel stack or the
    /// userspace one: for health checks and for measuring the UDP path.
    pub udp_echo: Option<SocketAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            name: "portcullis".into(),
            workers: 1,
            shutdown_deadline_ms: 5_000,
            heartbeat_timeout_ms: 30_000,
            max_frame_bytes: portcullis_proto::framing::DEFAULT_MAX_FRAME,
            max_outbound_bytes: 4 << 20,
            max_bad_frames: 8,
            login_timeout_ms: 5_000,
            max_outbound_before_login_bytes: 16 * 1024,
            max_frame_before_login_bytes: 8 * 1024,
            max_groups_per_session: 64,
            max_name_bytes: 128,
            udp_echo: None,
        }
    }
}

/// Multi-login policy and session resume.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Which sessions of one user may coexist.
    pub multi_login: MultiLogin,
    /// For `multi-device`: sessions one user may have.
    pub max_devices: usize,
    /// What a login that collides with the policy does.
    pub on_conflict: OnConflict,
    /// How long a dropped session waits for its client to RESUME.
    pub resume_window_ms: u64,
    /// Unacknowledged server messages kept per session for replay.
    pub replay_max_messages: usize,
    /// Bytes of unacknowledged server messages kept per session.
    pub replay_max_bytes: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            multi_login: MultiLogin::MultiDevice,
            max_devices: 5,
            on_conflict: OnConflict::KickOldest,
            resume_window_ms: 60_000,
            replay_max_messages: 1024,
            replay_max_bytes: 1 << 20,
        }
    }
}

/// Which sessions of one user may coexist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MultiLogin {
    /// One session per user.
    Single,
    /// One session per device type (`ios`, `pc`…).
    PerDeviceType,
    /// Up to `max_devices` sessions per user.
    MultiDevice,
}

/// What a colliding login does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnConflict {
    /// The new login is refused (LOGIN_CONFLICT).
    RejectNew,
    /// The oldest colliding session gets a KICK and is closed.
    KickOldest,
}

/// Connection and message-rate limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client connections of the whole gateway.
    pub max_connections: usize,
    /// Client connections from one source IP (players behind one NAT
    /// share it).
    pub max_connections_per_ip: usize,
    /// Connections from one source IP that have not logged in yet.
    pub max_prelogin_per_ip: usize,
    /// File descriptors kept free for game-server links, the control plane
    /// and logs: client connections that would use them are refused
    /// (kernel backend).
    pub fd_reserve: usize,
    /// Output queued for clients, bytes, for the whole gateway (each worker
    /// gets an equal share): past it the connections with the most queued
    /// output are closed first.
    pub max_output_memory_bytes: usize,
    /// Frames per second one logged-in session may send (token bucket rate)…
    pub session_rate: u32,
    /// …and the bucket's size (burst).
    pub session_burst: u32,
    /// Frames per second all sessions of one user on a worker may send…
    pub user_rate: u32,
    /// …and the bucket's size.
    pub user_burst: u32,
    /// Frames per second from one source IP of connections that have not
    /// logged in, per worker…
    pub ip_rate: u32,
    /// …and the bucket's size.
    pub ip_burst: u32,
    /// Messages per second from other players (SEND_TO_*) one session
    /// takes; more are dropped for it…
    pub peer_inbound_rate: u32,
    /// …and the bucket's size.
    pub peer_inbound_burst: u32,
    /// Messages per second one user may send to another (SEND_TO_USER(S),
    /// per worker), so that no sender takes a recipient's whole inbound
    /// rate…
    pub pair_rate: u32,
    /// …and the bucket's size.
    pub pair_burst: u32,
    /// User ids one SEND_TO_USERS may name.
    pub max_recipients: usize,
    /// Frames of one connection refused by a rate limit per second, on
    /// average, before it is closed as a flood…
    pub max_refusals_per_sec: u32,
    /// …and in a burst.
    pub max_refusals_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1_000_000,
            max_connections_per_ip: 10_000,
            max_prelogin_per_ip: 64,
            fd_reserve: 256,
            max_output_memory_bytes: 256 << 20,
            session_rate: 500,
            session_burst: 1_000,
            user_rate: 1_000,
            user_burst: 2_000,
            ip_rate: 2_000,
            ip_burst: 4_000,
            peer_inbound_rate: 50,
            peer_inbound_burst: 200,
            pair_rate: 20,
            pair_burst: 40,
            max_recipients: 64,
            max_refusals_per_sec: 100,
            max_refusals_burst: 1_000,
        }
    }
}

/// Game-server links.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    /// A request unanswered this long gets BACKEND_TIMEOUT.
    pub request_timeout_ms: u64,
    /// Interval of health-check pings on each link.
    pub health_interval_ms: u64,
    /// A link whose ping is unanswered this long is closed and reconnected.
    pub health_timeout_ms: u64,
    /// First reconnect delay; doubles per failure…
    pub reconnect_ms: u64,
    /// …up to this.
    pub reconnect_max_ms: u64,
    /// Requests to a link whose unsent output exceeds this are refused with
    /// BACKEND_UNAVAILABLE.
    pub max_outbound_bytes: usize,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            request_timeout_ms: 10_000,
            health_interval_ms: 1_000,
            health_timeout_ms: 3_000,
            reconnect_ms: 100,
            reconnect_max_ms: 5_000,
            max_outbound_bytes: 64 << 20,
        }
    }
}

/// The userspace TCP stack of the AF_XDP and DPDK backends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserspaceTcpConfig {
    /// Receive buffer per connection (the window players see), bytes.
    pub rx_buffer_bytes: usize,
    /// Send buffer per connection, bytes; output beyond it waits in the
    /// gateway's per-connection buffer, which grows on demand.
    pub tx_buffer_bytes: usize,
    /// Half-open connections per port; SYNs beyond get SYN cookies.
    pub backlog: usize,
    /// TCP sockets per shard: the most sockets one packet makes the stack
    /// walk, whatever the number of connections.
    pub shard_size: usize,
}

impl Default for UserspaceTcpConfig {
    fn default() -> Self {
        UserspaceTcpConfig { rx_buffer_bytes: 4096, tx_buffer_bytes: 4096, backlog: 64, shard_size: 32 }
    }
}

/// The AF_XDP backend: which interface and queues, which addresses the
/// userspace stack answers for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AfXdpConfig {
    /// The interface the XDP filter is attached to.
    pub interface: String,
    /// Receive queues, one worker each.
    #[serde(default = "default_queues")]
    pub queues: Vec<u32>,
    /// Addresses of the userspace stack, e.g. `["10.77.0.1/24"]`.
    pub addresses: Vec<String>,
    /// Pin directory of the XDP filter, whose socket map gets our sockets.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: String,
    /// UMEM frames of 2 KiB per queue (half receive, half transmit; the
    /// rings hold as many).
    #[serde(default = "default_frames")]
    pub frames: u32,
}

/// The DPDK backend: how DPDK's environment (EAL) starts, which port and
/// how many queues, which addresses the userspace stack answers for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkConfig {
    /// EAL arguments without the program name, e.g. `["--no-huge",
    /// "--no-pci", "-m", "512", "--vdev=net_af_xdp0,iface=eth1"]`. EAL starts
    /// once per process, so every DPDK gateway of a process needs the same.
    pub eal_args: Vec<String>,
    /// Addresses of the userspace stack, e.g. `["10.77.0.1/24"]`.
    pub addresses: Vec<String>,
    /// The DPDK port (0: the first device EAL probed).
    #[serde(default)]
    pub port: u16,
    /// Receive/transmit queue pairs, one worker each. The device must have
    /// as many (`net_af_xdp`: `queue_count=N` in the `--vdev`).
    #[serde(default = "default_dpdk_queues")]
    pub queues: u16,
    /// Packet buffers (mbufs) per queue.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
}

fn default_dpdk_queues() -> u16 {
    1
}

fn default_mbufs() -> u32 {
    8192
}

/// Fewest mbufs per queue: the receive and transmit rings (1024 each) and
/// the AF_XDP fill ring hold that many between them.
pub const MIN_MBUFS: u32 = 4096;

fn default_queues() -> Vec<u32> {
    vec![0]
}

fn default_pin_dir() -> String {
    "/sys/fs/bpf/portcullis".into()
}

fn default_frames() -> u32 {
    8192
}

/// The agent API: gRPC on a Unix socket, for `portcullis-control`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Socket path (created owner-only, replaced if it exists); none: no
    /// agent API.
    pub socket: Option<String>,
}

/// One client listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on, e.g. `0.0.0.0:7000`.
    pub bind: SocketAddr,
    /// Envelope codec of this listener.
    #[serde(default)]
    pub codec: Codec,
    /// Maximum frame size; defaults to `gateway.max_frame_bytes`.
    pub max_frame_bytes: Option<usize>,
    /// Session encryption (X25519 in LOGIN, AES-GCM per frame):
    /// `"optional"` (the default: sessions whose client offers a key are
    /// encrypted), `"required"` (a LOGIN without a key is refused
    /// ENCRYPTION_REQUIRED) or `"off"` (keys offered are ignored).
    #[serde(default)]
    pub encryption: Encryption,
    /// The AEAD of sessions encrypted here: `"aes-128-gcm"` (the default)
    /// or `"aes-256-gcm"`.
    pub cipher: Option<Cipher>,
    /// How players reach it: `"tcp"` (the default), `"websocket"`,
    /// `"quic"` or `"kcp"` (the last two on UDP).
    #[serde(default)]
    pub transport: ListenerTransport,
    /// Certificate chain (PEM): needed by QUIC, turns WebSocket into `wss`.
    pub tls_cert: Option<String>,
    /// Private key of `tls_cert` (PEM, PKCS#8 or RSA or SEC1).
    pub tls_key: Option<String>,
    /// WebSocket: the `Origin` headers accepted (browsers send one);
    /// empty: any origin, and clients that send none.
    #[serde(default)]
    pub websocket_origins: Vec<String>,
    /// KCP tuning (`transport = "kcp"` only).
    pub kcp: Option<KcpConfig>,
}

/// Session encryption on a listener (`encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Every session must be encrypted.
    Required,
    /// Sessions are encrypted when the client offers a key.
    #[default]
    Optional,
    /// No encryption: keys offered are ignored.
    Off,
}

/// How LOGIN is authenticated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum AuthConfig {
    /// Built-in HMAC-SHA256 signed tokens (see `portcullis_proto::token`).
    Token {
        /// The shared secret, inline…
        secret: Option<String>,
        /// …or the name of an environment variable holding it.
        secret_env: Option<String>,
    },
    /// Forward the LOGIN payload to an auth service behind the router.
    Delegate {
        /// The backend service that authenticates.
        service: String,
        /// A login unanswered this long fails with AUTH_FAILED.
        #[serde(default = "default_auth_timeout")]
        timeout_ms: u64,
    },
}

fn default_auth_timeout() -> u64 {
    3_000
}

impl AuthConfig {
    /// The token secret, read from the config or the environment.
    pub fn token_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let AuthConfig::Token { secret, secret_env } = self else {
            return Err(invalid("auth.kind", "this needs kind = \"token\""));
        };
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name used by routes.
    pub name: String,
    /// Game-server addresses: `"host:port"` or `{ addr = "host:port", weight = 3 }`.
    pub servers: Vec<ServerConfig>,
    /// How requests are spread over the servers.
    #[serde(default)]
    pub balance: Balance,
    /// Keep each session on the game server it first used (while healthy).
    #[serde(default)]
    pub sticky: bool,
}

/// One game server of a service.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ServerConfig {
    /// Address, weight 1.
    Addr(SocketAddr),
    /// Address and weight.
    Weighted {
        /// Address.
        addr: SocketAddr,
        /// Relative share of requests (weighted) or of the hash ring.
        weight: u32,
    },
}

impl ServerConfig {
    /// The address.
    pub fn addr(&self) -> SocketAddr {
        match *self {
            ServerConfig::Addr(a) | ServerConfig::Weighted { addr: a, .. } => a,
        }
    }

    /// The weight (1 unless given).
    pub fn weight(&self) -> u32 {
        match *self {
            ServerConfig::Addr(_) => 1,
            ServerConfig::Weighted { weight, .. } => weight,
        }
    }
}

/// Balancing policy of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each request to the next healthy server in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin by `weight`.
    Weighted,
    /// The healthy server with the fewest requests awaiting an answer.
    LeastOutstanding,
    /// Consistent hashing on the user id: a user stays on one server.
    HashUser,
    /// Consistent hashing on the envelope's routing key (a room stays on one
    /// server); requests without a key hash on the user id.
    HashRouteKey,
}

/// A route: an inclusive range of business commands to a service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `[first, last]` command ids, inclusive.
    pub commands: [u32; 2],
    /// Name of the service.
    pub service: String,
}

/// Keys (and sections) that a running dataplane cannot change.
const RESTART_KEYS: &[&str] = &[
    "gateway.name",
    "gateway.workers",
    "gateway.max_frame_bytes",
    "gateway.udp_echo",
    "limits.fd_reserve",
    "listeners",
    "afxdp",
    "dpdk",
    "userspace_tcp",
    "agent",
    "security.xdp_pin_dir",
    "security.feeds",
    "security.feed_poll_ms",
];

/// Flattens a TOML value into dotted keys (`limits.ip_rate`,
/// `services[0].servers[1]`).
fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|v| v.is_table()) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Every entry of `{section}.addresses` is an IP address with a prefix.
fn check_addresses(section: &str, addresses: &[String]) -> Result<(), ConfigError> {
    for (i, a) in addresses.iter().enumerate() {
        let ok =
            a.split_once('/').is_some_and(|(ip, p)| ip.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok());
        if !ok {
            return Err(invalid(
                format!("{section}.addresses[{i}]"),
                format!("{a:?} is not an address with a prefix, e.g. 10.77.0.1/24"),
            ));
        }
    }
    Ok(())
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

    /// The configuration as TOML, with the token secret replaced by
    /// `"<hidden>"`.
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        if let AuthConfig::Token { secret: Some(s), .. } = &mut c.auth {
            *s = "<hidden>".into();
        }
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot show the config: {e}"))
    }

    /// The keys (dotted) whose values differ between this running config
    /// and `new`: those applied live, and those that take effect only after
    /// a restart (listeners, workers, IO backends, frame sizes, the
    /// descriptor reserve).
    pub fn changes(&self, new: &Config) -> (Vec<String>, Vec<String>) {
        let flat = |c: &Config| {
            let value = toml::Value::try_from(c).unwrap_or(toml::Value::Table(Default::default()));
            let mut out = std::collections::BTreeMap::new();
            flatten("", &value, &mut out);
            out
        };
        let (old, new) = (flat(self), flat(new));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        let (mut live, mut restart) = (Vec::new(), Vec::new());
        for key in keys.into_iter().filter(|k| old.get(*k) != new.get(*k)) {
            if RESTART_KEYS
                .iter()
                .any(|r| key == r || key.starts_with(&format!("{r}.")) || key.starts_with(&format!("{r}[")))
            {
                restart.push(key.clone());
            } else {
                live.push(key.clone());
            }
        }
        (live, restart)
    }

    /// Takes the values of the keys that need a restart from `running`, so
    /// that a reload applies the rest and the running config says what
    /// actually runs.
    pub fn keep_restart_keys(&mut self, running: &Config) {
        self.gateway.name.clone_from(&running.gateway.name);
        self.gateway.workers = running.gateway.workers;
        self.gateway.max_frame_bytes = running.gateway.max_frame_bytes;
        self.gateway.udp_echo = running.gateway.udp_echo;
        self.limits.fd_reserve = running.limits.fd_reserve;
        self.listeners.clone_from(&running.listeners);
        self.afxdp.clone_from(&running.afxdp);
        self.dpdk.clone_from(&running.dpdk);
        self.userspace_tcp.clone_from(&running.userspace_tcp);
        self.agent.clone_from(&running.agent);
        self.security.xdp_pin_dir.clone_from(&running.security.xdp_pin_dir);
        self.security.feeds.clone_from(&running.security.feeds);
        self.security.feed_poll_ms = running.security.feed_poll_ms;
    }

    /// A copy with keys of `[limits]` set from TOML values (`"50"`,
    /// `"true"`…); the result is validated, and an error names the key.
    pub fn with_limits<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Config, ConfigError> {
        let mut limits = toml::Table::try_from(&self.limits).map_err(|e| invalid("limits", e.to_string()))?;
        for (key, text) in changes {
            let key_path = format!("limits.{key}");
            if !limits.contains_key(key) {
                return Err(invalid(key_path, "no such limit"));
            }
            let v = toml::from_str::<toml::Table>(&format!("v = {text}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .ok_or_else(|| invalid(key_path.clone(), format!("{text:?} is not a TOML value")))?;
            limits.insert(key.to_string(), v);
            // Each key on its own, so that an error names it.
            LimitsConfig::deserialize(toml::Value::Table(limits.clone()))
                .map_err(|e| invalid(key_path, e.message().to_string()))?;
        }
        let mut config = self.clone();
        config.limits =
            LimitsConfig::deserialize(toml::Value::Table(limits)).map_err(|e| invalid("limits", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let (s, l, b) = (&self.sessions, &self.limits, &self.backends);
        for (key, value) in [
            ("gateway.workers", g.workers),
            ("gateway.shutdown_deadline_ms", g.shutdown_deadline_ms as usize),
            ("gateway.heartbeat_timeout_ms", g.heartbeat_timeout_ms as usize),
            ("gateway.max_frame_bytes", g.max_frame_bytes),
            ("gateway.max_outbound_bytes", g.max_outbound_bytes),
            ("gateway.max_bad_frames", g.max_bad_frames as usize),
            ("gateway.login_timeout_ms", g.login_timeout_ms as usize),
            ("gateway.max_outbound_before_login_bytes", g.max_outbound_before_login_bytes),
            ("gateway.max_frame_before_login_bytes", g.max_frame_before_login_bytes),
            ("gateway.max_name_bytes", g.max_name_bytes),
            ("sessions.max_devices", s.max_devices),
            ("sessions.resume_window_ms", s.resume_window_ms as usize),
            ("sessions.replay_max_messages", s.replay_max_messages),
            ("sessions.replay_max_bytes", s.replay_max_bytes),
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.max_prelogin_per_ip", l.max_prelogin_per_ip),
            ("limits.max_output_memory_bytes", l.max_output_memory_bytes),
            ("limits.session_rate", l.session_rate as usize),
            ("limits.session_burst", l.session_burst as usize),
            ("limits.user_rate", l.user_rate as usize),
            ("limits.user_burst", l.user_burst as usize),
            ("limits.ip_rate", l.ip_rate as usize),
            ("limits.ip_burst", l.ip_burst as usize),
            ("limits.peer_inbound_rate", l.peer_inbound_rate as usize),
            ("limits.peer_inbound_burst", l.peer_inbound_burst as usize),
            ("limits.pair_rate", l.pair_rate as usize),
            ("limits.pair_burst", l.pair_burst as usize),
            ("limits.max_recipients", l.max_recipients),
            ("limits.max_refusals_per_sec", l.max_refusals_per_sec as usize),
            ("limits.max_refusals_burst", l.max_refusals_burst as usize),
            ("backends.request_timeout_ms", b.request_timeout_ms as usize),
            ("backends.health_interval_ms", b.health_interval_ms as usize),
            ("backends.health_timeout_ms", b.health_timeout_ms as usize),
            ("backends.reconnect_ms", b.reconnect_ms as usize),
            ("backends.reconnect_max_ms", b.reconnect_max_ms as usize),
            ("backends.max_outbound_bytes", b.max_outbound_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if g.workers > 64 {
            return Err(invalid("gateway.workers", "at most 64 workers"));
        }
        if b.reconnect_max_ms < b.reconnect_ms {
            return Err(invalid("backends.reconnect_max_ms", "must not be below backends.reconnect_ms"));
        }
        if g.max_frame_bytes > u32::MAX as usize {
            return Err(invalid("gateway.max_frame_bytes", "must fit in 32 bits"));
        }
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "configure at least one [[listeners]]"));
        }
        let mut binds = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.bind.port() != 0 && !binds.insert((l.bind, l.transport.is_udp())) {
                return Err(invalid(format!("listeners[{i}].bind"), format!("{} is bound twice", l.bind)));
            }
            if l.max_frame_bytes == Some(0) || l.max_frame_bytes.is_some_and(|m| m > u32::MAX as usize) {
                return Err(invalid(format!("listeners[{i}].max_frame_bytes"), "must be 1..=4294967295"));
            }
            l.validate_transport(i)?;
            if l.encryption == Encryption::Off && l.cipher.is_some() {
                return Err(invalid(
                    format!("listeners[{i}].cipher"),
                    "has no effect with encryption = \"off\": remove it or set encryption = \"optional\" or \"required\"",
                ));
            }
        }
        if let AuthConfig::Token { .. } = self.auth {
            self.auth.token_secret()?;
        }
        let mut names = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(invalid(format!("services[{i}].name"), format!("{:?} is empty or used twice", s.name)));
            }
            if s.servers.is_empty() {
                return Err(invalid(format!("services[{i}].servers"), "list at least one game-server address"));
            }
            if let Some(j) = s.servers.iter().position(|v| v.weight() == 0 || v.weight() > 1000) {
                return Err(invalid(format!("services[{i}].servers[{j}].weight"), "must be 1..=1000"));
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
        if let AuthConfig::Delegate { service, timeout_ms } = &self.auth {
            if !names.contains(service.as_str()) {
                return Err(invalid("auth.service", format!("no service named {service:?} (services: {})", known())));
            }
            if *timeout_ms == 0 {
                return Err(invalid("auth.timeout_ms", "must be greater than zero"));
            }
        }
        let binds: Vec<SocketAddr> = self.listeners.iter().map(|l| l.bind).collect();
        self.security.validate(&binds)?;
        let u = &self.userspace_tcp;
        for (key, value) in
            [("userspace_tcp.rx_buffer_bytes", u.rx_buffer_bytes), ("userspace_tcp.tx_buffer_bytes", u.tx_buffer_bytes)]
        {
            if !(256..=1 << 20).contains(&value) {
                return Err(invalid(key, "256 bytes to 1 MiB"));
            }
        }
        if u.backlog == 0 || u.shard_size == 0 || u.shard_size > 4096 {
            return Err(invalid("userspace_tcp", "backlog at least 1, shard_size 1..=4096"));
        }
        if let Some(x) = &self.afxdp {
            if x.queues.is_empty() || x.addresses.is_empty() || x.interface.is_empty() {
                return Err(invalid("afxdp", "set interface, at least one queue and at least one address"));
            }
            if x.frames < 64 || !x.frames.is_power_of_two() {
                return Err(invalid("afxdp.frames", "a power of two, at least 64"));
            }
            check_addresses("afxdp", &x.addresses)?;
        }
        if let Some(d) = &self.dpdk {
            if d.addresses.is_empty() {
                return Err(invalid("dpdk.addresses", "list at least one address, e.g. [\"10.77.0.1/24\"]"));
            }
            check_addresses("dpdk", &d.addresses)?;
            if let Some(i) = d.eal_args.iter().position(|a| a.contains('\0')) {
                return Err(invalid(format!("dpdk.eal_args[{i}]"), "contains a NUL byte"));
            }
            if d.queues == 0 || d.queues > 64 {
                return Err(invalid("dpdk.queues", "must be 1..=64"));
            }
            if d.port >= 32 {
                return Err(invalid("dpdk.port", "must be below 32 (DPDK's port limit)"));
            }
            if d.mbufs < MIN_MBUFS {
                return Err(invalid("dpdk.mbufs", format!("at least {MIN_MBUFS} per queue")));
            }
        }
        let links: usize = self.services.iter().map(|s| s.servers.len()).sum();
        if links > 4096 {
            return Err(invalid("services", "at most 4096 game servers in all"));
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
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/portcullis.toml");
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

    #[test]
    fn encryption_keys_are_checked() {
        let listener =
            |extra: &str| GOOD.replace("bind = \"127.0.0.1:7000\"", &format!("bind = \"127.0.0.1:7000\"\n{extra}"));
        let c = Config::parse(GOOD, "t").unwrap();
        assert_eq!((c.listeners[0].encryption, c.listeners[0].cipher), (Encryption::Optional, None));
        let c = Config::parse(&listener("encryption = \"required\"\ncipher = \"aes-256-gcm\""), "t").unwrap();
        assert_eq!((c.listeners[0].encryption, c.listeners[0].cipher), (Encryption::Required, Some(Cipher::Aes256Gcm)));
        let e = err(&listener("encryption = \"always\""));
        assert!(e.contains("always") && e.contains("required") && e.contains("optional") && e.contains("off"), "{e}");
        let e = err(&listener("cipher = \"aes-192-gcm\""));
        assert!(e.contains("aes-192-gcm") && e.contains("aes-128-gcm") && e.contains("aes-256-gcm"), "{e}");
        let e = err(&listener("encryption = \"off\"\ncipher = \"aes-256-gcm\""));
        assert!(e.contains("listeners[0].cipher") && e.contains("no effect"), "{e}");
    }

    #[test]
    fn dpdk_section_is_checked() {
        let dpdk = |body: &str| format!("{GOOD}\n[dpdk]\n{body}");
        let ok = dpdk("eal_args = [\"--no-huge\"]\naddresses = [\"10.77.0.1/24\"]");
        let d = Config::parse(&ok, "t").unwrap().dpdk.unwrap();
        assert_eq!((d.port, d.queues, d.mbufs), (0, 1, 8192));
        let e = err(&dpdk("eal_args = []\naddresses = [\"10.77.0.1\"]"));
        assert!(e.contains("dpdk.addresses[0]"), "{e}");
        let e = err(&dpdk("eal_args = []\naddresses = []"));
        assert!(e.contains("dpdk.addresses"), "{e}");
        let e = err(&dpdk("eal_args = [\"a\\u0000b\"]\naddresses = [\"10.77.0.1/24\"]"));
        assert!(e.contains("dpdk.eal_args[0]"), "{e}");
        let e = err(&dpdk("eal_args = []\naddresses = [\"10.77.0.1/24\"]\nqueues = 0"));
        assert!(e.contains("dpdk.queues"), "{e}");
        let e = err(&dpdk("eal_args = []\naddresses = [\"10.77.0.1/24\"]\nport = 40"));
        assert!(e.contains("dpdk.port"), "{e}");
        let e = err(&dpdk("eal_args = []\naddresses = [\"10.77.0.1/24\"]\nmbufs = 100"));
        assert!(e.contains("dpdk.mbufs"), "{e}");
        let e = err(&dpdk("addresses = [\"10.77.0.1/24\"]"));
        assert!(e.contains("eal_args"), "{e}");
    }
}
