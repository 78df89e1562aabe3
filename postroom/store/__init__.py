"""Storage: the interface (api.py), the change hub, message files, and the engines behind `open_store`."""

from __future__ import annotations

from pathlib import Path

from postroom.store.api import (
    AlreadyExists,
    AppendRequest,
    AppendResult,
    Change,
    ChangeKind,
    CopyResult,
    Flag,
    Invalid,
    Mailbox,
    MessageInfo,
    NotFound,
    QueueEntry,
    QueueRecipient,
    RcptState,
    Store,
    StoreError,
    StoreMode,
    WriteResult,
)
from postroom.store.hub import Hub, SubscriptionOverflow


def open_store(url: str, data_dir: Path) -> Store:
    """Build (not open: `await store.open()`) the engine named by `url`.

    sqlite:///path/to/db -> SQLiteStore with message files under data_dir/"blobs".
    postgresql://user@host:port/db -> PostgreSQLStore (store/postgresql/): everything in that database, bodies
    included; data_dir/"blobs"/"staging" is only this machine's folder for bodies on their way in. The database
    must exist; its tables are made by the first `open()`.
    """
    if url.startswith("sqlite:///"):
        from postroom.config import sqlite_path
        from postroom.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), Path(data_dir) / "blobs")
    if url.startswith("postgresql://"):
        from postroom.store.postgresql import PostgreSQLStore

        return PostgreSQLStore(url, Path(data_dir) / "blobs")
    raise StoreError(f"unknown store URL (want sqlite:///... or postgresql://...): {url!r}")


__all__ = [
    "AlreadyExists",
    "AppendRequest",
    "AppendResult",
    "Change",
    "ChangeKind",
    "CopyResult",
    "Flag",
    "Hub",
    "Invalid",
    "Mailbox",
    "MessageInfo",
    "NotFound",
    "QueueEntry",
    "QueueRecipient",
    "RcptState",
    "Store",
    "StoreError",
    "StoreMode",
    "SubscriptionOverflow",
    "WriteResult",
    "open_store",
]
