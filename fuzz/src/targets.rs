//! The bodies of the pure fuzz targets (`envelope`, `link_frame`, `tokens`,
//! `config`), in the library so that `cargo test` in `fuzz/` runs the
//! committed seeds through them without libFuzzer.

use std::time::{Duration, Instant};

use portcullis_proto::framework::{Payload, PayloadForm};
use portcullis_proto::link::{encode_frame, ServerFrame};
use portcullis_proto::pb::client::{GroupRequest, LoginRequest, ResumeRequest, SendToGroup, SendToUser, SendToUsers};
use portcullis_proto::pb::link::{self as pb, link_frame::Kind};
use portcullis_proto::token::{self, Claims, TokenError};
use portcullis_proto::{Codec, Envelope, Framing};

/// Maximum frame of the `envelope` target (the gateway's default).
pub const MAX_FRAME: usize = portcullis_proto::framing::DEFAULT_MAX_FRAME;

/// `envelope`: the first byte picks the codec; the rest is a client stream
/// cut into frames by the codec's framing, each frame decoded.
///
/// Invariants checked for every frame that decodes (all four codecs are
/// exact on these, per their code: the binary codecs carry every field as
/// is, JSON escapes what it must and moves non-UTF-8 bytes to `*_b64`, text
/// escapes `\\`, `\n`, `\r`, spaces in the route key, a route key of `-`
/// and invalid UTF-8):
/// - re-encoding yields exactly one frame of the same framing, which
///   decodes to an envelope equal in every field (cmd, seq, flags, payload,
///   route key — `None` and `Some("")` distinct — server_seq, ack);
/// - encoding is canonical: encoding that envelope again gives the same
///   bytes.
///
/// Not asserted: that the re-encoding equals the input bytes (protobuf
/// skips unknown fields and keeps the last of repeated ones, text accepts
/// numeric framework command ids and `+7`, JSON any whitespace and key
/// order, FlatBuffers any layout).
///
/// Each frame's payload also goes through the framework payload decoders
/// in the codec's payload form, with the same round-trip check.
pub fn envelope(data: &[u8]) {
    let Some((&which, mut stream)) = data.split_first() else { return };
    let codec = Codec::ALL[usize::from(which) % Codec::ALL.len()];
    let framing = codec.framing();
    let mut out = Vec::new();
    while let Ok(Some((range, used))) = framing.next_frame(stream, MAX_FRAME) {
        assert!(used > 0 && used <= stream.len() && range.end <= used && range.start <= range.end, "framing");
        assert!(range.len() <= MAX_FRAME);
        let frame = &stream[range];
        stream = &stream[used..];
        let Ok(env) = codec.decode(frame) else { continue };
        out.clear();
        codec.encode(&env, &mut out);
        let (r, used) = framing
            .next_frame(&out, usize::MAX)
            .expect("no maximum")
            .unwrap_or_else(|| panic!("{codec}: re-encoding of {env:?} is not a complete frame: {out:?}"));
        assert_eq!(used, out.len(), "{codec}: re-encoding of {env:?} is more than one frame");
        let back = codec
            .decode(&out[r])
            .unwrap_or_else(|e| panic!("{codec}: re-encoding of {env:?} does not decode: {e}: {out:?}"));
        assert_eq!(back, env, "{codec}: round trip");
        let mut again = Vec::new();
        codec.encode(&back, &mut again);
        assert_eq!(again, out, "{codec}: encoding is not canonical");
        framework_payloads(codec.payload_form(), &env);
    }
}

fn payload_round_trip<M: Payload + std::fmt::Debug + PartialEq>(form: PayloadForm, bytes: &[u8]) {
    let Ok(m) = form.decode::<M>(bytes) else { return };
    let enc = form.encode_to_vec(&m);
    let back: M = form.decode(&enc).unwrap_or_else(|e| panic!("{form:?}: re-encoding of {m:?} does not decode: {e}"));
    assert_eq!(back, m, "{form:?}: payload round trip");
}

fn framework_payloads(form: PayloadForm, env: &Envelope<'_>) {
    let p: &[u8] = &env.payload;
    payload_round_trip::<LoginRequest>(form, p);
    payload_round_trip::<ResumeRequest>(form, p);
    payload_round_trip::<GroupRequest>(form, p);
    payload_round_trip::<SendToUser>(form, p);
    payload_round_trip::<SendToUsers>(form, p);
    payload_round_trip::<SendToGroup>(form, p);
}

