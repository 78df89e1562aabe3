"""Durability and concurrency: reopen, group commit, two processes on one store, and a kill -9 in mid-write."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.store.api import Flag, Store, StoreError, StoreMode

from .conftest import BODY_BACKENDS, inbox, inline_bodies, msg, new_user

pytestmark = BODY_BACKENDS


async def test_uids_survive_reopen(store_factory: Callable[[], Store]) -> None:
    s = store_factory()
    await s.open()
    await s.open()  # idempotent
    u = await new_user(s)
    box = await inbox(s, u)
    rs = await s.append_many(box.id, [msg(1, flags=Flag.DELETED), msg(2, flags=Flag.DELETED)])
    await s.expunge(box.id)
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError):
        await s.get_user(u.address)

    s = store_factory()
    await s.open()
    try:
        again = await inbox(s, u)
        assert again.uidvalidity == box.uidvalidity and again.uidnext == rs[-1].uid + 1
        r = await s.append(box.id, msg(3))
        assert r.uid == rs[-1].uid + 1 and r.modseq > rs[-1].modseq
        recreated = await s.create_mailbox(u.id, "Fresh")
        await s.delete_mailbox(u.id, "Fresh")
        assert (await s.create_mailbox(u.id, "Fresh")).uidvalidity != recreated.uidvalidity
    finally:
        await s.close()


async def test_50_concurrent_appends(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    batches: list[int] = []
    if hasattr(store, "on_commit"):
        store.on_commit = lambda seconds, ops: batches.append(ops)
    results = await asyncio.gather(*(store.append(box.id, msg(i, size=4096)) for i in range(50)))
    uids = [r.uid for r in results]
    assert len(set(uids)) == 50 and sorted(uids) == list(range(1, 51))
    assert len({r.modseq for r in results}) == 50
    stored = await store.list_messages(box.id)
    assert len(stored) == 50
    by_uid = {r.uid: i for i, r in enumerate(results)}
    for m in stored:
        assert await store.read_message(m.blob_id) == msg(by_uid[m.uid], size=4096).raw
    if hasattr(store, "on_commit"):
        assert sum(batches) >= 50
        assert max(batches) > 1, f"no group commit happened: {batches}"


async def test_one_failing_job_does_not_fail_its_batch(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    ops = [store.append(box.id, msg(i)) for i in range(10)] + [store.append(10**9, msg(99))]
    ops += [store.store_flags(box.id, [1], StoreMode.ADD, Flag.SEEN), store.create_mailbox(u.id, "INBOX")]
    results = await asyncio.gather(*ops, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results[:10])
    assert isinstance(results[10], StoreError) and isinstance(results[12], StoreError)
    assert len(await store.list_messages(box.id)) == 10


async def test_two_stores_on_one_database(store_factory: Callable[[], Store]) -> None:
    """The admin CLI opens the database while the server runs: both write, neither loses anything."""
    a, b = store_factory(), store_factory()
    await a.open()
    await b.open()
    try:
        u = await new_user(a)
        box = await inbox(b, u)
        results = await asyncio.gather(
            *(s.append(box.id, msg(i)) for i in range(20) for s in (a, b))
        )
        assert len({r.uid for r in results}) == 40
        assert len(await a.list_messages(box.id)) == 40
        await b.add_domain("cli.example")
        assert await a.get_domain("cli.example") is not None
    finally:
        await a.close()
        await b.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from tests.store.conftest import make_store, msg

    async def main() -> None:
        store = make_store(sys.argv[1], Path(sys.argv[2]))
        await store.open()
        box = int(sys.stdin.readline())
        async def writer(k: int) -> None:
            for i in range(k, 100000, 4):
                r = await store.append(box, msg(i, size=3000))
                print(i, r.uid, flush=True)
        await asyncio.gather(*(writer(k) for k in range(4)))

    asyncio.run(main())
    """
)


async def test_kill_9_loses_no_acknowledged_message(backend: str, data_dir: Path,
                                                    store_factory: Callable[[], Store]) -> None:
    s = store_factory()
    await s.open()
    u = await new_user(s)
    box = await inbox(s, u)
    await s.close()

    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, backend, str(data_dir), str(root),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=root,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(f"{box.id}\n".encode())
    proc.stdin.close()
    acked: dict[int, int] = {}  # uid -> message number, for every append the child saw return

    async def read_some() -> None:
        assert proc.stdout is not None
        while len(acked) < 40:
            line = await proc.stdout.readline()
            if not line:
                break
            i, uid = map(int, line.split())
            acked[uid] = i

    await asyncio.wait_for(read_some(), 20)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: more appends are in flight right now
    await proc.wait()
    err = (await proc.stderr.read()).decode()
    assert len(acked) >= 40, err

    s = store_factory()
    await s.open()
    try:
        if backend == "sqlite":  # the common case: these bodies live in the database, not in files
            assert len(inline_bodies(s) or []) >= len(acked)
        stored = {m.uid: m for m in await s.list_messages(box.id)}
        for uid, i in acked.items():
            assert uid in stored, f"acknowledged UID {uid} lost"
            assert await s.read_message(stored[uid].blob_id) == msg(i, size=3000).raw
        # and the store goes on: the next UID is past everything handed out
        r = await s.append(box.id, msg(-1))
        assert r.uid > max(stored)
    finally:
        await s.close()
