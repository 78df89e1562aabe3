"""The auth cache (auth/cache.py, like Dovecot's auth_cache) over the real store: a second login with the same
password runs no argon2 check (counted by `Authenticator.argon2_checks`, incremented where the check runs),
failures are never remembered, a password change through another store object (what another process such as
`postroom user passwd` is) or a removed user ends the entry at once, and so do a lock, an expiry and the
size bound; delays and locks are judged before the cache answers. The keys are keyed hashes, never the password.
Also: `auth.trusted_networks`, and the `postroom.auth` log lines (`throttled`, `locked`) fail2ban matches."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import pytest

from postroom.store.api import Store
from tests.credentials import cheap_credentials  # argon2id at the lowest cost: why there

from .conftest import make_store
from .test_authenticator import Clock, delays, make_auth, setup

ALICE = "alice@example.org"
PW = "correct-horse"
IP = "192.0.2.1"


async def test_a_second_login_runs_no_argon2(store: Store) -> None:
    auth, _ = await setup(store)
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 1
    for spelling in (ALICE, "Alice@Example.ORG", "alice@example.org."):  # one account, one entry
        user = await auth.check_password(spelling, PW, "198.51.100.7")
        assert user is not None and user.address == ALICE
    assert auth.argon2_checks == 1
    assert len(auth.cache) == 1


async def test_cache_ttl_0_is_off(store: Store) -> None:
    auth, _ = await setup(store, cache_ttl=0.0)
    for _ in range(3):
        assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 3
    assert len(auth.cache) == 0


async def test_failures_are_not_remembered(store: Store) -> None:
    auth, _ = await setup(store, max_failures_per_user=100, max_failures_per_ip=100)
    assert await auth.check_password(ALICE, PW, IP) is not None
    for _ in range(2):  # a wrong password after a remembered right one still runs argon2, and still fails
        assert await auth.check_password(ALICE, "wrong-horse", IP) is None
    assert auth.argon2_checks == 3
    assert len(auth.cache) == 1
    assert await auth.check_password("nobody@example.org", PW, IP) is None  # unknown: argon2 on the dummy
    assert auth.argon2_checks == 4


async def test_a_password_changed_by_another_process_ends_the_entry_at_once(store: Store, backend: str,
                                                                          data_dir: Path) -> None:
    auth, _ = await setup(store)
    assert await auth.check_password(ALICE, PW, IP) is not None
    other = make_store(backend, data_dir)  # another store on the same data, as the CLI has
    await other.open()
    try:
        h, scram = cheap_credentials("new-battery-staple")
        await other.set_password(ALICE, h, scram)
    finally:
        await other.close()
    assert await auth.check_password(ALICE, PW, IP) is None
    assert auth.argon2_checks == 2  # the old password went to argon2 again, and failed
    assert await auth.check_password(ALICE, "new-battery-staple", IP) is not None
    assert await auth.check_password(ALICE, "new-battery-staple", IP) is not None
    assert auth.argon2_checks == 3


async def test_the_same_password_set_again_is_checked_again(store: Store) -> None:
    auth, _ = await setup(store)
    assert await auth.check_password(ALICE, PW, IP) is not None
    h, scram = cheap_credentials(PW)  # a new salt: a new stored hash, so the entry no longer answers
    await store.set_password(ALICE, h, scram)
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 2


async def test_a_removed_user_cannot_log_in_from_the_cache(store: Store) -> None:
    auth, _ = await setup(store)
    assert await auth.check_password(ALICE, PW, IP) is not None
    await store.remove_user(ALICE)
    assert await auth.check_password(ALICE, PW, IP) is None
    await store.add_user(ALICE, *cheap_credentials(PW))  # same name and password, a new account: checked anew
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 3


async def test_entries_expire(store: Store) -> None:
    auth, clock = await setup(store, cache_ttl=100.0)
    assert await auth.check_password(ALICE, PW, IP) is not None
    clock.now += 99
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 1
    clock.now += 2
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 2


async def test_a_lock_is_judged_first_and_ends_the_users_entries(store: Store) -> None:
    auth, _ = await setup(store)
    assert await auth.check_password(ALICE, PW, "198.51.100.7") is not None
    for _ in range(3):  # max_failures_per_user from IP: the pair (alice, IP) is locked
        assert await auth.check_password(ALICE, "wrong", IP) is None
    assert len(auth.cache) == 0  # the lock dropped alice's remembered check
    checks = auth.argon2_checks
    assert await auth.check_password(ALICE, PW, IP) is None  # the locked pair: refused before any check
    assert auth.argon2_checks == checks
    assert await auth.check_password(ALICE, PW, "198.51.100.7") is not None  # elsewhere: argon2 again
    assert auth.argon2_checks == checks + 1


async def test_the_address_delay_applies_before_a_cache_hit(store: Store) -> None:
    auth, _ = await setup(store, max_failures_per_user=100)
    assert await auth.check_password(ALICE, PW, IP) is not None
    for i in range(5):  # 4 failures free from one address, then 1 s
        assert await auth.check_password(f"probe{i}@example.org", "x", IP) is None
    before = list(delays(auth))
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert delays(auth) == before + [2]  # waited, then answered from the cache
    assert auth.argon2_checks == 6


async def test_the_cache_is_bounded_least_recently_used_first(store: Store) -> None:
    auth, _ = await setup(store, cache_size=2)
    for name in ("bob", "carol"):
        await store.add_user(f"{name}@example.org", *cheap_credentials(PW))
    for name in ("alice", "bob", "alice", "carol"):  # bob is the least recently used when carol comes
        assert await auth.check_password(f"{name}@example.org", PW, IP) is not None
    assert len(auth.cache) == 2 and auth.argon2_checks == 3
    assert await auth.check_password(ALICE, PW, IP) is not None
    assert auth.argon2_checks == 3
    assert await auth.check_password("bob@example.org", PW, IP) is not None
    assert auth.argon2_checks == 4


async def test_keys_are_keyed_hashes_never_the_password(store: Store) -> None:
    password = "a password that is long enough to find"
    await store.add_domain("example.org")
    await store.add_user(ALICE, *cheap_credentials(password))
    secret = b"k" * 32
    auth = make_auth(store, Clock(), secret=secret)
    assert await auth.check_password(ALICE, password, IP) is not None
    [key] = auth.cache.keys()
    assert len(key) == 32
    held = repr(auth.cache._entries) + repr(auth.cache._by_name)
    for form in (password.encode(), password.encode().hex().encode(), hashlib.sha256(password.encode()).digest()):
        assert form not in key and form.decode("latin-1") not in held
    assert password not in held
    expected = hmac.new(secret, b"postroom-auth-cache\x00" + ALICE.encode() + b"\x00" + password.encode(),
                        hashlib.sha256).digest()
    assert key == expected  # keyed by the server secret: another secret, another key
    other = make_auth(store, Clock(), secret=b"z" * 32)
    assert await other.check_password(ALICE, password, IP) is not None
    assert other.cache.keys() != [key]


# --- auth.trusted_networks and the log lines (issue 13 item 8) ------------------------------------------


async def test_trusted_networks_are_never_throttled_or_locked(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    auth, _ = await setup(store, trusted_networks=("192.0.2.0/24", "2001:db8::/32"))
    caplog.set_level(logging.INFO, logger="postroom.auth")
    for ip in ("192.0.2.77", "2001:db8:5::1", "::ffff:192.0.2.78"):
        for _ in range(10):
            assert await auth.check_password(ALICE, "wrong", ip) is None
        assert auth.delay(ip) == 0 and not auth.locked_out(ip, ALICE)
        assert await auth.check_password(ALICE, PW, ip) is not None
    assert delays(auth) == []
    assert await store.load_auth_failures(auth._clock(), 100) == []  # nothing counted
    assert "result=failed ip=192.0.2.77 user=alice@example.org trusted=yes" in caplog.text
    # An address outside the networks is throttled and locked as before.
    for _ in range(5):
        assert await auth.check_password(ALICE, "wrong", "198.51.100.7") is None
    assert auth.locked_out("198.51.100.7", ALICE) and auth.delay("198.51.100.7") > 0


async def test_throttled_and_locked_are_logged_with_their_reason(store: Store,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    auth, clock = await setup(store)
    caplog.set_level(logging.INFO, logger="postroom.auth")
    for _ in range(3):  # max_failures_per_user 3: the third locks the pair
        assert await auth.check_password(ALICE, "wrong", IP) is None
    locked = [r for r in caplog.records if "result=locked" in r.getMessage()]
    assert len(locked) == 1 and locked[0].levelno == logging.WARNING
    assert locked[0].getMessage() == (
        f"login result=locked ip={IP} user={ALICE} until={int(clock.now + 60)} cache_dropped=0 "
        'reason="3 failed logins for this user from this address in 60 s (auth.max_failures_per_user = 3)"')
    caplog.clear()
    assert await auth.check_password(ALICE, PW, IP) is None  # the 4th failure from IP: over max_failures_per_ip
    assert "result=locked ip=192.0.2.1 user=alice@example.org" in caplog.text  # the refusal itself
    caplog.clear()
    assert await auth.check_password("bob@example.org", "x", IP) is None
    throttled = [r.getMessage() for r in caplog.records if "result=throttled" in r.getMessage()]
    assert throttled == ['login result=throttled ip=192.0.2.1 user=bob@example.org delay=1.000 reason="4 failed '
                         'logins from this address in 60 s (auth.max_failures_per_ip = 4)"']
    failed = [r.getMessage() for r in caplog.records if "result=failed" in r.getMessage()]
    assert failed == ["login result=failed ip=192.0.2.1 user=bob@example.org ip_failures=5 user_failures=1"]
