//! A line-based text envelope for debugging with `nc`:
//!
//! ```text
//! CMD SEQ [FLAGS [ROUTE_KEY [PAYLOAD]]]
//! ```
//!
//! `CMD` is a number or a framework command name (`LOGIN`, `HEARTBEAT`…);
//! `FLAGS` may carry the sequence fields as `FLAGS/SERVER_SEQ/ACK` (missing
//! parts are 0); `ROUTE_KEY` is `-` for none; `PAYLOAD` is the rest of the line. In
//! `ROUTE_KEY` and `PAYLOAD`, `\\`, `\n`, `\r`, `\s` (space, route key only)
//! and `\xHH` escape bytes that cannot appear literally.

use std::borrow::Cow;

use crate::{cmd, DecodeError, Envelope};

fn number(field: &str, name: &'static str) -> Result<u32, DecodeError> {
    field.parse().map_err(|_| DecodeError::Text(format!("`{name}` must be a number, got {field:?}")))
}

fn unescape(s: &str) -> Result<Cow<'_, [u8]>, DecodeError> {
    if !s.contains('\\') {
        return Ok(Cow::Borrowed(s.as_bytes()));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b's') => out.push(b' '),
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let [Some(h), Some(l)] = hex else {
                    return Err(DecodeError::Text("`\\x` needs two hex digits".into()));
                };
                let v = std::str::from_utf8(&[h, l])
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
                    .ok_or_else(|| DecodeError::Text("`\\x` needs two hex digits".into()))?;
                out.push(v);
            }
            _ => return Err(DecodeError::Text("unknown escape after `\\`".into())),
        }
    }
    Ok(Cow::Owned(out))
}

fn escape(bytes: &[u8], escape_space: bool, out: &mut Vec<u8>) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // Copy the longest valid UTF-8 run, escaping only what must be.
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => (
                std::str::from_utf8(&rest[..e.valid_up_to()]).expect("valid prefix"),
                e.error_len().unwrap_or(rest.len() - e.valid_up_to()),
            ),
        };
        for ch in valid.chars() {
            match ch {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                ' ' if escape_space => out.extend_from_slice(b"\\s"),
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        let bad_start = valid.len();
        for b in &rest[bad_start..bad_start + bad] {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
        rest = &rest[bad_start + bad..];
    }
}

pub(super) fn decode(frame: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let line = std::str::from_utf8(frame).map_err(|_| DecodeError::Text("a text frame must be UTF-8".into()))?;
    let mut parts = line.splitn(5, ' ');
    let cmd_field = parts.next().filter(|s| !s.is_empty());
    let cmd_field = cmd_field.ok_or_else(|| DecodeError::Text("empty line".into()))?;
    let cmd = match cmd::from_name(cmd_field) {
        Some(id) => id,
        None => number(cmd_field, "cmd")?,
    };
    let seq = number(parts.next().ok_or(DecodeError::Missing("seq"))?, "seq")?;
    let (mut flags, mut server_seq, mut ack) = (0, 0, 0);
    if let Some(field) = parts.next() {
        let mut nums = field.splitn(3, '/');
        flags = number(nums.next().unwrap_or_default(), "flags")?;
        let wide = |name: &str, part: Option<&str>| match part {
            None => Ok(0),
            Some(p) => p.parse::<u64>().map_err(|_| DecodeError::Text(format!("`{name}` must be a number, got {p:?}"))),
        };
        server_seq = wide("server_seq", nums.next())?;
        ack = wide("ack", nums.next())?;
    }
    let route_key = match parts.next() {
        None | Some("-") => None,
        Some(key) => Some(unescape(key)?),
    };
    let payload = parts.next().map(unescape).transpose()?.unwrap_or_default();
    Ok(Envelope { cmd, seq, flags, payload, route_key, server_seq, ack })
}

pub(super) fn encode(env: &Envelope<'_>, out: &mut Vec<u8>) {
    match cmd::name(env.cmd) {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => out.extend_from_slice(env.cmd.to_string().as_bytes()),
    }
    let seqs = match (env.server_seq, env.ack) {
        (0, 0) => String::new(),
        (s, 0) => format!("/{s}"),
        (s, a) => format!("/{s}/{a}"),
    };
    out.extend_from_slice(format!(" {} {}{seqs} ", env.seq, env.flags).as_bytes());
    match env.route_key() {
        None => out.push(b'-'),
        Some(b"-") => out.extend_from_slice(b"\\x2d"),
        Some(key) => escape(key, true, out),
    }
    out.push(b' ');
    escape(&env.payload, false, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_and_names() {
        let env = decode(b"HEARTBEAT 5").unwrap();
        assert_eq!((env.cmd, env.seq, env.flags), (cmd::HEARTBEAT, 5, 0));
        assert_eq!(env.route_key, None);
        let env = decode(b"1001 2 0 room\\s1 hello there").unwrap();
        assert_eq!(env.route_key(), Some(&b"room 1"[..]));
        assert_eq!(&*env.payload, b"hello there");
        let env = decode(b"ACK 0 0/0/41").unwrap();
        assert_eq!((env.cmd, env.server_seq, env.ack), (cmd::ACK, 0, 41));
    }

    #[test]
    fn errors_are_explained() {
        for bad in [
            &b""[..],
            b"LOGIN",
            b"nope 1",
            b"1 x",
            b"1 1 1 - \\q",
            b"1 1 1 - \\x4",
            b"\xff 1",
            b"1 1 0/x",
            b"1 1 0/1/-2",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
