"""`Store.append_file`: a body already written to a file in `staging_dir()` (large IMAP APPEND literals)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.store.api import AppendRequest, Flag, Invalid, NotFound, QueueRecipient, Store
from postroom.store.blobs import blob_id_of
from postroom.store.sqlite import INLINE_MAX

from .conftest import BODY_BACKENDS, inbox, new_user, stored_bodies

pytestmark = BODY_BACKENDS

LARGE = INLINE_MAX + 12345  # over the default threshold: a file
SMALL = 3000  # under it: inline (or a file in the "sqlite-files" engine)


def body(size: int, salt: int = 0) -> bytes:
    head = b"From: a@example.org\r\nSubject: big %d\r\n\r\n" % salt
    line = bytes(range(32, 127)) + b"\r\n"
    out = head + line * ((size - len(head)) // len(line) + 1)
    return out[:size]


def stage(store: Store, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=store.staging_dir(), prefix="t.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def staged(store: Store) -> list[Path]:
    return sorted(store.staging_dir().iterdir())


@pytest.mark.parametrize("size", [LARGE, SMALL])
async def test_round_trip_byte_exact(store: Store, size: int) -> None:
    mbox = await inbox(store, await new_user(store))
    data = body(size)
    path = stage(store, data)
    res = await store.append_file(mbox.id, path, flags=int(Flag.SEEN), keywords=frozenset({"$Work"}),
                                  internal_date=1_700_000_000.0, meta=b"meta!")
    assert not path.exists() and staged(store) == []
    info = await store.get_message(mbox.id, res.uid)
    assert info is not None
    assert info.size == size and info.blob_id == blob_id_of(data)
    assert info.flags == Flag.SEEN and info.keywords == {"$Work"} and info.internal_date == 1_700_000_000.0
    assert await store.read_message(info.blob_id) == data
    assert await store.read_meta(info.blob_id) == b"meta!"
    assert res.uid == 1 and res.uidvalidity == mbox.uidvalidity
    bodies = stored_bodies(store)
    assert bodies is None or bodies == [info.blob_id]


@pytest.mark.parametrize("size", [LARGE, SMALL])
async def test_dedup_with_an_existing_body(store: Store, size: int) -> None:
    user = await new_user(store)
    mbox = await inbox(store, user)
    data = body(size, 7)
    first = await store.append(mbox.id, AppendRequest(raw=data))
    second = await store.append_file(mbox.id, stage(store, data))
    third = await store.append_file(mbox.id, stage(store, data))
    infos = await store.list_messages(mbox.id)
    assert [m.uid for m in infos] == [first.uid, second.uid, third.uid]
    assert {m.blob_id for m in infos} == {blob_id_of(data)}
    bodies = stored_bodies(store)
    assert bodies is None or bodies == [blob_id_of(data)]
    assert staged(store) == []
    # the body lives while any reference does
    await store.remove_messages(mbox.id, [first.uid, second.uid])
    assert await store.read_message(blob_id_of(data)) == data
    await store.remove_messages(mbox.id, [third.uid])
    bodies = stored_bodies(store)
    assert bodies is None or bodies == []


async def test_durable_across_reopen(store_factory: object, data_dir: Path) -> None:
    assert callable(store_factory)
    store: Store = store_factory()
    await store.open()
    try:
        mbox = await inbox(store, await new_user(store))
        data = body(LARGE, 3)
        res = await store.append_file(mbox.id, stage(store, data))
    finally:
        await store.close()
    again: Store = store_factory()
    await again.open()
    try:
        info = await again.get_message(mbox.id, res.uid)
        assert info is not None and await again.read_message(info.blob_id) == data
    finally:
        await again.close()


@pytest.mark.parametrize("size", [LARGE, SMALL])
async def test_failure_removes_the_staging_file(store: Store, size: int) -> None:
    mbox = await inbox(store, await new_user(store))
    path = stage(store, body(size, 1))
    with pytest.raises(NotFound):
        await store.append_file(mbox.id + 1000, path)
    assert not path.exists() and staged(store) == []
    path = stage(store, body(size, 2))
    with pytest.raises(Invalid):
        await store.append_file(mbox.id, path, keywords=frozenset({"bad keyword"}))
    assert not path.exists() and staged(store) == []
    bodies = stored_bodies(store)
    assert bodies is None or bodies == []
    assert await store.list_messages(mbox.id) == []


async def test_a_file_outside_staging_is_refused_and_left_alone(store: Store, tmp_path: Path) -> None:
    mbox = await inbox(store, await new_user(store))
    outside = tmp_path / "elsewhere.eml"
    outside.write_bytes(body(LARGE))
    with pytest.raises(Invalid):
        await store.append_file(mbox.id, outside)
    assert outside.exists()
    assert await store.list_messages(mbox.id) == []


async def test_a_raced_deletion_is_repaired_from_the_staging_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body's file vanishes between adopt() and the job (a concurrent removal of the same bytes committed):
    the job links the staging file again, so the committed reference never lacks its body."""
    blobs = getattr(store, "blobs", None)
    if blobs is None:
        pytest.skip("engine without blob files")
    mbox = await inbox(store, await new_user(store))
    data = body(LARGE, 5)
    real_adopt = blobs.adopt

    def adopt_then_lose(src: Path) -> tuple[str, int, int]:
        blob_id, size, crlf = real_adopt(src)
        blobs.delete(blob_id)
        return blob_id, size, crlf

    monkeypatch.setattr(blobs, "adopt", adopt_then_lose)
    res = await store.append_file(mbox.id, stage(store, data))
    info = await store.get_message(mbox.id, res.uid)
    assert info is not None and await store.read_message(info.blob_id) == data
    assert staged(store) == []


