"""The in-process change hub: every committed store write fans out to the subscribers of the user it touched.

Theory of operation: an IMAP session (or POP3, IDLE, the web page) calls `hub.subscribe(user_id)` and reads
`Change` records with `await sub.get()` or `sub.get_nowait()`. The store calls `hub.publish(changes)` on the
event loop thread once a transaction is committed. Each subscription has its own bounded buffer.

Shared mailboxes: a subscription may also *watch* one mailbox of another user (`watch(mailbox_id)`): a session
that selected a mailbox shared with its user through the mailbox's ACL (api invariant 6) receives that
mailbox's changes, and no other change of its owner. The session watches only what the ACL let it resolve and
stops watching when it leaves the mailbox or loses the right to read it (imap/acl.py).

Overflow: a subscriber that does not read (a stuck client, a session busy streaming a huge FETCH) must not make
the server grow without bound. When a change arrives and the buffer is full, the subscription drops everything
it holds and becomes *overflowed*: `get()` and `get_nowait()` raise `SubscriptionOverflow` until the owner calls
`reset()`. An IMAP session handles that as "I lost track": it re-reads the mailbox state from the store (UIDs,
flags, MODSEQ) and reports the difference, which is what it does after any resync anyway.

Invariants:
1. `publish` is called on the event loop thread (the store's writer hands batches over with
   `call_soon_threadsafe`); nothing here takes a lock or blocks.
2. A subscriber sees changes in commit order, and only those of its own user and of the one mailbox it
   watches (if any); a change of both kinds reaches it once.
3. A subscription never holds more than `maxsize` changes; overflow is sticky until `reset()`.
4. A closed subscription receives nothing and costs nothing; `close()` is idempotent.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable
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
        self.watching: int | None = None  # a mailbox of another user whose changes it receives too
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

    def watch(self, mailbox_id: int | None) -> None:
        """Receive the changes of `mailbox_id` too (module doc: shared mailboxes), instead of the mailbox
        watched before; None stops watching."""
        if self.closed or mailbox_id == self.watching:
            return
        self._hub._watch(self, self.watching, mailbox_id)
        self.watching = mailbox_id

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
        self._subs: dict[int, set[HubSubscription]] = {}
        self._watchers: dict[int, set[HubSubscription]] = {}  # mailbox id -> subscriptions watching it

    def subscribe(self, user_id: int) -> HubSubscription:
        sub = HubSubscription(self, user_id, self.maxsize)
        self._subs.setdefault(user_id, set()).add(sub)
        return sub

    def publish(self, changes: Iterable[Change]) -> None:
        subs = self._subs
        if not subs:
            return
        watchers = self._watchers
        for change in changes:
            for sub in subs.get(change.user_id, ()):
                sub._push(change)
            if watchers:
                for sub in watchers.get(change.mailbox_id, ()):
                    if sub.user_id != change.user_id:  # invariant 2: once
                        sub._push(change)

    def subscriber_count(self, user_id: int | None = None) -> int:
        if user_id is None:
            return sum(len(s) for s in self._subs.values())
        return len(self._subs.get(user_id, ()))

    def _watch(self, sub: HubSubscription, old: int | None, new: int | None) -> None:
        if old is not None:
            self._discard(self._watchers, old, sub)
        if new is not None:
            self._watchers.setdefault(new, set()).add(sub)

    def _remove(self, sub: HubSubscription) -> None:
        self._discard(self._subs, sub.user_id, sub)
        if sub.watching is not None:
            self._discard(self._watchers, sub.watching, sub)
            sub.watching = None

    @staticmethod
    def _discard(index: dict[int, set[HubSubscription]], key: int, sub: HubSubscription) -> None:
        subs = index.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[key]

