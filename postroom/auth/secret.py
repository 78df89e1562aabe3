"""The server secret: 32 random bytes made on first start, kept in the data folder, never shown.

Theory of operation
-------------------
Some answers must look the same whether or not an account exists, yet stay stable so that asking twice tells
nothing either: SCRAM's server-first-message for an unknown user carries a salt (RFC 5802 §9). Such values are
keyed from this secret (HMAC-SHA-256), so nobody without the data folder can compute them from the name.

Invariants
1. The file `data_dir/server-secret` holds exactly `SECRET_BYTES` bytes, mode 0600. It is made once, by
   whichever process gets there first: written and fsync'd under a temporary name, then published with
   `link()` (which fails if the name exists), so a reader never sees a partial secret and two processes that
   start at once end up with the same one.
2. The secret is never logged or put in an exception message.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from postroom.fsutil import fsync_dir, write_all

SECRET_BYTES = 32
FILE_NAME = "server-secret"


class SecretError(Exception):
    """The secret file exists but is unusable (wrong size); the message names the file, never its content."""


def load_or_create(data_dir: Path) -> bytes:
    """The server secret of `data_dir` (created on first use, invariant 1). Raises SecretError for a file of the
    wrong size and OSError when the folder cannot be read or written."""
    path = Path(data_dir) / FILE_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, secrets.token_bytes(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process published its secret first: use that one
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return _read(path)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise SecretError(f"{path}: expected {SECRET_BYTES} bytes, found {len(data)}; remove it to make a new one "
                          "(SCRAM answers for unknown users will change once)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # invariant 1: someone loosened it; the secret must stay the owner's
    return data
