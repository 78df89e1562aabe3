"""Message bodies as content-addressed files: `<root>/ab/cd/<sha256 hex>`.

Which bodies: those too large to keep in the database (the SQLite engine's `inline_max`, 256 KiB by default),
and bodies stored by schema version 1, when every body was a file. A file costs its own fsyncs (file and
directory) per message; small bodies avoid them by riding the group commit (sqlite/engine.py).

Theory of operation: a body is written once, under the SHA-256 of its bytes, however many mailboxes (or queue
entries) hold it; the database counts the references. Writing goes to a temporary file in the final directory,
which is fsync'd, renamed into place, and then the directory is fsync'd, so after `write()` returns the file
survives a power cut under its final name. The engine calls `write()` *before* the transaction that references the
blob commits, and `delete()` only *after* a transaction that dropped the last reference committed, while it holds
the database write lock (so no other writer can take a new reference between its check and the unlink).

Invariants:
1. A file under its final name is complete: it only ever appears there by `rename` of an fsync'd file.
2. `write()` is idempotent: an existing file of the right size is left alone (same name, same bytes), but its
   directory is fsync'd again, because the writer that renamed it in may not have done so yet.
3. A directory created for blobs is counted durable only after an fsync of its parent that began after it
   existed (`_settle`); no `write()` returns before the whole path to its file is durable.
4. A blob id is 64 lower-case hex digits; anything else is `Invalid`, so an id can never escape the root.
5. Temporary files start with ".tmp."; a crash can leave them (and unreferenced blobs) behind, never a
   half-written final file.
6. `staging/` (not two hex digits, so never a blob directory) holds bodies callers write before handing them
   over (`Store.append_file`); `adopt()` links such a file under its final name after an fsync of the file,
   so a body is never copied. The staging name is removed by the engine after the commit; a crash can leave
   staging files behind (garbage, like ".tmp." files). `sweep()` (run when the store opens) removes both kinds
   once older than `max_age`: `STALE_AGE` while another process shares the store (it may be writing one),
   0 when the store's lock shows none does (sqlite/__init__.py invariant 3).
7. `blob_id_of` hashes a body of at most `GIL_HELD_MAX` bytes (every inline SMTP delivery's) without letting go
   of the GIL: it runs on the event loop beside the SQLite writer thread, and a hand-over of the GIL and back
   cost more CPU than hashing a few KiB (bench/RESULTS.md, helper quick10). Larger bodies let it go, so the
   writer runs while they are hashed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import tempfile
import time
from pathlib import Path

from postroom.fsutil import fsync_dir, write_all
from postroom.mime.lineends import CrlfCounter
from postroom.mime.lineends import crlf_size as crlf_size  # re-exported
from postroom.store.api import Invalid, NotFound

_HEX = frozenset("0123456789abcdef")
STAGING = "staging"
STALE_AGE = 3600.0  # seconds: a staging or ".tmp." file this old is a crash's leftover, not a write in flight
HASH_CHUNK = 1 << 18


_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF)


def _copy_rest(src: int, dst: int) -> None:
    """Copy the file `src` from its position to its end onto `dst` at its position: `os.copy_file_range` (the
    kernel copies, or shares the extents), or, where the file system or kernel cannot, in `HASH_CHUNK` pieces
    through one buffer. Raises OSError (a full disk: ENOSPC)."""
    copy_range = getattr(os, "copy_file_range", None)
    while copy_range is not None:
        try:
            if not copy_range(src, dst, HASH_CHUNK * 16):
                return
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            break  # nothing was copied by the failed call: the positions are where they were
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    while n := os.readv(src, [buf]):
        write_all(dst, view[:n])


# CPython's hashlib lets go of the GIL for an update of 2048 bytes or more (HASHLIB_GIL_MINSIZE): on the event loop,
# beside a busy writer thread, each such update hands the GIL over and waits to get it back, which costs more
# than hashing a small body. A body of at most GIL_HELD_MAX bytes is hashed in pieces below that size (invariant 7).
GIL_PIECE = 2047
GIL_HELD_MAX = 16 * 1024


def blob_id_of(data: bytes, prefix: bytes = b"") -> str:
    """The blob id (SHA-256 hex) of the body `prefix` + `data`, hashed piece by piece: the same id as of the
    joined bytes, without joining them (issue 17 item 5: trace fields carried as a prefix). Up to
    `GIL_HELD_MAX` bytes without letting go of the GIL (pieces of `GIL_PIECE`), larger bodies in one update."""
    digest = hashlib.sha256()
    if len(prefix) + len(data) <= GIL_HELD_MAX:
        for piece in (prefix, data):
            view = memoryview(piece)
            for at in range(0, len(view), GIL_PIECE):
                digest.update(view[at:at + GIL_PIECE])
    else:
        digest.update(prefix)
        digest.update(data)
    return digest.hexdigest()


def crlf_size_of(data: bytes, prefix: bytes = b"") -> int:
    """`crlf_size(prefix + data)` without joining the pieces (a CR ending `prefix` and an LF starting `data`
    are one CRLF, as in the joined bytes)."""
    if not prefix:
        return crlf_size(data)
    counter = CrlfCounter()
    counter.feed(prefix)
    counter.feed(data)
    return counter.size


def check_id(blob_id: str) -> str:
    if len(blob_id) != 64 or not _HEX.issuperset(blob_id):
        raise Invalid(f"bad blob id: {blob_id!r}")
    return blob_id


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._durable: set[str] = set()  # directories whose entry in their parent is known to be on disk

    def path(self, blob_id: str) -> Path:
        check_id(blob_id)
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).exists()

    def write(self, blob_id: str, data: bytes, prefix: bytes = b"") -> bool:
        """Make the blob `prefix` + `data` (written one piece after the other, never joined) durable under its
        final name. True if this call created the file."""
        final = self.path(blob_id)
        directory = final.parent
        try:
            if final.stat().st_size == len(prefix) + len(data):
                # Another writer may have renamed it in but not yet fsync'd the directory: do it (cheap if done).
                fsync_dir(directory)
                self._settle(directory)
                return False
        except FileNotFoundError:
            pass
        self._make_dirs(directory)
        tmp = directory / f".tmp.{blob_id[:16]}.{os.getpid()}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                if prefix:
                    write_all(fd, prefix)
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(directory)
        self._settle(directory)
        return True

    @property
    def staging(self) -> Path:
        """Where callers write bodies before `adopt()` (invariant 6); created on first use."""
        path = self.root / STAGING
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sweep(self, max_age: float = STALE_AGE, now: float | None = None) -> list[Path]:
        """Remove staging files and ".tmp." files not modified for `max_age` seconds (invariants 5 and 6): what
        a crash left behind. Returns the paths removed. Only names are listed, and only candidates stat'd."""
        cutoff = (time.time() if now is None else now) - max_age
        candidates: list[Path] = []
        for top in _scan(self.root):
            if not top.is_dir(follow_symlinks=False):
                continue
            if top.name == STAGING:
                candidates.extend(Path(e.path) for e in _scan(Path(top.path)))
            elif len(top.name) == 2 and _HEX.issuperset(top.name):
                for sub in _scan(Path(top.path)):
                    if sub.is_dir(follow_symlinks=False):
                        candidates.extend(Path(e.path) for e in _scan(Path(sub.path)) if e.name.startswith(".tmp."))
        removed: list[Path] = []
        for path in candidates:
            try:
                st = path.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass  # its writer finished (or another sweep won)
        return removed

    def stage_copy(self, src: Path, prefix: bytes) -> Path:
        """A new staging file holding `prefix` followed by the bytes of `src`, copied by the kernel
        (`os.copy_file_range`: no buffer in this process at all; a file system that cannot is copied in
        `HASH_CHUNK` pieces, never whole in memory): a body that gets headers prepended at delivery (Return-Path,
        list headers). The caller removes it, or hands it to the store."""
        fd, name = tempfile.mkstemp(dir=self.staging, prefix="prefixed.")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out, open(src, "rb", buffering=0) as f:
                write_all(out.fileno(), prefix)
                _copy_rest(f.fileno(), out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def hash_file(self, src: Path) -> tuple[str, int, int]:
        """(sha256 hex, size, `crlf_size`) of a file, read in bounded chunks."""
        digest = hashlib.sha256()
        counter = CrlfCounter()
        with open(src, "rb", buffering=0) as f:
            buf = bytearray(HASH_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                piece = buf if n == HASH_CHUNK else view[:n]  # the buffer itself: counted without a copy
                digest.update(piece)
                counter.feed(piece)
        return digest.hexdigest(), counter.octets, counter.size

    def adopt(self, src: Path) -> tuple[str, int, int]:
        """Make the file `src` (in `staging`, same file system) a blob without copying it: hash it, fsync it,
        link it under its final name (or keep the file already there: same name, same bytes), fsync that
        directory. Returns (blob id, size, `crlf_size`). `src` itself stays; the caller removes it
        (invariant 6)."""
        blob_id, size, crlf = self.hash_file(src)
        self.link(blob_id, src, size)
        return blob_id, size, crlf

    def link(self, blob_id: str, src: Path, size: int) -> bool:
        """The `write()` of a body already in the file `src`. True if this call created the blob's file."""
        final = self.path(blob_id)
        directory = final.parent
        created = True
        try:
            present = final.stat().st_size == size
        except FileNotFoundError:
            present = False
        if present:
            created = False
        else:
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._make_dirs(directory)
            try:
                os.link(src, final)
            except FileExistsError:
                created = False  # a concurrent writer of the same bytes won; its file is complete (invariant 1)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                return self.write(blob_id, src.read_bytes())  # no hard links here: the one copy
        fsync_dir(directory)
        self._settle(directory)
        return created

    def read(self, blob_id: str) -> bytes:
        try:
            return self.path(blob_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no message body {blob_id}") from None

    def read_range(self, blob_id: str, start: int, length: int) -> bytes:
        """At most `length` bytes of a body file from `start` (Store.read_message_range)."""
        try:
            with open(self.path(blob_id), "rb", buffering=0) as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError:
            raise NotFound(f"no message body {blob_id}") from None

    def crlf_size(self, blob_id: str) -> int:
        """`crlf_size` of a body file, read in bounded chunks. NotFound if there is no such file."""
        counter = CrlfCounter()
        try:
            with open(self.path(blob_id), "rb", buffering=0) as f:
                while chunk := f.read(HASH_CHUNK):
                    counter.feed(chunk)
        except FileNotFoundError:
            raise NotFound(f"no message body {blob_id}") from None
        return counter.size

    def delete(self, blob_id: str) -> None:
        self.path(blob_id).unlink(missing_ok=True)

    def _make_dirs(self, directory: Path) -> None:
        """mkdir root/ab/cd as needed. Their entries are made durable later, by `_settle` (see there)."""
        if str(directory) in self._durable:
            return
        directory.mkdir(parents=True, exist_ok=True)

    def _settle(self, directory: Path) -> None:
        """Make the entries of root/ab and root/ab/cd in their parents durable.

        Runs after the file's own fsyncs: on journalling file systems those already committed the mkdir, so these
        parent fsyncs find nothing dirty and cost ~0.1 ms instead of a journal commit each. A directory counts as
        durable only once an fsync of its parent *finished* after it existed; any thread that finds it not yet
        counted (made by a concurrent writer, or by an earlier process) fsyncs the parent itself, so no writer
        returns before the path to its file is on disk."""
        key = str(directory)
        if key in self._durable:
            return
        for d in (self.root, directory.parent, directory):
            k = str(d)
            if k not in self._durable:
                fsync_dir(d.parent)
                self._durable.add(k)
