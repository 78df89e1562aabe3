"""Logins over the real store: passwords, lockout per IP and per user, SASL PLAIN, LOGIN and SCRAM-SHA-256."""

from __future__ import annotations

import base64
import hashlib
import hmac

from postroom.auth.authenticator import Authenticator
from postroom.auth.passwords import make_credentials
from postroom.config import AuthConfig
from postroom.store.api import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def setup(store: Store, **cfg: object) -> tuple[Authenticator, Clock]:
    await store.add_domain("example.org")
    h, scram = make_credentials("correct-horse")
    await store.add_user("alice@example.org", h, scram)
    clock = Clock()
    config = AuthConfig(**{"max_failures_per_ip": 4, "max_failures_per_user": 3, "lockout_seconds": 60.0, **cfg})
    return Authenticator(store, config, clock), clock


async def test_password_checks_and_case(store: Store) -> None:
    auth, _ = await setup(store)
    user = await auth.check_password("Alice@Example.org", "correct-horse", "192.0.2.1")
    assert user is not None and user.address == "alice@example.org"
    assert await auth.check_password("alice@example.org", "wrong", "192.0.2.1") is None
    assert await auth.check_password("nobody@example.org", "correct-horse", "192.0.2.1") is None
    assert await auth.check_password("", "x", "192.0.2.1") is None


async def test_user_lockout_holds_even_with_the_right_password_then_expires(store: Store) -> None:
    auth, clock = await setup(store)
    for i in range(3):
        assert await auth.check_password("alice@example.org", "wrong", f"192.0.2.{i}") is None
    assert auth.locked_out("198.51.100.9", "alice@example.org")
    assert await auth.check_password("alice@example.org", "correct-horse", "198.51.100.9") is None
    clock.now += 61
    assert not auth.locked_out("198.51.100.9", "alice@example.org")
    assert await auth.check_password("alice@example.org", "correct-horse", "198.51.100.9") is not None


async def test_ip_lockout_covers_every_user(store: Store) -> None:
    auth, clock = await setup(store, max_failures_per_user=100)
    for i in range(4):
        assert await auth.check_password(f"probe{i}@example.org", "x", "203.0.113.5") is None
    assert auth.locked_out("203.0.113.5")
    assert await auth.check_password("alice@example.org", "correct-horse", "203.0.113.5") is None
    assert await auth.check_password("alice@example.org", "correct-horse", "203.0.113.6") is not None


async def test_mechanisms_follow_tls_policy(store: Store) -> None:
    auth, _ = await setup(store)
    assert auth.mechanisms(tls=False) == ["SCRAM-SHA-256"]
    assert auth.mechanisms(tls=True) == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
    relaxed, _ = Authenticator(store, AuthConfig(allow_plaintext=True)), None
    assert "PLAIN" in relaxed.mechanisms(tls=False)
    try:
        auth.start("PLAIN", "192.0.2.1", tls=False)
    except ValueError:
        pass
    else:
        raise AssertionError("PLAIN must not start without TLS")


async def test_plain(store: Store) -> None:
    auth, _ = await setup(store)
    ex = auth.start("plain", "192.0.2.1", tls=True)
    step = await ex.begin(b"\x00alice@example.org\x00correct-horse")
    assert step.ok and step.user is not None and step.user.address == "alice@example.org"
    ex = auth.start("PLAIN", "192.0.2.1", tls=True)
    first = await ex.begin(None)
    assert not first.done and first.challenge == b""
    step = await ex.respond(b"alice@example.org\x00alice@example.org\x00wrong")
    assert step.done and not step.ok and step.error
    as_other = b"bob@example.org\x00alice@example.org\x00correct-horse"
    step = await auth.start("PLAIN", "192.0.2.1", tls=True).begin(as_other)
    assert not step.ok  # acting as another user is refused
    step = await auth.start("PLAIN", "192.0.2.1", tls=True).begin(b"garbage")
    assert step.done and not step.ok


async def test_login_mechanism(store: Store) -> None:
    auth, _ = await setup(store)
    ex = auth.start("LOGIN", "192.0.2.1", tls=True)
    assert (await ex.begin(None)).challenge == b"Username:"
    assert (await ex.respond(b"alice@example.org")).challenge == b"Password:"
    assert (await ex.respond(b"correct-horse")).ok


def scram_client(password: str, server_first: bytes, client_first_bare: str) -> tuple[str, bytes]:
    """A SCRAM-SHA-256 client written from RFC 5802 §3, independent of the server code."""
    attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    return f"{without_proof},p={proof}", expected


async def test_scram_sha256_full_exchange(store: Store) -> None:
    auth, _ = await setup(store)
    for password, ok in (("correct-horse", True), ("wrong-horse", False)):
        ex = auth.start("SCRAM-SHA-256", "192.0.2.1", tls=False)
        bare = "n=alice@example.org,r=fyko+d2lbbFgONRv9qkxdawL"
        step = await ex.begin(f"n,,{bare}".encode())
        assert not step.done and step.challenge.startswith(b"r=fyko+d2lbbFgONRv9qkxdawL")
        final, expected_server_final = scram_client(password, step.challenge, bare)
        step = await ex.respond(final.encode())
        assert step.done and step.ok is ok
        if ok:
            assert step.server_final == expected_server_final


async def test_scram_unknown_user_looks_like_a_known_one(store: Store) -> None:
    auth, _ = await setup(store)
    ex = auth.start("SCRAM-SHA-256", "192.0.2.1", tls=False)
    step = await ex.begin(b"n,,n=nobody@example.org,r=abc")
    assert not step.done and b",s=" in step.challenge and b",i=4096" in step.challenge
    final, _ = scram_client("anything", step.challenge, "n=nobody@example.org,r=abc")
    step = await ex.respond(final.encode())
    assert step.done and not step.ok


async def test_scram_rejects_channel_binding_and_bad_nonce(store: Store) -> None:
    auth, _ = await setup(store)
    step = await auth.start("SCRAM-SHA-256", "192.0.2.1", tls=True).begin(b"p=tls-unique,,n=alice@example.org,r=x")
    assert step.done and not step.ok
    ex = auth.start("SCRAM-SHA-256", "192.0.2.1", tls=True)
    await ex.begin(b"n,,n=alice@example.org,r=abc")
    step = await ex.respond(b"c=biws,r=othernonce,p=AAAA")
    assert step.done and not step.ok


async def test_pop_before_smtp_window(store: Store) -> None:
    auth, clock = await setup(store)
    assert not auth.logged_in_recently("192.0.2.7", 600)
    auth.note_login("192.0.2.7")
    clock.now += 599
    assert auth.logged_in_recently("192.0.2.7", 600)
    assert not auth.logged_in_recently("192.0.2.8", 600)
    clock.now += 2
    assert not auth.logged_in_recently("192.0.2.7", 600)
