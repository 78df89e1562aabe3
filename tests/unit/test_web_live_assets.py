"""Sans-I/O parts of the webmail's live updates and static files: the Server-Sent Events records a change
becomes (HTML Living Standard §9.2: `event:` and `data:` lines, a blank line ends the event), and which
Accept-Encoding values accept gzip (RFC 9110 §12.5.3)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from postroom.store.api import Change, ChangeKind, Flag
from postroom.web.assets import Assets, _accepts_gzip
from postroom.web.live import event_text


def _parse(text: bytes) -> list[tuple[str, str]]:
    """A minimal SSE reader: (event type, data) per event, as EventSource dispatches them."""
    out = []
    for block in text.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields.get("event", "message"), fields["data"]))
    return out


def test_message_changes_become_message_events() -> None:
    ch = Change(ChangeKind.APPEND, user_id=1, mailbox_id=7, uid=42, modseq=9, flags=int(Flag.SEEN))
    text = event_text(ch)
    assert text.endswith(b"\n\n") and text.count(b"\n\n") == 1
    assert _parse(text) == [("message", '{"kind":"append","mailbox":7,"uid":42,"flags":1}')]
    assert _parse(event_text(Change(ChangeKind.EXPUNGE, 1, 7, uid=3))) == \
        [("message", '{"kind":"expunge","mailbox":7,"uid":3,"flags":0}')]
    assert _parse(event_text(Change(ChangeKind.FLAGS, 1, 7, uid=3, flags=int(Flag.FLAGGED))))[0][1] == \
        '{"kind":"flags","mailbox":7,"uid":3,"flags":4}'


def test_folder_changes_and_unshown_changes() -> None:
    assert _parse(event_text(Change(ChangeKind.MAILBOX_RENAMED, 1, 8, name="New", old_name="Old"))) == \
        [("folders", '{"kind":"mailbox_renamed","mailbox":8}')]  # no names: the page refetches its own
    for kind in (ChangeKind.MAILBOX_KEYWORDS, ChangeKind.MAILBOX_ACL, ChangeKind.METADATA):
        assert event_text(Change(kind, 1, 8)) == b""


@pytest.mark.parametrize(("header", "gzip_ok"), [
    ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("*", True),
    ("GZIP", True), ("x-gzip", True), ("gzip;q=0", False), ("identity", False), ("", False),
    ("deflate", False), ("gzip;q=bad", False), ("gzip;q=0.001", True),
])
def test_accept_encoding(header: str, gzip_ok: bool) -> None:
    assert _accepts_gzip(header) is gzip_ok


def test_assets_are_the_files_with_their_versions(tmp_path: Path) -> None:
    (tmp_path / "a.css").write_bytes(b"body{}" * 100)
    (tmp_path / ".hidden").write_bytes(b"x")
    assets = Assets(tmp_path)
    assert set(assets.files) == {"a.css"}
    a = assets.files["a.css"]
    assert gzip.decompress(a.gzipped) == a.data and a.media_type == "text/css; charset=utf-8"
    assert assets.url("a.css") == f"/mail/static/a.css?v={a.version}" and len(a.version) == 16
    (tmp_path / "a.css").write_bytes(b"body{color:red}")
    assert Assets(tmp_path).files["a.css"].version != a.version  # a new file is a new URL