/// The prost form of a decoded server frame.
fn to_prost(f: &ServerFrame<'_>) -> Kind {
    match *f {
        ServerFrame::Reply { session_id, cmd, seq, payload, error, error_message, request_id, silent } => {
            Kind::Reply(pb::Reply {
                session_id,
                cmd,
                seq,
                payload: payload.to_vec(),
                error,
                error_message: error_message.into(),
                request_id,
                silent,
            })
        }
        ServerFrame::PushToSession { session_id, cmd, payload, unreliable } => {
            Kind::PushToSession(pb::PushToSession { session_id, cmd, payload: payload.to_vec(), unreliable })
        }
        ServerFrame::PushToUser { user_id, cmd, payload, unreliable } => {
            Kind::PushToUser(pb::PushToUser { user_id: user_id.into(), cmd, payload: payload.to_vec(), unreliable })
        }
        ServerFrame::PushToGroup { group, cmd, payload, unreliable } => {
            Kind::PushToGroup(pb::PushToGroup { group: group.into(), cmd, payload: payload.to_vec(), unreliable })
        }
        ServerFrame::Broadcast { cmd, payload, unreliable } => {
            Kind::Broadcast(pb::Broadcast { cmd, payload: payload.to_vec(), unreliable })
        }
        ServerFrame::Pong { nonce } => Kind::Pong(pb::Pong { nonce }),
        ServerFrame::Status { draining } => Kind::Status(pb::Status { draining }),
    }
}

/// `link_frame`: a game server's byte stream on a link.
///
/// 1. Cut into length-prefixed frames (16 MiB at most, as the gateway),
///    each through [`ServerFrame::decode`]; a frame that decodes, written
///    back by prost, must decode to the same frame.
/// 2. The same bytes into a real core's link ([`link_core`]), in two
///    pieces: a client is logged in (session 1, user `alice`, group `room`)
///    with a business request in flight (request id 1), so that replies and
///    pushes reach real sessions. Must never panic.
pub fn link_frame(data: &[u8]) {
    let mut stream = data;
    let mut out = Vec::new();
    while let Ok(Some((range, used))) = Framing::LengthPrefixed.next_frame(stream, LINK_MAX) {
        let frame = &stream[range];
        stream = &stream[used..];
        let Ok(f) = ServerFrame::decode(frame) else { break };
        out.clear();
        encode_frame(to_prost(&f), &mut out);
        let back = ServerFrame::decode(&out[4..]).unwrap_or_else(|e| panic!("re-encoding of {f:?}: {e}"));
        assert_eq!(back, f, "link frame round trip");
    }
    link_core(data);
}

const LINK_MAX: usize = 16 << 20;

/// Feeds `data` to the link of a core with a logged-in client; returns the
/// core's counters.
pub fn link_core(data: &[u8]) -> portcullis_core::Stats {
    use portcullis_core::{ConnId, Output, Transport};
    thread_local! {
        static CONFIG: portcullis_core::Config = portcullis_core::Config::parse(
            &crate::netstack::config_text(), "fuzz link").expect("valid");
    }
    let now = Instant::now();
    CONFIG.with(|config| {
        let auth = portcullis_core::auth::from_config(config).expect("token auth");
        let shared = crate::shared::take();
        let mut core = portcullis_core::Gateway::new(
            config,
            0,
            shared.clone(),
            auth,
            now,
            std::time::Duration::from_secs(crate::netstack::UNIX_NOW),
        );
        let conn = ConnId::new(Transport::KernelTcp, 1);
        let drain = |core: &mut portcullis_core::Gateway, now: Instant| {
            let mut link = None;
            while let Some(out) = core.poll_output() {
                match out {
                    Output::Transmit(c) => {
                        let n = core.outbound(c).len();
                        core.consume(c, n);
                    }
                    Output::Close(c) => core.handle_disconnect(now, c),
                    Output::ConnectLink(l, _) => {
                        core.handle_link_connected(now, l);
                        link = Some(l);
                    }
                    Output::TransmitLink(l) => {
                        let n = core.link_outbound(l).len();
                        core.consume_link(l, n);
                        link = Some(l);
                    }
                    Output::CloseLink(_) => {}
                }
            }
            link
        };
        let link = drain(&mut core, now).expect("the config's link connects");
        core.handle_connect(now, conn, 0, "10.77.0.2:40000".parse().expect("addr"));
        let mut frames = Vec::new();
        for env in crate::seeds::client_session() {
            Codec::Protobuf.encode(&env, &mut frames);
        }
        core.handle_data(now, conn, &frames);
        drain(&mut core, now);
        let cut = data.len() / 3;
        let later = now + Duration::from_millis(1);
        core.handle_link_data(later, link, &data[..cut]);
        drain(&mut core, later);
        core.handle_link_data(later, link, &data[cut..]);
        drain(&mut core, later);
        let end = later + Duration::from_secs(31);
        core.handle_timeout(end);
        drain(&mut core, end);
        // A graceful shutdown, so that the shared state is clean for the
        // next run (see `crate::shared`).
        core.shutdown(end);
        let mut t = end;
        for step in [0, 1_000, 10_000, 30_000, 61_000] {
            t += Duration::from_millis(step);
            core.handle_timeout(t);
            drain(&mut core, t);
        }
        let stats = core.stats().clone();
        drop(core);
        crate::shared::give_back(shared);
        stats
    })
}

