//! The rules and examples of `PROTOCOL.md` that need no gateway: the login
//! token worked example, framing, the codecs' example frames, the command
//! and error-code tables. Examples are read out of the document itself
//! (the fenced block after each `<!-- doc-test: NAME -->` marker), so the
//! document cannot drift from the code unnoticed.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use portcullis_proto::framework::PayloadForm;
use portcullis_proto::framing::{DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use portcullis_proto::pb::client::{ErrorCode, LoginRequest, SendToUser};
use portcullis_proto::token::{sign, verify, Claims, TokenError};
use portcullis_proto::{cmd, Codec, Envelope, FrameError, Framing};
use sha2::Sha256;

const DOC: &str = include_str!("../PROTOCOL.md");

/// The body of the fenced block that follows `<!-- doc-test: NAME -->`,
/// without its final line end.
fn block(name: &str) -> &'static str {
    let marker = format!("<!-- doc-test: {name} -->");
    let at = DOC.find(&marker).unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"));
    let rest = &DOC[at + marker.len()..];
    let fence = rest.find("```").unwrap_or_else(|| panic!("no fenced block after {marker}"));
    let rest = &rest[fence..];
    let body = &rest[rest.find('\n').expect("a line after the fence") + 1..];
    &body[..body.find("\n```").unwrap_or_else(|| panic!("the block after {marker} is not closed"))]
}

/// The rows of the Markdown table that follows `<!-- doc-test: NAME -->`,
/// header and separator left out, cells trimmed.
fn table(name: &str) -> Vec<Vec<&'static str>> {
    let marker = format!("<!-- doc-test: {name} -->");
    let at = DOC.find(&marker).unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"));
    DOC[at + marker.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes written as hex pairs separated by spaces (`00 00 00 04 08 01`).
fn from_hex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|pair| u8::from_str_radix(pair, 16).expect("a hex byte")).collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

// ----- login tokens (§7) ---------------------------------------------------

#[test]
fn the_token_worked_example_is_what_sign_produces_and_verify_accepts() {
    let secret = block("token-secret");
    let claims_json = block("token-claims");
    let body = block("token-claims-b64");
    let mac_b64 = block("token-mac-b64");
    let token = block("token");

    assert_eq!(URL_SAFE_NO_PAD.encode(claims_json), body, "base64url of the claims, no padding");
    let mac = hmac_sha256(secret.as_bytes(), body.as_bytes());
    assert_eq!(hex(&mac), block("token-mac-hex"), "the MAC is over the base64url text of the claims");
    assert_eq!(URL_SAFE_NO_PAD.encode(&mac), mac_b64);
    assert_eq!(format!("{body}.{mac_b64}"), token);

    let claims: Claims = serde_json::from_str(claims_json).unwrap();
    assert_eq!(claims, Claims { uid: "alice".into(), dev: "ios".into(), exp: 4_102_444_800, role: String::new() });
    assert_eq!(sign(secret.as_bytes(), &claims), token, "the library mints exactly the documented token");
    assert_eq!(verify(secret.as_bytes(), token, claims.exp - 1), Ok(claims.clone()));
    assert_eq!(verify(secret.as_bytes(), token, claims.exp), Err(TokenError::Expired(claims.exp)), "exp <= now");
}

#[test]
fn padded_base64url_is_refused_in_either_part() {
    let secret = block("token-secret").as_bytes();
    let body = block("token-claims-b64");
    let padded_body = URL_SAFE.encode(block("token-claims"));
    assert_eq!(padded_body, format!("{body}="), "the example's claims do have a padded form");
    // Correctly signed over the padded text, still refused.
    let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, padded_body.as_bytes()));
    assert_eq!(verify(secret, &format!("{padded_body}.{mac}"), 0), Err(TokenError::Format));
    let padded_mac = URL_SAFE.encode(hmac_sha256(secret, body.as_bytes()));
    assert!(padded_mac.ends_with('='));
    assert_eq!(verify(secret, &format!("{body}.{padded_mac}"), 0), Err(TokenError::Format));
    // Characters of the standard alphabet (`+`, `/`) are not base64url.
    let mac = block("token-mac-b64");
    for c in ['+', '/'] {
        assert_eq!(verify(secret, &format!("{body}.{c}{}", &mac[1..]), 0), Err(TokenError::Format));
    }
}

