"""The moderation queue on disk (delivery/lists.py `HeldPosts`, invariant 2): a held post is handled by one
request at a time, whichever process it runs in; after it is dropped nobody can take it again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from postroom.delivery.lists import HeldPosts


def test_one_claim_at_a_time_then_none_after_the_drop(tmp_path: Path) -> None:
    held = HeldPosts(tmp_path / "held")
    token = asyncio.run(held.hold("team@example.org", "x@remote.test", b"Subject: hi\r\n\r\nbody\r\n"))
    first = held.claim(token)
    assert first is not None
    assert held.claim(token) is None  # a second request (a double click) finds it taken
    # ... and so does another process (a second worker): flock locks are per open file, across processes.
    probe = ("import sys; from pathlib import Path; from postroom.delivery.lists import HeldPosts; "
             "sys.exit(0 if HeldPosts(Path(sys.argv[1])).claim(sys.argv[2]) is None else 1)")
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path / "held"), token]).returncode == 0
    asyncio.run(held.drop(token))
    held.release(first)
    assert held.claim(token) is None  # handled: gone
    assert asyncio.run(held.get(token)) is None


def test_a_released_claim_can_be_taken_again(tmp_path: Path) -> None:
    """A handler that did not drop the post (it failed, or its process died: the lock goes with the descriptor)
    leaves it held for the next approval: at least once, never twice at once."""
    held = HeldPosts(tmp_path / "held")
    token = asyncio.run(held.hold("team@example.org", "x@remote.test", b"Subject: hi\r\n\r\nbody\r\n"))
    fd = held.claim(token)
    assert fd is not None
    held.release(fd)
    again = held.claim(token)
    assert again is not None
    os.close(again)
    assert held.claim("../../postroom.db") is None and held.claim("0" * 32) is None
