"""A private, throwaway Dovecot for the benchmarks (bench/imap.py, bench/pop3.py).

    dv = PrivateDovecot(base, ["imap"], USER, "{PLAIN}secret", folders=["Drafts"])
    dv.fill(messages)   # base/Maildir/cur, one file per message (LF line ends, S= and W= sizes in the name)
    dv.start()          # writes base/passwd and base/dovecot.conf, runs `dovecot -F -c ...`, waits for greetings
    port = dv.ports["imap"]
    ...
    dv.stop()           # SIGTERM to the master by its PID (it takes its children down), SIGKILL if it lingers

Debian's dovecot-imapd / dovecot-pop3d (2.3): one passwd-file user with a static userdb, plaintext logins, no
TLS unless `tls` names a certificate and key (then also each protocol's implicit-TLS listener, `imaps` /
`pop3s`, on a free port of its own: `tls_ports`; Dovecot's defaults otherwise, so an imaps session is an
imap-login process holding the TLS plus the imap process), each protocol's listener on a free high 127.0.0.1
port, base_dir, state_dir and the log under base, so nothing of the system's Dovecot is used. Dovecot will not
run mail processes as root: as root the mail user is `nobody`, base is chowned to it, and base's parent is made
0755 so that nobody can reach it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from common import Server, free_port, progress, wait_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
GREETING = {"imap": b"* OK", "pop3": b"+OK"}


def available() -> bool:
    return os.path.exists(DOVECOT)


def version() -> str:
    try:
        return subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=False).stdout.split()[0]
    except (OSError, IndexError):
        return "?"


class PrivateDovecot(Server):
    """protocols: "imap" and/or "pop3". password: the passwd-file entry with its scheme, e.g. "{PLAIN}secret".

    folders: more Maildir++ folders besides INBOX (e.g. "Drafts"). limit: if given, the process and client
    limits (and per-user connections) are raised to serve that many sessions at once. extra: more lines for
    dovecot.conf (e.g. "auth_cache_size = 10M"). tls: (certificate, key) PEM files: the implicit-TLS listeners
    on too (`tls_ports`).
    """

    stop_timeout = 15.0

    def __init__(self, base: Path, protocols: Sequence[str], user: str, password: str,
                 folders: Sequence[str] = (), limit: int | None = None, extra: str = "",
                 tls: tuple[Path, Path] | None = None) -> None:
        if not available():
            pkgs = " ".join(f"dovecot-{p}d" for p in protocols)
            raise RuntimeError(f"dovecot not installed (Debian: apt-get install {pkgs})")
        self.base = base
        self.maildir = base / "Maildir"
        self.conf = base / "dovecot.conf"
        self.protocols = list(protocols)
        self.user, self.password = user, password
        self.limit = limit
        self.extra = extra  # more dovecot.conf lines (e.g. "auth_cache_size = 10M")
        self.ports = {p: free_port() for p in self.protocols}
        self.tls = tls
        self.tls_ports = {p: free_port() for p in self.protocols} if tls else {}
        for folder in ["", *(f".{f}" for f in folders)]:
            for sub in ("cur", "new", "tmp"):
                (self.maildir / folder / sub).mkdir(parents=True)

    def fill(self, messages: Sequence[bytes]) -> None:
        now = int(time.time())
        for i, m in enumerate(messages):
            lf = m.replace(b"\r\n", b"\n")  # Maildir files have LF line ends; Dovecot sends CRLF
            (self.maildir / "cur" / f"{now}.M{i}P1.bench,S={len(lf)},W={len(m)}:2,").write_bytes(lf)
            if i % 500 == 499 or i == len(messages) - 1:
                progress(f"\r  filling Dovecot Maildir {i + 1:>6}/{len(messages)}", end="")
        progress()

    def configure(self) -> None:
        d = self.base
        (d / "passwd").write_text(f"{self.user}:{self.password}::::::\n")
        if os.geteuid() == 0:  # Dovecot will not run mail processes as root: use nobody, and give it the files
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for path in [d, *d.rglob("*")]:
                os.chown(path, uid, gid)
            d.parent.chmod(0o755)
        else:
            uid, gid = os.getuid(), os.getgid()
        limits = ""
        if self.limit is not None:
            # anvil counts every login process and auth connection: the client limit above their sum
            limits = f"default_process_limit = {self.limit}\ndefault_client_limit = {self.limit * 4}\n"
            limits += "".join(f"protocol {p} {{\n  mail_max_userip_connections = {self.limit}\n}}\n"
                              for p in self.protocols)
        services = "".join(f"""service {p}-login {{
  inet_listener {p} {{
    port = {port}
  }}
  inet_listener {p}s {{
    port = {self.tls_ports.get(p, 0)}
  }}
}}
""" for p, port in self.ports.items())
        ssl = "ssl = no"
        if self.tls is not None:
            cert, key = (d / "tls-cert.pem", d / "tls-key.pem")
            shutil.copyfile(self.tls[0], cert)
            shutil.copyfile(self.tls[1], key)
            ssl = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"
        self.conf.write_text(f"""
protocols = {" ".join(self.protocols)}
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}
}}
mail_location = maildir:{self.maildir}
{self.extra}
{limits}{services}""")

    def start(self, timeout: float = 30.0) -> None:
        self.configure()
        with open(self.base / "dovecot.stderr", "wb") as log:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)
        try:
            self.wait(timeout)
        except BaseException:
            self.stop()
            raise

    def wait(self, timeout: float = 30.0) -> None:
        for p, port in self.ports.items():
            wait_port(port, self.proc, "dovecot", GREETING[p], timeout)
        for port in self.tls_ports.values():
            wait_port(port, self.proc, "dovecot", None, timeout)
