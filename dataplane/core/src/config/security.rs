//! `[security]`: the check stage's chain, per listener, and what its links
//! need — behaviour scores and their escalation up to a block at the NIC,
//! per-command rate classes, the command whitelist, the allowlist. Every
//! key can change on a live reload.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
use crate::cidr::Cidr;

/// A link of the chain, by name in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainLink {
    /// Protocol compliance (`proto/PROTOCOL.md`): flags, client-only
    /// fields, sizes, what may be sent before login. Always first, even when
    /// not listed: a frame that breaks the protocol is never looked at by
    /// another link.
    Compliance,
    /// Token buckets per source (before login), session and user, and per
    /// command class.
    Rate,
    /// Scores per source and per user, escalating throttle → kick → block
    /// at the NIC.
    Behaviour,
    /// Which business commands each session state and role may send.
    Whitelist,
}

impl ChainLink {
    /// Every link, in the order they run.
    pub const ALL: [ChainLink; 4] =
        [ChainLink::Compliance, ChainLink::Rate, ChainLink::Behaviour, ChainLink::Whitelist];

    /// Its name in the config and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ChainLink::Compliance => "compliance",
            ChainLink::Rate => "rate",
            ChainLink::Behaviour => "behaviour",
            ChainLink::Whitelist => "whitelist",
        }
    }
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The chain of every listener not named in `listeners`.
    pub chain: Vec<ChainLink>,
    /// Per listener: its own chain.
    pub listeners: Vec<ListenerChain>,
    /// Sources (CIDR) that are never scored, throttled by score, kicked or
    /// blocked by the behaviour link.
    pub allowlist: Vec<String>,
    /// The behaviour link's scores and thresholds.
    pub behaviour: BehaviourConfig,
    /// Rate classes: a token bucket per session for each class of commands.
    pub classes: Vec<CommandClass>,
    /// The command whitelist; empty: every business command is allowed to
    /// logged-in sessions (the whitelist link passes everything).
    pub whitelist: Vec<WhitelistRule>,
    /// The role of a session whose login named none.
    pub default_role: String,
    /// Where the XDP filter's maps are pinned: blocks by the behaviour link
    /// go there. None: blocks are enforced by the gateway only (new
    /// connections from a blocked source are refused).
    pub xdp_pin_dir: Option<String>,
    /// Threat-intelligence blocklists loaded into the XDP filter.
    pub feeds: Vec<FeedConfig>,
    /// How often feed files are checked for changes.
    pub feed_poll_ms: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            chain: vec![ChainLink::Compliance, ChainLink::Rate, ChainLink::Behaviour, ChainLink::Whitelist],
            listeners: Vec::new(),
            allowlist: Vec::new(),
            behaviour: BehaviourConfig::default(),
            classes: Vec::new(),
            whitelist: Vec::new(),
            default_role: "player".into(),
            xdp_pin_dir: None,
            feeds: Vec::new(),
            feed_poll_ms: 5_000,
        }
    }
}

/// `[[security.listeners]]`: the chain of one listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerChain {
    /// The listener, by its `bind` address.
    pub bind: SocketAddr,
    /// Its chain.
    pub chain: Vec<ChainLink>,
}

/// `[security.behaviour]`: points per event, decay, thresholds. A score is
/// kept per source address and per user; each decays linearly.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehaviourConfig {
    /// Points lost per second.
    pub decay_per_sec: f32,
    /// From this score on, every frame of the source or user is refused
    /// THROTTLED (framework commands still pass, so it can log out).
    pub throttle: f32,
    /// From this score on, the source's or user's connections are kicked
    /// (no reconnect); a kicked source's new connections are refused for
    /// `ban_secs` (each refusal scores as one).
    pub kick: f32,
    /// How long a kicked source is refused.
    pub ban_secs: u64,
    /// From this score on, the source is blocked at the NIC (XDP blocklist)
    /// for `block_secs`. A user past it has its current source blocked.
    pub block: f32,
    /// How long a block lasts.
    pub block_secs: u64,
    /// Points for a frame refused by any link.
    pub refusal: f32,
    /// Points for a frame that breaks the protocol (undecodable, bad
    /// payload, bad flags).
    pub bad_frame: f32,
    /// Points for a failed login.
    pub failed_login: f32,
    /// Points for a successful login (login churn).
    pub login: f32,
    /// Points for a RESUME (resume storms).
    pub resume: f32,
}

impl Default for BehaviourConfig {
    fn default() -> Self {
        BehaviourConfig {
            decay_per_sec: 1.0,
            throttle: 50.0,
            kick: 100.0,
            ban_secs: 60,
            block: 200.0,
            block_secs: 600,
            refusal: 0.5,
            bad_frame: 5.0,
            failed_login: 10.0,
            login: 2.0,
            resume: 2.0,
        }
    }
}

/// `[[security.classes]]`: commands that share a rate per session.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandClass {
    /// Name, e.g. `chat` (in logs and errors).
    pub name: String,
    /// Command ids or inclusive ranges: `[1101, [1200, 1299]]`.
    pub commands: Vec<CommandSpec>,
    /// Frames per second per session.
    pub rate: u32,
    /// Burst.
    pub burst: u32,
}

/// A command id or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CommandSpec {
    /// One command.
    One(u32),
    /// `[first, last]`.
    Range([u32; 2]),
}

impl CommandSpec {
    /// Whether it holds `command`.
    pub fn contains(self, command: u32) -> bool {
        match self {
            CommandSpec::One(c) => c == command,
            CommandSpec::Range([a, b]) => (a..=b).contains(&command),
        }
    }
}

