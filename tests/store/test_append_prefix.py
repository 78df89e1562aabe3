"""`AppendRequest.prefix` (issue 17 item 5): trace fields carried in front of the body instead of joined to it.
Whatever the engine and wherever the body lives (a `blob_data` row, a file, PostgreSQL chunks), the stored
message is exactly `prefix + raw`: the same blob id (SHA-256 of the joined bytes), size, bytes and `crlf_size`
as the joined request, and one blob shared with the same message stored joined."""

from __future__ import annotations

import pytest

from postroom.store.api import AppendRequest, Store
from postroom.store.blobs import blob_id_of, crlf_size, crlf_size_of
from postroom.store.postgresql.schema import CHUNK_SIZE
from postroom.store.sqlite import INLINE_MAX
from postroom.store.sqlite.common import JOIN_MAX

from .conftest import BODY_BACKENDS, inbox, new_user

PREFIX = b"Return-Path: <a@remote.test>\r\nReceived: from x by y; Tue, 1 Dec 2026 12:00:00 +0000\r\n"


def body(size: int, salt: int) -> bytes:
    head = b"Subject: prefix %d\r\n\r\n" % salt
    line = b"%05d abcdefghijklmnopqrstuvwxyz\n" % salt  # bare LFs: crlf_size differs from the size
    return (head + line * (size // len(line) + 1))[:size]


# Sizes around the places a body's bytes are split: SQLite's join limit (one INSERT of the joined bytes, or the
# pieces written into the row) and inline limit (row or file), PostgreSQL's chunk size (the chunk holding the seam
# between prefix and body is the one joined piece).
SIZES = [0, 300, JOIN_MAX - len(PREFIX), JOIN_MAX - len(PREFIX) + 1, INLINE_MAX - len(PREFIX), INLINE_MAX + 1,
         CHUNK_SIZE - len(PREFIX) + 1, 2 * CHUNK_SIZE + 17]


@BODY_BACKENDS
@pytest.mark.parametrize("size", SIZES)
async def test_prefixed_append_stores_the_joined_bytes(store: Store, size: int) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    raw = body(size, size)
    joined = PREFIX + raw
    r = await store.append(box.id, AppendRequest(raw, prefix=PREFIX, meta=None))
    info = await store.get_message(box.id, r.uid)
    assert info is not None
    assert info.blob_id == blob_id_of(joined)  # the id of the joined bytes
    assert info.size == len(joined)
    assert await store.read_message(info.blob_id) == joined
    assert (await store.crlf_sizes([info.blob_id]))[info.blob_id] == crlf_size(joined)


@BODY_BACKENDS
async def test_deliver_with_a_prefix_shares_the_joined_blob(store: Store) -> None:
    """A message stored joined and the same bytes delivered as prefix + body are one blob, two references."""
    a = await inbox(store, await new_user(store, "a@example.org"))
    b = await inbox(store, await new_user(store, "b@example.org"))
    raw = body(5000, 1)
    first = await store.append(a.id, AppendRequest(PREFIX + raw))
    delivered = await store.deliver([a.id, b.id], AppendRequest(raw, prefix=PREFIX))
    ids = {(await store.get_message(m, r.uid)).blob_id  # type: ignore[union-attr]
           for m, r in ((a.id, first), (a.id, delivered[0]), (b.id, delivered[1]))}
    assert ids == {blob_id_of(PREFIX + raw)}
    assert await store.read_message(ids.pop()) == PREFIX + raw


@BODY_BACKENDS
async def test_a_cr_ending_the_prefix_and_an_lf_starting_the_body_are_one_crlf(store: Store) -> None:
    """RFC 5322 §2.1 line ends across the seam: counted as in the joined bytes (`crlf_size`)."""
    box = await inbox(store, await new_user(store))
    prefix, raw = b"X-A: 1\r", b"\nSubject: s\n\nbody"
    r = await store.append(box.id, AppendRequest(raw, prefix=prefix))
    info = await store.get_message(box.id, r.uid)
    assert info is not None
    assert (await store.crlf_sizes([info.blob_id]))[info.blob_id] == crlf_size(prefix + raw)
    assert crlf_size_of(raw, prefix) == crlf_size(prefix + raw) == len(prefix + raw) + 2 + 2  # 2 bare LFs, end


@pytest.mark.parametrize("plen", [0, 1, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("rlen", [0, 1, 3, 4, 7, 12])
def test_postgresql_chunks_of_a_prefixed_body_are_those_of_the_joined_body(
        monkeypatch: pytest.MonkeyPatch, plen: int, rlen: int) -> None:
    """PostgreSQL schema invariant 2 (chunks of CHUNK_SIZE, numbered from 0; an empty body is one empty chunk),
    with a chunk size of 4 so every seam position is tried."""
    from postroom.store.postgresql import common

    monkeypatch.setattr(common, "CHUNK_SIZE", 4)
    prefix, raw = bytes(range(plen)), bytes(range(100, 100 + rlen))
    assert common.chunks_of(raw, prefix) == common.chunks_of(prefix + raw)
