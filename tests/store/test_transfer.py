"""Import and export (postroom/transfer.py) through a real store: mbox and Maildir in, out, and in again.

Runs on every engine of the conformance suite (the `store` fixture of conftest.py)."""

from __future__ import annotations

import io
import mailbox as pymailbox
from pathlib import Path

import pytest

from postroom.mailformats import (
    FormatError,
    MaildirWriter,
    MailRecord,
    maildir_folder_path,
    read_maildir,
    read_mbox,
)
from postroom.mime.meta import MessageMeta
from postroom.progress import Progress
from postroom.store.api import AppendRequest, Flag, NotFound, Store, User
from postroom.transfer import Skipped, detect_format, export_messages, import_messages

from .conftest import new_user

T0 = 1_700_000_000.0  # Tue Nov 14 22:13:20 2023 UTC

MBOX = b"""From alice@example.org Tue Nov 14 22:13:20 2023
Return-Path: <alice@example.org>
From: Alice <alice@example.org>
Subject: first
Status: RO
X-Status: AF
X-Keywords: $Label1 work

Hello.
>From the body, escaped.
>>From a line that was ">From" before.

From bob@example.net Wed Nov 15 22:13:20 2023
From: Bob <bob@example.net>
Subject: second
Status: O

Body two.

From carol@example.com Thu Nov 16 22:13:20 2023
From: Carol <carol@example.com>
Subject: third
Status: R
X-Status: TD

Body three.

"""

Snapshot = dict[str, list[tuple[bytes, int, frozenset[str], float]]]


async def snapshot(store: Store, user: User, skip_empty: bool = True) -> Snapshot:
    """Every mailbox's messages as (bytes, flags, keywords, internal date), in UID order."""
    out: Snapshot = {}
    for box in await store.list_mailboxes(user.id):
        rows = []
        for info in await store.list_messages(box.id):
            raw = await store.read_message(info.blob_id)
            rows.append((raw, info.flags, info.keywords, info.internal_date))
        if rows or not skip_empty:
            out[box.name] = rows
    return out


