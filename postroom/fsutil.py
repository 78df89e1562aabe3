"""Small file-system helpers for durable writes, shared by the store, list moderation, Maildir export and IMAP.

A write is durable when the file's bytes are fsync'd and, for a new name, the directory holding it is fsync'd
too (POSIX says nothing of the directory entry otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write every byte of `data` to `fd` (os.write may write less than asked); returns the count."""
    view = memoryview(data)
    total = len(view)
    while view:
        view = view[os.write(fd, view):]
    return total


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (new, renamed or removed names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
