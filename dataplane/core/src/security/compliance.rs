//! Compliance: the rules of `proto/PROTOCOL.md` a decoded frame must keep.
//! Framing and decoding (frame limit, codec) are checked before the chain
//! runs (`Gateway::on_frame`); this link checks the envelope and the
//! handshake state.

use portcullis_proto::{cmd, flags};

use super::{Frame, Reason, Verdict};
use crate::gateway::Gateway;

/// Commands a session may send before it logs in.
fn allowed_before_login(command: u32) -> bool {
    matches!(command, cmd::HEARTBEAT | cmd::LOGIN | cmd::LOGOUT | cmd::RESUME | cmd::ACK)
}

impl Gateway {
    /// Flags only a gateway sets, fields only a gateway sends, a route key
    /// over `gateway.max_name_bytes`: BAD_FRAME (a bad frame). Business
    /// commands before login: NOT_LOGGED_IN.
    pub(super) fn check_compliance(&mut self, f: &Frame<'_, '_>) -> Verdict {
        let env = f.env;
        if env.flags & !flags::CLIENT != 0
            || env.server_seq != 0
            || env.route_key.as_ref().is_some_and(|k| k.len() > self.limits.max_name)
        {
            return Verdict::Respond(Reason::BadEnvelope);
        }
        let logged_in = self.sessions.get(f.session).is_some_and(|s| s.user.is_some());
        if logged_in || allowed_before_login(env.cmd) {
            Verdict::Pass
        } else {
            Verdict::Respond(Reason::NotLoggedIn)
        }
    }
}