class Recorder:
    """A progress factory that remembers what its displays were told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, str]] = []
        self.advanced: list[tuple[int, int]] = []
        self.closed = 0

    def __call__(self, total: int | None, label: str) -> Bar:
        self.calls.append((total, label))
        return Bar(self)


class Bar:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        self.recorder.advanced.append((n, nbytes))

    def close(self) -> None:
        self.recorder.closed += 1


async def test_import_mbox_flags_keywords_dates_and_bytes(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    progress = Recorder()
    report = await import_messages(store, u.address, src, "auto", progress=progress)
    assert report.count == 3 and report.skipped == [] and report.mailboxes == {"INBOX": 3}
    snap = await snapshot(store, u)
    first, second, third = snap["INBOX"]
    assert first[0] == (
        b"Return-Path: <alice@example.org>\r\nFrom: Alice <alice@example.org>\r\nSubject: first\r\n\r\n"
        b'Hello.\r\nFrom the body, escaped.\r\n>From a line that was ">From" before.\r\n'
    )
    assert first[1:] == (Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED, frozenset({"$Label1", "work"}), T0)
    assert second[1:] == (0, frozenset(), T0 + 86400)
    assert third[1:] == (Flag.SEEN | Flag.DRAFT | Flag.DELETED, frozenset(), T0 + 2 * 86400)
    assert report.bytes == sum(len(m[0]) for m in snap["INBOX"])
    assert progress.calls == [(None, "INBOX")]  # an mbox is not counted before it is read
    assert sum(n for n, _ in progress.advanced) == 3 and progress.closed == 1


async def test_mbox_import_export_import_round_trip(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    await import_messages(store, u.address, src, "mbox", mailbox="Archive/2023")
    out = tmp_path / "out.mbox"
    report = await export_messages(store, u.address, out, "mbox", mailbox="Archive/2023")
    assert report.count == 3 and report.paths == [out] and report.mailboxes == {"Archive/2023": 3}
    assert b"\n>>From a line that was" in out.read_bytes()  # escaped again on the way out
    v = await new_user(store, "victor@example.org")
    await import_messages(store, v.address, out, "auto")
    assert (await snapshot(store, v))["INBOX"] == (await snapshot(store, u))["Archive/2023"]


async def test_maildir_export_and_reimport_round_trip(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    await import_messages(store, u.address, src)
    dest = tmp_path / "Maildir"
    progress = Recorder()
    exported = await export_messages(store, u.address, dest, "maildir", progress=progress)
    assert exported.count == 3 and exported.paths == [dest]
    assert progress.calls == [(3, "INBOX")] and progress.closed == 1
    on_disk = list(read_maildir(dest))
    ours = (await snapshot(store, u))["INBOX"]
    assert [(r.raw, r.flags, r.keywords, r.internal_date) for r in on_disk] == ours
    assert len(list((dest / "cur").iterdir())) == 3
    v = await new_user(store, "victor@example.org")
    assert detect_format(dest) == "maildir"
    report = await import_messages(store, v.address, dest, "auto", batch=2)
    assert report.count == 3
    assert (await snapshot(store, v))["INBOX"] == ours


async def _fill_account(store: Store, u: User, tmp_path: Path) -> None:
    """INBOX from the mbox sample, plus messages in nested and non-ASCII mailboxes, one empty mailbox."""
    src = tmp_path / "seed.mbox"
    src.write_bytes(MBOX)
    await import_messages(store, u.address, src)
    for name, n in (("Archive/2024", 2), ("Entwürfe", 1), ("v1.2/notes", 1), ("Sent", 1)):
        box = await store.get_mailbox(u.id, name) or await store.create_mailbox(u.id, name)
        for i in range(n):
            raw = f"Subject: {name} {i}\r\n\r\nbody\r\n".encode()
            await store.append(
                box.id, AppendRequest(raw, Flag.SEEN if i else 0, frozenset({f"k{i}"}), T0 + i)
            )
    await store.create_mailbox(u.id, "Empty")


@pytest.mark.parametrize("fmt", ["mbox", "maildir"])
async def test_whole_account_export_and_import(store: Store, tmp_path: Path, fmt: str) -> None:
    u = await new_user(store)
    await _fill_account(store, u, tmp_path)
    dest = tmp_path / f"export-{fmt}"
    exported = await export_messages(store, u.address, dest, fmt, mailbox=None)  # type: ignore[arg-type]
    before = await snapshot(store, u, skip_empty=False)
    assert exported.mailboxes == {name: len(rows) for name, rows in before.items()}
    assert exported.count == sum(len(rows) for rows in before.values())
    if fmt == "mbox":
        assert (dest / "INBOX.mbox").is_file() and (dest / "Archive" / "2024.mbox").is_file()
        assert (dest / "Entwürfe.mbox").is_file() and (dest / "Empty.mbox").read_bytes() == b""
    else:
        assert (dest / "cur").is_dir() and (dest / ".Archive.2024" / "maildirfolder").exists()
        assert (dest / ".Entw&APw-rfe").is_dir() and (dest / ".v1&AC4-2.notes").is_dir()
        assert sorted(pymailbox.Maildir(dest, create=False).list_folders())[:2] == ["Archive", "Archive.2024"]

    v = await new_user(store, "victor@example.org")
    report = await import_messages(store, v.address, dest, fmt)  # type: ignore[arg-type]
    assert report.skipped == []
    after = await snapshot(store, v, skip_empty=False)
    assert after == before  # same mailboxes (the empty one too), messages, flags, keywords and dates

    # Into a named mailbox, the tree goes under it.
    w = await new_user(store, "walter@example.org")
    await import_messages(store, w.address, dest, fmt, mailbox="Old")  # type: ignore[arg-type]
    names = {b.name for b in await store.list_mailboxes(w.id)}
    assert {"Old", "Old/Archive/2024", "Old/Entwürfe", "Old/v1.2/notes", "Old/Sent", "Old/Empty"} <= names
    assert (await snapshot(store, w))["Old"] == before["INBOX"]


async def test_import_maildir_plus_plus_written_by_python(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "py"
    md = pymailbox.Maildir(root, create=True)
    m = pymailbox.MaildirMessage(b"Subject: top\n\nx\n")
    m.set_subdir("cur")
    m.set_flags("RS")
    m.set_date(T0)
    md.add(m)
    md.add_folder("Lists.python").add(pymailbox.MaildirMessage(b"Subject: list\n\ny\n"))
    u = await new_user(store)
    progress = Recorder()
    report = await import_messages(store, u.address, root, progress=progress)
    assert report.mailboxes == {"INBOX": 1, "Lists/python": 1}
    assert progress.calls == [(1, "INBOX"), (1, "Lists/python")]
    snap = await snapshot(store, u)
    assert snap["INBOX"] == [(b"Subject: top\r\n\r\nx\r\n", Flag.SEEN | Flag.ANSWERED, frozenset(), T0)]
    assert snap["Lists/python"][0][:3] == (b"Subject: list\r\n\r\ny\r\n", 0, frozenset())


async def test_export_mbox_read_by_python(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    await import_messages(store, u.address, src)
    out = tmp_path / "out.mbox"
    await export_messages(store, u.address, out, "mbox")
    box = pymailbox.mbox(out, create=False)
    got = [box[k] for k in box.keys()]  # noqa: SIM118 (a Mailbox, not a dict)
    assert [m["Subject"] for m in got] == ["first", "second", "third"]
    assert [set(m.get_flags()) for m in got] == [{"R", "O", "A", "F"}, {"O"}, {"R", "O", "T", "D"}]
    assert got[0].get_from() == "alice@example.org Tue Nov 14 22:13:20 2023"
    box.close()


async def test_batches_and_skips(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    long_keyword = "k" * 300  # an IMAP atom, but longer than a store keeps: the store refuses the message
    uw_pseudo = (
        b"From MAILER-DAEMON Tue Nov 14 22:13:20 2023\nSubject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
        b"X-IMAP: 1234567890 0000000010\nStatus: RO\n\nThis text is part of the internal format of your mail folder\n\n"
    )
    lines = [uw_pseudo]
    for i in range(10):
        kw = f"X-Keywords: {long_keyword}\n" if i == 4 else ""
        lines.append(f"From a@b Tue Nov 14 22:13:{i:02} 2023\nSubject: m{i}\n{kw}\nbody {i}\n\n".encode())
    src = tmp_path / "uw.mbox"
    src.write_bytes(b"".join(lines))
    report = await import_messages(store, u.address, src, batch=3)
    assert report.count == 9
    reasons = [s.reason for s in report.skipped]
    assert len(reasons) == 2 and "UW-IMAP" in reasons[0] and reasons[1].startswith("refused by the store")
    assert report.skipped[1].where.startswith(f"{src}:")
    subjects = [raw.split(b"\r\n")[0] for raw, *_ in (await snapshot(store, u))["INBOX"]]
    assert subjects == [f"Subject: m{i}".encode() for i in range(10) if i != 4]  # order kept across batches


async def test_mbox_directory_with_foreign_files(store: Store, tmp_path: Path) -> None:
    tree = tmp_path / "mail"
    (tree / "Lists.sbd").mkdir(parents=True)
    (tree / "Inbox").write_bytes(MBOX)  # Thunderbird names INBOX "Inbox"
    (tree / "Inbox.msf").write_bytes(b'// <!-- <mdb:mork:z v="1.4"/> -->')
    (tree / "Lists.sbd" / "python").write_bytes(MBOX)
    (tree / "notes.txt").write_bytes(b"not mail\n")
    (tree / ".hidden").write_bytes(MBOX)
    u = await new_user(store)
    report = await import_messages(store, u.address, tree)
    assert report.mailboxes == {"INBOX": 3, "Lists/python": 3}
    assert [(Path(s.where).name, s.reason) for s in report.skipped] == [("notes.txt", "not an mbox file")]


async def test_errors(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    eml = tmp_path / "x.eml"
    eml.write_bytes(b"Subject: not an mbox\n\nbody\n")
    with pytest.raises(FormatError):
        await import_messages(store, u.address, eml, "mbox")
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"\n")
    with pytest.raises(FormatError):
        await import_messages(store, u.address, empty, "eml")
    with pytest.raises(FormatError):
        await import_messages(store, u.address, tmp_path, "maildir")
    with pytest.raises(FileNotFoundError):
        await import_messages(store, u.address, tmp_path / "missing")
    with pytest.raises(NotFound):
        await import_messages(store, "nobody@example.org", eml)
    with pytest.raises(NotFound):
        await export_messages(store, u.address, tmp_path / "o", "mbox", mailbox="No such")
    with pytest.raises(ValueError):
        await export_messages(store, u.address, tmp_path / "o", "auto")  # type: ignore[arg-type]
    assert await snapshot(store, u) == {}


async def test_single_message_file(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    eml = tmp_path / "hello.eml"
    eml.write_bytes(b"Subject: hello\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nHi!\n")
    report = await import_messages(store, u.address, eml)  # auto: not a From_ line, so one message
    assert report.count == 1
    mbox = await store.get_mailbox(u.id, "INBOX")
    assert mbox is not None
    [info] = await store.list_messages(mbox.id)
    expected = b"Subject: hello\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nHi!\r\n"
    assert await store.read_message(info.blob_id) == expected
    assert info.internal_date == 1704103200.0
    assert info.flags == 0
    meta = await store.read_meta(info.blob_id)  # parsed once, at import
    assert meta is not None
    assert MessageMeta.from_bytes(meta).envelope.startswith(b'("Mon, 1 Jan 2024 10:00:00 +0000" "hello" ')


async def test_export_appends_to_existing_files(store: Store, tmp_path: Path) -> None:
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    await import_messages(store, u.address, src)
    out = tmp_path / "out.mbox"
    out.write_bytes(b"From x@y Mon Jan  1 00:00:00 2024\nSubject: already there\n\nno final blank line\n")
    await export_messages(store, u.address, out, "mbox")
    records = list(read_mbox(out))
    assert [r.raw.split(b"\r\n")[0] for r in records] == [
        b"Subject: already there",
        b"Return-Path: <alice@example.org>",
        b"From: Bob <bob@example.net>",
        b"From: Carol <carol@example.com>",
    ]
    assert records[0].raw.endswith(b"no final blank line\r\n")
    # A Maildir that already has messages and keywords keeps them; new keywords get free letters.
    md = tmp_path / "Maildir"
    with MaildirWriter(md) as w:
        w.add(MailRecord(b"Subject: old\r\n\r\n", 0, frozenset({"work", "Old"}), T0 - 1))
    await export_messages(store, u.address, md, "maildir")
    got = list(read_maildir(md))
    assert [r.keywords for r in got] == [
        frozenset({"work", "Old"}),
        frozenset({"$Label1", "work"}),
        frozenset(),
        frozenset(),
    ]
    assert maildir_folder_path(md, "INBOX") == md


async def test_progress_class_instance_and_summaries(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    u = await new_user(store)
    await _fill_account(store, u, tmp_path)
    # The Progress class itself is a factory: one display per mailbox, with its total, on standard error.
    await export_messages(store, u.address, tmp_path / "inbox.mbox", "mbox", progress=Progress)
    assert capsys.readouterr().err.startswith("INBOX: 3 messages, ")
    dest = tmp_path / "tree"
    out = io.StringIO()
    exported = await export_messages(
        store,
        u.address,
        dest,
        "maildir",
        mailbox=None,
        progress=lambda total, label: Progress(total, label, out),
    )
    lines = out.getvalue().splitlines()
    assert "INBOX: 3 messages" in lines[0] and any(
        line.startswith("Archive/2024: 2 messages") for line in lines
    )
    text = exported.summary()
    assert text.startswith("exported 8 messages (") and f"  INBOX: 3 -> {dest}" in text
    # A display instance is used for the whole job and closed once at its end.
    one = Bar(Recorder())
    v = await new_user(store, "victor@example.org")
    imported = await import_messages(store, v.address, dest, progress=one)
    assert one.recorder.closed == 1 and sum(n for n, _ in one.recorder.advanced) == 8
    closing = Progress(None, "import", io.StringIO())
    w = await new_user(store, "walter@example.org")
    await import_messages(store, w.address, dest, progress=closing)
    assert closing.count == 8 and closing.stream.getvalue().startswith("import: 8 messages")  # type: ignore[attr-defined]
    assert imported.summary().startswith("imported 8 messages (")
    assert "\n  Archive/2024: 2" in imported.summary()
    imported.skipped.append(Skipped("x.mbox:0", "a reason"))
    assert imported.summary().endswith("skipped 1:\n  x.mbox:0: a reason")


async def test_export_twice_is_incremental(store: Store, tmp_path: Path) -> None:
    # Issue 13: exporting twice into one Maildir doubled it. Each destination's ledger leaves out what it has.
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    await import_messages(store, u.address, src)
    box = await store.get_mailbox(u.id, "INBOX")
    assert box is not None
    md, mb = tmp_path / "Maildir", tmp_path / "out.mbox"
    for dest, fmt in ((md, "maildir"), (mb, "mbox")):
        first = await export_messages(store, u.address, dest, fmt)  # type: ignore[arg-type]
        again = await export_messages(store, u.address, dest, fmt)  # type: ignore[arg-type]
        assert (first.count, first.already, again.count, again.already) == (3, 0, 0, 3)
        assert "left out 3 messages exported there before" in again.summary()
    assert len(list(read_maildir(md))) == 3 and len(list(read_mbox(mb))) == 3
    # A new message, and a second copy of bytes already there (a multiset: it goes out once more).
    raw0 = await store.read_message((await store.list_messages(box.id))[0].blob_id)
    await store.append(box.id, AppendRequest(b"Subject: new\r\n\r\nnew\r\n", 0, frozenset(), T0))
    await store.append(box.id, AppendRequest(raw0, 0, frozenset(), T0))
    for dest, fmt, read in ((md, "maildir", read_maildir), (mb, "mbox", read_mbox)):
        third = await export_messages(store, u.address, dest, fmt)  # type: ignore[arg-type]
        assert (third.count, third.already) == (2, 3)
        assert len(list(read(dest))) == 5  # type: ignore[operator]
    assert (md / "postroom-exported").read_text().split().count(
        (await store.list_messages(box.id))[0].blob_id) == 2
    # An mbox emptied (or deleted) since: its ledger no longer holds, everything is written again.
    mb.write_bytes(b"")
    assert (await export_messages(store, u.address, mb, "mbox")).count == 5
    # Whole-account exports are incremental per folder; the ledgers are not mistaken for mail on import.
    tree = tmp_path / "tree"
    assert (await export_messages(store, u.address, tree, "mbox", mailbox=None)).count == 5
    assert (await export_messages(store, u.address, tree, "mbox", mailbox=None)).count == 0
    assert (tree / ".INBOX.mbox.postroom-exported").is_file()
    v = await new_user(store, "victor@example.org")
    report = await import_messages(store, v.address, tree)
    assert report.count == 5 and report.skipped == []
    # Without the ledger (incremental=False, as for standard output) everything goes out again.
    assert (await export_messages(store, u.address, md, "maildir", incremental=False)).count == 5


async def test_import_leaves_out_what_the_mailbox_holds(store: Store, tmp_path: Path) -> None:
    # Issue 13: importing an export brought in duplicates. Same bytes already in the mailbox: left out.
    u = await new_user(store)
    src = tmp_path / "in.mbox"
    src.write_bytes(MBOX)
    first = await import_messages(store, u.address, src)
    again = await import_messages(store, u.address, src)
    assert (first.count, first.duplicates, again.count, again.duplicates) == (3, 0, 0, 3)
    assert "left out 3 messages the mailbox already holds" in again.summary()
    md = tmp_path / "Maildir"
    await export_messages(store, u.address, md, "maildir")
    assert (await import_messages(store, u.address, md)).count == 0  # export then import: a no-op
    # Another mailbox does not hold them: imported there.
    assert (await import_messages(store, u.address, src, mailbox="Other")).count == 3
    # A source holding the same message twice, into a mailbox with one copy: one more copy (a multiset).
    box = await store.get_mailbox(u.id, "INBOX")
    assert box is not None
    twice = tmp_path / "twice.mbox"
    twice.write_bytes(MBOX.split(b"\nFrom bob")[0] + b"\n" + MBOX.split(b"\nFrom bob")[0] + b"\n")
    assert (await import_messages(store, u.address, twice)).count == 1
    assert len(await store.list_messages(box.id)) == 4
    # Told to, it imports every one.
    forced = await import_messages(store, u.address, src, duplicates=True)
    assert (forced.count, forced.duplicates) == (3, 0)
    assert len(await store.list_messages(box.id)) == 7
