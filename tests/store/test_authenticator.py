"""Logins over the real store: passwords, throttling per address, locks per (user, address), SASL PLAIN, LOGIN and
SCRAM-SHA-256. The policy runs on an injected clock and sleep."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
from pathlib import Path

import pytest

from postroom.auth import authenticator
from postroom.auth.authenticator import Authenticator
from postroom.config import AuthConfig
from postroom.store.api import AuthFailures, Store
from postroom.store.sqlite import SQLiteStore
from postroom.store.sqlite.schema import _STEPS
from tests.credentials import cheap_credentials  # argon2id at the lowest cost: why there


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Sleeper:
    """An injected sleep: records each delay and moves the clock instead of waiting."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += seconds


async def setup(store: Store, **cfg: object) -> tuple[Authenticator, Clock]:
    await store.add_domain("example.org")
    h, scram = cheap_credentials("correct-horse")
    await store.add_user("alice@example.org", h, scram)
    clock = Clock()
    return make_auth(store, clock, **cfg), clock


def make_auth(store: Store, clock: Clock, secret: bytes = b"s" * 32, **cfg: object) -> Authenticator:
    config = AuthConfig(**{"max_failures_per_ip": 4, "max_failures_per_user": 3, "lockout_seconds": 60.0,
                           "max_delay_seconds": 15.0, "max_lockout_seconds": 150.0, **cfg})  # type: ignore[arg-type]
    return Authenticator(store, config, clock, secret=secret, sleep=Sleeper(clock))


def delays(auth: Authenticator) -> list[float]:
    sleeper = auth._sleep
    assert isinstance(sleeper, Sleeper)
    return sleeper.delays


async def test_password_checks_and_case(store: Store) -> None:
    auth, _ = await setup(store)
    user = await auth.check_password("Alice@Example.org", "correct-horse", "192.0.2.1")
    assert user is not None and user.address == "alice@example.org"
    assert await auth.check_password("alice@example.org", "wrong", "192.0.2.1") is None
    assert await auth.check_password("nobody@example.org", "correct-horse", "192.0.2.1") is None
    assert await auth.check_password("", "x", "192.0.2.1") is None


async def test_a_failing_pair_is_refused_and_only_that_pair(store: Store) -> None:
    auth, clock = await setup(store)
    for _ in range(3):  # max_failures_per_user from one address
        assert await auth.check_password("alice@example.org", "wrong", "192.0.2.1") is None
    assert auth.locked_out("192.0.2.1", "alice@example.org")
    assert await auth.check_password("alice@example.org", "correct-horse", "192.0.2.1") is None
    # The same user from another address is not refused (invariant 2), and that address has no delay.
    assert not auth.locked_out("198.51.100.9", "alice@example.org")
    assert await auth.check_password("alice@example.org", "correct-horse", "198.51.100.9") is not None
    assert delays(auth) == []
    clock.now += 61
    assert await auth.check_password("alice@example.org", "correct-horse", "192.0.2.1") is not None


async def test_failures_spread_over_addresses_lock_nobody(store: Store) -> None:
    auth, _ = await setup(store)
    for i in range(10):
        assert await auth.check_password("alice@example.org", "wrong", f"192.0.2.{i}") is None
    assert not auth.locked_out("198.51.100.9", "alice@example.org")
    assert await auth.check_password("alice@example.org", "correct-horse", "198.51.100.9") is not None


async def test_failures_for_others_only_delay_a_right_password(store: Store) -> None:
    auth, _ = await setup(store, max_failures_per_user=100)
    for i in range(10):
        assert await auth.check_password(f"probe{i}@example.org", "x", "203.0.113.5") is None
    # 4 failures free (max_failures_per_ip), then 1 s doubling per failure up to max_delay_seconds.
    assert delays(auth) == [1, 2, 4, 8, 15, 15]
    assert await auth.check_password("alice@example.org", "correct-horse", "203.0.113.5") is not None
    assert delays(auth)[-1] == 15
    assert auth.delay("203.0.113.6") == 0  # another address is not slowed


async def test_ipv6_addresses_count_per_64(store: Store) -> None:
    auth, _ = await setup(store)
    for i in range(6):
        await auth.failed(f"2001:db8:1:2::{i + 1:x}", "")
    assert auth.delay("2001:db8:1:2:ffff::1") == 4  # the same /64: 6 failures, 4 free: 1 s doubled twice
    assert auth.delay("2001:db8:1:3::1") == 0
    assert auth.delay("::ffff:192.0.2.1") == 0
    await auth.failed("::ffff:192.0.2.1", "")
    assert auth._record("192.0.2.1", "", auth._clock()) is not None  # a mapped IPv4 address is that address


