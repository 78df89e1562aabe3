"""Helpers of the IMAP end-to-end tests: wiring the IMAP handler into the test server, and a tiny raw client.

`wire_imap(monkeypatch)` puts `imap_handler` on the "imap" and "imaps" listeners before the `server` fixture
starts Postroom (so the tests run whether or not app.py wires IMAP yet). `Raw` speaks bytes over a socket:
`cmd("a1 NOOP")` sends one line and returns every line up to the tagged one, literals inlined.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest

from postroom import app
from postroom.imap.session import imap_handler
from postroom.store.api import AppendRequest


def wire_imap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.HANDLER_FACTORIES, "imap", imap_handler)
    monkeypatch.setitem(app.HANDLER_FACTORIES, "imaps", imap_handler)


def message(i: int, subject: str = "", extra: str = "") -> bytes:
    subject = subject or f"note {i}"
    return (f"From: Ann Example <ann@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Date: Mon, 5 Feb 2024 10:0{i % 10}:00 +0000\r\nMessage-ID: <m{i}@example.org>\r\n{extra}\r\n"
            f"body number {i}\r\n").encode()


def fill(server: Any, address: str, password: str, count: int, mailbox: str = "INBOX") -> int:
    """A user with `count` messages (metadata computed, as delivery does); returns the mailbox id."""
    from postroom.mime.meta import compute_meta

    u = server.run(server.store.get_user(address)) or server.add_user(address, password)
    mbox = server.run(server.store.get_mailbox(u.id, mailbox))
    reqs = [AppendRequest(raw=message(i), meta=compute_meta(message(i)).to_bytes()) for i in range(1, count + 1)]
    if reqs:
        server.run(server.store.append_many(mbox.id, reqs))
    return int(mbox.id)


class Raw:
    def __init__(self, port: int, ctx: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock: socket.socket = ctx.wrap_socket(sock) if ctx is not None else sock
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.file.readline(1 << 20)
        if not line:
            raise ConnectionError("closed")
        while line.endswith(b"}\r\n"):  # a literal follows: read it and the rest of the line
            start = line.rfind(b"{")
            n = int(line[start + 1:-3].rstrip(b"+"))
            line = line + self.file.read(n) + self.file.readline(1 << 20)
        return line

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def cmd(self, text: str | bytes) -> list[bytes]:
        data = text.encode() if isinstance(text, str) else text
        self.send(data + b"\r\n")
        return self.until(data.split(b" ", 1)[0])

    def login(self, user: str, password: str) -> None:
        assert b" OK " in self.cmd(f'L LOGIN "{user}" "{password}"')[-1]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
