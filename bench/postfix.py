"""A private, throwaway Postfix instance for the benchmarks (bench/smtp.py, bench/outbound.py).

    pf = PrivatePostfix(base_dir, smtpd_port, {"virtual_mailbox_domains": "example.org", ...})
    pf.start()          # writes base/etc/{main,master}.cf, runs `postfix -c base/etc check` then `start`
    ...
    pf.stop()           # `postfix -c base/etc stop`, then waits for the master PID (SIGKILL by that PID if needed)

What this needs, learned the hard way with Debian's Postfix 3.7 (run as root):

- `postfix -c DIR start` works for any DIR when run by root (the `postfix` command is root-only anyway):
  `alternate_config_directories` in the default main.cf (/etc/postfix) only matters for the set-gid programs
  (sendmail/postdrop) run by other users, so the system's configuration is never touched. `postfix` passes
  `MAIL_CONFIG=DIR` on to postfix-script and master, so every daemon reads DIR/main.cf.
- The `postfix` command prints its errors on stderr only when stderr is a terminal; otherwise they go to the
  log. The Debian build logs to syslog, which is not running here, so a failed start says nothing at all.
  Here `maillog_file` (Postfix 3.4+, written by the `postlog` service, postlogd) points to base/maillog, and
  `maillog_file_prefixes` must allow that path (its default is "/var, /dev/stdout", and a value outside it is
  a fatal error). Before postlogd runs, the `postfix` command writes that file itself, so failures of
  `check` and `start` land there too; `start()` quotes its tail in the exception.
- `data_directory` must be owned by `mail_owner` (postfix), else `check` complains.
- The shipped master.cf runs most daemons chrooted (`y`), which needs a populated chroot under the queue
  directory (etc/services, resolv.conf, ...); the master.cf written here runs nothing chrooted.
- The queue's subdirectories and their ownership are made by `postfix check` (post-install create-missing).
- The postfix user must be able to search every directory above the instance (the `virtual` agent writes the
  Maildir as that user): `start()` makes base 0755; callers put base in a world-searchable directory (not in a
  `mkdtemp` directory, which is 0700, unless they chmod it).
- `postfix -c DIR stop` signals the master (PID in queue_directory/pid/master.pid), which takes its children
  down with it; `stop()` then waits for that PID and kills it by that PID if it lingers.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin") or "/usr/sbin/postfix"

# Every service postfix needs for SMTP in, queue, virtual/smtp delivery and logging; nothing chrooted.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    """Postfix installed and we are root (postfix's master must start as root)."""
    if os.geteuid() != 0 or not os.path.exists(POSTFIX):
        return False
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return False
    return True


def postfix_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postfix")
    return pw.pw_uid, pw.pw_gid


def make_maildir(path: Path) -> None:
    """An empty Maildir (tmp/new/cur) that the postfix user can deliver into."""
    uid, gid = postfix_ids()
    for sub in ("", "tmp", "new", "cur"):
        d = path / sub if sub else path
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is as good as gone (the master is not our child, init reaps it)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


class PrivatePostfix:
    def __init__(self, base: Path, port: int, main: dict[str, str] | None = None, master_extra: str = "") -> None:
        self.base = base
        self.port = port
        self.conf = base / "etc"
        self.queue = base / "spool"
        self.data = base / "data"
        self.maillog = base / "maillog"
        self.extra_main = main or {}
        self.master_extra = master_extra
        self.master_pid: int | None = None

    def main_cf(self) -> dict[str, str]:
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.localdomain",
            "mydomain": "localdomain",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "smtputf8_enable": "no",
        }
        main.update(self.extra_main)
        return main

    def start(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        uid, gid = postfix_ids()
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        os.chown(self.data, uid, gid)
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}") + self.master_extra)
        env = dict(os.environ, MAIL_CONFIG=str(self.conf))
        for step in ("check", "start"):
            proc = subprocess.run([POSTFIX, "-c", str(self.conf), step], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"postfix {step} failed (exit {proc.returncode}): "
                                   f"{(proc.stderr + proc.stdout).strip()} {self.log_tail()}".strip())
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.master_pid = int(pid_file.read_text().split()[0])
                break
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if self.master_pid is None:
            raise RuntimeError(f"postfix master did not write {pid_file} {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.maillog.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "| log: " + " / ".join(text[-lines:])

    def postqueue_count(self) -> int:
        """Messages still in the queue (incoming, active, deferred, hold), counted from the spool directories."""
        n = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _, _, files in os.walk(self.queue / sub):
                n += len(files)
        return n

    def stop(self) -> None:
        pid = self.master_pid
        if pid is None:
            try:
                pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return  # never started
        env = dict(os.environ, MAIL_CONFIG=str(self.conf))
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], env=env, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.master_pid = None
