"""The server secret: 32 random bytes made on first start, kept in the data folder, never shown.

Theory of operation
-------------------
Some answers must look the same whether or not an account exists, yet stay stable so that asking twice tells
nothing either: SCRAM's server-first-message for an unknown user carries a salt (RFC 5802 §9). Such values are
keyed from this secret (HMAC-SHA-256), so nobody without the data folder can compute them from the name.

Several nodes on one PostgreSQL database (issue 16 item 3) must key these the same way, or a SCRAM decoy would
change with the node a client reaches: there the secret lives in the store (`for_store`: `Store.shared_value`,
the first node's wins, atomically), made from that node's file if it had one (a server that was alone before
keeps its secret), else new. No file is written then. On SQLite (one machine) the file stays the secret.

Invariants
1. The file `data_dir/server-secret` holds exactly `SECRET_BYTES` bytes, mode 0600. It is made once, by
   whichever process gets there first: written and fsync'd under a temporary name, then published with
   `link()` (which fails if the name exists), so a reader never sees a partial secret and two processes that
   start at once end up with the same one.
2. The secret is never logged or put in an exception message.
3. Every node on one shared store uses the store's secret, the same bytes, from its first start on.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from postroom.fsutil import fsync_dir, write_all

if TYPE_CHECKING:
    from postroom.store.api import Store

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


STORE_NAME = "server-secret"  # its name among `Store.shared_value`s


async def for_store(store: Store, data_dir: Path) -> bytes:
    """The server secret the server uses with `store`: the store's when it is shared by nodes (invariant 3; made
    from this data folder's file if there is one, else random), else the data folder's file (`load_or_create`).
    Raises as `load_or_create`, and StoreError."""
    if not getattr(store, "shared_by_nodes", False):
        return await asyncio.to_thread(load_or_create, data_dir)
    try:
        candidate = await asyncio.to_thread(_read, Path(data_dir) / FILE_NAME)
    except FileNotFoundError:
        candidate = secrets.token_bytes(SECRET_BYTES)
    value = await store.shared_value(STORE_NAME, candidate)
    if len(value) != SECRET_BYTES:
        raise SecretError(f"the store's {STORE_NAME} holds {len(value)} bytes, not {SECRET_BYTES}")
    return value


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise SecretError(f"{path}: expected {SECRET_BYTES} bytes, found {len(data)}; remove it to make a new one "
                          "(SCRAM answers for unknown users will change once)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # invariant 1: someone loosened it; the secret must stay the owner's
    return data
