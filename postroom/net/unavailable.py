"""Honest placeholder sessions for listeners whose protocol is not implemented yet.

Theory of operation
-------------------
A listener that is switched on but has no session behind it must not pretend: it advertises nothing and
accepts nothing, and says so in the protocol's own way of refusing service at the greeting.

- SMTP: RFC 5321 §3.1 / §4.3.1: a 554 greeting. The server then waits for QUIT, answering every other
  command with 503 (bad sequence), and closes after `221`.
- IMAP: RFC 9051 §7.1.5: an untagged BYE as the greeting, then close.
- POP3: RFC 1939 §3 allows only +OK or -ERR greetings; -ERR with the RFC 3206 [SYS/PERM] response code (RFC
  2449 §8), then close.

Invariants
1. Nothing is advertised and no command other than QUIT ever gets a positive reply.
2. Line limits and the per-session error limit hold here as everywhere: an overlong line gets 500 and the
   session goes on (RFC 5321 §4.5.3.1.4); too many errors end the session with 421.
"""

from __future__ import annotations

from postroom.net.connection import Connection, IdleTimeout, LineTooLong, ShuttingDown
from postroom.net.listener import Handler


def smtp_greeting(hostname: str) -> bytes:
    return f"554 5.3.2 {hostname} Postroom: no SMTP service on this listener yet\r\n".encode()


IMAP_GREETING = b"* BYE [UNAVAILABLE] Postroom: no IMAP service on this listener yet\r\n"
POP3_GREETING = b"-ERR [SYS/PERM] Postroom: no POP3 service on this listener yet\r\n"

SMTP_BYE = b"221 2.0.0 Bye\r\n"
SMTP_BAD_SEQUENCE = b"503 5.5.1 No SMTP service on this listener; only QUIT is accepted\r\n"
SMTP_LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"


def unavailable_handler(protocol: str, hostname: str) -> Handler:
    """A session handler for `protocol` ("smtp", "imap", "pop3") that refuses service honestly."""
    if protocol == "smtp":
        return _smtp_handler(hostname)
    if protocol == "imap":
        return _oneshot(IMAP_GREETING)
    if protocol == "pop3":
        return _oneshot(POP3_GREETING)
    raise ValueError(f"no unavailable-service handler for protocol {protocol!r}")


def _oneshot(greeting: bytes) -> Handler:
    async def handler(conn: Connection) -> None:
        conn.write(greeting)
        await conn.drain()
        conn.end = "unavailable"

    return handler


def _smtp_handler(hostname: str) -> Handler:
    greeting = smtp_greeting(hostname)
    too_many_errors = f"421 4.7.0 {hostname} Too many errors, closing connection\r\n".encode()
    timeout = f"421 4.4.2 {hostname} Idle timeout, closing connection\r\n".encode()
    shutdown = f"421 4.3.2 {hostname} Shutting down\r\n".encode()

    async def handler(conn: Connection) -> None:
        conn.write(greeting)
        await conn.drain()
        errors = 0
        while True:
            try:
                line = await conn.read_line()
            except LineTooLong:
                reply = SMTP_LINE_TOO_LONG  # RFC 5321 §4.5.3.1.4: 500, and the session goes on
            except IdleTimeout:
                conn.write(timeout)  # RFC 5321 §4.5.3.2.7 allows closing after the idle timeout; say so
                return
            except ShuttingDown:
                conn.write(shutdown)  # RFC 5321 §3.8: 421 when the service must shut down
                return
            else:
                words = line.split(None, 1)
                if len(words) == 1 and words[0].upper() == b"QUIT":
                    conn.write(SMTP_BYE)  # RFC 5321 §4.1.1.10
                    conn.end = "quit"
                    return
                reply = SMTP_BAD_SEQUENCE  # RFC 5321 §3.1: after 554, 503 to everything but QUIT
            errors += 1
            if errors >= conn.limits.errors_per_session:
                conn.write(too_many_errors)
                conn.end = "errors"
                return
            conn.write(reply)
            await conn.drain()

    return handler