/// Secret of the `tokens` target.
pub const TOKEN_SECRET: &[u8] = b"fuzz-token-secret-0123456789";
/// Key of its resume tokens.
pub const RESUME_KEY: &[u8] = &[7; 32];
/// The Unix time tokens are checked at.
pub const TOKEN_NOW: u64 = 1_800_000_000;

/// `tokens`: the first byte picks a mode, the rest is its input.
///
/// - 0: a login token, through [`token::verify`]; one that verifies has a
///   user and has not expired.
/// - 1: a resume token, through [`token::verify_resume_token`]; one that
///   verifies is exactly the token minted for its session (base64 without
///   padding and with canonical trailing bits: one encoding per token).
/// - 2: claims JSON, signed here with the right secret, so that the claims
///   parser is reached; claims that verify, signed again, verify to the
///   same claims.
/// - 3: claims from the bytes (exp: 8 bytes, then user and device split at
///   the first NUL): [`token::sign`] then [`token::verify`] gives them
///   back, or the expected refusal; a wrong secret is refused; resume
///   tokens minted for a session name it back.
pub fn tokens(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            let t = String::from_utf8_lossy(rest);
            if let Ok(c) = token::verify(TOKEN_SECRET, &t, TOKEN_NOW) {
                assert!(!c.uid.is_empty() && c.exp > TOKEN_NOW, "{c:?}");
            }
        }
        1 => {
            let t = String::from_utf8_lossy(rest);
            if let Some((id, generation)) = token::verify_resume_token(RESUME_KEY, &t) {
                assert_eq!(
                    token::resume_token(RESUME_KEY, id, generation),
                    t,
                    "a second encoding of the same resume token"
                );
            }
        }
        2 => {
            let t = sign_raw(TOKEN_SECRET, rest);
            if let Ok(c) = token::verify(TOKEN_SECRET, &t, TOKEN_NOW) {
                assert_eq!(token::verify(TOKEN_SECRET, &token::sign(TOKEN_SECRET, &c), TOKEN_NOW), Ok(c.clone()));
            }
        }
        _ => {
            let (exp, names) = rest.split_at(rest.len().min(8));
            let mut e = [0u8; 8];
            e[..exp.len()].copy_from_slice(exp);
            let exp = u64::from_le_bytes(e);
            let (uid, dev) = match names.iter().position(|&b| b == 0) {
                Some(i) => (&names[..i], &names[i + 1..]),
                None => (names, &[][..]),
            };
            let claims = Claims {
                uid: String::from_utf8_lossy(uid).into_owned(),
                dev: String::from_utf8_lossy(dev).into_owned(),
                exp,
                role: String::new(),
            };
            let t = token::sign(TOKEN_SECRET, &claims);
            let expected = if claims.uid.is_empty() {
                Err(TokenError::EmptyUser)
            } else if claims.exp <= TOKEN_NOW {
                Err(TokenError::Expired(claims.exp))
            } else {
                Ok(claims.clone())
            };
            assert_eq!(token::verify(TOKEN_SECRET, &t, TOKEN_NOW), expected);
            assert_eq!(token::verify(b"another secret", &t, TOKEN_NOW), Err(TokenError::Signature));
            if !claims.uid.is_empty() && claims.exp > 0 {
                assert_eq!(token::verify(TOKEN_SECRET, &t, 0), Ok(claims.clone()), "valid at time 0");
            }
            let generation = exp as u32;
            let r = token::resume_token(RESUME_KEY, exp, generation);
            assert_eq!(token::verify_resume_token(RESUME_KEY, &r), Some((exp, generation)));
            assert_eq!(token::verify_resume_token(&[8; 32], &r), None);
        }
    }
}

/// A token with a valid MAC over arbitrary claims bytes.
pub fn sign_raw(secret: &[u8], claims: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = b64.encode(claims);
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    m.update(body.as_bytes());
    format!("{body}.{}", b64.encode(m.finalize().into_bytes()))
}

/// `config`: UTF-8 text through `Config::parse`, which must return, never
/// panic; a config that parses also yields each listener's maximum frame
/// and its authenticator.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = portcullis_core::Config::parse(text, "fuzz.toml") else { return };
    for i in 0..config.listeners.len() {
        assert!(config.max_frame(i) > 0);
    }
    let _ = portcullis_core::auth::from_config(&config);
}
