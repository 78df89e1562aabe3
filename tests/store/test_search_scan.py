"""The scan form through the store interface (`scan_texts`; store/scanform.py, fts.py invariant 4): on the MIME
corpus (tests/data/mime) and on generated mail, every SEARCH string test answered from the scan forms is the
answer of the exact check on the metadata (RFC 9051 §6.4.4: case-insensitive substring of the decoded text),
with the same characters counted; the forms are written with the message and go with its last reference; a
body without one (not indexed yet, a store from before schema 16) is left to the metadata; the work bound stops
a scan early."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from postroom.mime.meta import MessageMeta, compute_meta
from postroom.store.api import AppendRequest, Invalid, Store, StoreMode
from postroom.store.scanform import ScanTest, needle_bytes, text_haystack
from postroom.store.sqlite import SQLiteStore

from .conftest import BODY_BACKENDS, downgrade, inbox, new_user

CORPUS = Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs"
WORDS = ["Straße", "STRASSE", "ﬁle", "İstanbul", "naïve", "会议", "会", "报告", "привет", "ЁЛКА", "Tiếng Việt",
         "quokka", "the", "a", "", "report.pdf", "content-description: quarterly", "Σίσυφος", "ΣΊΣΥΦΟΣ"]


def generated(i: int, rng: random.Random) -> bytes:
    """A message with repeated fields, words whose case folding changes their length, and (every third) a
    multipart with a described attachment."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 30))]
    head = (f"From: Ann {rng.choice(WORDS)} <ann{i % 5}@example.org>\r\nTo: bob@example.org\r\n"
            f"X-Tag: {rng.choice(WORDS)}\r\nX-Tag: {rng.choice(WORDS)}\r\nSubject: {' '.join(words[:3])}\r\n"
            f"Message-ID: <{i}@example.org>\r\nMIME-Version: 1.0\r\n")
    body = " ".join(words).encode()
    if i % 3:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + body + b"\r\n"
    return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + body + (
        f"\r\n--b\r\nContent-Type: application/pdf; name=report.pdf\r\nContent-Description: Quarterly "
        f"{rng.choice(WORDS)}\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n").encode()


def request(raw: bytes) -> AppendRequest:
    return AppendRequest(raw=raw, meta=compute_meta(raw).to_bytes())


def exact(meta: MessageMeta, test: tuple[str, str, str]) -> tuple[bool, int]:
    """The exact check as imap/search.py `_Ctx.evaluate_text` does it: (holds, characters compared)."""
    kind, needle, name = test
    st = meta.search
    folded = needle.casefold()
    if kind == "header":
        if not folded:
            return any(k == name for k, _ in st.headers), 0
        hay = st.header(name).casefold()
    else:
        hay = (text_haystack(meta) if kind == "text" else st.body).casefold()
    return folded in hay, len(hay)


def cases_for(metas: list[MessageMeta], rng: random.Random) -> list[tuple[str, str, str]]:
    """Substrings of the haystacks in random case and length, across field joins and line ends, and words."""
    out: list[tuple[str, str, str]] = []
    for meta in rng.sample(metas, min(40, len(metas))):
        st = meta.search
        for kind, name, hay in (("text", "", text_haystack(meta)), ("body", "", st.body),
                                ("header", "subject", st.header("subject")), ("header", "x-tag", st.header("x-tag")),
                                ("header", "from", st.header("from"))):
            if hay:
                a = rng.randrange(len(hay))
                needle = hay[a:a + rng.choice([1, 2, 3, 5, 8, 13])]
                needle = needle.upper() if rng.random() < 0.3 else needle.lower() if rng.random() < 0.3 else needle
                out.append((kind, needle, name))
    for w in WORDS:
        out += [("text", w, ""), ("body", w, ""), ("header", w, "subject"), ("header", w, "x-tag")]
    out += [("header", "", "x-tag"), ("header", "", "cc"), ("header", "zz", "cc"), ("text", "\udce9", "")]
    return out


@BODY_BACKENDS
async def test_scan_forms_answer_as_the_metadata(store: Store) -> None:
    rng = random.Random(15)
    raws = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))] + [generated(i, rng) for i in range(120)]
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [request(r) for r in raws])
    messages = await store.list_messages(box.id, 1, 2**32 - 1)
    metas = {m.blob_id: compute_meta(r) for m, r in zip(messages, raws)}
    cases = cases_for(list(metas.values()), rng)
    blob_ids = list(metas)
    for k in range(0, len(cases), 24):
        group = cases[k:k + 24]
        tests = [ScanTest(kind, needle_bytes(needle), name) for kind, needle, name in group]
        found = await store.scan_texts(blob_ids, tests, 1 << 40)
        assert set(found.hits) == set(blob_ids)  # every body has its form
        want_chars = 0
        for blob_id, meta in metas.items():
            answers = [exact(meta, t) for t in group]
            want_chars += sum(c for _, c in answers)
            want = sum(1 << i for i, (hit, _) in enumerate(answers) if hit)
            assert found.hits[blob_id] == want, [(t, bool(want >> i & 1)) for i, t in enumerate(group)
                                                 if (found.hits[blob_id] ^ want) >> i & 1]
        assert found.compared == want_chars
    # Not vacuous: the tests found mail and missed mail.
    every = [ScanTest(kind, needle_bytes(needle), name) for kind, needle, name in cases[:60]]
    bits = (await store.scan_texts(blob_ids, every, 1 << 40)).hits.values()
    assert any(bits) and not all(b == (1 << len(every)) - 1 for b in bits)