async def test_renewal_of_a_lock_is_capped(store: Store) -> None:
    auth, clock = await setup(store)
    for _ in range(3):
        await auth.failed("192.0.2.1", "alice@example.org")
    started = clock.now
    ends = []
    while clock.now < started + 120:  # keep guessing every 20 s (plus the address's delay): each attempt...
        clock.now += 20
        assert await auth.check_password("alice@example.org", "wrong", "192.0.2.1") is None
        rec = auth._record("192.0.2.1", "alice@example.org", clock.now)
        assert rec is not None
        ends.append(rec.locked_until)
    # ...extended the lock past lockout_seconds, but never past max_lockout_seconds from its start.
    assert max(ends) == started + 150
    clock.now = max(clock.now, started + 150)
    assert not auth.locked_out("192.0.2.1", "alice@example.org")
    assert await auth.check_password("alice@example.org", "correct-horse", "192.0.2.1") is not None


async def test_success_forgets_the_pair_not_the_address(store: Store) -> None:
    auth, _ = await setup(store)
    for _ in range(2):
        assert await auth.check_password("alice@example.org", "wrong", "192.0.2.1") is None
    assert await auth.check_password("alice@example.org", "correct-horse", "192.0.2.1") is not None
    await auth.failed("192.0.2.1", "alice@example.org")
    assert not auth.locked_out("192.0.2.1", "alice@example.org")  # counting starts again after a success
    assert auth._record("192.0.2.1", "", auth._clock()) is not None and \
        auth._record("192.0.2.1", "", auth._clock()).failures == 3  # type: ignore[union-attr]


async def test_state_survives_a_restart(store: Store) -> None:
    auth, clock = await setup(store)
    for i in range(6):
        await auth.failed("203.0.113.5", f"probe{i}@example.org")
    for _ in range(3):
        await auth.failed("192.0.2.1", "alice@example.org")
    again = make_auth(store, clock)  # a new process over the same store
    await again.throttle("203.0.113.5")
    assert delays(again) == [4]
    assert again.locked_out("192.0.2.1", "alice@example.org")
    assert await again.check_password("alice@example.org", "correct-horse", "192.0.2.1") is None
    clock.now += 3600
    later = make_auth(store, clock)
    assert await later.check_password("alice@example.org", "correct-horse", "192.0.2.1") is not None
    assert await store.load_auth_failures(clock.now, 1000) == []  # expired records were dropped


async def test_records_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authenticator, "MAX_RECORDS", 40)
    monkeypatch.setattr(authenticator, "_EVICT", 4)
    auth, clock = await setup(store)
    for i in range(300):  # an attacker cycling addresses and names
        clock.now += 0.01
        await auth.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}@example.org" + "x" * 5000)
    assert len(auth._records) <= 40
    assert len(await store.load_auth_failures(clock.now, 10_000)) <= 40
    assert max(len(u) for _, u in auth._records) < 100  # a long name is keyed by its hash


async def test_mechanisms_follow_tls_policy(store: Store) -> None:
    auth, _ = await setup(store)
    assert auth.mechanisms(tls=False) == ["SCRAM-SHA-256"]
    assert auth.mechanisms(tls=True) == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
    relaxed = Authenticator(store, AuthConfig(allow_plaintext=True))
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


def first_attrs(challenge: bytes) -> dict[str, str]:
    return dict(item.split("=", 1) for item in challenge.decode().split(","))


async def server_first(auth: Authenticator, name: str, ip: str = "192.0.2.1") -> dict[str, str]:
    step = await auth.start("SCRAM-SHA-256", ip, tls=False).begin(f"n,,n={name},r=abc".encode())
    assert not step.done
    return first_attrs(step.challenge)


async def test_scram_unknown_user_looks_like_a_known_one(store: Store) -> None:
    auth, clock = await setup(store)
    ex = auth.start("SCRAM-SHA-256", "192.0.2.1", tls=False)
    step = await ex.begin(b"n,,n=nobody@example.org,r=abc")
    final, _ = scram_client("anything", step.challenge, "n=nobody@example.org,r=abc")
    step = await ex.respond(final.encode())
    assert step.done and not step.ok
    real, fake = await server_first(auth, "alice@example.org"), await server_first(auth, "nobody@example.org")
    # RFC 7677 §4 / the verifier made now: the same iteration count and salt length as a real user's.
    assert fake["i"] == real["i"] == "4096"
    assert len(base64.b64decode(fake["s"])) == len(base64.b64decode(real["s"])) == 16
    # Stable per name for one secret (asking twice tells nothing), different for another name.
    assert (await server_first(auth, "nobody@example.org"))["s"] == fake["s"]
    assert (await server_first(auth, "nobody2@example.org"))["s"] != fake["s"]
    # Not computable from the name alone: another secret gives another salt, and the old public formula fails.
    other = make_auth(store, clock, secret=b"t" * 32)
    assert (await server_first(other, "nobody@example.org"))["s"] != fake["s"]
    assert (await server_first(other, "alice@example.org"))["s"] == real["s"]
    public = hashlib.sha256(b"postroom-scram" + b"nobody@example.org").digest()[:16]
    assert base64.b64decode(fake["s"]) != public


