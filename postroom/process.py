"""The server process and its data folder: one server per folder (PID lock), privileges, file modes.

Theory of operation
-------------------
*One server per data folder.* `postroom serve` takes `ServerLock` on `<data_dir>/postroom.pid` before anything
else: an exclusive `fcntl.flock` on the file, and the PID written into it. A second, independent `postroom serve`
on the same folder finds the lock held and refuses, naming the PID it reads there. The kernel drops a flock
when its holder exits, however it exits, so a crashed server never blocks the next start (the stale PID in the
file is simply overwritten). The file is never removed (an unlink racing a starter could let two servers each
hold a lock on a different inode); a stopped server leaves it empty. `running_pid` is how `postroom reload`
finds the server to signal: the PID counts only while its lock is held. Admin commands and `sendmail` never take
this lock: they share the folder with the running server (SQLite in WAL mode and the store's own lock).

*Privileges.* Started as root with `server.user` set, the server binds its ports first (they may be below 1024),
then hands the data folder to that user (`own_data_dir`: owner and group changed, group/other permissions taken
away, for every entry not yet right), then drops to it for good (`drop_privileges`: supplementary groups, gid,
uid, in that order, and checks that root cannot be regained), and only then opens the store. Admin commands run
as root with `server.user` set drop the same way before they open the store, so every file they create belongs
to that user too. Started as root without `server.user`, the server runs on as root and logs a warning: the
Quickstart and CI do this on high ports.

*File modes.* The data folder is private to its owner: `PRIVATE_UMASK` (077) is the umask of `postroom serve` and
of the admin commands, so SQLite's database and its -wal/-shm files, message files, staging files, list
moderation files and Maildir exports are created 0600 and folders 0700; files Postroom writes itself with an
explicit mode (the server secret, TLS keys, the demo password, message files) use 0600 regardless of the umask.
`own_data_dir(deep=False)` tightens the folder itself and its top-level entries at every start, which covers a
folder made by an older version with looser modes (nothing below a 0700 folder is reachable by others).

*Memory.* `tune_malloc` caps glibc's malloc arenas at two (`M_ARENA_MAX`, mallopt(3)) at the start of `postroom
serve`, before the fork of `server.workers`, which inherit it. By default every thread that allocates gets an
arena of its own (up to 8 per CPU) and keeps the memory freed into it: the threads that read and write the 1 MiB
pieces of staged messages (to_thread, the store's writer) left tens of MiB each in their arenas. Measured with
20 SMTP sessions each sending 50 MB at once (bench/smtp_memory.py, bench/RESULTS.md 2026-12-01): the server
processes' peak fell from 157 MiB PSS to 119, their CPU for the load unchanged (19.8 s, 19.5); small messages
(bench/smtp_cpu.py, alternated four times on a loaded machine) 6.72 ms against 6.28 ms a message, within that
machine's noise but not ruled out (bench/RESULTS.md). A fixed 256 KiB
`M_MMAP_THRESHOLD` as well took it to 110 but cost 44 % more CPU (every 1 MiB piece mapped and faulted in
afresh), so it is not set. A MALLOC_ARENA_MAX in the environment (glibc's own way to set it) is left to win.
Nothing happens on a C library without `mallopt`.

Invariants
1. At most one process holds the lock of a data folder; a process that holds it has its PID in the file.
2. After `drop_privileges` returns, the process cannot become root again (checked, not assumed).
3. `own_data_dir` never follows a symbolic link (lchown; links are not chmod'ed), so a link planted in the data
   folder cannot make root change a file outside it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("postroom")

PRIVATE_UMASK = 0o077
PID_FILE = "postroom.pid"


class AlreadyRunning(Exception):
    """Another `postroom serve` holds the data folder's lock. The message names its PID and the folder."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class PrivilegeError(Exception):
    """`server.user` cannot be used (unknown user, or a non-root process asked to switch). For the operator."""


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class ServerLock:
    """The PID lock of a data folder (invariant 1). `acquire()` raises AlreadyRunning; `release()` is idempotent."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / PID_FILE
        self._fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"PID {pid}" if pid else "a process that has not written its PID yet"
            raise AlreadyRunning(f"another postroom serve ({who}) is running on the data folder {self.path.parent}; "
                                 f"stop it first, or give this one its own server.data_dir", pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor holding the lock (-1 when not held): a forked worker closes its copy (workers.py)."""
        return self._fd

    def chown(self, uid: int, gid: int) -> None:
        """Give the PID file to the server's user (before the privilege drop), so it can empty it at the end."""
        if self._fd >= 0:
            os.fchown(self._fd, uid, gid)

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, 0)  # a stopped server leaves no PID behind; the file itself stays (module doc)
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = -1


