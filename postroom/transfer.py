"""Import mail from mbox files and Maildirs into a user's mailboxes, and export mailboxes to them.

Theory of operation
-------------------
`import_messages` reads records with `postroom.mailformats` and appends them with `Store.append_many`, a batch
at a time; `export_messages` lists a mailbox, reads each message's bytes and hands records to an mbox or
Maildir writer. Only the `Store` protocol is used, so every engine works.

Reading and writing files is blocking I/O; it runs in a worker thread (`asyncio.to_thread`), one batch per hop,
so an import started inside the running server does not stall its event loop. The store calls stay on the loop.

What a source path means:

* an mbox file: one mailbox, `mailbox`;
* a directory of mbox files (what `export_messages(..., mailbox=None, fmt="mbox")` writes): one mailbox per
  file, named by its path below the directory without a `.mbox` suffix (Thunderbird's `Name.sbd/` directories
  are understood; its `.msf` index files and dotfiles are ignored);
* a Maildir (`cur/` or `new/` inside): the Maildir itself goes to `mailbox`, its Maildir++ sub-folders
  (`.Sub.Folder`) to mailboxes of the same names (`Sub/Folder`).

In a tree, the entry called INBOX goes to `mailbox`; the others keep their names when `mailbox` is INBOX and
are put under it otherwise (importing an old account into `Old` gives `Old`, `Old/Sent`, ...).

Skipped, with a reason in the report: UW-IMAP's "FOLDER INTERNAL DATA" pseudo-message (the first message of
mbox files UW-IMAP and Pine wrote; it holds UIDs, not mail), files in a directory of mbox files that are not
mbox, Maildir files that vanished while reading (another program moved them), and messages the store refuses.
A batch the store refuses is retried one message at a time so one bad message does not lose 199 good ones.

Doing it twice. Export is incremental: every destination (a Maildir folder, an mbox file) has a ledger of what
was written to it, the SHA-256 of each message's bytes (its store blob id) one per line: `postroom-exported`
inside the Maildir folder (beside Dovecot's `dovecot-keywords`), `.<file>.postroom-exported` beside the mbox
file (a dotfile, which the mbox-directory reader ignores). A message whose digest the ledger holds is left out,
counted as a multiset, so a mailbox holding the same bytes twice exports them twice, once. Deleting the ledger
(or the mbox file: an mbox file that is empty or missing starts a new ledger) exports everything again. Standard
output has no ledger. The ledger is extended after the messages it names were written, so a crash in between
can repeat those messages in the next export, never leave one out.

Import skips a message whose bytes the target mailbox already holds (same SHA-256, again as a multiset) unless
`duplicates=True`; skipped ones are counted in the report, not listed. Exporting then importing the export into
the same mailbox is therefore a no-op, and so is importing one file twice.

Invariants
----------
1. A message is counted in the report only after the store returned from appending it (an awaited write is
   durable, store invariant 1). An import that fails half-way can be resumed by importing the rest; nothing
   reported as imported is lost.
2. Flags, keywords and the internal date travel with every message in both directions.
3. Memory stays bounded whatever the source size: one batch (at most `batch` messages and `_BATCH_BYTES`
   bytes, or one message if it is larger) is held at a time.
4. An export never changes the store.
5. Digests are computed in worker threads with the reading or writing of the batch they belong to, never on
   the event loop (their cost grows with message size).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast

from postroom import metapool as pool
from postroom.config import LimitsConfig
from postroom.mailformats import (
    FormatError,
    MaildirWriter,
    MailRecord,
    is_maildir,
    looks_like_mbox,
    maildir_entries,
    maildir_folder_path,
    maildir_folders,
    mbox_entry,
    read_maildir,
    read_mbox,
    read_message_file,
)
from postroom.progress import ProgressSink, human_bytes
from postroom.store.api import (
    AlreadyExists,
    AppendRequest,
    Invalid,
    Mailbox,
    MessageInfo,
    NotFound,
    Store,
    StoreError,
    User,
)
from postroom.store.blobs import blob_id_of

ImportFormat = Literal["auto", "mbox", "maildir", "eml"]
ExportFormat = Literal["mbox", "maildir"]
ProgressFactory = Callable[[int | None, str], ProgressSink]
"""Called once per mailbox with (message count or None if unknown, label); `postroom.progress.Progress` fits."""
ProgressArg = ProgressFactory | ProgressSink
"""A factory (one display per mailbox, with its total), or one display for the whole job, closed at its end."""


class _Shared:
    """One caller-made display used for every mailbox: per-mailbox close() is ignored, the job closes it once."""

    def __init__(self, sink: ProgressSink) -> None:
        self.sink = sink

    def __call__(self, total: int | None, label: str) -> _Shared:
        return self

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        self.sink.advance(n, nbytes)

    def close(self) -> None:
        pass


def _factory(progress: ProgressArg | None) -> tuple[ProgressFactory | None, ProgressSink | None]:
    """The per-mailbox factory to use, and the sink to close when the whole job ends (if the caller gave one)."""
    if progress is None:
        return None, None
    # A class (`Progress` itself) has an `advance` attribute too, but calling it makes a display: a factory.
    if isinstance(progress, type) or not hasattr(progress, "advance"):
        return cast(ProgressFactory, progress), None
    sink = cast(ProgressSink, progress)
    return _Shared(sink), sink


_BATCH_BYTES = 32 * 1024 * 1024  # invariant 3: 200 messages of 20 MB each would be 4 GB
_IMPORT_LIMITS = LimitsConfig()  # MIME depth and part limits of the scan: the defaults, as delivery has them
_EXPORT_CHUNK = 64  # messages read from the store per worker-thread hop when exporting
_UW_PSEUDO_SUBJECT = b"DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"


@dataclass(frozen=True)
class Skipped:
    where: str  # file, "file:offset" or mailbox
    reason: str


@dataclass
class ImportReport:
    count: int = 0  # messages appended
    bytes: int = 0  # octets appended (CRLF message sizes)
    skipped: list[Skipped] = field(default_factory=list)
    mailboxes: dict[str, int] = field(default_factory=dict)  # mailbox name -> messages appended to it
    duplicates: int = 0  # messages left out because the mailbox already held the same bytes

    def summary(self) -> str:
        """A few lines for a person: what was imported where, and every skipped message with its reason."""
        lines = [
            f"imported {self.count} messages ({human_bytes(self.bytes)}) into {len(self.mailboxes)} mailboxes"
            + "".join(f"\n  {name}: {n}" for name, n in self.mailboxes.items())
        ]
        if self.duplicates:
            lines.append(f"left out {self.duplicates} messages the mailbox already holds (same bytes; "
                         "--duplicates imports them anyway)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines.extend(f"  {s.where}: {s.reason}" for s in self.skipped)
        return "\n".join(lines)


@dataclass
class ExportReport:
    count: int = 0  # messages written
    bytes: int = 0  # octets of the stored messages written
    mailboxes: dict[str, int] = field(default_factory=dict)  # mailbox name -> messages written
    paths: list[Path] = field(default_factory=list)  # one mbox file or Maildir folder per mailbox
    # What the format could not keep (a Maildir folder has 26 keyword letters) or names that cannot be files.
    warnings: list[str] = field(default_factory=list)
    already: int = 0  # messages left out because the destination's ledger says they were exported there before

    def summary(self) -> str:
        """A few lines for a person: what was written where, and what could not be kept."""
        lines = [
            f"exported {self.count} messages ({human_bytes(self.bytes)}) from {len(self.mailboxes)} mailboxes"
            + "".join(
                f"\n  {name}: {n} -> {path}" for (name, n), path in zip(self.mailboxes.items(), self.paths)
            )
        ]
        if self.already:
            lines.append(f"left out {self.already} messages exported there before (each destination's "
                         f"{LEDGER} file lists them; delete it to export everything again)")
        if self.warnings:
            lines.append("warnings:")
            lines.extend(f"  {w}" for w in self.warnings)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Import


@dataclass(frozen=True)
class _Source:
    name: str  # mailbox name in the source tree ("INBOX" for the root)
    kind: Literal["mbox", "maildir", "eml"]
    path: Path


def detect_format(path: str | os.PathLike[str]) -> Literal["mbox", "maildir", "eml"]:
    """Detect the format: "maildir" for a directory with cur/ or new/, "mbox" for a file starting with a From_
    line or any other directory, "eml" (one message) for any other file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        return "maildir" if is_maildir(p) else "mbox"
    return "mbox" if looks_like_mbox(p) else "eml"