async def test_scram_for_a_refused_pair_gives_the_real_salt_and_fails_at_the_proof(store: Store) -> None:
    auth, _ = await setup(store)
    before = await server_first(auth, "alice@example.org")
    for _ in range(3):
        await auth.failed("192.0.2.1", "alice@example.org")
    ex = auth.start("SCRAM-SHA-256", "192.0.2.1", tls=False)
    bare = "n=alice@example.org,r=abc"
    step = await ex.begin(f"n,,{bare}".encode())
    assert first_attrs(step.challenge)["s"] == before["s"]  # the lock does not show in the first message
    final, _ = scram_client("correct-horse", step.challenge, bare)
    assert not (await ex.respond(final.encode())).ok
    ex = auth.start("SCRAM-SHA-256", "198.51.100.9", tls=False)  # another address: the right proof succeeds
    step = await ex.begin(f"n,,{bare}".encode())
    final, _ = scram_client("correct-horse", step.challenge, bare)
    assert (await ex.respond(final.encode())).ok


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
    await auth.note_login("192.0.2.7")
    clock.now += 599
    assert auth.logged_in_recently("192.0.2.7", 600)
    assert not auth.logged_in_recently("192.0.2.8", 600)
    clock.now += 2
    assert not auth.logged_in_recently("192.0.2.7", 600)


async def test_a_version_4_database_with_data_migrates(tmp_path: Path) -> None:
    """Schema step 6 (auth_failures) on a database as version 4 left it, with a user in it."""
    db = tmp_path / "v4.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(1, 5):  # steps are never edited: exactly the version 4 schema
        _STEPS[version](conn)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO domains(name, created) VALUES ('example.org', 0)")
    conn.execute("INSERT INTO users(address, domain_id, password_hash, created) VALUES ('old@example.org', 1, 'h', 0)")
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(db, tmp_path / "blobs")
    await store.open()
    try:
        user = await store.get_user("old@example.org")
        assert user is not None and user.password_hash == "h"
        auth = make_auth(store, Clock())
        for _ in range(3):
            await auth.failed("192.0.2.1", "old@example.org")
        again = make_auth(store, Clock())
        await again.throttle("192.0.2.1")  # loads the records
        assert again.locked_out("192.0.2.1", "old@example.org")
    finally:
        await store.close()


async def test_other_spellings_of_a_name_are_the_same_account(store: Store) -> None:
    # Attack on issue 11, F2 and F3: the store reads `alice@example.org.`, `"alice"@example.org` and
    # `ALICE@example.org` as one account, so failures, refusals and SCRAM decoys must too. Otherwise each
    # spelling was a fresh set of guesses, and an unknown user's salt changed with the spelling while a real
    # user's did not.
    auth, _ = await setup(store, max_failures_per_ip=100)
    for i in range(3):
        assert await auth.check_password("alice@example.org", f"wrong{i}", "192.0.2.1") is None
    for spelling in ("alice@example.org.", '"alice"@example.org', " ALICE@Example.org", "alice@example.org.."):
        assert auth.locked_out("192.0.2.1", spelling), spelling
        assert await auth.check_password(spelling, "correct-horse", "192.0.2.1") is None, spelling
    assert await auth.check_password("alice@example.org.", "correct-horse", "198.51.100.9") is not None
    fake = (await server_first(auth, "nobody@example.org"))["s"]
    for spelling in ("nobody@example.org.", "NOBODY@example.org", '"nobody"@example.org'):
        assert (await server_first(auth, spelling))["s"] == fake, spelling


async def test_read_auth_failures_gives_the_live_records_asked_for(store: Store) -> None:
    """What another worker process counted (`Store.read_auth_failures`): only the keys asked for, only records
    that have not expired, none for a key without one."""
    live = AuthFailures("192.0.2.1", "", 3, 100.0, 0.0, 0.0, 500.0)
    pair = AuthFailures("192.0.2.1", "alice@example.org", 2, 100.0, 90.0, 400.0, 500.0)
    other = AuthFailures("192.0.2.2", "", 1, 100.0, 0.0, 0.0, 500.0)
    old = AuthFailures("192.0.2.3", "", 1, 10.0, 0.0, 0.0, 150.0)
    await store.save_auth_failures([live, pair, other, old], [], 50.0)
    got = await store.read_auth_failures([("192.0.2.1", ""), ("192.0.2.1", "alice@example.org"),
                                          ("192.0.2.3", ""), ("192.0.2.9", "")], 200.0)
    assert sorted(got, key=lambda r: r.username) == [live, pair]  # 192.0.2.3's expired at 150; .9 has none
    assert await store.read_auth_failures([], 200.0) == []
