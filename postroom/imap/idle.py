"""IDLE (RFC 2177, RFC 9051 §6.3.13): push the selected mailbox's changes as they are committed.

Theory of operation
-------------------
After the `+ idling` continuation, two things are awaited at once: the next bytes from the client (the
`DONE` line) and the next change on the session's hub subscription. A change is taken (by the selected
mailbox, or by NOTIFY's filters once the client used NOTIFY: RFC 5465 §4) and reported at once (EXPUNGE
included: a command is in progress, RFC 9051 §7.5.1), and written with a flush, so a delivery reaches an
idling client as soon as its transaction commits. `DONE` ends the command with the tagged OK;
any other line ends it with BAD (RFC 2177 §3).

Both are one wait: the connection's read, which the subscription also wakes (`Connection.read_some(wake=...)`,
`HubSubscription.wake_on`), so an idling session holds one future and its timer, no task and no
`asyncio.wait` per source (measured: about 3.5 KiB less per idle session, bench/RESULTS.md). Woken by the
feed, IDLE takes every change queued and reports them in one flush.

Invariants
1. At most one read of the connection is pending (the connection's own invariant 1), and nothing else is
   awaited beside it: the subscription resolves that read's future.
2. The idle timeout of the connection still applies (RFC 9051 §5.4: a client re-issues IDLE within 29
   minutes), counted from the client's last bytes, not from the last change reported; ShuttingDown ends the
   session with BYE as between commands.
3. A store that cannot be reached does not end IDLE: a report that fails with `StoreUnavailable` (the resync
   after the PostgreSQL change feed was lost) stays pending (session invariant 7) and IDLE keeps waiting. The
   feed announces its own return (it publishes "lost" again once it listens again), which wakes IDLE to
   resync then; a client's DONE or next command tries too. Ending IDLE with a tagged `NO [UNAVAILABLE]` instead
   would tell the client nothing it can act on, and clients re-issue IDLE at once: a loop of failing resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib

from postroom.store.api import StoreError, StoreUnavailable
from postroom.store.hub import SubscriptionOverflow

from . import parser as P
from .errors import Bad, Result
from .session import IDLE_LINE_MAX, Session


async def idle(s: Session, cmd: P.Command) -> Result:
    s.write(b"+ idling\r\n")
    await _report(s)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()  # invariant 2: the idle timeout counts the client's silence, not the feed's
    while True:
        line = s.framer.next_line(IDLE_LINE_MAX)  # session invariant 2
        if isinstance(line, P.FramingError):
            raise Bad(line.text)
        if isinstance(line, bytes):
            if line.strip().upper() == b"DONE":
                return "", "IDLE terminated"
            raise Bad("Expected DONE")
        # invariant 1: one read, which the subscription wakes too (b"": woken with nothing from the client)
        data = await s.conn.read_some(interruptible=True, wake=s.sub, quiet_since=quiet_since)
        sub = s.sub
        if sub is not None and (len(sub) or sub.overflowed or sub.closed):
            if sub.closed:
                raise StoreError("subscription is closed")
            try:
                while (change := sub.get_nowait()) is not None:
                    s.take_change(change)  # to the selected mailbox, or through NOTIFY's filters (RFC 5465 §4)
            except SubscriptionOverflow:
                s.overflowed = True
            await _report(s)
        if data:
            quiet_since = loop.time()
            s.framer.feed(data)


async def _report(s: Session) -> None:
    """Report what changed, at once; with the store out of reach, later (invariant 3)."""
    with contextlib.suppress(StoreUnavailable):
        await s.notify(allow_expunge=True)
    await s.flush()
