"""Privileges and file modes (issue 13 item 2): started as root with `server.user`, `postroom serve` binds its
ports, then runs as that user; the data folder and every file in it belong to that user and are not readable by
others; admin commands run as root keep it so (process.py).

Needs root and `useradd` (CI runs as root): the test creates a throwaway system user and removes it at the end.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs the suite as root)"),
    pytest.mark.skipif(shutil.which("useradd") is None or shutil.which("userdel") is None,
                       reason="needs useradd/userdel (Debian's passwd package) to make a throwaway system user"),
]


@pytest.fixture
def system_user() -> Iterator[pwd.struct_passwd]:
    name = f"prt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                    "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=60)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


@pytest.fixture
def python_for(system_user: pwd.struct_passwd) -> tuple[str, dict[str, str]]:
    """An interpreter and environment that run this checkout's Postroom as `system_user` too: the server runs
    on as that user (its later imports, its worker processes). This interpreter if the user can use it; else
    the system's of the same version over this one's site-packages (a pyenv Python under /root, mode 0700, is
    out of reach of other users); else the test is skipped, saying why."""
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe, path in ((sys.executable, str(ROOT)), (f"/usr/bin/{version}", f"{ROOT}:{site}")):
        env = {**os.environ, "PYTHONPATH": path}
        try:
            probe = subprocess.run([exe, "-c", "import cryptography.x509, uvicorn, argon2, postroom.app"],
                                   user=system_user.pw_uid, group=system_user.pw_gid, extra_groups=[],
                                   env=env, capture_output=True, timeout=60, cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return exe, env
    pytest.skip(f"no Python that the user {system_user.pw_name} may run with this checkout's dependencies "
                f"({sys.executable} and /usr/bin/{version} tried)")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder others may traverse (pytest's tmp_path lives under a 0700 folder the user could not enter)."""
    path = Path(tempfile.mkdtemp(prefix="postroom-priv-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ids_of(pid: int) -> tuple[list[int], list[int], list[int]]:
    """Real/effective/saved/fs uids, the same gids, and the supplementary groups of a process (proc(5))."""
    status = Path(f"/proc/{pid}/status").read_text()
    uids = [int(x) for x in re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()]  # type: ignore[union-attr]
    gids = [int(x) for x in re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()]  # type: ignore[union-attr]
    groups = [int(x) for x in re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()]  # type: ignore[union-attr]
    return uids, gids, groups


@pytest.mark.timeout(180)
def test_root_with_server_user_drops_privileges_and_keeps_files_private(
        system_user: pwd.struct_passwd, public_dir: Path, python_for: tuple[str, dict[str, str]]) -> None:
    python, env = python_for
    data = public_dir / "data"
    conf = public_dir / "postroom.toml"
    conf.write_text(f'[server]\ndata_dir = "{data}"\nuser = "{system_user.pw_name}"\nshutdown_grace_seconds = 1\n'
                    '[listeners]\nsmtp = "127.0.0.1:0"\nsubmission = ""\nsubmissions = ""\nimap = ""\n'
                    'imaps = "127.0.0.1:0"\npop3 = ""\npop3s = ""\nhttp = "127.0.0.1:0"\nhttps = ""\n'
                    '[delivery]\nenabled = false\n')
    conf.chmod(0o644)  # a reload reads it as the server's user
    admin = [python, "-m", "postroom", "--config", str(conf)]
    # An admin command run as root first creates the data folder: it is the user's from the start.
    subprocess.run([*admin, "domain", "add", "example.test"], check=True, capture_output=True, env=env, timeout=60)
    subprocess.run([*admin, "user", "add", "a@example.test", "--password-stdin"], input="long-password\n",
                   text=True, check=True, capture_output=True, env=env, timeout=60)

    log = public_dir / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([*admin, "serve"], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert proc.stdout is not None
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Stop with" not in text:
            line = proc.stdout.readline()
            if not line:
                break
            text += line
        assert "Stop with" in text, (text, log.read_text())
        ports = {n: int(p) for n, p in re.findall(r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)", text, re.M)}

        uids, gids, groups = ids_of(proc.pid)
        assert uids == [system_user.pw_uid] * 4, uids  # real, effective, saved, file-system: no way back
        assert gids == [system_user.pw_gid] * 4, gids
        assert 0 not in groups
        assert "privileges dropped user=" + system_user.pw_name in log.read_text()
        assert "running as root" not in log.read_text()

        # Files the server creates now (a message: database rows, a message file) belong to the user.
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as smtp:
            smtp.sendmail("x@client.test", ["a@example.test"], b"Subject: private\r\n\r\n" + b"x" * 200000 + b"\r\n")
        # An admin command run as root while it runs: what it writes is the user's too.
        subprocess.run([*admin, "user", "add", "b@example.test", "--password-stdin"], input="long-password\n",
                       text=True, check=True, capture_output=True, env=env, timeout=60)
        # SIGHUP reloads as the user (the configuration and generated certificate are readable by it).
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload result=" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload result=applied" in log.read_text(), log.read_text()

        entries = [data] + [Path(root) / name for root, dirs, files in os.walk(data) for name in dirs + files]
        assert len(entries) > 5
        assert any(p.name.endswith("-wal") for p in entries)  # the database's -wal file is among them
        for path in entries:
            st = path.lstat()
            assert st.st_uid == system_user.pw_uid and st.st_gid == system_user.pw_gid, path
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (path, oct(st.st_mode))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
