//! The command whitelist (`[[security.whitelist]]`): which business
//! commands each role may send in each session state. Roles come from the
//! login (the token's `role` claim, the auth service's answer), or
//! `security.default_role`. With no rule, every business command is
//! allowed to logged-in sessions.

use super::{Frame, Reason, Verdict};
use crate::config::security::{CommandSpec, SessionState, WhitelistRule};
use crate::gateway::Gateway;

/// One rule, compiled: roles as a bit set over the roles the rules name.
#[derive(Debug, Clone)]
struct Rule {
    commands: Vec<(u32, u32)>,
    /// Bit `i`: role `i` of [`Whitelist::roles`]; `u64::MAX`: any role.
    roles: u64,
    in_group_only: bool,
}

/// The compiled whitelist.
#[derive(Debug, Clone, Default)]
pub(crate) struct Whitelist {
    rules: Vec<Rule>,
    /// Role names the rules name (at most 63; more are treated as none).
    roles: Vec<Box<str>>,
    default_role: Box<str>,
}

impl Whitelist {
    pub(crate) fn new(rules: &[WhitelistRule], default_role: &str) -> Whitelist {
        let mut roles: Vec<Box<str>> = Vec::new();
        let mut bit = |name: &str| {
            let i = roles.iter().position(|r| &**r == name).unwrap_or_else(|| {
                roles.push(name.into());
                roles.len() - 1
            });
            if i < 63 {
                1u64 << i
            } else {
                0
            }
        };
        let rules = rules
            .iter()
            .map(|r| Rule {
                commands: r
                    .commands
                    .iter()
                    .map(|c| match *c {
                        CommandSpec::One(c) => (c, c),
                        CommandSpec::Range([a, b]) => (a, b),
                    })
                    .collect(),
                roles: if r.roles.iter().any(|r| r == "*") {
                    u64::MAX
                } else {
                    r.roles.iter().fold(0, |bits, name| bits | bit(name))
                },
                in_group_only: !r.states.contains(&SessionState::LoggedIn),
            })
            .collect();
        Whitelist { rules, roles, default_role: default_role.into() }
    }

    /// Whether there are rules at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The role bits of a session logged in with `role` (empty: the
    /// default role).
    pub(crate) fn role_bits(&self, role: &str) -> u64 {
        let role = if role.is_empty() { &*self.default_role } else { role };
        self.roles.iter().position(|r| &**r == role).filter(|&i| i < 63).map_or(0, |i| 1 << i)
    }

    /// Whether a session with `role_bits`, in a group or not, may send
    /// `command`.
    pub(crate) fn allows(&self, command: u32, role_bits: u64, in_group: bool) -> bool {
        self.rules.iter().any(|r| {
            r.roles & role_bits != 0
                && (in_group || !r.in_group_only)
                && r.commands.iter().any(|&(a, b)| (a..=b).contains(&command))
        })
    }
}

impl Gateway {
    /// Whitelist: a business command no rule allows for the session's role
    /// and state is refused COMMAND_NOT_ALLOWED.
    pub(super) fn check_whitelist(&mut self, f: &Frame<'_, '_>) -> Verdict {
        let w = &self.security.whitelist;
        if w.is_empty() || portcullis_proto::cmd::is_framework(f.env.cmd) {
            return Verdict::Pass;
        }
        let Some(s) = self.sessions.get(f.session) else { return Verdict::Pass };
        // The `u64::MAX` of "any role" matches a session of any role, even
        // one no rule names (role bits 0): give such a session bit 63.
        let bits = s.role_bits | 1 << 63;
        if w.allows(f.env.cmd, bits, !s.groups.is_empty()) {
            Verdict::Pass
        } else {
            Verdict::Respond(Reason::NotAllowed)
        }
    }
}
