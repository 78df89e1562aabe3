"""`store.blobs.blob_id_of`: the SHA-256 (FIPS 180-4) of `prefix` + `data` whatever way it is fed to the hash (in
pieces that keep the GIL up to `GIL_HELD_MAX` bytes, in one update above), never joining the two."""

from __future__ import annotations

import hashlib
import random

from postroom.store.blobs import GIL_HELD_MAX, GIL_PIECE, blob_id_of

# FIPS 180-2 Appendix B.1 and B.2 (one-block and two-block messages).
ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
TWO_BLOCK = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
TWO_BLOCK_ID = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"


def test_the_standards_examples_at_every_split() -> None:
    for at in range(4):
        assert blob_id_of(b"abc"[at:], b"abc"[:at]) == ABC
    for at in range(len(TWO_BLOCK) + 1):
        assert blob_id_of(TWO_BLOCK[at:], TWO_BLOCK[:at]) == TWO_BLOCK_ID


def test_sizes_around_the_piece_and_the_threshold_equal_the_hash_of_the_joined_bytes() -> None:
    rng = random.Random(180)
    sizes = [0, 1, GIL_PIECE - 1, GIL_PIECE, GIL_PIECE + 1, 2 * GIL_PIECE, 5000,
             GIL_HELD_MAX - 1, GIL_HELD_MAX, GIL_HELD_MAX + 1, 3 * GIL_HELD_MAX]
    for total in sizes:
        whole = rng.randbytes(total)
        for at in {0, 1, total // 2, max(total - GIL_PIECE, 0), total}:
            assert blob_id_of(whole[at:], whole[:at]) == hashlib.sha256(whole).hexdigest(), (total, at)


def test_a_memoryview_or_bytearray_body_hashes_alike() -> None:
    body = bytes(range(256)) * 20
    assert blob_id_of(bytearray(body), b"Return-Path: <>\r\n") == \
        hashlib.sha256(b"Return-Path: <>\r\n" + body).hexdigest()
