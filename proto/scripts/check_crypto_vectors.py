#!/usr/bin/env python3
"""Checks proto/crypto-vectors.json with an implementation independent of
the gateway's: Python's `cryptography` package (OpenSSL). It follows
proto/PROTOCOL.md section 14 step by step, so it is also a worked example
for a client in another language.

    pip install cryptography
    python3 proto/scripts/check_crypto_vectors.py proto/crypto-vectors.json
"""
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def session_secret(dh: bytes, client_key: bytes, server_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=client_key + server_key,
                info=b"portcullis v1 session").derive(dh)


def connection_keys(secret: bytes, cipher: str, client_part: bytes, server_part: bytes) -> dict:
    prk = hkdf_extract(client_part + server_part, secret)
    key_len = 16 if cipher == "aes-128-gcm" else 32
    out = {}
    for d in ("c2s", "s2c"):
        out[d + "_key"] = hkdf_expand(prk, f"portcullis v1 {cipher} {d} key".encode(), key_len)
        out[d + "_iv"] = hkdf_expand(prk, f"portcullis v1 {cipher} {d} iv".encode(), 12)
    return out


def nonce(iv: bytes, counter: int) -> bytes:
    return iv[:4] + bytes(a ^ b for a, b in zip(iv[4:], struct.pack(">Q", counter)))


def associated_data(f: dict) -> bytes:
    ad = struct.pack(">IIIQQ", f["cmd"], f["seq"], f["flags"], f["server_seq"], f["ack"])
    if f["route_key"] is None:
        return ad + b"\x00"
    return ad + b"\x01" + bytes.fromhex(f["route_key"])


def check(doc: dict) -> int:
    failures = 0

    def expect(what, got: bytes, want: str):
        nonlocal failures
        if got.hex() != want:
            failures += 1
            print(f"MISMATCH {what}: computed {got.hex()}, file {want}")

    cpriv, spriv = bytes.fromhex(doc["client_private"]), bytes.fromhex(doc["server_private"])
    ck, sk = public(cpriv), public(spriv)
    expect("client_public", ck, doc["client_public"])
    expect("server_public", sk, doc["server_public"])
    dh = X25519PrivateKey.from_private_bytes(cpriv).exchange(X25519PublicKey.from_public_bytes(sk))
    dh2 = X25519PrivateKey.from_private_bytes(spriv).exchange(X25519PublicKey.from_public_bytes(ck))
    assert dh == dh2
    expect("shared_secret", dh, doc["shared_secret"])
    secret = session_secret(dh, ck, sk)
    expect("session_secret", secret, doc["session_secret"])
    parts = {
        "login": (ck, sk),
        "resume": (bytes.fromhex(doc["resume"]["client_nonce"]), bytes.fromhex(doc["resume"]["server_nonce"])),
    }
    keys = {}
    for k in doc["keys"]:
        derived = connection_keys(secret, k["cipher"], *parts[k["stage"]])
        keys[(k["cipher"], k["stage"])] = derived
        for name, value in derived.items():
            expect(f'{k["cipher"]} {k["stage"]} {name}', value, k[name])
    for f in doc["frames"]:
        what = f'{f["cipher"]} {f["stage"]} {f["direction"]} #{f["counter"]}'
        k = keys[(f["cipher"], f["stage"])]
        n = nonce(k[f["direction"] + "_iv"], f["counter"])
        expect(what + " nonce", n, f["nonce"])
        ad = associated_data(f)
        expect(what + " ad", ad, f["ad"])
        aead = AESGCM(k[f["direction"] + "_key"])
        sealed = aead.encrypt(n, bytes.fromhex(f["plaintext"]), ad)
        expect(what + " sealed", sealed, f["sealed"])
        expect(what + " opened", aead.decrypt(n, bytes.fromhex(f["sealed"]), ad), f["plaintext"])
        if sealed.hex() not in f["wire_protobuf"]:
            failures += 1
            print(f"MISMATCH {what}: the sealed payload is not in the wire frame")
    checked = len(doc["keys"]) + len(doc["frames"])
    print(f"{checked} key sets and frames checked, {failures} mismatches")
    return failures


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "proto/crypto-vectors.json") as fh:
        sys.exit(1 if check(json.load(fh)) else 0)
