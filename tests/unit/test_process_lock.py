"""The data folder's PID lock (process.py): one server per folder, a stale PID is ignored, and file modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from postroom.process import AlreadyRunning, PrivilegeError, ServerLock, lookup_account, own_data_dir, running_pid


def test_lock_is_exclusive_names_the_pid_and_is_released(tmp_path: Path) -> None:
    assert running_pid(tmp_path) is None  # no file yet
    first = ServerLock(tmp_path)
    first.acquire()
    assert (tmp_path / "postroom.pid").read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE((tmp_path / "postroom.pid").stat().st_mode) == 0o600
    assert running_pid(tmp_path) == os.getpid()
    # flock belongs to the open file description: a second one conflicts, in this process as in another.
    with pytest.raises(AlreadyRunning) as caught:
        ServerLock(tmp_path).acquire()
    assert caught.value.pid == os.getpid() and f"(PID {os.getpid()})" in str(caught.value)
    other = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from postroom.process import running_pid; print(running_pid(Path(sys.argv[1])))",
                            str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == str(os.getpid()), other.stderr
    first.release()
    first.release()  # harmless twice
    assert running_pid(tmp_path) is None
    assert (tmp_path / "postroom.pid").exists()  # never removed (module doc)


def test_stale_pid_of_a_dead_process_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "postroom.pid").write_text("999999\n")  # written by a server that crashed: nobody holds the lock
    assert running_pid(tmp_path) is None
    lock = ServerLock(tmp_path)
    lock.acquire()
    assert (tmp_path / "postroom.pid").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_own_data_dir_takes_group_and_other_bits_away_and_leaves_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    data.chmod(0o755)
    (data / "postroom.db").write_bytes(b"x")
    (data / "postroom.db").chmod(0o644)
    (data / "sub" / "deep").write_bytes(b"y")
    (data / "sub" / "deep").chmod(0o664)
    outside = tmp_path / "outside"
    outside.write_bytes(b"z")
    outside.chmod(0o644)
    (data / "link").symlink_to(outside)
    assert own_data_dir(data, None, deep=False) == 3  # the folder, postroom.db, sub/
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "postroom.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "sub" / "deep").stat().st_mode) == 0o664  # not walked
    assert own_data_dir(data, None, deep=True) == 1
    assert stat.S_IMODE((data / "sub" / "deep").stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a link is never followed (invariant 3)


def test_unknown_server_user_is_named() -> None:
    with pytest.raises(PrivilegeError, match="no system user 'no-such-user-here'"):
        lookup_account("no-such-user-here")