@pytest.mark.parametrize("size", [LARGE, SMALL])
@pytest.mark.parametrize("prefix", [b"", b"Return-Path: <a@example.org>\r\n"])
async def test_deliver_file_and_enqueue_file_store_prefix_and_body_and_leave_the_file(
        store: Store, size: int, prefix: bytes) -> None:
    """`deliver_file` / `enqueue_file` (large SMTP bodies, issue 11 item 2): prefix + file content, byte-exact,
    into several mailboxes in one write and into the queue; the staging file stays the caller's."""
    data = body(size, salt=7)
    path = stage(store, data)
    a, b = await new_user(store, "a@example.org"), await new_user(store, "b@example.org")
    boxes = [(await inbox(store, a)).id, (await inbox(store, b)).id]
    results = await store.deliver_file(boxes, path, prefix=prefix)
    assert len(results) == 2 and path.exists()
    for box, r in zip(boxes, results):
        info = await store.get_message(box, r.uid)
        assert info is not None and info.size == len(prefix) + size
        assert await store.read_message(info.blob_id) == prefix + data
    entry = await store.enqueue_file(path, "a@example.org", [QueueRecipient("x@far.test")], prefix=b"X: 1\r\n")
    assert entry.size == size + 6 and await store.read_message(entry.blob_id) == b"X: 1\r\n" + data
    assert path.exists()
    path.unlink()
    assert staged(store) == []  # no prefixed copy left behind
    with pytest.raises(Invalid):
        await store.deliver_file(boxes, Path(tempfile.gettempdir()) / "elsewhere")


async def test_open_sweeps_stale_staging_files(store_factory: Callable[[], Store]) -> None:
    """What a crash left in staging (and half-written ".tmp." body files) goes at the next open. While another
    process (here: another store object, with its own lock) has the store open, only files older than an hour
    go: a younger one may be its write in flight. Opened alone, the store removes every one at once (sqlite
    invariant 3; issue 11: four killed APPENDs left 120 MB for an hour)."""
    s = store_factory()
    await s.open()
    try:
        old, fresh = stage(s, b"old"), stage(s, b"fresh")
        blobs = getattr(s, "blobs", None)
        tmps: list[Path] = []
        if blobs is not None:  # the SQLite engine's file store: temporary files beside the final names
            d = blobs.root / "ab" / "cd"
            d.mkdir(parents=True, exist_ok=True)
            tmps = [d / ".tmp.abcd.1.old", d / ".tmp.abcd.1.new", d / ("ab" * 32)]
            for p in tmps:
                p.write_bytes(b"x")
        two_hours_ago = time.time() - 7200
        for p in (old, *tmps[:1], *tmps[2:]):
            os.utime(p, (two_hours_ago, two_hours_ago))
        other = store_factory()  # opened while `s` is open: not alone
        await other.open()
        try:
            assert staged(other) == [fresh]
            if tmps:
                assert [p.exists() for p in tmps] == [False, True, True]  # a blob's own file is never swept
            user = await new_user(other)
            box = await inbox(other, user)
            r = await other.append_file(box.id, fresh)  # the fresh one is still usable
            info = await other.get_message(box.id, r.uid)
            assert info is not None and await other.read_message(info.blob_id) == b"fresh"
            assert staged(other) == []
            young = stage(other, b"young, from a process that died")
        finally:
            await other.close()
    finally:
        await s.close()
    alone = store_factory()
    await alone.open()
    try:
        assert not young.exists() and staged(alone) == []  # no other holder: swept at once, whatever its age
        if tmps:
            assert [p.exists() for p in tmps] == [False, False, True]
    finally:
        await alone.close()


@pytest.mark.parametrize("size", [LARGE, SMALL])
async def test_deliver_file_with_keywords(store: Store, size: int) -> None:
    """`deliver_file(keywords=...)`: a quarantined large SMTP body lands with `$Junk` (delivery/local.py)."""
    path = stage(store, body(size, salt=9))
    user = await new_user(store, "j@example.org")
    box = (await inbox(store, user)).id
    [r] = await store.deliver_file([box], path, keywords=frozenset({"$Junk"}))
    info = await store.get_message(box, r.uid)
    assert info is not None and info.keywords == frozenset({"$Junk"})
    path.unlink()