def _mbox_tree(root: Path) -> list[_Source]:
    out: list[_Source] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith(".") or filename.endswith(".msf"):
                continue
            path = Path(dirpath) / filename
            rel = path.relative_to(root).parts
            parts = [p.removesuffix(".sbd") for p in rel[:-1]]
            parts.append(rel[-1].removesuffix(".mbox"))
            name = "/".join(parts)
            out.append(_Source("INBOX" if name.upper() == "INBOX" else name, "mbox", path))
    return out


def _sources(path: Path, fmt: ImportFormat) -> list[_Source]:
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "maildir":
        if not path.is_dir() or not is_maildir(path):
            raise FormatError(f"{path}: not a Maildir (no cur/ or new/ directory)")
        return [_Source(name, "maildir", p) for name, p in maildir_folders(path)]
    if kind == "eml":
        if not path.is_file():
            raise FormatError(f"{path}: not a message file")
        return [_Source("INBOX", "eml", path)]
    if kind != "mbox":
        raise ValueError(f"unknown format {fmt!r}: expected auto, mbox, maildir or eml")
    if path.is_dir():
        return _mbox_tree(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [_Source("INBOX", "mbox", path)]


def _target_name(mailbox: str, name: str) -> str:
    if name.upper() == "INBOX":
        return mailbox
    if mailbox.upper() == "INBOX":
        return name
    return f"{mailbox}/{name}"


async def _user(store: Store, address: str) -> User:
    user = await store.get_user(address)
    if user is None:
        raise NotFound(f"no such user: {address}")
    return user


async def _ensure_mailbox(store: Store, user_id: int, name: str) -> Mailbox:
    mailbox = await store.get_mailbox(user_id, name)
    if mailbox is not None:
        return mailbox
    try:
        return await store.create_mailbox(user_id, name)
    except AlreadyExists:  # created meanwhile by a client of the running server
        found = await store.get_mailbox(user_id, name)
        if found is None:
            raise
        return found


def _is_uw_pseudo_message(raw: bytes) -> bool:
    # Both marks: an "X-IMAP:" field (not Dovecot's "X-IMAPbase:", which rides on a real message) and the subject.
    head = raw[:8192]
    return _UW_PSEUDO_SUBJECT in head and re.search(rb"(?im)^X-IMAP:", head) is not None


def _take(records: Iterator[MailRecord], limit: int, digests: bool = False) -> tuple[list[MailRecord], list[str]]:
    """Up to `limit` records and `_BATCH_BYTES` bytes (always at least one record if any is left), with their
    SHA-256 digests (store blob ids) when `digests` is true, else an empty list (invariant 5)."""
    out: list[MailRecord] = []
    size = 0
    for record in records:
        out.append(record)
        size += len(record.raw)
        if len(out) >= limit or size >= _BATCH_BYTES:
            break
    return out, [blob_id_of(r.raw) for r in out] if digests else []


async def _append_batch(
    store: Store, mailbox: Mailbox, records: Sequence[MailRecord], report: ImportReport
) -> tuple[int, int]:
    # Parse once, at delivery (ARCHITECTURE principle 3): imported mail gets the same stored metadata as mail
    # that arrives by SMTP or APPEND, computed the same way (metapool.py: large ones in worker processes, in
    # parallel, each with the same time limit).
    metas = await asyncio.gather(*(pool.meta_bytes(r.raw, _IMPORT_LIMITS) for r in records))
    requests = [
        AppendRequest(raw=r.raw, flags=r.flags, keywords=r.keywords, internal_date=r.internal_date, meta=m)
        for r, m in zip(records, metas)
    ]
    try:
        await store.append_many(mailbox.id, requests)
        return len(records), sum(len(r.raw) for r in records)
    except StoreError:
        pass
    # One message made the batch fail (and the store rolled the whole transaction back): find it.
    count = size = 0
    for record, request in zip(records, requests):
        try:
            await store.append(mailbox.id, request)
        except StoreError as exc:
            report.skipped.append(Skipped(record.origin, f"refused by the store: {exc}"))
            continue
        count += 1
        size += len(record.raw)
    return count, size


async def _import_source(
    store: Store,
    user: User,
    source: _Source,
    target: str,
    report: ImportReport,
    progress: ProgressFactory | None,
    batch: int,
    duplicates: bool = False,
) -> None:
    def skip(where: str, why: str) -> None:
        report.skipped.append(Skipped(where, why))

    try:
        mailbox = await _ensure_mailbox(store, user.id, target)
    except Invalid as exc:  # a folder name the store does not allow (control characters...): the rest goes on
        skip(str(source.path), f"mailbox {target!r} cannot be created: {exc}")
        return
    total: int | None = None
    records: Generator[MailRecord, None, None]
    if source.kind == "maildir":
        entries = await asyncio.to_thread(maildir_entries, source.path)
        total = len(entries)
        records = read_maildir(source.path, entries=entries, on_skip=skip)
    elif source.kind == "eml":
        total = 1
        records = (r for r in [await asyncio.to_thread(read_message_file, source.path)])
    else:
        records = read_mbox(source.path)
    report.mailboxes.setdefault(mailbox.name, 0)
    # What the mailbox holds already, by digest and count: a message with the same bytes is left out.
    present: Counter[str] = Counter()
    if not duplicates:
        present.update(i.blob_id for i in await store.list_messages(mailbox.id))
    sink = progress(total, mailbox.name) if progress is not None else None
    first = True
    try:
        while True:
            chunk, digests = await asyncio.to_thread(_take, records, batch, bool(present))
            if not chunk:
                break
            keep: list[MailRecord] = []
            for i, record in enumerate(chunk):
                if first and source.kind == "mbox" and _is_uw_pseudo_message(record.raw):
                    skip(record.origin, "UW-IMAP folder internal data (not a message)")
                elif digests and present[digests[i]] > 0:
                    present[digests[i]] -= 1
                    report.duplicates += 1
                else:
                    keep.append(record)
                first = False
            count, size = await _append_batch(store, mailbox, keep, report) if keep else (0, 0)
            report.count += count
            report.bytes += size
            report.mailboxes[mailbox.name] += count
            if sink is not None:
                sink.advance(len(chunk), sum(len(r.raw) for r in chunk))
    finally:
        # Closes the mbox file now if the import stopped early (a generator's `with` runs on close()).
        records.close()
        if sink is not None:
            sink.close()


async def import_messages(
    store: Store,
    user_address: str,
    source_path: str | os.PathLike[str],
    fmt: ImportFormat = "auto",
    mailbox: str = "INBOX",
    progress: ProgressArg | None = None,
    batch: int = 200,
    duplicates: bool = False,
) -> ImportReport:
    """Import an mbox file, a directory of mbox files or a Maildir(++) tree into the user's mailboxes.

    Missing mailboxes are created. A message whose bytes the target mailbox already holds is left out and
    counted in `ImportReport.duplicates`, unless `duplicates` is true. Raises NotFound for an unknown user,
    FileNotFoundError for a missing path (other OSErrors for unreadable ones) and FormatError when a single file
    or directory is not in the format asked for."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    user = await _user(store, user_address)
    path = Path(source_path)
    sources = await asyncio.to_thread(_sources, path, fmt)
    report = ImportReport()
    single_file = len(sources) == 1 and sources[0].kind == "mbox" and sources[0].path == path
    factory, job_sink = _factory(progress)
    try:
        for source in sources:
            if (
                source.kind == "mbox"
                and not single_file
                and not await asyncio.to_thread(looks_like_mbox, source.path)
            ):
                report.skipped.append(Skipped(str(source.path), "not an mbox file"))
                continue
            target = _target_name(mailbox, source.name)
            await _import_source(store, user, source, target, report, factory, batch, duplicates)
    finally:
        if job_sink is not None:
            job_sink.close()
    return report


# --------------------------------------------------------------------------------------------------------
# Export


class _MboxFile:
    """Appends mboxrd entries to one file, keeping what was already there."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f: BinaryIO = open(path, "ab")  # noqa: SIM115 (closed by close(), after the export's last write)
        # A pipe or terminal (/dev/stdout) has no end to look at and cannot be fsync'd.
        self._regular = stat.S_ISREG(os.fstat(self._f.fileno()).st_mode)
        end = self._f.tell() if self._regular else 0
        if end:
            # An existing mbox must end in an empty line before our first From_ line, or it would become part
            # of the last message there.
            with open(path, "rb") as f:
                f.seek(max(0, end - 2))
                tail = f.read()
            if not tail.endswith(b"\n"):
                self._f.write(b"\n\n")
            elif not tail.endswith(b"\n\n") and end > 1:
                self._f.write(b"\n")

    def add(self, record: MailRecord) -> None:
        self._f.write(mbox_entry(record))

    @property
    def regular(self) -> bool:
        """True for a regular file (one that can have a ledger), False for a pipe or terminal."""
        return self._regular

    def flush(self) -> None:
        """Make what was added durable (the export's ledger is written only after)."""
        self._f.flush()
        if self._regular:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.flush()
        if self._regular:
            os.fsync(self._f.fileno())
        self._f.close()


LEDGER = "postroom-exported"


class _Ledger:
    """What was exported to one destination: one SHA-256 hex digest (store blob id) per message written, one per
    line, in the file `path`; read as a multiset (module docstring, "Doing it twice"). Blocking I/O: used from
    worker threads only."""

    def __init__(self, path: Path, reset: bool) -> None:
        self.path = path
        self.seen: Counter[str] = Counter()
        if reset:
            path.unlink(missing_ok=True)
            return
        try:
            text = path.read_text("ascii", "replace")
        except FileNotFoundError:
            return
        self.seen.update(line for line in text.split() if len(line) == 64)

    def take(self, blob_id: str) -> bool:
        """True (and one count used up) if the ledger holds `blob_id`: the message was exported here before."""
        if self.seen[blob_id] > 0:
            self.seen[blob_id] -= 1
            return True
        return False

    def record(self, blob_ids: Sequence[str]) -> None:
        """Add digests of messages written (after they were: invariant of the module docstring), durably."""
        if not blob_ids:
            return
        with open(self.path, "a", encoding="ascii") as f:
            f.write("".join(b + "\n" for b in blob_ids))
            f.flush()
            os.fsync(f.fileno())


def _ledger_path(target: Path, fmt: ExportFormat) -> Path:
    """`postroom-exported` inside a Maildir folder; `.<name>.postroom-exported` beside an mbox file."""
    return target / LEDGER if fmt == "maildir" else target.with_name(f".{target.name}.{LEDGER}")


def _open_ledger(target: Path, fmt: ExportFormat) -> _Ledger:
    # An mbox that is missing or empty was deleted or emptied since: what its ledger says no longer holds.
    empty_mbox = fmt == "mbox" and (not target.is_file() or target.stat().st_size == 0)
    return _Ledger(_ledger_path(target, fmt), reset=empty_mbox)


def _add_all(writer: _MboxFile | MaildirWriter, records: Sequence[MailRecord], ledger: _Ledger | None,
             blob_ids: Sequence[str]) -> None:
    for record in records:
        writer.add(record)
    if ledger is not None:
        if isinstance(writer, _MboxFile):
            writer.flush()  # the messages are on disk before the ledger names them
        ledger.record(blob_ids)


def _safe_relative(name: str) -> Path | None:
    """The mailbox name as a relative path, or None if a component could escape the export directory."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "\0" in p for p in parts):
        return None
    return Path(*parts)


async def _export_mailbox(
    store: Store,
    mailbox: Mailbox,
    writer: _MboxFile | MaildirWriter,
    report: ExportReport,
    progress: ProgressFactory | None,
    ledger: _Ledger | None = None,
) -> None:
    infos = await store.list_messages(mailbox.id)
    if ledger is not None:  # incremental: what this destination got before is left out
        todo = [i for i in infos if not ledger.take(i.blob_id)]
        report.already += len(infos) - len(todo)
        infos = todo
    sink = progress(len(infos), mailbox.name) if progress is not None else None
    written = 0
    try:
        for start in range(0, len(infos), _EXPORT_CHUNK):
            chunk: list[MessageInfo] = infos[start : start + _EXPORT_CHUNK]
            records: list[MailRecord] = []
            blob_ids: list[str] = []
            for info in chunk:
                try:
                    raw = await store.read_message(info.blob_id)
                except NotFound:
                    # Expunged by a client of the running server since the listing: it is gone, not lost.
                    report.warnings.append(f"{mailbox.name}: UID {info.uid} was expunged during the export")
                    continue
                blob_ids.append(info.blob_id)
                records.append(
                    MailRecord(
                        raw, info.flags, info.keywords, info.internal_date, f"{mailbox.name}:{info.uid}"
                    )
                )
            await asyncio.to_thread(_add_all, writer, records, ledger, blob_ids)
            size = sum(len(r.raw) for r in records)
            written += len(records)
            report.count += len(records)
            report.bytes += size
            if sink is not None:
                sink.advance(len(chunk), size)
    finally:
        await asyncio.to_thread(writer.close)
        if sink is not None:
            sink.close()
    report.mailboxes[mailbox.name] = written
    if isinstance(writer, MaildirWriter) and writer.dropped_keywords:
        report.warnings.append(
            f"{mailbox.name}: a Maildir folder holds only 26 keywords; not written: "
            + ", ".join(sorted(writer.dropped_keywords))
        )


async def export_messages(
    store: Store,
    user_address: str,
    dest_path: str | os.PathLike[str],
    fmt: ExportFormat,
    mailbox: str | None = "INBOX",
    progress: ProgressArg | None = None,
    incremental: bool = True,
) -> ExportReport:
    """Export one mailbox, or all of the user's mailboxes (`mailbox=None`), to mbox or Maildir.

    One mailbox: mbox -> the file `dest_path` (or `dest_path/<name>.mbox` if that is an existing directory);
    Maildir -> the Maildir `dest_path`. All mailboxes: mbox -> `dest_path/<name>.mbox`, one file per mailbox
    with `/` in names as sub-directories; Maildir -> a Maildir++ tree with INBOX at `dest_path`.
    Existing files and Maildirs are added to, never truncated. With `incremental` (the default) a message
    written to a destination before (its ledger says so) is left out and counted in `ExportReport.already`;
    a pipe or terminal has no ledger. Raises NotFound (user, mailbox), OSError (unwritable destination)."""
    if fmt not in ("mbox", "maildir"):
        raise ValueError(f"unknown format {fmt!r}: expected mbox or maildir")
    user = await _user(store, user_address)
    dest = Path(dest_path)
    report = ExportReport()
    if mailbox is not None:
        found = await store.get_mailbox(user.id, mailbox)
        if found is None:
            raise NotFound(f"no such mailbox: {mailbox}")
        boxes = [found]
    else:
        # INBOX first, then by name: parents before their children, the order a person reads them in.
        boxes = sorted(await store.list_mailboxes(user.id), key=lambda m: (m.name.upper() != "INBOX", m.name))
    factory, job_sink = _factory(progress)
    try:
        await _export_boxes(store, boxes, dest, fmt, mailbox is not None, report, factory, incremental)
    finally:
        if job_sink is not None:
            job_sink.close()
    return report


async def _export_boxes(
    store: Store,
    boxes: Sequence[Mailbox],
    dest: Path,
    fmt: ExportFormat,
    single: bool,
    report: ExportReport,
    progress: ProgressFactory | None,
    incremental: bool = True,
) -> None:
    for box in boxes:
        writer: _MboxFile | MaildirWriter
        if fmt == "mbox":
            if single and not dest.is_dir():
                target = dest
            else:
                rel = _safe_relative(box.name)
                if rel is None:
                    report.warnings.append(f"{box.name}: not exported: the name cannot be a file name")
                    continue
                target = dest / rel.with_name(rel.name + ".mbox")
            ledger = await asyncio.to_thread(_open_ledger, target, fmt) if incremental else None
            writer = await asyncio.to_thread(_MboxFile, target)
        else:
            target = dest if single else maildir_folder_path(dest, box.name)
            ledger = await asyncio.to_thread(_open_ledger, target, fmt) if incremental else None
            sub = not single and box.name.upper() != "INBOX"
            writer = await asyncio.to_thread(functools.partial(MaildirWriter, target, maildirfolder=sub))
        report.paths.append(target)
        if ledger is not None and isinstance(writer, _MboxFile) and not writer.regular:
            ledger = None  # a pipe: nothing stays there to compare with
        await _export_mailbox(store, box, writer, report, progress, ledger)