def running_pid(data_dir: Path) -> int | None:
    """The PID of the `postroom serve` holding `data_dir`'s lock, or None when no server holds it."""
    try:
        fd = os.open(Path(data_dir) / PID_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: a PID still written there is stale
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# Privileges


@dataclass(frozen=True)
class Account:
    """A system user to run as: its name, uid, primary gid and every group it belongs to."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def lookup_account(name: str) -> Account:
    """The account `server.user` names. Raises PrivilegeError when there is no such user."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"server.user: there is no system user {name!r} (create one, e.g. "
                             f"useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin {name})") from None
    return Account(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)))


def switch_needed(user: str) -> Account | None:
    """The account to drop to, when this process is root and `user` (server.user) is set; None otherwise.
    Raises PrivilegeError when `user` is set, unknown, or set while running as another non-root user."""
    if not user:
        return None
    account = lookup_account(user)
    euid = os.geteuid()
    if euid == 0:
        return account
    if euid == account.uid:
        return None  # already that user (started by systemd with User=, say)
    raise PrivilegeError(f"server.user is {user!r} but this process runs as uid {euid}, which cannot switch users: "
                         f"start it as root (it drops to {user} after binding its ports) or as {user}")


def drop_privileges(account: Account) -> None:
    """Become `account` for good: supplementary groups, then gid, then uid (the other order would leave no
    right to change the groups). Raises PrivilegeError when root could be regained (invariant 2)."""
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"could regain root after switching to {account.name}; refusing to run")


def own_data_dir(path: Path, account: Account | None, *, deep: bool) -> int:
    """Make `path` private: entries group/other could use lose those permission bits, and with `account`
    every entry not owned by it is given to it (lchown: links are not followed, invariant 3). With `deep`
    the whole tree is walked (the server's start as root: once the folder is the user's, this only reads);
    else the folder and its direct entries (the database, its -wal/-shm, the secret, the PID file). Returns
    the number of entries changed."""
    changed = 0

    def fix(p: str, st: os.stat_result) -> None:
        nonlocal changed
        touched = False
        if account is not None and (st.st_uid != account.uid or st.st_gid != account.gid):
            os.lchown(p, account.uid, account.gid)
            touched = True
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o077)
            touched = True
        changed += touched

    fix(str(path), os.lstat(path))
    if deep:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                p = os.path.join(root, name)
                fix(p, os.lstat(p))
    else:
        with os.scandir(path) as it:
            for entry in it:
                fix(entry.path, entry.stat(follow_symlinks=False))
    return changed


M_ARENA_MAX = -8  # glibc <malloc.h> mallopt parameter number
ARENA_MAX = 2  # malloc arenas per process: the main one and one that the threads share


def tune_malloc() -> dict[str, int]:
    """Set glibc's M_ARENA_MAX for a server process (module doc, "Memory"), unless the environment sets it
    (MALLOC_ARENA_MAX). Returns the parameters set, by name; {} on a C library without `mallopt`. Never raises."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if "MALLOC_ARENA_MAX" in os.environ or mallopt(M_ARENA_MAX, ARENA_MAX) != 1:  # mallopt returns 1 on success
        return {}
    return {"MALLOC_ARENA_MAX": ARENA_MAX}
