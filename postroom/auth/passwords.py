"""Password storage: argon2id hashes for password logins, SCRAM-SHA-256 verifiers for SCRAM.

Invariants:
1. A plain password is never stored or logged; only `hash_password` output (an argon2id PHC string) and
   `scram_verifier` output (salted keys from which the password cannot be read back) are.
2. `verify_password` takes the same time whether or not the hash matches (argon2's own constant-time compare),
   and never raises on a malformed stored hash: it answers False.
3. Hashing is slow on purpose (argon2 memory-hard); callers on the event loop run it in a thread
   (`verify_password_async`) so one login never stalls every session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults follow RFC 9106's second recommended option (64 MiB, t=3, p=4).
_hasher = PasswordHasher()

SCRAM_ITERATIONS = 4096  # RFC 7677 §4: at least 4096
SCRAM_SALT_BYTES = 16  # every verifier made now; SCRAM's answer for an unknown user has the same length


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    if not stored_hash:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        return False


async def verify_password_async(stored_hash: str, password: str) -> bool:
    return await asyncio.to_thread(verify_password, stored_hash, password)


def needs_rehash(stored_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """RFC 5802 §3 keys for SCRAM-SHA-256, as "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" (base64),
    the layout PostgreSQL uses. The password itself is not recoverable from it."""
    salt = salt if salt is not None else os.urandom(SCRAM_SALT_BYTES)
    # RFC 5802 §2.2: Hi() is PBKDF2 with HMAC; the password should be SASLprep'd (RFC 4013). For the
    # passwords Postroom accepts (printable Unicode), NFKC normalisation is the part of SASLprep that matters.
    normalized = unicodedata.normalize("NFKC", password).encode("utf-8")
    salted = hashlib.pbkdf2_hmac("sha256", normalized, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_scram_verifier(verifier: str) -> tuple[int, bytes, bytes, bytes]:
    """-> (iterations, salt, stored_key, server_key). Raises ValueError on a malformed verifier."""
    scheme, iter_salt, keys = verifier.split("$")
    if scheme != "SCRAM-SHA-256":
        raise ValueError("not a SCRAM-SHA-256 verifier")
    iter_s, salt_s = iter_salt.split(":")
    stored_s, server_s = keys.split(":")
    return int(iter_s), base64.b64decode(salt_s), base64.b64decode(stored_s), base64.b64decode(server_s)


def make_credentials(password: str) -> tuple[str, str]:
    """(argon2id hash, SCRAM-SHA-256 verifier) for a new password."""
    return hash_password(password), scram_verifier(password)
