"""Generate expected IMAP outputs for the MIME corpus from a reference server (Dovecot, from Debian).

Run as root on a machine with `dovecot-imapd` installed:

    .venv/bin/python tests/data/mime/generate_expected.py            # all messages
    .venv/bin/python tests/data/mime/generate_expected.py foo.eml    # some

It starts a throwaway Dovecot on a loopback port with a Maildir under a temporary directory and a passwd-file
user, APPENDs every `msgs/*.eml`, and for each one FETCHes ENVELOPE, BODY, BODYSTRUCTURE, RFC822.SIZE and a list
of sections, writing the exact response bytes of each item to `expected/<name>.json` (bytes as latin-1 text).
The sections fetched are every part number the message has (computed by Postroom's own scan, since that is only
a list of names to ask for; the bytes returned are Dovecot's) with .MIME / .HEADER / .TEXT where they apply, plus
HEADER, TEXT, and a HEADER.FIELDS / HEADER.FIELDS.NOT pair, and BINARY / BINARY.SIZE (RFC 3516) of every
numbered part. Dovecot is stopped by its PID when done.

The tests never need Dovecot: they compare against the committed files. Where Dovecot departs from the RFCs the
test lists the message in `DOVECOT_QUIRKS` with the reason, and Postroom follows the RFC.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MSGS = HERE / "msgs"
EXPECTED = HERE / "expected"
PORT = 31437
FIELDS = "(SUBJECT FROM X-MISSING)"

CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{d}/mail/%u
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


class Dovecot:
    """A throwaway Dovecot: start() -> PID; stop() kills exactly that PID."""

    def __init__(self, port: int = PORT) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="postroom-dovecot-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        d = self.dir
        for sub in ("run", "state", "mail", "home"):
            (d / sub).mkdir()
        os.chmod(d, 0o755)
        (d / "passwd").write_text(f"test:{{PLAIN}}pass:65534:65534::{d}/home/test\n")
        for sub in ("mail", "home"):
            os.chown(d / sub, 65534, 65534)
        (d / "dovecot.conf").write_text(CONF.format(d=d, port=self.port))
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(d / "dovecot.conf")])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """Just enough IMAP to get exact response bytes (literals included)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""
        self.n = 0
        self._line()  # greeting

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def _response(self) -> bytes:
        """One response, literals included."""
        out = self._line()
        while True:
            m = re.search(rb"\{(\d+)\}\r\n$", out)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += self.buf[:n]
            self.buf = self.buf[n:]
            out += self._line()

    def command(self, cmd: bytes, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = b"a%d" % self.n
        if literal is not None:
            self.sock.sendall(tag + b" " + cmd + b" {%d}\r\n" % len(literal))
            cont = self._response()
            assert cont.startswith(b"+"), cont
            self.sock.sendall(literal + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + cmd + b"\r\n")
        lines = []
        while True:
            r = self._response()
            if r.startswith(tag + b" "):
                if not r.startswith(tag + b" OK"):
                    raise RuntimeError(r)
                return lines
            lines.append(r)


def fetch_item(c: Client, uid: int, item: str) -> bytes:
    """The value of one FETCH item, exactly as Dovecot sent it."""
    resp = c.command(b"UID FETCH %d (%s)" % (uid, item.encode()))
    for r in resp:
        m = re.match(rb"\* \d+ FETCH \((.*)\)\r\n$", r, re.DOTALL)
        if not m:
            continue
        body = m.group(1)
        # Items come back as NAME value; drop UID and the name we asked for.
        body = re.sub(rb"^UID \d+ ", b"", body)
        body = re.sub(rb" UID \d+$", b"", body)
        name = item.replace(".PEEK", "").encode()
        if body.upper().startswith(name.upper() + b" "):
            return body[len(name) + 1 :]
        # BODY[...] answers may differ in name spelling; cut at the first space after ']' or '>'
        m2 = re.match(rb"^[A-Z0-9.]+(\[[^\]]*\])?(<\d+>)?(\s)", body)
        if m2:
            return body[m2.end() :]
        return body
    return b""


def sections_of(raw: bytes) -> list[str]:
    sys.path.insert(0, str(HERE.parents[2]))
    from postroom.mime.structure import scan, walk

    out = ["HEADER", "TEXT", f"HEADER.FIELDS {FIELDS}", f"HEADER.FIELDS.NOT {FIELDS}"]
    for sec, part in walk(scan(raw).root)[1:]:
        name = ".".join(map(str, sec))
        out.append(name)
        out.append(name + ".MIME")
        if part.message is not None:
            out += [name + ".HEADER", name + ".TEXT"]
    return out


def generate(names: list[str]) -> None:
    dv = Dovecot()
    pid = dv.start()
    print(f"dovecot pid {pid} on port {dv.port}", file=sys.stderr)
    try:
        c = Client(dv.port)
        c.command(b"LOGIN test pass")
        c.command(b"SELECT INBOX")
        EXPECTED.mkdir(exist_ok=True)
        for i, name in enumerate(names, 1):
            raw = (MSGS / name).read_bytes()
            c.command(b"APPEND INBOX", raw)
            uid = i
            out: dict[str, str] = {}
            for item in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.SIZE"):
                out[item] = fetch_item(c, uid, item).decode("latin-1")
            for sec in sections_of(raw):
                out["BODY[" + sec + "]"] = fetch_item(c, uid, f"BODY.PEEK[{sec}]").decode("latin-1")
                if re.fullmatch(r"[0-9.]+", sec):
                    # RFC 3516: decoded content; a NO (e.g. [UNKNOWN-CTE]) is recorded as "NO".
                    for item in (f"BINARY.PEEK[{sec}]", f"BINARY.SIZE[{sec}]"):
                        try:
                            value = fetch_item(c, uid, item)
                        except RuntimeError:
                            value = b"NO"
                        out[item.replace(".PEEK", "")] = value.decode("latin-1")
            (EXPECTED / (name[:-4] + ".json")).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
            print(f"[{i}/{len(names)}] {name}", file=sys.stderr)
    finally:
        dv.stop()


def main(argv: list[str]) -> None:
    names = argv or sorted(p.name for p in MSGS.glob("*.eml"))
    generate(names)


if __name__ == "__main__":
    main(sys.argv[1:])
