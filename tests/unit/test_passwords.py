"""Password hashing (argon2id) and SCRAM-SHA-256 verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac

from postroom.auth import passwords


def test_argon2id_round_trip() -> None:
    h = passwords.hash_password("correct horse")
    assert h.startswith("$argon2id$")
    assert "correct horse" not in h
    assert passwords.verify_password(h, "correct horse")
    assert not passwords.verify_password(h, "correct horsE")
    assert not passwords.needs_rehash(h)


def test_malformed_hash_is_false_not_an_exception() -> None:
    assert not passwords.verify_password("", "x")
    assert not passwords.verify_password("not-a-hash", "x")
    assert not passwords.verify_password("$argon2id$v=19$m=1$garbage", "x")


def test_scram_verifier_matches_rfc7677_example() -> None:
    # RFC 7677 §3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = passwords.scram_verifier("pencil", salt, 4096)
    iterations, salt2, stored_key, server_key = passwords.parse_scram_verifier(verifier)
    assert (iterations, salt2) == (4096, salt)
    auth_message = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
                    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
    assert hashlib.sha256(client_key).digest() == stored_key  # the RFC's client proof verifies
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_make_credentials_gives_both() -> None:
    h, v = passwords.make_credentials("s3cret-pass")
    assert passwords.verify_password(h, "s3cret-pass")
    assert v.startswith("SCRAM-SHA-256$4096:")
