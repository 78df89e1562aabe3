"""Remembered password checks, like Dovecot's `auth_cache`: a phone that reconnects every few minutes pays one
argon2 check per `auth.cache_ttl`, not one per connection.

Theory of operation
-------------------
An argon2id check costs 64 MiB and tens of milliseconds of CPU on purpose (`passwords.py`), and at most one runs
per CPU (`authenticator.py` invariant 7), so clients that log in again and again (phones polling, webmail, a
fetchmail cron job) queue behind each other. After a check succeeds, `Authenticator.check_password` calls
`remember(name, password, stored_hash)`; the next login with the same name and password asks `lookup` first:

    key     HMAC-SHA-256(server secret, "postroom-auth-cache" NUL name NUL password), 32 bytes. The password is
            never kept, nor anything from which it could be tried offline without the server secret (the
            secret is in the data folder, beside the argon2 hashes themselves).
    value   the canonical name, a SHA-256 digest of the stored argon2 hash the password was checked against,
            and the expiry (seconds since the epoch, `ttl` after the check).

The caller reads the user's row from the store for every login anyway (to get the `User`); `lookup` answers
yes only when that row's `password_hash` is still the one the entry was made against. A password change by any
process (the admin CLI `postroom user passwd` is a process of its own writing the same database; argon2 salts
every hash, so even the same password gives a new one) and a removed user (no row: the caller never asks) make
the entry useless at once, with no message between processes. A lockout of any (user, address) pair calls
`forget(name)`, which drops the user's entries, so every address pays argon2 again.

Invariants
1. No password, and no unkeyed function of one, is held here: keys are HMAC digests under the server secret.
2. Only successes are remembered (the caller calls `remember` after argon2 said yes), and an entry answers only
   for the exact (name, password) it was made for: a wrong password is a different key.
3. An entry answers only while the user's stored hash is the one it was checked against (see above) and until
   its expiry; an expired or outdated entry is dropped when met.
4. At most `size` entries: the least recently used goes first. `ttl` 0 (or `size` 0) remembers nothing.
5. `forget(name)` drops every entry of that name (an index name -> keys is kept beside the entries).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_CONTEXT = b"postroom-auth-cache\x00"


@dataclass(frozen=True)
class _Entry:
    name: str
    hash_digest: bytes  # SHA-256 of the stored argon2 PHC string the password was checked against
    expires: float


def _digest(stored_hash: str) -> bytes:
    return hashlib.sha256(stored_hash.encode("utf-8", "surrogatepass")).digest()


class AuthCache:
    """Successful password checks for `ttl` seconds, at most `size` of them (module doc). `secret` keys the
    entries (the server secret, `auth.secret`); `clock` gives seconds since the epoch. Names are the canonical
    account names (`authenticator.canonical_name`); passwords any str (encoded UTF-8, lone surrogates kept)."""

    def __init__(self, secret: bytes, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._secret = secret
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_name: dict[str, set[bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[bytes]:
        """The keys held (32-byte HMAC digests), least recently used first: for tests and inspection."""
        return list(self._entries)

    def key(self, name: str, password: str) -> bytes:
        """The entry key of (`name`, `password`): HMAC-SHA-256 under the secret (invariant 1)."""
        msg = _CONTEXT + name.encode("utf-8", "surrogatepass") + b"\x00" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def lookup(self, name: str, password: str, stored_hash: str) -> bool:
        """True when a check of this (name, password) against this `stored_hash` succeeded less than `ttl` seconds
        ago (invariants 2, 3). A hit becomes the most recently used entry."""
        if not self.enabled:
            return False
        k = self.key(name, password)
        entry = self._entries.get(k)
        if entry is None:
            return False
        if entry.expires <= self._clock() or not hmac.compare_digest(entry.hash_digest, _digest(stored_hash)):
            self._drop(k)
            return False
        self._entries.move_to_end(k)
        return True

    def remember(self, name: str, password: str, stored_hash: str) -> None:
        """Note that `password` was right for `name` against `stored_hash` just now (call only after a success)."""
        if not self.enabled:
            return
        k = self.key(name, password)
        if k in self._entries:
            self._drop(k)
        self._entries[k] = _Entry(name, _digest(stored_hash), self._clock() + self.ttl)
        self._by_name.setdefault(name, set()).add(k)
        while len(self._entries) > self.size:  # invariant 4
            self._drop(next(iter(self._entries)))

    def forget(self, name: str) -> int:
        """Drop every entry of `name` (a lockout, a removed user); returns how many went."""
        gone = self._by_name.pop(name, set())
        for k in gone:
            self._entries.pop(k, None)
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()
        self._by_name.clear()

    def _drop(self, k: bytes) -> None:
        entry = self._entries.pop(k, None)
        if entry is None:
            return
        keys = self._by_name.get(entry.name)
        if keys is not None:
            keys.discard(k)
            if not keys:
                del self._by_name[entry.name]
