"""`BlobStore.stage_copy` and `hash_file` (store/blobs.py): the kernel copy (`os.copy_file_range`) and its fallback
through one buffer give the same file, prefix then the source's bytes; `hash_file` gives the SHA-256, the size and
the `crlf_size` of the whole file (RFC 5322 §2.1 line ends: a bare LF counts as CRLF) whatever piece boundaries
fall between a CR and its LF. Not engine-specific: both engines use these files."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from postroom.store.blobs import HASH_CHUNK, BlobStore, crlf_size

PREFIX = b"Return-Path: <a@remote.test>\r\n"


def source(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    # CRLF lines, some bare LFs, and a CR that ends exactly at each HASH_CHUNK boundary (its LF starts the next).
    data = bytearray((b"line of text\r\n" * (size // 14 + 1))[:size])
    for edge in range(HASH_CHUNK, size, HASH_CHUNK):
        data[edge - 1:edge + 1] = b"\r\n"
    for i in range(7, size, 100_003):
        data[i] = 0x0A
    path = tmp_path / "source"
    path.write_bytes(bytes(data))
    return path, bytes(data)


def no_kernel_copy(*args: object) -> int:
    raise OSError(errno.EXDEV, "cross-device")


@pytest.mark.parametrize("size", [0, 1, HASH_CHUNK - 1, HASH_CHUNK, 3 * HASH_CHUNK + 5])
@pytest.mark.parametrize("mode", ["kernel", "refused", "absent"])
def test_stage_copy_and_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, mode: str) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.staging.mkdir(parents=True, exist_ok=True)
    src, data = source(tmp_path, size)
    calls: list[int] = []
    real = os.copy_file_range
    if mode == "kernel":  # counted, so the test knows the kernel path ran
        monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(1) or real(*a))  # type: ignore[func-returns-value]
    elif mode == "refused":
        monkeypatch.setattr(os, "copy_file_range", no_kernel_copy)
    elif mode == "absent":
        monkeypatch.delattr(os, "copy_file_range")
    copy = store.stage_copy(src, PREFIX)
    assert copy.parent == store.staging and copy.read_bytes() == PREFIX + data
    assert src.read_bytes() == data  # the source is the caller's, unchanged
    blob_id, octets, crlf = store.hash_file(copy)
    assert blob_id == hashlib.sha256(PREFIX + data).hexdigest()
    assert octets == len(PREFIX) + len(data)
    assert crlf == crlf_size(PREFIX + data)
    assert (len(calls) > 0) == (mode == "kernel")


def test_a_copy_error_other_than_no_kernel_copy_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = BlobStore(tmp_path / "blobs")
    store.staging.mkdir(parents=True, exist_ok=True)
    src, _ = source(tmp_path, 1000)
    monkeypatch.setattr(os, "copy_file_range", full)
    with pytest.raises(OSError) as e:
        store.stage_copy(src, PREFIX)
    assert e.value.errno == errno.ENOSPC
    assert list(store.staging.iterdir()) == []  # the half-made copy is removed
