"""`AppendRequest.parsed` (issue 17 row 1): a caller that computed the metadata itself hands it over decoded, and the
engine's writer derives the new body's index rows, sort and thread keys and IMAP structure from it instead of
decoding `meta` again. What is stored and answered is the same as for the bytes alone: `meta` byte for byte, the
structure items of that metadata (schema invariant 24), the full-text answers (fts.py invariant 2), and the
rows go with the last reference, so a body stored again is indexed again."""

from __future__ import annotations

from typing import Any

import pytest

from postroom.mime.meta import MessageMeta, compute_meta
from postroom.store.api import AppendRequest, ImapStructure, Store
from postroom.store.blobs import blob_id_of
from postroom.store.textindex import TextTerm

from .conftest import BODY_BACKENDS, inbox, new_user

PREFIX = b"Return-Path: <ann@example.org>\r\n"
RAW = (b"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: Quarterly budget\r\n"
       b"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <parsed-1@example.org>\r\n\r\n"
       b"Bring the spreadsheet to the meeting.\r\n")


def uids(candidates: Any) -> list[int]:
    assert candidates is not None
    return [m.uid for m in candidates.messages]


@BODY_BACKENDS
async def test_a_decoded_metadata_is_not_decoded_again_and_answers_the_same(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    box = await inbox(store, await new_user(store))
    joined = PREFIX + RAW
    meta = compute_meta(joined)
    data = meta.to_bytes()
    assert MessageMeta.from_bytes(data) == meta  # mime/meta.py invariant 2: what the field's contract rests on
    decoded: list[bytes] = []
    original = MessageMeta.from_bytes.__func__  # type: ignore[attr-defined]

    def counting(cls: type[MessageMeta], raw: bytes) -> MessageMeta:
        decoded.append(raw)
        return original(cls, raw)  # type: ignore[no-any-return]

    monkeypatch.setattr(MessageMeta, "from_bytes", classmethod(counting))
    r = await store.deliver([box.id], AppendRequest(RAW, prefix=PREFIX, meta=data, parsed=meta))
    assert decoded == []  # the writer used the decoded form
    monkeypatch.undo()

    blob = blob_id_of(joined)
    assert await store.read_meta(blob) == data  # stored byte for byte
    assert await store.read_structures([blob]) == {blob: ImapStructure(meta.envelope, meta.bodystructure,
                                                                       meta.body)}
    top = r[0].uid
    assert uids(await store.search_text(box.id, 1, top, TextTerm("subject", "BUDGET"))) == [top]
    assert uids(await store.search_text(box.id, 1, top, TextTerm("body", "spreadsheet"))) == [top]

    # The rows go with the last reference (derived again from the stored bytes: the same values), and the same
    # body delivered again, this time without the decoded form, is indexed again.
    await store.remove_messages(box.id, [top])
    again = await store.deliver([box.id], AppendRequest(RAW, prefix=PREFIX, meta=data))
    uid = again[0].uid
    assert uids(await store.search_text(box.id, 1, uid, TextTerm("subject", "BUDGET"))) == [uid]
    assert uids(await store.search_text(box.id, 1, uid, TextTerm("body", "meeting"))) == [uid]
    assert uids(await store.search_text(box.id, 1, uid, TextTerm("subject", "absent"))) == []
    assert await store.read_structures([blob]) == {blob: ImapStructure(meta.envelope, meta.bodystructure,
                                                                       meta.body)}


@BODY_BACKENDS
async def test_a_body_already_stored_keeps_its_own_metadata(store: Store) -> None:
    """The decoded form rides with the request, but a body that exists only gains a reference: its stored
    metadata (the first delivery's) stays, and nothing is derived from the new request's."""
    box = await inbox(store, await new_user(store))
    first = compute_meta(RAW)
    await store.deliver([box.id], AppendRequest(RAW, meta=first.to_bytes(), parsed=first))
    other = compute_meta(RAW.replace(b"Quarterly", b"Yearly"))  # other metadata, with its decoded form
    r = await store.deliver([box.id], AppendRequest(RAW, meta=other.to_bytes(), parsed=other))
    blob = blob_id_of(RAW)
    assert await store.read_meta(blob) == first.to_bytes()
    assert uids(await store.search_text(box.id, 1, r[0].uid, TextTerm("subject", "quarterly"))) == [1, 2]
    assert uids(await store.search_text(box.id, 1, r[0].uid, TextTerm("subject", "yearly"))) == []