#[test]
fn the_mac_covers_the_base64url_text_so_the_json_spelling_is_free() {
    let secret = block("token-secret").as_bytes();
    let body = block("token-claims-b64");
    // A MAC over the JSON bytes instead of their base64url text is refused.
    let over_json = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, block("token-claims").as_bytes()));
    assert_eq!(verify(secret, &format!("{body}.{over_json}"), 0), Err(TokenError::Signature));
    // Other key order, spacing, no `dev`, an unknown claim: accepted as signed.
    let body = URL_SAFE_NO_PAD.encode(r#"{ "exp": 4102444800, "uid": "bob", "team": "x" }"#);
    let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, body.as_bytes()));
    let claims = verify(secret, &format!("{body}.{mac}"), 0).unwrap();
    assert_eq!(claims, Claims { uid: "bob".into(), dev: String::new(), exp: 4_102_444_800, role: String::new() });
}

#[test]
fn token_refusals_carry_the_documented_messages() {
    let secret = block("token-secret").as_bytes();
    let signed = |json: &str| {
        let body = URL_SAFE_NO_PAD.encode(json);
        let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, body.as_bytes()));
        format!("{body}.{mac}")
    };
    let cases = [
        (verify(secret, "not-a-token", 0), TokenError::Format),
        (verify(secret, &format!("{}.", block("token")), 0), TokenError::Format),
        (verify(b"another-secret-0123456789", block("token"), 0), TokenError::Signature),
        (verify(secret, &signed(r#"{"uid":"alice","exp":"soon"}"#), 0), TokenError::Claims),
        (verify(secret, &signed(r#"{"uid":"","exp":4102444800}"#), 0), TokenError::EmptyUser),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want.clone()));
        assert!(DOC.contains(&want.to_string()), "PROTOCOL.md quotes {:?}", want.to_string());
    }
    assert!(DOC.contains("token expired at <exp>"));
    assert_eq!(TokenError::Expired(7).to_string(), "token expired at 7");
}

// ----- framing (§3) and codecs (§4) ---------------------------------------------

/// Splits one length-prefixed frame, checking the prefix counts the
/// envelope only.
fn split_prefixed(bytes: &[u8]) -> &[u8] {
    let announced = u32::from_be_bytes(bytes[..LENGTH_PREFIX].try_into().unwrap()) as usize;
    assert_eq!(announced, bytes.len() - LENGTH_PREFIX, "the prefix is the envelope's length, big-endian");
    let (range, used) = Framing::LengthPrefixed.next_frame(bytes, DEFAULT_MAX_FRAME).unwrap().expect("a whole frame");
    assert_eq!((range.start, range.end, used), (LENGTH_PREFIX, bytes.len(), bytes.len()));
    &bytes[LENGTH_PREFIX..]
}

#[test]
fn the_binary_frame_examples_decode_to_the_documented_envelopes() {
    let heartbeat = Envelope::new(cmd::HEARTBEAT, 1, 0, b"");
    let answer = Envelope::new(cmd::HEARTBEAT, 1, 1, b"");
    let echo = Envelope { server_seq: 3, ..Envelope::new(1000, 7, 1, b"hi") };
    for (name, env) in [
        ("frame-protobuf-heartbeat", &heartbeat),
        ("frame-protobuf-heartbeat-answer", &answer),
        ("frame-protobuf-echo-answer", &echo),
    ] {
        let bytes = from_hex(block(name));
        assert_eq!(&Codec::Protobuf.decode(split_prefixed(&bytes)).unwrap(), env, "{name}");
        let mut encoded = Vec::new();
        Codec::Protobuf.encode(env, &mut encoded);
        assert_eq!(encoded, bytes, "{name}: the gateway writes exactly these bytes");
    }
    let bytes = from_hex(block("frame-flatbuffers-heartbeat"));
    assert_eq!(Codec::Flatbuffers.decode(split_prefixed(&bytes)).unwrap(), heartbeat);
}

#[test]
fn the_json_line_examples_decode_to_the_documented_envelopes() {
    let expected = [
        Envelope::new(cmd::HEARTBEAT, 1, 0, b""),
        Envelope::new(1000, 2, 0, b"hello").with_route_key(b"room-1"),
        Envelope { ack: 5, ..Envelope::new(1000, 3, 0, &[0xff, 0xfe]) },
        Envelope { server_seq: 2, ..Envelope::new(1000, 4, 1, b"hello") },
        Envelope::new(cmd::LOGIN, 5, 0, br#"{"token":"abc.def"}"#),
    ];
    let lines: Vec<&str> = block("json-lines").lines().collect();
    assert_eq!(lines.len(), expected.len());
    for (line, env) in lines.iter().zip(&expected) {
        assert_eq!(&Codec::Json.decode(line.as_bytes()).unwrap(), env, "{line}");
    }
    // The gateway writes the answer in the documented form (flags always,
    // server_seq only when not 0).
    let mut out = Vec::new();
    Codec::Json.encode(&expected[3], &mut out);
    assert_eq!(out, format!("{}\n", lines[3]).as_bytes());
    // A framework payload is a JSON object carried as a JSON string.
    let login: LoginRequest = Codec::Json.payload_form().decode(&expected[4].payload).unwrap();
    assert_eq!(login.token, "abc.def");
    // Unknown keys and both payload forms at once are refused.
    assert!(Codec::Json.decode(br#"{"cmd":1,"sequence":2}"#).is_err());
    assert!(Codec::Json.decode(br#"{"cmd":1,"payload":"a","payload_b64":"YQ=="}"#).is_err());
}

#[test]
fn the_text_line_examples_decode_to_the_documented_envelopes() {
    let expected = [
        Envelope::new(cmd::HEARTBEAT, 1, 0, b""),
        Envelope::new(1000, 2, 0, b"hello there").with_route_key(b"room 1"),
        Envelope { ack: 41, ..Envelope::new(cmd::ACK, 0, 0, b"") },
        Envelope { server_seq: 2, ..Envelope::new(1000, 4, 1, b"\xff\xfe and a\\backslash") },
        Envelope::new(cmd::LOGIN, 5, 0, br#"{"token":"abc.def"}"#),
    ];
    let lines: Vec<&str> = block("text-lines").lines().collect();
    assert_eq!(lines.len(), expected.len());
    for (line, env) in lines.iter().zip(&expected) {
        assert_eq!(&Codec::Text.decode(line.as_bytes()).unwrap(), env, "{line}");
    }
    let mut out = Vec::new();
    Codec::Text.encode(&expected[3], &mut out);
    assert_eq!(out, format!("{}\n", lines[3]).as_bytes(), "the gateway's FLAGS/SERVER_SEQ form and escapes");
    // An empty payload leaves a trailing space; a `-` route key is escaped.
    let mut out = Vec::new();
    Codec::Text.encode(&Envelope::new(cmd::HEARTBEAT, 2, 1, b""), &mut out);
    assert_eq!(out, b"HEARTBEAT 2 1 - \n");
    out.clear();
    Codec::Text.encode(&Envelope::new(1000, 3, 0, b"x").with_route_key(b"-"), &mut out);
    assert_eq!(out, b"1000 3 0 \\x2d x\n");
    // Fields are separated by single spaces; unknown escapes are errors.
    assert!(Codec::Text.decode(b"HEARTBEAT  1").is_err());
    assert!(Codec::Text.decode(b"1000 1 0 - \\q").is_err());
    assert!(Codec::Text.decode(b"heartbeat 1").is_err(), "names are upper case");
}

#[test]
fn lines_end_with_lf_and_an_optional_cr_is_dropped() {
    for (stream, frame, used) in
        [(&b"HEARTBEAT 1\n"[..], &b"HEARTBEAT 1"[..], 12), (b"HEARTBEAT 1\r\nrest", b"HEARTBEAT 1", 13)]
    {
        let (range, n) = Framing::Lines.next_frame(stream, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((&stream[range], n), (frame, used));
    }
    assert_eq!(Framing::Lines.next_frame(b"HEARTBEAT 1", DEFAULT_MAX_FRAME), Ok(None));
    assert!(Codec::Text.decode(b"").is_err() && Codec::Json.decode(b"").is_err(), "an empty line is a bad frame");
}

#[test]
fn the_frame_limit_counts_the_envelope_only() {
    const MAX: usize = 64;
    // Binary: the prefix announces the envelope's length; the limit is inclusive.
    let prefix = |n: usize| (n as u32).to_be_bytes();
    assert_eq!(Framing::LengthPrefixed.next_frame(&prefix(MAX), MAX), Ok(None), "exactly the limit: wait for it");
    let mut frame = prefix(MAX).to_vec();
    frame.extend_from_slice(&[0; MAX]);
    assert!(Framing::LengthPrefixed.next_frame(&frame, MAX).unwrap().is_some());
    assert_eq!(
        Framing::LengthPrefixed.next_frame(&prefix(MAX + 1), MAX),
        Err(FrameError::TooLarge { len: MAX + 1, max: MAX }),
        "refused from the prefix alone"
    );
    // Lines: the terminator is not counted.
    let line = vec![b'a'; MAX];
    for end in [&b"\n"[..], b"\r\n"] {
        let stream = [&line[..], end].concat();
        let (range, used) = Framing::Lines.next_frame(&stream, MAX).unwrap().unwrap();
        assert_eq!((range.len(), used), (MAX, stream.len()));
    }
    assert_eq!(Framing::Lines.next_frame(&line, MAX), Ok(None), "exactly the limit without its end yet");
    let long = vec![b'a'; MAX + 1];
    assert!(Framing::Lines.next_frame(&[&long[..], b"\n"].concat(), MAX).is_err());
    assert!(Framing::Lines.next_frame(&long, MAX).is_err(), "over the limit without a line end");
}

#[test]
fn a_line_of_exactly_the_limit_may_wait_for_the_lf_after_its_cr() {
    // `\r\n` can arrive split: the `\r` is part of the terminator, not of
    // the frame, so a line of exactly the limit plus `\r` is incomplete,
    // not too large.
    const MAX: usize = 64;
    let stream = [&vec![b'a'; MAX][..], b"\r"].concat();
    assert_eq!(Framing::Lines.next_frame(&stream, MAX), Ok(None));
}

// ----- framework payloads, commands, error codes (§4.5, §8, §9) -----------------

#[test]
fn json_bytes_fields_use_the_base64_prefix_for_non_text() {
    let example = block("payload-json-base64");
    let msg: SendToUser = PayloadForm::Json.decode(example.as_bytes()).unwrap();
    assert_eq!(msg, SendToUser { user_id: "bob".into(), payload: vec![0xff, 0xfe] });
    assert_eq!(PayloadForm::Json.encode_to_vec(&msg), example.as_bytes());
    // Text is sent as is, unless it starts with the prefix itself.
    let text = SendToUser { user_id: "bob".into(), payload: b"hi".to_vec() };
    assert_eq!(PayloadForm::Json.encode_to_vec(&text), br#"{"user_id":"bob","payload":"hi"}"#);
    let tricky = SendToUser { user_id: "bob".into(), payload: b"base64:x".to_vec() };
    let json = PayloadForm::Json.encode_to_vec(&tricky);
    assert_eq!(json, br#"{"user_id":"bob","payload":"base64:YmFzZTY0Ong="}"#);
    assert_eq!(PayloadForm::Json.decode::<SendToUser>(&json).unwrap(), tricky);
    // Missing keys default, unknown keys are ignored, empty is all defaults.
    let loose: SendToUser = PayloadForm::Json.decode(br#"{"user_id":"bob","extra":1}"#).unwrap();
    assert_eq!(loose, SendToUser { user_id: "bob".into(), payload: Vec::new() });
    assert_eq!(PayloadForm::Json.decode::<SendToUser>(b"").unwrap(), SendToUser::default());
}

#[test]
fn the_command_table_matches_the_schema() {
    let rows = table("commands");
    assert_eq!(rows.len(), 12, "every framework command");
    for row in rows {
        let (id, name) = (row[0].parse::<u32>().unwrap(), row[1]);
        assert_eq!(cmd::name(id), Some(name), "command {id}");
        assert_eq!(cmd::from_name(name), Some(id));
    }
    assert_eq!(cmd::name(13), None, "13–999 are not commands");
    assert_eq!(cmd::FIRST_BUSINESS, 1000);
}

#[test]
fn the_error_code_table_lists_every_code_of_the_schema() {
    let rows = table("error-codes");
    let documented: Vec<(i32, &str)> = rows.iter().map(|r| (r[0].parse().unwrap(), r[1])).collect();
    let schema: Vec<(i32, &str)> =
        (0..1000).filter_map(|c| ErrorCode::try_from(c).ok().map(|e| (c, e.as_str_name()))).collect();
    assert_eq!(documented, schema, "PROTOCOL.md §9 and client.proto's ErrorCode");
}

// ----- KCP transport (§15) ---------------------------------------------------

#[test]
fn the_kcp_control_packet_examples_are_what_the_encoder_writes() {
    use portcullis_proto::kcp::{Control, COOKIE_LEN};
    let close = Control::Close { conv: 0x0a0b_0c0d };
    assert_eq!(from_hex(block("kcp-close")), close.to_vec());
    let cookie = Control::Cookie { nonce: 0x1122_3344_5566_7788, conv: 0xa1b2_c3d4, cookie: [0xee; COOKIE_LEN] };
    assert_eq!(from_hex(block("kcp-cookie")), cookie.to_vec());
    assert_eq!(Control::decode(&from_hex(block("kcp-cookie"))), Ok(cookie));
}
