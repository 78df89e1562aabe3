"""A second process writing a Postroom store, for the cross-process change feed tests (store/sqlite/feed.py).

    python tests/store/feed_writer.py DATA_DIR ADDRESS [--keep ROWS] OP...

Opens the store of the conformance suite's DATA_DIR as any admin command does (its own process, its own hub:
the PostgreSQL engine when DATA_DIR names a database in `postgresql.url`, else SQLite), runs each OP as one
write for the user ADDRESS, and prints one JSON line per change record each write published on this process's
hub (what the other processes' subscribers must receive), flushed at once, then "done". OPs:

    append:N              N messages into INBOX, one write each
    flags:UID:+FLAG       STORE +FLAGS (or -FLAG, =FLAG); FLAG is \\Seen, \\Deleted... or a keyword
    expunge               EXPUNGE INBOX
    create:NAME  rename:OLD:NEW  delete:NAME  subscribe:NAME
    metadata:ENTRY=VALUE  SETMETADATA of INBOX's ENTRY (an empty VALUE removes it); servermetadata:... the server's
    forever               append one message after another until killed (kill -9 tests)

--keep ROWS: keep at most ROWS rows in the change table (the SQLite store's `keep_changes`), so this writer
prunes what a stalled process has not read yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from postroom.store.api import FLAG_BY_NAME, AppendRequest, StoreMode, Subscription  # noqa: E402
from postroom.store.sqlite import SQLiteStore  # noqa: E402
from tests.store.conftest import make_store  # noqa: E402

MODES = {"+": StoreMode.ADD, "-": StoreMode.REMOVE, "=": StoreMode.REPLACE}


def message(n: int) -> bytes:
    return (f"From: writer@example.org\r\nTo: someone@example.org\r\nSubject: from another process {n}\r\n"
            f"Message-ID: <w{n}@example.org>\r\n\r\nbody {n}\r\n").encode()


def emit(sub: Subscription) -> None:
    while (c := sub.get_nowait()) is not None:
        print(json.dumps({"kind": c.kind.value, "mailbox_id": c.mailbox_id, "uid": c.uid, "modseq": c.modseq,
                          "flags": c.flags, "keywords": sorted(c.keywords), "name": c.name,
                          "old_name": c.old_name}), flush=True)


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    if args.keep is not None:
        store = SQLiteStore(data_dir / "postroom.db", data_dir / "blobs", keep_changes=args.keep)
    else:
        store = make_store("postgresql" if (data_dir / "postgresql.url").exists() else "sqlite", data_dir)
    await store.open()
    try:
        user = await store.get_user(args.address)
        assert user is not None, args.address
        inbox = await store.get_mailbox(user.id, "INBOX")
        assert inbox is not None
        own = store.hub.subscribe(user.id)
        n = 0
        for op in args.ops:
            verb, _, rest = op.partition(":")
            if verb == "append" or verb == "forever":
                count = int(rest) if verb == "append" else sys.maxsize
                for _ in range(count):
                    n += 1
                    await store.append(inbox.id, AppendRequest(message(n)))
                    emit(own)
                continue
            if verb == "flags":
                uid, flag = rest.split(":", 1)
                name = flag[1:]
                bit = FLAG_BY_NAME.get(name.lower())
                kws = frozenset() if bit is not None else frozenset([name])
                await store.store_flags(inbox.id, [int(uid)], MODES[flag[0]], int(bit or 0), kws)
            elif verb == "expunge":
                await store.expunge(inbox.id)
            elif verb == "create":
                await store.create_mailbox(user.id, rest)
            elif verb == "rename":
                old, new = rest.split(":", 1)
                await store.rename_mailbox(user.id, old, new)
            elif verb == "delete":
                await store.delete_mailbox(user.id, rest)
            elif verb == "subscribe":
                await store.set_subscribed(user.id, rest, True)
            elif verb in ("metadata", "servermetadata"):
                entry, _, value = rest.partition("=")
                await store.set_metadata(user.id, inbox.id if verb == "metadata" else 0,
                                         [(entry, value.encode() or None)])
            else:
                raise SystemExit(f"unknown op {op!r}")
            emit(own)
        print("done", flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("address")
    ap.add_argument("ops", nargs="+")
    ap.add_argument("--keep", type=int, default=None)
    asyncio.run(main(ap.parse_args()))