/// A session state a whitelist rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// Logged in (or resumed).
    LoggedIn,
    /// Logged in, and a member of at least one group (in a room, a match).
    InGroup,
}

/// `[[security.whitelist]]`: these commands are allowed for these roles in
/// these states. A business command no rule allows is refused
/// COMMAND_NOT_ALLOWED.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhitelistRule {
    /// Command ids or ranges.
    pub commands: Vec<CommandSpec>,
    /// Roles (from the login token's `role` claim or the auth service's
    /// answer); `"*"` for any.
    #[serde(default = "any_role")]
    pub roles: Vec<String>,
    /// States; default: logged in.
    #[serde(default = "logged_in")]
    pub states: Vec<SessionState>,
}

fn any_role() -> Vec<String> {
    vec!["*".into()]
}

fn logged_in() -> Vec<SessionState> {
    vec![SessionState::LoggedIn]
}

/// `[[security.feeds]]`: a blocklist file (plain CIDR lists, FireHOL
/// `.netset`/`.ipset`, Spamhaus DROP), reloaded when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Name (in `portcullisctl filter feeds`).
    pub name: String,
    /// The file.
    pub path: String,
}

impl SecurityConfig {
    /// The chain of the listener bound to `bind`, compliance first.
    pub fn chain_of(&self, bind: SocketAddr) -> Vec<ChainLink> {
        let listed = self.listeners.iter().find(|l| l.bind == bind).map_or(&self.chain, |l| &l.chain);
        let mut chain = vec![ChainLink::Compliance];
        // In the order they run, whatever order they are listed in.
        chain.extend(ChainLink::ALL.into_iter().filter(|l| *l != ChainLink::Compliance && listed.contains(l)));
        chain
    }

    /// The allowlist, parsed.
    pub fn allowlist(&self) -> Vec<Cidr> {
        self.allowlist.iter().filter_map(|c| c.parse().ok()).collect()
    }

    /// Checks what the types alone cannot; `binds` are the listeners'.
    pub fn validate(&self, binds: &[SocketAddr]) -> Result<(), ConfigError> {
        for (i, c) in self.allowlist.iter().enumerate() {
            c.parse::<Cidr>().map_err(|e| invalid(format!("security.allowlist[{i}]"), e.to_string()))?;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if !binds.contains(&l.bind) {
                return Err(invalid(format!("security.listeners[{i}].bind"), format!("no listener binds {}", l.bind)));
            }
        }
        let b = &self.behaviour;
        for (key, v) in [
            ("decay_per_sec", b.decay_per_sec),
            ("refusal", b.refusal),
            ("bad_frame", b.bad_frame),
            ("failed_login", b.failed_login),
            ("login", b.login),
            ("resume", b.resume),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!("security.behaviour.{key}"), "must be a number ≥ 0"));
            }
        }
        if !(b.throttle > 0.0 && b.throttle <= b.kick && b.kick <= b.block && b.block.is_finite()) {
            return Err(invalid("security.behaviour", "thresholds must satisfy 0 < throttle ≤ kick ≤ block"));
        }
        if b.block_secs == 0 {
            return Err(invalid("security.behaviour.block_secs", "must be at least 1"));
        }
        for (i, c) in self.classes.iter().enumerate() {
            let key = format!("security.classes[{i}]");
            if c.rate == 0 || c.burst == 0 {
                return Err(invalid(key, "rate and burst must be at least 1"));
            }
            check_commands(&format!("{key}.commands"), &c.commands)?;
        }
        for (i, r) in self.whitelist.iter().enumerate() {
            let key = format!("security.whitelist[{i}]");
            check_commands(&format!("{key}.commands"), &r.commands)?;
            if r.roles.is_empty() || r.roles.iter().any(String::is_empty) {
                return Err(invalid(format!("{key}.roles"), "name at least one role, or \"*\" for any"));
            }
            if r.states.is_empty() {
                return Err(invalid(format!("{key}.states"), "name at least one state: \"logged-in\" or \"in-group\""));
            }
        }
        if self.default_role.is_empty() {
            return Err(invalid("security.default_role", "must not be empty"));
        }
        for (i, f) in self.feeds.iter().enumerate() {
            if f.name.is_empty() || f.path.is_empty() {
                return Err(invalid(format!("security.feeds[{i}]"), "needs a name and a path"));
            }
            if self.feeds[..i].iter().any(|g| g.name == f.name) {
                return Err(invalid(format!("security.feeds[{i}].name"), format!("{:?} is used twice", f.name)));
            }
        }
        if !self.feeds.is_empty() && self.xdp_pin_dir.is_none() {
            return Err(invalid("security.feeds", "feeds go to the XDP filter: set security.xdp_pin_dir"));
        }
        if self.feed_poll_ms == 0 {
            return Err(invalid("security.feed_poll_ms", "must be at least 1"));
        }
        Ok(())
    }
}

fn check_commands(key: &str, commands: &[CommandSpec]) -> Result<(), ConfigError> {
    if commands.is_empty() {
        return Err(invalid(key, "name at least one command or range"));
    }
    for c in commands {
        match *c {
            CommandSpec::One(c) if portcullis_proto::cmd::is_framework(c) => {
                return Err(invalid(
                    key,
                    format!("{c} is a framework command; only business commands (≥ 1000) are classed"),
                ))
            }
            CommandSpec::Range([a, b]) if a > b || portcullis_proto::cmd::is_framework(a) => {
                return Err(invalid(key, format!("[{a}, {b}] is not a range of business commands (≥ 1000)")))
            }
            _ => {}
        }
    }
    Ok(())
}