@BODY_BACKENDS
async def test_a_parts_description_is_text_not_body(store: Store) -> None:
    """RFC 9051 §6.4.4: TEXT looks in "the header (including MIME header fields) or body"; BODY in the body
    text, not in a part's MIME header (Dovecot 2.3 answers the same: bench-checked, see docs/rfc-status.md)."""
    box = await inbox(store, await new_user(store))
    raw = generated(0, random.Random(1)).replace(b"Content-Description: Quarterly",
                                                  b"Content-Description: Walrusfigures quarterly")
    await store.append_many(box.id, [request(raw)])
    [m] = await store.list_messages(box.id, 1, 2**32 - 1)
    tests = [ScanTest("text", needle_bytes("WALRUSFIGURES")), ScanTest("body", needle_bytes("walrusfigures")),
             ScanTest("header", needle_bytes("walrusfigures"), "content-description"),
             ScanTest("text", needle_bytes("content-description: walrus"))]
    assert (await store.scan_texts([m.blob_id], tests, 1 << 40)).hits == {m.blob_id: 0b1001}


@BODY_BACKENDS
async def test_forms_come_and_go_with_the_body_and_bodies_without_are_left_out(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    other = await store.create_mailbox(box.user_id, "Other")
    raws = [generated(i, random.Random(i)) for i in range(3)]
    await store.append_many(box.id, [request(raws[0]), request(raws[1]),
                                     AppendRequest(raw=raws[2])])  # no metadata: in the backlog
    infos = await store.list_messages(box.id, 1, 2**32 - 1)
    ids = [m.blob_id for m in infos]
    test = [ScanTest("text", needle_bytes("example.org"))]
    found = await store.scan_texts(ids, test, 1 << 40)
    assert found.hits == {ids[0]: 1, ids[1]: 1}  # the body without metadata is left to the caller
    await store.copy_messages(box.id, [1], other.id)
    await store.store_flags(box.id, [1], StoreMode.ADD, 8)  # \Deleted
    await store.expunge(box.id)
    assert (await store.scan_texts(ids, test, 1 << 40)).hits == {ids[0]: 1, ids[1]: 1}  # the copy keeps it
    await store.store_flags(other.id, [1], StoreMode.ADD, 8)
    await store.expunge(other.id)
    assert (await store.scan_texts(ids, test, 1 << 40)).hits == {ids[1]: 1}  # the last reference took it
    await store.write_metas({ids[2]: compute_meta(raws[2]).to_bytes()})  # indexed now, form and all
    assert (await store.scan_texts(ids, test, 1 << 40)).hits == {ids[1]: 1, ids[2]: 1}


@BODY_BACKENDS
async def test_the_work_bound_stops_the_scan(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [request(generated(i, random.Random(i))) for i in range(1, 9)])
    ids = [m.blob_id for m in await store.list_messages(box.id, 1, 2**32 - 1)]
    test = [ScanTest("body", needle_bytes("zzz-nowhere"))]
    whole = await store.scan_texts(ids, test, 1 << 40)
    assert len(whole.hits) == 8
    part = await store.scan_texts(ids, test, whole.compared // 3)
    assert part.compared > whole.compared // 3 and len(part.hits) < 8  # stopped after the bound was passed
    with pytest.raises(Invalid):
        await store.scan_texts(["x"] * 2001, test, 1)


async def test_a_schema_15_store_is_searched_from_metadata_until_indexed_again(tmp_path: Path) -> None:
    """Schema step 16 on a store as version 15 left it: no scan forms; the step marks the index as of no
    version, so opening puts every body back in the backlog (searched from metadata meanwhile); working the
    backlog off writes the forms."""
    db, blobs = tmp_path / "v15.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    box = await inbox(store, await new_user(store))
    await store.append_many(box.id, [request(generated(i, random.Random(i))) for i in range(5)])
    ids = [m.blob_id for m in await store.list_messages(box.id, 1, 2**32 - 1)]
    await store.close()
    downgrade(db, 15)
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        test = [ScanTest("text", needle_bytes("ann"))]
        assert (await store.scan_texts(ids, test, 1 << 40)).hits == {}  # every body: from its metadata
        step = await store.index_backlog(100)
        assert (step.looked, step.indexed, step.remaining) == (5, 5, 0)
        assert (await store.scan_texts(ids, test, 1 << 40)).hits == dict.fromkeys(ids, 1)
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("SELECT count(*) FROM fts_scan").fetchone()[0] == 5
        finally:
            conn.close()
    finally:
        await store.close()
