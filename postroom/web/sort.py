"""Sorted message lists for the webmail: by date sent, sender, subject or size, with IMAP SORT's keys.

Theory of operation
-------------------
The plain list is newest first by UID (`Store.page_messages`: one index range per page). Another order uses the
keys IMAP SORT uses (RFC 5256 §2, §3; RFC 5957 DISPLAYFROM), stored at delivery in the narrow `sort_rows` table
(store invariant 20): "date" is the Date field's instant, else the internal date (RFC 5256 §2.2), "display_from"
the sender's display name or address, "subject" the base subject (RFC 5256 §2.1) as i;unicode-casemap keys, "size"
RFC822.SIZE; ties by UID, ascending (RFC 5256 §3). `Store.sort_uids` sorts them in the store's reader thread,
reading the narrow rows only, never a message or its metadata; bodies stored without keys get them first from
their metadata, as IMAP SORT does (`imap.objectid.ensure_keys`, through `search.SearchScope`).

The order is kept (`Orders`, at most `KEPT` orders, least recently used dropped) under the mailbox's content
version (`Store.content_version`, a point lookup that moves with arrivals and removals, not with flags): paging
through a sorted list, or coming back to it, reads one page of records and sorts nothing again. A page is an
offset into the order (`start`), `page_size` messages, their records read one point lookup each.

With a search (`q`), the sorted order is filtered to the search's answer (a set lookup per message of the
order, in slices that yield to the event loop).

Invariants
1. A sorted page reads the mailbox's messages only through `sort_uids` (narrow sort rows, off the event loop)
   and the page's own records; a kept order is used only under an equal content version.
2. The orders are those of IMAP `UID SORT` with the same criteria (tested against imaplib).
3. At most `KEPT` orders are held (4 octets a message each).
"""

from __future__ import annotations

import asyncio
import collections
from array import array
from dataclasses import dataclass
from typing import cast

from postroom.config import LimitsConfig
from postroom.imap.objectid import ensure_keys
from postroom.imap.session import Session
from postroom.store.api import Mailbox, MessageInfo, Store
from postroom.web.search import SearchScope

KEPT = 16  # sorted orders kept
SLICE = 5000  # UIDs filtered between two yields to the event loop
# name -> (label, Store.sort_uids criteria, the IMAP SORT criteria they are); "" is the plain list.
SORTS: dict[str, tuple[str, tuple[tuple[str, bool], ...], str]] = {
    "": ("Newest first", (), ""),
    "date": ("Date sent", (("date", True),), "REVERSE DATE"),
    "from": ("Sender", (("display_from", False),), "DISPLAYFROM"),
    "subject": ("Subject", (("subject", False),), "SUBJECT"),
    "size": ("Size, largest first", (("size", True),), "REVERSE SIZE"),
}


@dataclass(frozen=True)
class SortedPage:
    """One page of a sorted list and the offsets of the pages around it."""

    infos: list[MessageInfo]
    total: int
    previous: int | None  # `start` of the page before, or None
    next: int | None  # `start` of the page after, or None


class Orders:
    """Sorted orders of mailboxes, kept under their content version (module doc)."""

    def __init__(self, store: Store, limits: LimitsConfig) -> None:
        self.store = store
        self.limits = limits
        self._kept: collections.OrderedDict[tuple[int, str], tuple[tuple[int, ...], array[int]]] = \
            collections.OrderedDict()

    async def order(self, box: Mailbox, sort: str) -> array[int]:
        """Every UID of `box` in the order `sort` (a key of SORTS other than ""). NotFound if the mailbox is
        gone."""
        version = await self.store.content_version(box.id)
        key = (box.id, sort)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == version:
            self._kept.move_to_end(key)
            return kept[1]
        missing = await self.store.list_sort_rows(box.id, unknown_only=True)
        if missing:  # bodies stored without keys: from their metadata first, as IMAP SORT does
            scope = SearchScope(self.store, self.limits, box, [r.uid for r in missing])
            await ensure_keys(cast(Session, scope), missing)
            version = await self.store.content_version(box.id)
        uids = array("I", await self.store.sort_uids(box.id, SORTS[sort][1]))
        self._kept[key] = (version, uids)
        self._kept.move_to_end(key)
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)
        return uids

    async def page(self, box: Mailbox, sort: str, start: int, size: int,
                   matched: list[int] | None = None) -> SortedPage:
        """The page at offset `start` of the order, limited to `matched` (a search's UIDs) when given."""
        order: array[int] | list[int] = await self.order(box, sort)
        if matched is not None:
            wanted = set(matched)
            kept: list[int] = []
            for k in range(0, len(order), SLICE):
                kept.extend(u for u in order[k:k + SLICE] if u in wanted)
                await asyncio.sleep(0)
            order = kept
        start = max(0, min(start, len(order)))
        infos = []
        for uid in order[start:start + size]:
            info = await self.store.get_message(box.id, uid)
            if info is not None:
                infos.append(info)
        previous = max(0, start - size) if start > 0 else None
        following = start + size if start + size < len(order) else None
        return SortedPage(infos, len(order), previous, following)
