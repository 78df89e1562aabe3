"""The in-process change hub: every committed store write fans out to the subscribers of the user it touched.

Theory of operation: an IMAP session (or POP3, IDLE, the web page) calls `hub.subscribe(user_id)` and reads
`Change` records with `await sub.get()` or `sub.get_nowait()`. The store calls `hub.publish(changes)` on the
event loop thread once a transaction is committed. Each subscription has its own bounded buffer.

Shared mailboxes: a subscription may also *watch* one mailbox of another user (`watch(mailbox_id)`): a session
that selected a mailbox shared with its user through the mailbox's ACL (api invariant 6) receives that
mailbox's changes, and no other change of its owner. The session watches only what the ACL let it resolve and
stops watching when it leaves the mailbox or loses the right to read it (imap/acl.py). A subscription may also
watch a set of such mailboxes (`watch_also`: NOTIFY's STATUS of shared mailboxes, imap/notify.py), apart from
the one `watch` names.

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
2. A subscriber sees changes in commit order, and only those of its own user and of the mailboxes it
   watches (`watch`, `watch_also`; none by default); a change of several kinds reaches it once. Those are
   the changes of every process using the store, each once (feed.py invariant 3), or an overflow where some were lost.
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
_NONE: frozenset[int] = frozenset()  # one empty set for every subscription (each `frozenset()` is 216 bytes)


class SubscriptionOverflow(StoreError):
    """The subscriber fell more than `maxsize` changes behind; it must resync from the store and `reset()`."""


class HubSubscription:
    """One subscriber's buffer. Implements `api.Subscription`, plus `overflowed` and `reset()`."""

    __slots__ = ("user_id", "maxsize", "overflowed", "closed", "watching", "also", "_hub", "_buffer", "_waiter")

    def __init__(self, hub: Hub, user_id: int, maxsize: int) -> None:
        self.user_id = user_id
        self.maxsize = maxsize
        self.overflowed = False
        self.closed = False
        self.watching: int | None = None  # a mailbox of another user whose changes it receives too
        self.also: frozenset[int] = _NONE  # more such mailboxes (`watch_also`)
        self._hub = hub
        # Made by the first change and dropped once drained: an idle subscriber holds no deque (its first block
        # alone is ~600 bytes), since most subscribers (idle IMAP sessions) wait far longer than they read.
        self._buffer: collections.deque[Change] | None = None
        self._waiter: asyncio.Future[None] | None = None

    # ---- the hub's side
    def _push(self, change: Change) -> None:
        if self.closed or self.overflowed:
            return
        if self._buffer is None:
            self._buffer = collections.deque()
        if len(self._buffer) >= self.maxsize:
            self._buffer = None
            self.overflowed = True
        else:
            self._buffer.append(change)
        self._wake()

    def _overflow(self) -> None:
        if self.closed or self.overflowed:
            return
        self._buffer = None
        self.overflowed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- the subscriber's side
    def __len__(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    def get_nowait(self) -> Change | None:
        if self.overflowed:
            raise SubscriptionOverflow(f"change feed of user {self.user_id} overflowed ({self.maxsize} changes)")
        if self._buffer:
            change = self._buffer.popleft()
            if not self._buffer:
                self._buffer = None
            return change
        return None

    def wake_on(self, fut: asyncio.Future[None] | None) -> None:
        """Have `fut` resolved (with None) when a change, an overflow or a close is there to take, at once if one
        is already (None: no more). What a waiter that also waits for something else passes instead of awaiting
        `get()` in a task of its own (the connection's `read_some(wake=...)`, IMAP IDLE): it then takes what is
        there with `get_nowait()`. The one waiter `get()` would use: the two are not used at once."""
        if fut is None:
            self._waiter = None
        elif self._buffer or self.overflowed or self.closed:
            if not fut.done():
                fut.set_result(None)
        else:
            self._waiter = fut

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
        self._hub._watch(self, None if self.watching in self.also else self.watching,
                         None if mailbox_id in self.also else mailbox_id)
        self.watching = mailbox_id

    def watch_also(self, mailbox_ids: Iterable[int]) -> None:
        """Receive the changes of these mailboxes too, instead of those given to the previous call (module doc:
        NOTIFY's STATUS of shared mailboxes); independent of `watch`. An empty set stops it."""
        new = frozenset(mailbox_ids)
        if self.closed or new == self.also:
            return
        for gone in self.also - new:
            if gone != self.watching:
                self._hub._watch(self, gone, None)
        for added in new - self.also:
            if added != self.watching:
                self._hub._watch(self, None, added)
        self.also = new

    def reset(self) -> None:
        """Clear the overflow mark (and anything buffered): call it right before re-reading the store."""
        self._buffer = None
        self.overflowed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer = None
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
        self._watchers: dict[int, set[HubSubscription]] = {}  # mailbox id -> subscriptions watching it
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
        watchers = self._watchers
        for change in changes:
            for sub in subs.get(change.user_id, ()):
                sub._push(change)
            if watchers:
                for sub in watchers.get(change.mailbox_id, ()):
                    if sub.user_id != change.user_id:  # invariant 2: once
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

    def _watch(self, sub: HubSubscription, old: int | None, new: int | None) -> None:
        if old is not None:
            self._discard(self._watchers, old, sub)
        if new is not None:
            self._watchers.setdefault(new, set()).add(sub)

    def _remove(self, sub: HubSubscription) -> None:
        subs = self._subs.get(sub.user_id)
        if subs is not None and sub in subs:
            self._count -= 1
        self._discard(self._subs, sub.user_id, sub)
        for mailbox_id in sub.also | ({sub.watching} if sub.watching is not None else set()):
            self._discard(self._watchers, mailbox_id, sub)
        sub.watching = None
        sub.also = _NONE

    @staticmethod
    def _discard(index: dict[int, set[HubSubscription]], key: int, sub: HubSubscription) -> None:
        subs = index.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[key]

