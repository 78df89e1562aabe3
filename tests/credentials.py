"""Password credentials for test users, cheap to make and to check.

A test user's hash is a real argon2id PHC string, which the server verifies as it verifies any other: argon2
reads the cost from the hash itself (RFC 9106 §4; the PHC string's m, t and p). It is made at the lowest cost
(t=1, 1 MiB, p=1) with a fresh salt each time. At the server's own cost (64 MiB, t=3, p=4:
postroom/auth/passwords.py) each hash took 0.35 s of CPU to make and as much to check, on a 2-core machine,
and the suite adds about a thousand users and logs them in more often than that. The server's default cost is
tested where users are made the server's way: tests/unit/test_passwords.py and the CLI tests (`postroom user
add`), and an unknown user's login still checks the server's own dummy hash.
"""

from __future__ import annotations

from argon2 import PasswordHasher

from postroom.auth.passwords import scram_verifier

TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def cheap_credentials(password: str) -> tuple[str, str]:
    """(argon2id hash at the test cost, SCRAM-SHA-256 verifier): shaped as `passwords.make_credentials`."""
    return TEST_HASHER.hash(password), scram_verifier(password)
