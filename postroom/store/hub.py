"""The in-process change hub: every committed store write fans out to the subscribers of the user it touched.

Theory of operation: an IMAP session (or POP3, IDLE, the web page) calls `hub.subscribe(user_id)` and reads
`Change` records with `await sub.get()` or `sub.get_nowait()`. The store calls `hub.publish(changes)` on the
event loop thread once a transaction is committed. Each subscription has its own bounded buffer.

Other processes: the hub itself is in-process, and what this process's store commits is published here by
its writer (the fast path). What other processes using the same store commit (`postroom sendmail`, `postroom
import`, another server) is published here by the store's cross-process feed (store/sqlite/feed.py), in the
same commit order, a few tens of milliseconds later. When the feed cannot tell what was missed (this process
fell behind the pruning of the change table), it calls `publish_lost()`: every subscription overflows.

Overflow: a subscriber that does not read (a stuck client, a session busy streaming a huge FETCH) must not make
the server grow without bound. When a change arrives and the buffer is full, the subscription drops everything
it holds and becomes *overflowed*: `get()` and `get_nowait()` raise `SubscriptionOverflow` until the owner calls
`reset()`. An IMAP session handles that as "I lost track": it re-reads the mailbox state from the store (UIDs,
flags, MODSEQ) and reports the difference, which is what it does after any resync anyway.

Invariants:
1. `publish` is called on the event loop thread (the store's writer hands batches over with
   `call_soon_threadsafe`); nothing here takes a lock or blocks.
2. A subscriber sees changes in commit order, and only those of its own user: the changes of every process
   using the store, each once (feed.py invariant 3), or an overflow where some were lost.
3. A subscription never holds more than `maxsize` changes; overflow is sticky until `reset()`.
4. A closed subscription receives nothing and costs nothing; `close()` is idempotent.
5. `on_first_subscriber`, if set, is called on the event loop thread inside the `subscribe()` that takes the
   number of subscriptions from 0 to 1, before it returns: the cross-process feed, which does nothing while
   nobody listens, notes there where the new subscriber's changes begin (feed.py invariant 5).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Self

from postroom.store.api import Change, StoreError

DEFAULT_MAXSIZE = 4096


class SubscriptionOverflow(StoreError):
    """The subscriber fell more than `maxsize` changes behind; it must resync from the store and `reset()`."""


class HubSubscription:
    """One subscriber's buffer. Implements `api.Subscription`, plus `overflowed` and `reset()`."""

    def __init__(self, hub: Hub, user_id: int, maxsize: int) -> None:
        self.user_id = user_id
        self.maxsize = maxsize
        self.overflowed = False
        self.closed = False
        self._hub = hub
        self._buffer: collections.deque[Change] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    # ---- the hub's side
    def _push(self, change: Change) -> None:
        if self.closed or self.overflowed:
            return
        if len(self._buffer) >= self.maxsize:
            self._buffer.clear()
            self.overflowed = True
        else:
            self._buffer.append(change)
        self._wake()

    def _overflow(self) -> None:
        if self.closed or self.overflowed:
            return
        self._buffer.clear()
        self.overflowed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- the subscriber's side
    def __len__(self) -> int:
        return len(self._buffer)

    def get_nowait(self) -> Change | None:
        if self.overflowed:
            raise SubscriptionOverflow(f"change feed of user {self.user_id} overflowed ({self.maxsize} changes)")
        if self._buffer:
            return self._buffer.popleft()
        return None

    async def get(self) -> Change:
        while True:
            change = self.get_nowait()
            if change is not None:
                return change
            if self.closed:
                raise StoreError("subscription is closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def reset(self) -> None:
        """Clear the overflow mark (and anything buffered): call it right before re-reading the store."""
        self._buffer.clear()
        self.overflowed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        self._hub._remove(self)
        self._wake()

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        while not self.closed:
            try:
                yield await self.get()
            except StoreError:
                if self.closed:
                    return
                raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """In-process `api.ChangeHub`."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self.maxsize = maxsize
        self.on_first_subscriber: Callable[[], None] | None = None  # invariant 5
        self._subs: dict[int, set[HubSubscription]] = {}
        self._count = 0

    def subscribe(self, user_id: int) -> HubSubscription:
        sub = HubSubscription(self, user_id, self.maxsize)
        self._subs.setdefault(user_id, set()).add(sub)
        self._count += 1
        if self._count == 1 and self.on_first_subscriber is not None:
            self.on_first_subscriber()
        return sub

    def publish(self, changes: Iterable[Change]) -> None:
        subs = self._subs
        if not subs:
            return
        for change in changes:
            for sub in subs.get(change.user_id, ()):
                sub._push(change)

    def publish_lost(self) -> None:
        """Some committed changes cannot be delivered (the cross-process feed fell behind its pruning): every
        subscription overflows, so each subscriber resyncs from the store (invariant 3's overflow)."""
        for subs in self._subs.values():
            for sub in subs:
                sub._overflow()

    def subscriber_count(self, user_id: int | None = None) -> int:
        if user_id is None:
            return self._count
        return len(self._subs.get(user_id, ()))

    def _remove(self, sub: HubSubscription) -> None:
        subs = self._subs.get(sub.user_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del self._subs[sub.user_id]

