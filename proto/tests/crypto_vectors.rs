//! The test vectors of session encryption (`proto/crypto-vectors.json`,
//! PROTOCOL.md §14): every derived value is recomputed from the inputs in
//! the file and compared. `PORTCULLIS_BLESS=1` rewrites the file from the
//! inputs. If `python3` with the `cryptography` package is present, the
//! independent checker `proto/scripts/check_crypto_vectors.py` runs too.

use std::borrow::Cow;
use std::path::PathBuf;

use portcullis_proto::crypto::{associated_data, Cipher, FrameCipher, KeyShare, SessionSecret};
use portcullis_proto::{flags, Codec, Envelope};
use serde_json::{json, Value};

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crypto-vectors.json")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("missing `{key}` in {v}"))
}

fn bytes(v: &Value, key: &str) -> Vec<u8> {
    unhex(field(v, key).as_str().unwrap_or_else(|| panic!("`{key}` is not a string")))
}

/// A key pair from a fixed private key: ring draws the X25519 scalar from
/// its random source, which here returns exactly these bytes.
#[allow(deprecated)]
fn share_from(private: &[u8]) -> KeyShare {
    KeyShare::generate_with(&ring::test::rand::FixedSliceRandom { bytes: private }).unwrap()
}

/// The frames of one cipher and stage: (direction, envelope as sent,
/// plaintext), in the order each direction seals them.
fn frames() -> Vec<(&'static str, Envelope<'static>)> {
    let e = flags::ENCRYPTED;
    vec![
        ("c2s", Envelope::new(1000, 1, e, b"hello").with_route_key(b"room-1").into_owned()),
        ("c2s", Envelope { ack: 3, ..Envelope::new(1, 2, e, b"") }),
        ("s2c", Envelope { server_seq: 1, ..Envelope::new(1000, 1, flags::RESPONSE | e, b"hello") }),
        ("s2c", Envelope::new(1, 2, flags::RESPONSE | e, b"")),
    ]
}

/// Recomputes every derived value of `doc` from its inputs.
fn compute(doc: &Value) -> Value {
    let client_private = bytes(doc, "client_private");
    let server_private = bytes(doc, "server_private");
    let resume = field(doc, "resume");
    let (client_nonce, server_nonce) = (bytes(resume, "client_nonce"), bytes(resume, "server_nonce"));
    let (client, server) = (share_from(&client_private), share_from(&server_private));
    let (ck, sk) = (client.public_key().to_vec(), server.public_key().to_vec());
    let dh = client.agree(&sk).unwrap();
    let dh_server = server.agree(&ck).unwrap();
    assert_eq!(dh.as_bytes(), dh_server.as_bytes());
    let secret = SessionSecret::derive(&dh, &ck, &sk);
    let mut keys = Vec::new();
    let mut sealed = Vec::new();
    for cipher in Cipher::ALL {
        for (stage, c, s) in [("login", &ck, &sk), ("resume", &client_nonce, &server_nonce)] {
            let (c2s_key, c2s_iv) = secret.key_material(cipher, c, s, "c2s");
            let (s2c_key, s2c_iv) = secret.key_material(cipher, c, s, "s2c");
            keys.push(json!({
                "cipher": cipher.name(), "stage": stage,
                "c2s_key": hex(&c2s_key), "c2s_iv": hex(&c2s_iv),
                "s2c_key": hex(&s2c_key), "s2c_iv": hex(&s2c_iv),
            }));
            let mut c2s = FrameCipher::new(cipher, &c2s_key, c2s_iv);
            let mut s2c = FrameCipher::new(cipher, &s2c_key, s2c_iv);
            for (direction, env) in frames() {
                let fc = if direction == "c2s" { &mut c2s } else { &mut s2c };
                let counter = fc.counter();
                let nonce = fc.nonce(counter);
                let mut ad = Vec::new();
                associated_data(&env, &mut ad);
                let mut buf = env.payload.to_vec();
                fc.seal(&env, &mut buf).unwrap();
                let mut wire = Vec::new();
                Codec::Protobuf.encode(&Envelope { payload: Cow::Borrowed(&buf), ..env.clone() }, &mut wire);
                sealed.push(json!({
                    "cipher": cipher.name(), "stage": stage, "direction": direction, "counter": counter,
                    "cmd": env.cmd, "seq": env.seq, "flags": env.flags, "server_seq": env.server_seq,
                    "ack": env.ack, "route_key": env.route_key().map(hex), "plaintext": hex(&env.payload),
                    "nonce": hex(&nonce), "ad": hex(&ad), "sealed": hex(&buf), "wire_protobuf": hex(&wire),
                }));
            }
        }
    }
    json!({
        "description": field(doc, "description"),
        "client_private": hex(&client_private),
        "server_private": hex(&server_private),
        "client_public": hex(&ck),
        "server_public": hex(&sk),
        "shared_secret": hex(dh.as_bytes()),
        "session_secret": hex(secret.as_bytes()),
        "resume": { "client_nonce": hex(&client_nonce), "server_nonce": hex(&server_nonce) },
        "keys": keys,
        "frames": sealed,
    })
}

#[test]
fn the_vectors_match_the_implementation() {
    let text = std::fs::read_to_string(path()).expect("proto/crypto-vectors.json");
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    let computed = compute(&doc);
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(path(), serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
        return;
    }
    assert_eq!(computed, doc, "proto/crypto-vectors.json is out of date (PORTCULLIS_BLESS=1 rewrites it)");
}

#[test]
fn every_sealed_frame_opens_and_a_flipped_bit_does_not() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    for f in field(&doc, "frames").as_array().unwrap() {
        let keys = field(&doc, "keys")
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["cipher"] == f["cipher"] && k["stage"] == f["stage"])
            .unwrap();
        let dir = f["direction"].as_str().unwrap();
        let cipher = Cipher::from_name(f["cipher"].as_str().unwrap()).unwrap();
        let iv: [u8; 12] = bytes(keys, &format!("{dir}_iv")).try_into().unwrap();
        let key = bytes(keys, &format!("{dir}_key"));
        let wire = bytes(f, "wire_protobuf");
        let env = Codec::Protobuf.decode(&wire[4..]).unwrap();
        for flip in [false, true] {
            let mut fc = FrameCipher::new(cipher, &key, iv);
            // Bring the counter to the frame's.
            for _ in 0..f["counter"].as_u64().unwrap() {
                let mut scratch = Vec::new();
                fc.seal(&Envelope::new(0, 0, flags::ENCRYPTED, b""), &mut scratch).unwrap();
            }
            let mut buf = env.payload.to_vec();
            if flip {
                buf[0] ^= 1;
            }
            let opened = fc.open(&env, &mut buf).map(|p| p.to_vec());
            if flip {
                assert!(opened.is_err());
            } else {
                assert_eq!(hex(&opened.unwrap()), f["plaintext"].as_str().unwrap());
            }
        }
    }
}

#[test]
fn an_independent_implementation_agrees() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_crypto_vectors.py");
    let probe = std::process::Command::new("python3").args(["-c", "import cryptography"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: python3 with the `cryptography` package is not available");
        return;
    }
    let out = std::process::Command::new("python3").arg(&script).arg(path()).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
