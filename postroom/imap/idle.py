"""IDLE (RFC 2177, RFC 9051 §6.3.13): push the selected mailbox's changes as they are committed.

Theory of operation
-------------------
After the `+ idling` continuation, two things are awaited at once: the next bytes from the client (the
`DONE` line) and the next change on the session's hub subscription. A change is taken (by the selected
mailbox, or by NOTIFY's filters once the client used NOTIFY: RFC 5465 §4) and reported at once (EXPUNGE
included: a command is in progress, RFC 9051 §7.5.1), and written with a flush, so a delivery reaches an
idling client as soon as its transaction commits. `DONE` ends the command with the tagged OK;
any other line ends it with BAD (RFC 2177 §3).

Invariants
1. At most one read of the connection is pending (the connection's own invariant 1): the read task is
   created once per wait and either completes or is cancelled before IDLE returns.
2. The idle timeout of the connection still applies (RFC 9051 §5.4: a client re-issues IDLE within 29
   minutes); ShuttingDown ends the session with BYE as between commands.
3. A store that cannot be reached does not end IDLE: a report that fails with `StoreUnavailable` (the resync
   after the PostgreSQL change feed was lost) stays pending (session invariant 7) and IDLE keeps waiting. The
   feed announces its own return (it publishes "lost" again once it listens again), which wakes IDLE to
   resync then; a client's DONE or next command tries too. Ending IDLE with a tagged `NO [UNAVAILABLE]` instead
   would tell the client nothing it can act on, and clients re-issue IDLE at once: a loop of failing resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from postroom.store.api import StoreUnavailable
from postroom.store.hub import SubscriptionOverflow

from . import parser as P
from .errors import Bad, Result
from .session import IDLE_LINE_MAX, Session


async def idle(s: Session, cmd: P.Command) -> Result:
    s.write(b"+ idling\r\n")
    await _report(s)
    read_task: asyncio.Task[bytes] | None = None
    change_task: asyncio.Task[Any] | None = None
    try:
        while True:
            line = s.framer.next_line(IDLE_LINE_MAX)  # session invariant 2
            if isinstance(line, P.FramingError):
                raise Bad(line.text)
            if isinstance(line, bytes):
                if line.strip().upper() == b"DONE":
                    return "", "IDLE terminated"
                raise Bad("Expected DONE")
            if read_task is None:
                read_task = asyncio.ensure_future(s.conn.read_some(interruptible=True))
            if change_task is None and s.sub is not None:
                change_task = asyncio.ensure_future(s.sub.get())
            waiting = {t for t in (read_task, change_task) if t is not None}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if change_task is not None and change_task in done:
                task, change_task = change_task, None
                try:
                    change = task.result()
                except SubscriptionOverflow:
                    s.overflowed = True
                else:
                    s.take_change(change)  # to the selected mailbox, or through NOTIFY's filters (RFC 5465 §4)
                await _report(s)
            if read_task in done:
                task, read_task = read_task, None
                s.framer.feed(task.result())  # raises ConnectionClosed / IdleTimeout / ShuttingDown
    finally:
        for t in (read_task, change_task):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t


async def _report(s: Session) -> None:
    """Report what changed, at once; with the store out of reach, later (invariant 3)."""
    with contextlib.suppress(StoreUnavailable):
        await s.notify(allow_expunge=True)
    await s.flush()
