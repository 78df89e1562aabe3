"""The moderation queue in the store (delivery/lists.py `HeldPosts`, invariants 2 and 3; issue 16 item 3): a
held post is handled by one request at a time, whichever process it runs in; after it is dropped nobody can
take it again; posts an older Postroom held as files move into the store once."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from postroom.delivery.lists import HeldPosts, import_held_files
from postroom.store import open_store
from postroom.store.api import Store

RAW = b"Subject: hi\r\n\r\nbody\r\n"


def _run(data: Path, body: object) -> object:
    async def main() -> object:
        store = open_store(f"sqlite:///{data / 'postroom.db'}", data)
        await store.open()
        try:
            return await body(store)  # type: ignore[operator]
        finally:
            await store.close()

    return asyncio.run(main())


def test_one_claim_at_a_time_then_none_after_the_drop(tmp_path: Path) -> None:
    async def first(store: Store) -> tuple[str, str]:
        held = HeldPosts(store)
        token = await held.hold("team@example.org", "x@remote.test", RAW)
        claimed = await held.claim(token)
        assert claimed is not None and claimed[0].raw == RAW
        assert await held.claim(token) is None  # a second request (a double click) finds it taken
        return token, claimed[1]

    token, claim = _run(tmp_path, first)  # type: ignore[misc]
    # ... and so does another process (a second worker) on the same store.
    probe = ("import asyncio, sys; from pathlib import Path; from postroom.store import open_store; "
             "from postroom.delivery.lists import HeldPosts\n"
             "async def main():\n"
             "    s = open_store('sqlite:///' + sys.argv[1] + '/postroom.db', Path(sys.argv[1])); await s.open()\n"
             "    try: return await HeldPosts(s).claim(sys.argv[2])\n"
             "    finally: await s.close()\n"
             "sys.exit(0 if asyncio.run(main()) is None else 1)")
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path), token]).returncode == 0

    async def second(store: Store) -> None:
        held = HeldPosts(store)
        assert await held.drop(token, claim)
        assert await held.claim(token) is None  # handled: gone
        assert await held.get(token) is None

    _run(tmp_path, second)


def test_a_released_claim_can_be_taken_again(tmp_path: Path) -> None:
    """A handler that did not drop the post (it failed) gives it back: at least once, never twice at once."""
    async def body(store: Store) -> None:
        held = HeldPosts(store)
        token = await held.hold("team@example.org", "x@remote.test", RAW)
        claimed = await held.claim(token)
        assert claimed is not None
        await held.release(token, claimed[1])
        assert await held.claim(token) is not None
        assert await held.claim("../../postroom.db") is None and await held.claim("0" * 32) is None
        assert await held.get("../../postroom.db") is None  # invariant 3

    _run(tmp_path, body)


def test_held_files_move_into_the_store_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "held"
    folder.mkdir()
    token = "a" * 32
    (folder / f"{token}.eml").write_bytes(RAW)
    (folder / f"{token}.json").write_text(json.dumps({"list": "team@example.org", "mail_from": "x@remote.test"}))

    async def body(store: Store) -> None:
        with caplog.at_level(logging.INFO, logger="postroom.lists"):
            assert await import_held_files(store, folder) == 1
            assert await import_held_files(store, folder) == 0  # once
        assert [r.getMessage() for r in caplog.records if "moved into the store" in r.getMessage()]
        post = await HeldPosts(store).get(token)
        assert post is not None and (post.list_address, post.mail_from, post.raw) == \
            ("team@example.org", "x@remote.test", RAW)

    _run(tmp_path, body)
    assert not folder.exists()


def test_a_moderation_notice_subject_is_not_decoded_twice() -> None:
    """The held post's Subject goes into the notice's subject as text: an RFC 2047 word in it whose text holds CR LF
    must not become new fields and a body of the mail the list owner gets (RFC 2047 §2: a decoded word is text,
    not syntax)."""
    import base64
    import email
    import email.policy

    from postroom.delivery.lists import moderation_notice
    from postroom.store.api import ListPolicy, MailingList

    text = b"Numbers\r\nX-Injected: yes\r\n\r\nApprove at http://evil/"
    inner = "=?utf-8?b?" + base64.b64encode(text).decode() + "?="
    post = f"From: m@evil.example\r\nSubject: {inner}\r\n\r\nhello\r\n".encode()
    ml = MailingList("team@example.org", "alice@example.org", ListPolicy.MODERATED, "team-bounces@example.org")
    raw = moderation_notice(ml, "ab" * 16, "m@evil.example", post, "mx.example.org")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["X-Injected"] is None and str(msg["Subject"]).startswith("Approval needed: ")
    assert msg.is_multipart()
