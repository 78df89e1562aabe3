"""Helpers of the SMTP end-to-end tests: a raw dialogue over implicit TLS, for what smtplib cannot send
(SCRAM exchanges, BDAT chunks, exact bytes).

    with smtps_dialogue(server) as (sock, reply):   # greeting already read
        sock.sendall(b"EHLO x\\r\\n")
        assert reply().startswith(b"250")           # every line of one reply (RFC 5321 §4.2.1 multiline)
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def smtps_dialogue(server: Any, listener: str = "submissions",
                   ctx: ssl.SSLContext | None = None) -> Iterator[tuple[ssl.SSLSocket, Callable[[], bytes]]]:
    """A TLS connection to `listener` of the test server, its greeting read: the socket and a reader of one
    whole reply (all its lines joined)."""
    ctx = ctx or server.tls_client_context()
    with socket.create_connection(("127.0.0.1", server.port(listener)), timeout=10) as raw, \
            ctx.wrap_socket(raw) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            lines = []
            while True:
                line = f.readline()
                lines.append(line)
                if line[3:4] != b"-":
                    return b"".join(lines)

        reply()
        yield s, reply


def submission_login(server: Any, user: str, password: str) -> smtplib.SMTP:
    """smtplib on the `submission` listener: EHLO, STARTTLS (RFC 3207), EHLO again, AUTH as `user`."""
    c = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10)
    c.ehlo("laptop")
    c.starttls(context=server.tls_client_context())
    c.ehlo("laptop")
    c.login(user, password)
    return c


def inbox(server: Any, address: str) -> list[bytes]:
    """The bytes of every message in `address`'s INBOX on the test server, oldest first (as stored: with the
    Return-Path and Received fields delivery adds)."""
    async def go() -> list[bytes]:
        user = await server.store.get_user(address)
        box = await server.store.get_mailbox(user.id, "INBOX")
        return [await server.store.read_message(m.blob_id) for m in await server.store.list_messages(box.id)]

    return server.run(go())
