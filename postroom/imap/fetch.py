"""FETCH and UID FETCH (RFC 9051 §6.4.5, §7.5.2; BINARY RFC 3516): the planner and the response writer.

Theory of operation
-------------------
`plan()` turns the requested UIDs into runs that are consecutive in the session's view and asks the store once per
run (`list_messages(mailbox, first, last)`): UID, flags, internal date and size come from there, never from bodies. A
FETCH of only those items (FETCH 1:* FLAGS, STORE's answer) reads the runs as columns instead (`light_fetch`,
`list_columns`), making no object per message; a large run's flags listing is kept (`FLAG_CACHE`) and answers the
next FETCH FLAGS (and SEARCH UNSEEN, search.py) while the mailbox is unchanged, and after a change is brought up to
date from what changed since (invariant 8); the FETCH FLAGS lines made from it are kept with it, so a repeat writes
them as they are (invariant 9). A sequence set of one range (1:*) is the view's own slice (`arguments.resolve_view`),
not a list of UIDs. Those items with ENVELOPE, BODYSTRUCTURE and BODY (a client opening a folder: FETCH 1:* (UID
ENVELOPE BODYSTRUCTURE), ALL, FULL) are read with their kept structure values in chunks of `COLUMN_CHUNK` messages,
one query each, and each chunk is formatted column by column and written as one piece (`column_fetch`, invariant 7).
Only items that need more load more:
ENVELOPE, BODY, BODYSTRUCTURE read the kept structure rows, `META_BATCH` messages per store call
(`read_structures`, invariant 6); sections, RFC822*, BINARY read the stored metadata (`read_metas`, cached
process-wide by blob id) and the body too, per message.
A message stored without metadata (imported before it was computed), or with metadata of an older format
(`meta.FORMAT_VERSION`), gets it computed on first use and written back (`Store.write_metas`), so each body is
upgraded once: a store written by an older Postroom needs no migration step and answers right at once.

Non-PEEK body items set \\Seen (RFC 9051 §6.4.5) before the responses are built, with one `store_flags`
call for all of them; their FETCH then carries FLAGS even when not asked for (and MODSEQ, and with QRESYNC UID,
once CONDSTORE is enabled: RFC 7162 §3.1, §3.2.4).

CONDSTORE and QRESYNC (RFC 7162 §3.1.4, §3.2.6): the MODSEQ item comes from the message rows like FLAGS. With
(CHANGEDSINCE n), the messages are those the store finds changed after n through its (mailbox, MODSEQ) index
(`Store.list_changed`), tested against the sequence set without listing it (`arguments.member`); MODSEQ is
added to the items. With VANISHED (UID FETCH only, after ENABLE QRESYNC), expunges this session still holds are
reported first (plain VANISHED), then `VANISHED (EARLIER)` names the UIDs of the set removed after n
(`Store.vanished`), before any FETCH. When the store no longer has the record of removals that old (pruned,
`imap.expunged_retention_days`), the fallback of RFC 7162 §3.2.6 is used: every UID of the set, up to UIDNEXT-1,
that is not in the mailbox (a superset; the client ignores UIDs it never had).

Invariants
1. One store query per run of the sequence set for the message records; bodies and metadata only when an
   item needs them.
2. Responses are written in sequence-number order, one `* n FETCH (...)` per message, item by item, flushing every
   `session.FLUSH_BYTES`: no response is built whole, so memory per session stays within one item (at most the
   message, plus its NUL-safe copy) and the flush threshold, whatever the request. (The one exception, the FETCH
   FLAGS lines kept with a kept listing, invariant 9, is held once per process, within its bound.) A message expunged
   by another session (but not yet reported) is skipped. The only item that can fail (BINARY of a part with an
   unknown encoding, RFC 3516 §4.3) is checked before a message's response starts.
3. UID FETCH always includes UID (RFC 9051 §6.4.9): as the UID data item, or, once UIDONLY is enabled, as the
   number of `* uid UIDFETCH (...)` (RFC 9586 §3.3), where the UID item comes only when asked for by name.
4. BODY[...] data goes out as a literal with NUL turned into 0x80 (`literal_safe`); BINARY[...] data with NUL
   as literal8 `~{n}` (RFC 3516 §4.2).
5. Each distinct data item is answered once per message however often it was asked for (`unique_atts`;
   `FETCH 1 (RFC822 RFC822 ...)` gets one RFC822). A FETCH response fills the client's cache of a message's
   items by name (RFC 9051 §7.5.2), so a repeat carries nothing new; BODY.PEEK[x] and BODY[x] are one item.
6. A FETCH whose only metadata items are ENVELOPE, BODYSTRUCTURE and BODY decodes no metadata for a body whose
   structure is kept (`Store.read_structures`, schema 19): those bytes are the ones the metadata holds, so the
   answer is the same byte for byte. A body without the row is answered from its metadata, and the row is
   written then, once.
7. `column_fetch` writes the same lines as the item-by-item writer (tests/e2e/test_imap_fetch_command.py
   compares them): one store query and one format operation a message per chunk of `COLUMN_CHUNK` messages, so
   neither the memory held nor the event loop's work between two awaits grows with the mailbox.
8. `FLAG_CACHE` answers only while the mailbox's (UIDVALIDITY, HIGHESTMODSEQ) is the one read before its rows
   (`MessageColumns.stamp`), checked with one point read each time: every append, flag change and expunge takes
   a new MODSEQ (store api invariant 4, RFC 7162 §3.1), so a hit is what a new listing would give, whichever
   process made the change. It is bounded by bytes, shared by the sessions of a process, and keeps only ranges
   of at least `FlagCache.min_count` messages. After a change the kept listing is brought up to date, not
   listed again (`changed_since`): the removals after its MODSEQ (`Store.vanished`) and the rows with a higher
   one (`Store.list_changed`, RFC 7162 §3.1.4.1) are merged into a copy (`merge_changes`; the kept one may be in
   use by another session), stamped with the pair read before those reads, so a change that lands in between
   is seen again at the next check. When that cannot be told (UIDVALIDITY changed, the record of removals
   pruned, a row the listing never had), the range is listed again.
9. With a kept listing, `FLAG_CACHE` keeps up to `FlagCache.texts_per_listing` FETCH answers made from it
   (`_flag_run`: FLAGS, or UID and FLAGS, of a run that is a stretch of the view), in blocks of `_FLAG_BATCH`
   messages, under all that their lines depend on: the first message number, the items, and the session's
   \\Recent messages as index ranges (\\Recent is per session, RFC 3501 §2.3.2). The FLAGS announcements of
   keywords are per session and written before them (state.py invariant 5), not kept. So sessions with the same
   view share the lines, and a repeat writes them as they are, with no work per message. A listing brought up
   to date with the same UIDs takes over its predecessor's texts (only if that is the listing the changes were
   read against), with the blocks of the changed messages marked stale and made again at the next use; after
   a removal (message numbers move) they go. Texts count in the cache's byte bound and go with their listing.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence

from postroom import metapool as pool
from postroom.mime.cte import UnknownCTE
from postroom.mime.imap import Section, literal_safe, partial
from postroom.mime.meta import MessageMeta, MetaFormatError
from postroom.store.api import Flag, ImapStructure, MessageColumns, MessageInfo, NotFound, StoreError, StoreMode

from . import encoder, objectid, preview
from . import parser as P
from .arguments import member, resolve_view, sel_of
from .errors import Bad, No, Result
from .session import Session
from .state import missing_ranges, uid_ranges, vanished_lines

_META_NEEDED = {"ENVELOPE", "BODY", "BODYSTRUCTURE", "BODY[]", "BINARY", "BINARY.SIZE", "RFC822.HEADER",
                "RFC822.TEXT"}
_STRUCTURE = {"ENVELOPE", "BODY", "BODYSTRUCTURE"}  # answered by `ImapStructure` alone (invariant 6)
_RAW_NEEDED = {"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY[]", "BINARY", "BINARY.SIZE"}
_SETS_SEEN = {"RFC822", "RFC822.TEXT"}
_HEADER = Section((), "HEADER")
_TEXT = Section((), "TEXT")
_WHOLE = Section()

_LIGHT = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "SAVEDATE"}  # items the message rows answer alone
UID_MAX = 0xFFFFFFFF  # "*" in VANISHED's UID set: every UID the client may have known
META_BATCH = 1000  # messages whose metadata is read in one store call
log = logging.getLogger("postroom.imap")
PARSE_SLICE = 1024 * 1024  # bytes of stored metadata parsed (JSON) between two yields to the event loop

_SEEN = int(Flag.SEEN)  # plain int: IntFlag arithmetic is slow in per-message loops


class MetaCache:
    """blob id -> MessageMeta, least recently used out (metadata is per body and never changes). Bounded by
    count and by an estimate of the bytes held (`weight`): one message's search text can be ~300 KB, so 4,096
    of them by count alone could hold over a gigabyte, shared by every session (issue 11: memory is bounded)."""

    def __init__(self, size: int = 4096, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.held = 0  # sum of `weight` over the entries
        self._d: OrderedDict[str, tuple[MessageMeta, int]] = OrderedDict()

    @staticmethod
    def weight(meta: MessageMeta) -> int:
        """About how many bytes `meta` holds: its IMAP strings, search text and part rows."""
        st = meta.search
        return (len(meta.envelope) + len(meta.bodystructure) + len(meta.body) + len(st.body)
                + sum(len(k) + len(v) for k, v in st.headers) + 200 * len(meta.parts) + 200)

    def get(self, key: str) -> MessageMeta | None:
        hit = self._d.get(key)
        if hit is None:
            return None
        self._d.move_to_end(key)
        return hit[0]

    def split(self, blob_ids: Iterable[str]) -> tuple[dict[str, MessageMeta], list[str]]:
        """(the cached metadata of `blob_ids` by id, the ids not cached, in order)."""
        found: dict[str, MessageMeta] = {}
        missing: list[str] = []
        for blob_id in blob_ids:
            meta = self.get(blob_id)
            if meta is None:
                missing.append(blob_id)
            else:
                found[blob_id] = meta
        return found, missing

    def put(self, key: str, meta: MessageMeta) -> None:
        w = self.weight(meta)
        if w > self.max_bytes // 4:
            return  # one huge entry would push out everything else: not cached
        old = self._d.pop(key, None)
        if old is not None:
            self.held -= old[1]
        self._d[key] = (meta, w)
        self.held += w
        while len(self._d) > self.size or self.held > self.max_bytes:
            _, (_, gone) = self._d.popitem(last=False)
            self.held -= gone


META_CACHE = MetaCache()


@dataclasses.dataclass(frozen=True, slots=True)
class KeptText:
    """An encoded response kept with a listing (`FlagCache.text`): its lines in blocks of `_FLAG_BATCH` messages,
    and the blocks that are `stale` (a message in them changed since they were made: `FlagCache.put(carry=...)`),
    to be made again before the text is used."""

    blocks: list[bytes]
    stale: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        return sum(map(len, self.blocks))


@dataclasses.dataclass(slots=True)
class _Kept:
    """One `FlagCache` entry: the compacted listing, its weight in bytes (with its texts), and the encoded FETCH
    responses made from it (`FlagCache.text`)."""

    cols: MessageColumns
    weight: int
    texts: dict[Hashable, KeptText] = dataclasses.field(default_factory=dict)


class FlagCache:
    """(mailbox id, first UID, last UID) -> the flags-only listing of that range (`list_columns(flags_only=True)`),
    least recently used out, bounded by an estimate of the bytes held (invariant 8). An entry is used only while
    the mailbox still has the (UIDVALIDITY, HIGHESTMODSEQ) it was read under (`MessageColumns.stamp`), which one
    point read of the mailbox row tells: every change to a message takes a new MODSEQ (store api invariant 4),
    so the columns are then exactly what a new listing would give. Shared by the sessions of a process, like
    `META_CACHE`; only ranges of at least `min_count` messages are kept (a small one is cheaper to list).
    With each listing, up to `texts_per_listing` encoded responses made from it are kept (`text`, invariant 9),
    counted in the same byte bound; they go with the listing."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024, min_count: int = 1000, texts_per_listing: int = 2) -> None:
        self.max_bytes = max_bytes
        self.min_count = min_count
        self.texts_per_listing = texts_per_listing
        self.held = 0
        self._d: OrderedDict[tuple[int, int, int], _Kept] = OrderedDict()

    @staticmethod
    def compact(cols: MessageColumns) -> tuple[MessageColumns, int]:
        """`cols` with its number columns as arrays (4 or 8 bytes a value, not an int object each), and about how
        many bytes it holds."""
        uids = cols.uids if isinstance(cols.uids, array) and cols.uids.typecode == "I" else array("I", cols.uids)
        small = dataclasses.replace(cols, uids=uids, modseqs=array("q", cols.modseqs), flags=array("q", cols.flags))
        return small, 20 * len(cols.uids) + 200 * len(cols.keywords) + 200

    def get(self, key: tuple[int, int, int]) -> MessageColumns | None:
        """The listing kept for (mailbox id, first UID, last UID), unchecked (`cached_flags` checks), or None."""
        hit = self._d.get(key)
        if hit is None:
            return None
        self._d.move_to_end(key)
        return hit.cols

    def put(self, key: tuple[int, int, int], cols: MessageColumns, carry: Iterable[int] | None = None,
            base: MessageColumns | None = None) -> MessageColumns:
        """Keep `cols` (compacted) under `key`, dropping the least recently used past `max_bytes`; the listing to
        use from now on (the kept one, or `cols` when it is too large to keep). With `carry`, the indexes of the
        messages that differ between `base` and `cols` (the same UIDs): when `base` is still the listing kept
        under `key`, its texts stay, the blocks holding those messages marked stale."""
        old = self._d.get(key)
        small, w = self.compact(cols)
        self.drop(key)
        if w > self.max_bytes // 4:
            return cols  # one huge entry would push out everything else: not cached
        kept = self._d[key] = _Kept(small, w)
        if carry is not None and old is not None and old.cols is base and len(base) == len(cols):
            dirty = frozenset(i // _FLAG_BATCH for i in carry)
            kept.texts = {name: dataclasses.replace(t, stale=t.stale | dirty) for name, t in old.texts.items()}
            kept.weight += sum(t.size for t in kept.texts.values())
        self.held += kept.weight
        self._evict()
        return small

    def drop(self, key: tuple[int, int, int]) -> None:
        """Forget the listing under `key` (its mailbox changed)."""
        old = self._d.pop(key, None)
        if old is not None:
            self.held -= old.weight

    def holds(self, key: tuple[int, int, int], cols: MessageColumns) -> bool:
        """Whether `cols` is the listing kept under `key`."""
        hit = self._d.get(key)
        return hit is not None and hit.cols is cols

    def text(self, key: tuple[int, int, int], cols: MessageColumns, name: Hashable) -> KeptText | None:
        """The encoded response `name` kept with the listing `cols` under `key` (`keep_text`), or None (also when
        `cols` is no longer the listing kept there)."""
        hit = self._d.get(key)
        if hit is None or hit.cols is not cols:
            return None
        return hit.texts.get(name)

    def keep_text(self, key: tuple[int, int, int], cols: MessageColumns, name: Hashable, blocks: list[bytes]) -> None:
        """Keep `blocks`, a response encoded from `cols` (`_FLAG_BATCH` messages a block), as `name` with that
        listing while it is the one kept under `key`: at most `texts_per_listing` a listing (the oldest out),
        within the byte bound."""
        hit = self._d.get(key)
        if hit is None or hit.cols is not cols:
            return
        texts = hit.texts
        old = texts.pop(name, None)
        if old is not None:
            hit.weight -= old.size
            self.held -= old.size
        text = KeptText(blocks)
        if hit.weight + text.size > self.max_bytes // 4:
            return
        while len(texts) >= self.texts_per_listing:
            gone = texts.pop(next(iter(texts))).size
            hit.weight -= gone
            self.held -= gone
        texts[name] = text
        hit.weight += text.size
        self.held += text.size
        self._evict()

    def _evict(self) -> None:
        while self.held > self.max_bytes:
            _, gone = self._d.popitem(last=False)
            self.held -= gone.weight


FLAG_CACHE = FlagCache()


async def flag_columns(s: Session, mailbox_id: int, first: int, last: int, count: int) -> MessageColumns:
    """`list_columns(mailbox_id, first, last, flags_only=True)`, from `FLAG_CACHE` while the mailbox is unchanged
    (one point read) when the range has `count` >= `FLAG_CACHE.min_count` messages (invariant 8); after a change,
    the kept listing brought up to date with what changed since its stamp (`changed_since`), not listed again."""
    if count < FLAG_CACHE.min_count:
        return await s.store.list_columns(mailbox_id, first, last, flags_only=True)
    key = (mailbox_id, first, last)
    kept = FLAG_CACHE.get(key)
    if kept is not None:
        mbox = await s.store.get_mailbox_by_id(mailbox_id)
        if mbox is not None:
            stamp = (mbox.uidvalidity, mbox.highestmodseq)
            if stamp == kept.stamp:
                return kept
            update = await changed_since(s, kept, stamp, mailbox_id, first, last)
            if update is not None:
                fresh, changed = update
                # The same UIDs (nothing removed): the kept lines stay, but for the blocks of the changed messages.
                carry = [bisect.bisect_left(fresh.uids, u) for u in changed] if len(fresh) == len(kept) else None
                return FLAG_CACHE.put(key, fresh, carry, kept)  # (another session may have put another)
        FLAG_CACHE.drop(key)
    return FLAG_CACHE.put(key, await s.store.list_columns(mailbox_id, first, last, flags_only=True))


async def changed_since(s: Session, kept: MessageColumns, stamp: tuple[int, int], mailbox_id: int, first: int,
                        last: int) -> tuple[MessageColumns, Sequence[int]] | None:
    """The flags-only listing of UIDs first..last as of `stamp` (the mailbox's (UIDVALIDITY, HIGHESTMODSEQ), read
    before this), made from `kept` (an older listing of the same range) and what changed after its stamp: the
    removals (`Store.vanished`) and the rows with a higher MODSEQ (`Store.list_changed`, RFC 7162 §3.1.4.1), so
    the store work is proportional to the changes; with the UIDs of the rows changed. None when that cannot be
    told (another UIDVALIDITY, the record of removals pruned, a row not in `kept`): the caller lists the range
    again (invariant 8)."""
    since = kept.stamp[1]
    if stamp[0] != kept.stamp[0] or stamp[1] < since:
        return None
    gone = await s.store.vanished(mailbox_id, since)
    if not gone.complete:
        return None
    changed = await s.store.list_changed(mailbox_id, since, first, last)
    merged = merge_changes(kept, [u for u in gone.uids if first <= u <= last], changed, stamp)
    return None if merged is None else (merged, changed.uids)


def merge_changes(kept: MessageColumns, removed: Sequence[int], changed: MessageColumns,
                  stamp: tuple[int, int]) -> MessageColumns | None:
    """`kept` (a flags-only listing, UIDs ascending) without the UIDs `removed` and with the UID, MODSEQ, flags
    and keywords of each row of `changed` in place of its own, stamped `stamp`; None if a row of `changed` is not
    in `kept` (a UID it never had: list again). Work: copies of the columns (C loops) and a bisection per UID
    removed or changed; the index keys of the keywords move past removed messages."""
    uids = kept.uids if isinstance(kept.uids, array) else array("I", kept.uids)
    n = len(uids)
    flags, modseqs, keywords = array("q", kept.flags), array("q", kept.modseqs), dict(kept.keywords)
    for k, uid in enumerate(changed.uids):
        i = bisect.bisect_left(uids, uid)
        if i == n or uids[i] != uid:
            return None
        flags[i], modseqs[i] = changed.flags[k], changed.modseqs[k]
        kws = changed.keywords.get(k)
        if kws:
            keywords[i] = kws
        else:
            keywords.pop(i, None)
    drop = sorted({i for i, u in ((bisect.bisect_left(uids, u), u) for u in removed) if i < n and uids[i] == u})
    if drop:
        new_uids, new_flags, new_modseqs = array("I"), array("q"), array("q")
        start = 0
        for i in [*drop, n]:
            new_uids.extend(uids[start:i])
            new_flags.extend(flags[start:i])
            new_modseqs.extend(modseqs[start:i])
            start = i + 1
        dropped = set(drop)
        keywords = {i - bisect.bisect_left(drop, i): v for i, v in keywords.items() if i not in dropped}
        uids, flags, modseqs = new_uids, new_flags, new_modseqs
    return dataclasses.replace(kept, uids=uids, flags=flags, modseqs=modseqs, keywords=keywords, stamp=stamp)


async def cached_flags(s: Session, mailbox_id: int, first: int, last: int) -> MessageColumns | None:
    """The flags-only listing of UIDs first..last from `FLAG_CACHE` if it is there and the mailbox unchanged
    since (one point read of its row), else None (invariant 8)."""
    key = (mailbox_id, first, last)
    hit = FLAG_CACHE.get(key)
    if hit is None:
        return None
    mbox = await s.store.get_mailbox_by_id(mailbox_id)
    if mbox is None:
        FLAG_CACHE.drop(key)
    elif (mbox.uidvalidity, mbox.highestmodseq) == hit.stamp:
        return hit
    return None  # changed: the listing stays for `flag_columns` to bring up to date (`changed_since`)


def _parse_meta(data: bytes | None) -> MessageMeta | None:
    """Stored metadata, or None when there is none or it is of an older format (to be recomputed)."""
    if data is None:
        return None
    try:
        return MessageMeta.from_bytes(data)
    except MetaFormatError:
        return None


async def _store_back(s: Session, metas: dict[str, bytes]) -> None:
    """Recomputed metadata written back (`Store.write_metas`), so a body stored without metadata or with an
    older format is computed once, not on every read. The answer does not depend on it: a failure is logged."""
    if not metas:
        return
    try:
        await s.store.write_metas(metas)
    except StoreError:
        log.warning("could not store recomputed metadata of %d bodies", len(metas), exc_info=True)


async def load_meta(s: Session, info: MessageInfo, raw: bytes | None = None) -> MessageMeta:
    """The metadata of one message: cached, else stored, else computed from the body and stored back."""
    meta = META_CACHE.get(info.blob_id)
    if meta is not None:
        return meta
    meta = _parse_meta(await s.store.read_meta(info.blob_id))
    if meta is None:  # imported before metadata existed, or an older format: compute it now, once
        if raw is None:
            raw = await s.store.read_message(info.blob_id)
        meta = await pool.meta_of(raw, s.limits)
        await _store_back(s, {info.blob_id: meta.to_bytes()})
    META_CACHE.put(info.blob_id, meta)
    return meta


def runs(view: Sequence[int], uids: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) UID of each run of `uids` that is consecutive in `view` (both ascending, `uids` a subset of
    `view`)."""
    out: list[tuple[int, int]] = []
    if not uids:
        return out
    first = bisect.bisect_left(view, uids[0])
    last = first + len(uids) - 1
    if last < len(view) and view[last] == uids[-1]:  # a subset of `view` spanning exactly as many: one run
        return [(uids[0], uids[-1])]
    prev_index = -2
    for uid in uids:
        i = bisect.bisect_left(view, uid)
        if out and i == prev_index + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
        prev_index = i
    return out


async def plan(s: Session, uids: Sequence[int]) -> list[MessageInfo]:
    """The records of `uids` (invariant 1): one query per run."""
    sel = sel_of(s)
    wanted = set(uids)
    out: list[MessageInfo] = []
    for first, last in runs(sel.uids, uids):
        for m in await s.store.list_messages(sel.id, first, last):
            if m.uid in wanted:
                out.append(m)
    return out


async def prefetch_meta(s: Session, infos: Sequence[MessageInfo]) -> dict[str, MessageMeta]:
    """The metadata of `infos`, with one store call (`read_metas`) for what is not cached. Metadata that is
    missing or of an older format (`meta.FORMAT_VERSION`) is computed from the body, one body in memory at a
    time, and written back in one store call per batch. A message expunged meanwhile is left out."""
    out, missing = META_CACHE.split(m.blob_id for m in infos)
    if not missing:
        return out
    fresh: dict[str, bytes] = {}
    parsed = 0
    for blob_id, data in (await s.store.read_metas(missing)).items():
        if data is not None:
            parsed += len(data)
            if parsed >= PARSE_SLICE:  # a batch can be 1,000 metas of ~300 KB (search text): not in one go
                parsed = 0
                await asyncio.sleep(0)
        meta = _parse_meta(data)
        if meta is None:
            try:
                raw = await s.store.read_message(blob_id)
            except NotFound:  # expunged (and its body released) since the listing
                continue
            meta = await pool.meta_of(raw, s.limits)
            fresh[blob_id] = meta.to_bytes()
            await asyncio.sleep(0)  # an upgrade of a whole batch lets other sessions run between bodies
        out[blob_id] = meta
        META_CACHE.put(blob_id, meta)
    await _store_back(s, fresh)
    return out


async def prefetch_structure(s: Session, infos: Sequence[MessageInfo]) -> dict[str, ImapStructure | MessageMeta]:
    """The ENVELOPE, BODYSTRUCTURE and BODY of `infos` (invariant 6): cached metadata, else the kept structure
    rows (`Store.read_structures`, one call), else the metadata (`prefetch_meta`), whose structure is then kept
    for the next FETCH (`Store.write_structures`: bodies stored before the rows existed). A message expunged
    meanwhile is left out."""
    cached, wanted = META_CACHE.split(m.blob_id for m in infos)
    out: dict[str, ImapStructure | MessageMeta] = dict(cached)
    if not wanted:
        return out
    out.update(await s.store.read_structures(wanted))
    missing = [m for m in infos if m.blob_id not in out]
    if missing:
        out.update(await _structures_from_meta(s, missing))
    return out


async def _structures_from_meta(s: Session, infos: Sequence[MessageInfo]) -> dict[str, MessageMeta]:
    """The metadata of `infos`, bodies without a kept structure row (`prefetch_meta`), whose structure is kept
    now for the next FETCH (`Store.write_structures`)."""
    metas = await prefetch_meta(s, infos)
    try:
        await s.store.write_structures({b: ImapStructure(m.envelope, m.bodystructure, m.body)
                                        for b, m in metas.items()})
    except StoreError:  # the answer does not depend on it (as `_store_back`)
        log.warning("could not keep the structure of %d bodies", len(metas), exc_info=True)
    return metas


async def light_fetch(s: Session, uids: Sequence[int], atts: Sequence[P.FetchAtt],
                      listed: MessageColumns | None = None) -> bool:
    """`* n FETCH (...)` for items found in the message rows only (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ),
    from one columnar listing per run (`list_columns`), or from `listed` when the caller has the rows already
    (CHANGEDSINCE: `uids` are among them): no object per message. True if a message named was expunged
    meanwhile."""
    sel = sel_of(s)
    view = sel.uids
    recent = sel.is_recent
    found = 0
    wanted = None if listed is None else set(uids)
    names = [att.name for att in atts]
    fast = all(n in _FLAG_ITEMS for n in names)
    for first, last in (runs(view, uids) if listed is None else [(uids[0], uids[-1])] if uids else []):
        if listed is not None:
            cols = listed
        elif fast:
            cols = await flag_columns(s, sel.id, first, last, bisect.bisect_right(view, last) - bisect.bisect_left(
                view, first))
        else:
            cols = await s.store.list_columns(sel.id, first, last)
        found += len(cols) if wanted is None else len(wanted)
        j = bisect.bisect_left(view, first)  # a run's listed UIDs are all in the view: arrivals come after it
        flags, kw_at = cols.flags, cols.keywords_at
        if wanted is None and fast:
            await _flag_lines(s, cols, view, j, names, (sel.id, first, last))
            continue
        lines: list[bytes] = []
        for i, uid in enumerate(cols.uids):
            if wanted is not None and uid not in wanted:
                continue
            while j < len(view) and view[j] < uid:
                j += 1
            if j == len(view) or view[j] != uid:
                continue  # not announced (cannot happen inside a run; kept safe)
            items: list[bytes] = []
            for att in atts:
                name = att.name
                if name == "UID":
                    items.append(b"UID %d" % uid)
                elif name == "FLAGS":
                    kws = kw_at(i)
                    if kws:
                        lines.extend(sel.announce(kws))  # state.py invariant 5: FLAGS before the FETCH
                    items.append(b"FLAGS " + encoder.flag_list(flags[i], kws, recent(uid)))
                elif name == "INTERNALDATE":
                    items.append(b"INTERNALDATE " + encoder.internal_date(cols.internal_dates[i]))
                elif name == "MODSEQ":  # RFC 7162 §3.1.4.2
                    items.append(b"MODSEQ (%d)" % cols.modseqs[i])
                elif name == "SAVEDATE":
                    items.append(savedate_item(cols.save_dates[i] if cols.save_dates else None))
                else:  # RFC822.SIZE
                    items.append(b"RFC822.SIZE %d" % cols.sizes[i])
            lines.append(sel.fetch_head(uid, j + 1) + b" ".join(items) + b")\r\n")
            if len(lines) >= 1000:
                s.write(*lines)
                lines = []
                await s.maybe_flush()
        s.write(*lines)
        await s.maybe_flush()
    return found < len(uids)


_FLAG_ITEMS = frozenset(("UID", "FLAGS", "MODSEQ"))
_FLAG_BATCH = 1000  # response lines made and handed to the session at a time; a kept text's block (invariant 9)
_RUN_ITEMS = frozenset((("FLAGS",), ("UID", "FLAGS"), ("FLAGS", "UID")))  # what `_flag_run` writes
_NO_KEYWORDS: frozenset[str] = frozenset()


async def _flag_run(s: Session, cols: MessageColumns, j: int, names: list[str],
                    recent_ranges: list[tuple[int, int]], kept: tuple[int, int, int] | None) -> None:
    """`_flag_lines` for UID and FLAGS when the listed messages are announced messages j + 1 on, in order (the
    whole-mailbox `FETCH 1:* (FLAGS)` of a client opening a folder): the keywords' FLAGS announcements first
    (state.py invariant 5: before any FETCH that carries them), then one formatted line a message, its FLAGS
    text looked up by (flags, keywords, \\Recent); the same FETCH lines as `_flag_lines`. `names` is one of
    `_RUN_ITEMS`. When `cols` is the listing `FLAG_CACHE` keeps under `kept`, the FETCH lines are kept with it
    and the next such FETCH of the same lines writes them as they are (invariant 9)."""
    sel = sel_of(s)
    kwd = cols.keywords
    lines: list[bytes] = []
    for kws in dict.fromkeys(kwd.values()):
        lines.extend(sel.announce(kws))
    s.write(*lines)
    uids, flags = cols.uids, cols.flags
    # The \\Recent messages (rev1) as index ranges, by bisection: with j and the items, all the lines depend on.
    recent_at = tuple((a, b) for a, b in ((bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi))
                                          for lo, hi in recent_ranges if lo <= hi) if a < b)
    keep = kept if kept is not None and FLAG_CACHE.holds(kept, cols) else None
    text_name = (j, tuple(names), recent_at)
    text = FLAG_CACHE.text(keep, cols, text_name) if keep is not None else None
    fmt = b"* %d FETCH (" + b" ".join(b"UID %d" if name == "UID" else b"%b" for name in names) + b")\r\n"
    recent: set[int] = set()  # indexes of the \\Recent messages
    special: list[int] = []  # the messages whose text needs the keywords or \\Recent
    if text is None or text.stale:
        for a, b in recent_at:
            recent.update(range(a, b))
        special = sorted(recent.union(kwd))
    blocks: list[bytes] = []
    for k, start in enumerate(range(0, len(uids), _FLAG_BATCH)):
        if text is not None and k not in text.stale:
            block = text.blocks[k]  # kept, and no message of it changed since (invariant 9)
        else:
            end = min(start + _FLAG_BATCH, len(uids))
            # The FLAGS text column: by flags for most messages, by (flags, keywords, \\Recent) for the others.
            plain = {f: b"FLAGS " + encoder.flag_list(f) for f in set(flags[start:end])}
            texts = [plain[f] for f in flags[start:end]]
            for i in special[bisect.bisect_left(special, start):bisect.bisect_left(special, end)]:
                texts[i - start] = b"FLAGS " + encoder.flag_list(flags[i], kwd.get(i, _NO_KEYWORDS), i in recent)
            msns = range(j + start + 1, j + end + 1)
            columns = [uids[start:end] if name == "UID" else texts for name in names]
            block = b"".join([fmt % t for t in zip(msns, *columns)])
            if text is None:
                await asyncio.sleep(0)  # other sessions run between blocks (a kept listing awaits nothing else)
        blocks.append(block)
        s.write(block)
        await s.maybe_flush()  # the session's flush bound (session invariant 4)
    if keep is not None and (text is None or text.stale):
        FLAG_CACHE.keep_text(keep, cols, text_name, blocks)


async def _flag_lines(s: Session, cols: MessageColumns, view: Sequence[int], j: int, names: list[str],
                      kept: tuple[int, int, int] | None = None) -> None:
    """`light_fetch` for UID, FLAGS and MODSEQ only (FETCH 1:* (FLAGS), STORE's answers, resyncs): the same lines,
    with the per-message work cut to an index step and a lookup of the item text, which a mailbox has few
    distinct values of (issue 17: a whole-mailbox FLAGS fetch)."""
    sel = sel_of(s)
    recent_ranges = [] if sel.rev2 else [(sel.recent_lo, sel.recent_hi), *sel.recent_more]
    flags, kw_at, modseqs = cols.flags, cols.keywords_at, cols.modseqs
    texts: dict[tuple[int, frozenset[str], bool], bytes] = {}
    head = b"* %d UIDFETCH (" if sel.uidonly else b"* %d FETCH ("
    lines: list[bytes] = []
    n = len(view)
    count = len(cols.uids)
    if (tuple(names) in _RUN_ITEMS and not sel.uidonly and j + count <= n
            and _as_uid_array(cols.uids) == view[j:j + count]):  # two arrays of one type: compared in C
        # The run is a stretch of the view (message numbers j + 1 on): one format and one text lookup a message.
        await _flag_run(s, cols, j, names, recent_ranges, kept)
        return
    for i, uid in enumerate(cols.uids):
        while j < n and view[j] < uid:
            j += 1
        if j == n or view[j] != uid:
            continue  # not announced (cannot happen inside a run; kept safe)
        items: list[bytes] = []
        for name in names:
            if name == "UID":
                items.append(b"UID %d" % uid)
            elif name == "FLAGS":
                kws = kw_at(i)
                if kws:
                    lines.extend(sel.announce(kws))  # state.py invariant 5: FLAGS before the FETCH
                rec = any(lo <= uid <= hi for lo, hi in recent_ranges) if recent_ranges else False
                key = (flags[i], kws, rec)
                text = texts.get(key)
                if text is None:
                    text = texts[key] = b"FLAGS " + encoder.flag_list(flags[i], kws, rec)
                items.append(text)
            else:  # MODSEQ, RFC 7162 §3.1.4.2
                items.append(b"MODSEQ (%d)" % modseqs[i])
        lines.append(head % (uid if sel.uidonly else j + 1) + b" ".join(items) + b")\r\n")
        if len(lines) >= 4000:
            s.write(*lines)
            lines = []
            await s.maybe_flush()
    s.write(*lines)
    await s.maybe_flush()


def _as_uid_array(uids: Sequence[int]) -> array[int]:
    """`uids` as a 4-byte array like the session's view (`Selected.uids`): itself when it is one already."""
    return uids if isinstance(uids, array) and uids.typecode == "I" else array("I", uids)


async def flags_fetch(s: Session, uids: list[int], with_uid: bool = True) -> None:
    """`* n FETCH (FLAGS (...) UID u)` for each UID still present (STORE's answer, resyncs); with MODSEQ once
    CONDSTORE is enabled (RFC 7162 §3.1)."""
    atts = [P.FetchAtt("FLAGS"), P.FetchAtt("UID")] if with_uid else [P.FetchAtt("FLAGS")]
    if sel_of(s).condstore:
        atts.append(P.FetchAtt("MODSEQ"))
    await light_fetch(s, uids, atts)


_COLUMN_ITEMS = _LIGHT | _STRUCTURE  # what `column_fetch` answers
COLUMN_CHUNK = 1000  # messages listed, formatted and written per store call by `column_fetch`
# Each item's text in a `column_fetch` line, and the column giving its value.
_COLUMN_FORMAT = {"UID": b"UID %d", "FLAGS": b"%b", "INTERNALDATE": b"INTERNALDATE %b",
                  "RFC822.SIZE": b"RFC822.SIZE %d", "MODSEQ": b"MODSEQ (%d)", "SAVEDATE": b"%b",
                  "ENVELOPE": b"ENVELOPE %b", "BODYSTRUCTURE": b"BODYSTRUCTURE %b", "BODY": b"BODY %b"}


async def column_fetch(s: Session, uids: Sequence[int], atts: Sequence[P.FetchAtt]) -> bool:
    """`* n FETCH (...)` for the message-row items and ENVELOPE, BODYSTRUCTURE, BODY (invariant 7): per run, the
    rows and their kept structure values in chunks of `COLUMN_CHUNK` messages (`list_columns(structure=True)`),
    each chunk formatted column by column (one format operation a message) and written as one piece. A body
    without a kept row is answered from its metadata, whose structure is then kept (`_structures_from_meta`).
    The same lines as the item-by-item writer. True if a message named was expunged meanwhile."""
    sel = sel_of(s)
    view = sel.uids
    names = [att.name for att in atts]
    narrow = not any(n in ("INTERNALDATE", "RFC822.SIZE", "SAVEDATE") for n in names)  # `list_columns` flags_only
    fmt = (b"* %d UIDFETCH (" if sel.uidonly else b"* %d FETCH (") + b" ".join(
        _COLUMN_FORMAT[n] for n in names) + b")\r\n"
    recent_ranges = [] if sel.rev2 else [(sel.recent_lo, sel.recent_hi), *sel.recent_more]
    flag_texts: dict[tuple[int, frozenset[str], bool], bytes] = {}
    found = 0
    for first, last in runs(view, uids):
        lo, hi = bisect.bisect_left(view, first), bisect.bisect_right(view, last)
        for k in range(lo, hi, COLUMN_CHUNK):
            end = min(k + COLUMN_CHUNK, hi)
            cols = await s.store.list_columns(sel.id, view[k], view[end - 1], flags_only=narrow, structure=True)
            count = len(cols.uids)
            found += count
            if not count:
                continue
            if sel.uidonly:
                heads: Sequence[int] = cols.uids
            elif count == end - k:  # nothing expunged meanwhile: the chunk is messages k + 1 on
                heads = range(k + 1, end + 1)
            else:  # the listed UIDs are among the chunk's (arrivals come after the view)
                heads = [bisect.bisect_left(view, u, k, end) + 1 for u in cols.uids]
            if "FLAGS" in names:
                for kws in dict.fromkeys(cols.keywords.values()):
                    s.write(*sel.announce(kws))  # state.py invariant 5: FLAGS before the FETCH
            shapes = await _chunk_structures(s, cols)
            columns = [_column(name, cols, shapes, recent_ranges, flag_texts) for name in names]
            rows: Iterable[tuple[int | bytes, ...]] = zip(heads, *columns)
            if None in cols.envelopes:
                gone = {i for i, e in enumerate(cols.envelopes) if e is None and cols.blob_ids[i] not in shapes}
                if gone:  # bodies expunged (and released) since the listing: skipped (invariant 2)
                    found -= len(gone)
                    rows = [r for i, r in enumerate(rows) if i not in gone]
            s.write(b"".join([fmt % t for t in rows]))
            await s.maybe_flush()
    return found < len(uids)


async def _chunk_structures(s: Session, cols: MessageColumns) -> dict[str, ImapStructure | MessageMeta]:
    """The structure of the bodies in `cols` that have no kept row (`Store.list_columns` gave None), by blob id."""
    lacking = [i for i, e in enumerate(cols.envelopes) if e is None]
    if not lacking:
        return {}
    infos = [MessageInfo(0, cols.uids[i], 0, 0.0, 0, 0, _NO_KEYWORDS, cols.blob_ids[i]) for i in lacking]
    cached, wanted = META_CACHE.split(m.blob_id for m in infos)
    out: dict[str, ImapStructure | MessageMeta] = dict(cached)
    uncached = set(wanted)
    rest = [m for m in infos if m.blob_id in uncached]
    if rest:
        out.update(await _structures_from_meta(s, rest))
    return out


def _column(name: str, cols: MessageColumns, shapes: dict[str, ImapStructure | MessageMeta],
            recent_ranges: list[tuple[int, int]],
            flag_texts: dict[tuple[int, frozenset[str], bool], bytes]) -> Sequence[int | bytes]:
    """The values of item `name` for every message of `cols`, as `_COLUMN_FORMAT[name]` takes them."""
    if name == "UID":
        return cols.uids
    if name == "RFC822.SIZE":
        return cols.sizes
    if name == "MODSEQ":  # RFC 7162 §3.1.4.2
        return cols.modseqs
    if name == "INTERNALDATE":
        return [encoder.internal_date(d) for d in cols.internal_dates]
    if name == "SAVEDATE":
        return [savedate_item(d) for d in cols.save_dates]
    if name == "FLAGS":
        uids, kwd = cols.uids, cols.keywords
        out: list[bytes] = []
        for i, f in enumerate(cols.flags):
            kws = kwd.get(i, _NO_KEYWORDS) if kwd else _NO_KEYWORDS
            rec = False
            if recent_ranges:
                uid = uids[i]
                rec = any(lo <= uid <= hi for lo, hi in recent_ranges)
            key = (f, kws, rec)
            t = flag_texts.get(key)
            if t is None:
                t = flag_texts[key] = b"FLAGS " + encoder.flag_list(f, kws, rec)
            out.append(t)
        return out
    values = cols.envelopes if name == "ENVELOPE" else cols.bodystructures if name == "BODYSTRUCTURE" else cols.bodies
    if None not in values:
        return values  # type: ignore[return-value]  # every row kept: no None
    attr = "envelope" if name == "ENVELOPE" else "bodystructure" if name == "BODYSTRUCTURE" else "body"
    blob_ids = cols.blob_ids
    # A body gone since the listing (no shape) gets a placeholder: `column_fetch` drops its line.
    return [v if v is not None else getattr(shapes.get(blob_ids[i]), attr, b"") for i, v in enumerate(values)]


async def changed_uids(s: Session, a: P.FetchArgs, uid_cmd: bool) -> tuple[list[int], MessageColumns | None]:
    """FETCH (CHANGEDSINCE n [VANISHED]): the announced UIDs of the set changed after n, ascending, and their
    rows; with VANISHED, the removals are reported first (module doc). Store work proportional to the changes."""
    assert a.changedsince is not None
    sel = sel_of(s)
    if a.vanished:
        await s.notify(allow_expunge=True)  # held expunges as plain VANISHED first (a UID command may)
        await vanished_earlier(s, a.seqset, a.changedsince)
    inside = member(s, a.seqset, uid_cmd)  # BAD for a message number beyond EXISTS (messages invariant 2)
    view = sel.uids
    if not view:
        return [], None
    cols = await s.store.list_changed(sel.id, a.changedsince, view[0], view[-1])
    return [u for u in cols.uids if sel.msn(u) and inside(u)], cols


async def vanished_earlier(s: Session, seqset: P.SeqSet, since: int) -> None:
    """`* VANISHED (EARLIER)` for the UIDs of `seqset` removed after MODSEQ `since` (RFC 7162 §3.2.6), or the
    fallback when the store's record of removals does not reach back that far (module doc)."""
    sel = sel_of(s)
    v = await s.store.vanished(sel.id, since)
    if v.complete:
        inside = member(s, seqset, True, star=UID_MAX)
        s.write(*vanished_lines((u for u in v.uids if inside(u) and not sel.msn(u)), earlier=True))
        return
    if seqset.saved:
        asked = uid_ranges(sel.saved)
    else:
        asked = uid_ranges((min(lo, hi), max(lo, hi)) for lo, hi in (
            (UID_MAX if lo == P.STAR else lo, UID_MAX if hi == P.STAR else hi) for lo, hi in seqset.ranges))
    top = v.uidnext - 1
    asked = [(lo, min(hi, top)) for lo, hi in asked if lo <= top]
    s.write(*vanished_lines(missing_ranges(asked, sel.uids), earlier=True))


def savedate_item(save_date: float | None) -> bytes:
    """`SAVEDATE date-time`, or `SAVEDATE NIL` for a message whose save date the store does not have (saved
    before schema 12): RFC 8514 §4.2, NIL where "the underlying mailbox storage does not support" it."""
    return b"SAVEDATE " + (b"NIL" if save_date is None else encoder.internal_date(save_date))


def _label(att: P.FetchAtt) -> bytes:
    base = b"BINARY" if att.name == "BINARY" else b"BINARY.SIZE" if att.name == "BINARY.SIZE" else b"BODY"
    label = base + b"[" + att.section_text.encode("utf-8", "surrogateescape") + b"]"
    if att.partial is not None and att.name != "BINARY.SIZE":
        label += b"<%d>" % att.partial[0]  # RFC 9051 §7.5.2: only the origin octet is echoed
    return label


def _literal(label: bytes, data: bytes) -> list[bytes]:
    """`label {n}` CRLF and the data, as two pieces (RFC 9051 §4.3)."""
    return [label + b" {%d}\r\n" % len(data), data]


async def fetch(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.FetchArgs)
    sel = sel_of(s)
    if a.vanished:
        if not cmd.uid:
            raise Bad("VANISHED is only allowed with UID FETCH")  # RFC 7162 §3.2.6
        if not s.qresync:
            raise Bad("VANISHED needs ENABLE QRESYNC first")  # RFC 7162 §3.2.3
    atts = unique_atts(a.atts)  # invariant 5
    if a.changedsince is not None and not any(t.name == "MODSEQ" for t in atts):
        atts.append(P.FetchAtt("MODSEQ"))  # RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ
    if any(t.name == "MODSEQ" for t in atts):
        s.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
    if cmd.uid and not sel.uidonly and not any(t.name == "UID" for t in atts):
        atts.insert(0, P.FetchAtt("UID"))  # invariant 3
    listed = None
    uids: Sequence[int]
    if a.changedsince is not None:
        uids, listed = await changed_uids(s, a, cmd.uid)
    else:
        uids = resolve_view(s, a.seqset, cmd.uid)  # 1:*: the view's own slice, no int object a message
    names = {t.name for t in atts}
    # BODY[] of the whole message is the raw bytes: no metadata needed for the commonest body fetch.
    need_meta = any(t.name in _META_NEEDED and not (t.name == "BODY[]" and t.section == _WHOLE) for t in atts)
    # ENVELOPE, BODYSTRUCTURE, BODY alone: the kept structure rows, no metadata decoded (invariant 6).
    structure_only = need_meta and all(t.name in _STRUCTURE or t.name not in _META_NEEDED
                                       or (t.name == "BODY[]" and t.section == _WHOLE) for t in atts)
    need_raw = bool(names & _RAW_NEEDED)
    # RFC 4314 §4: \Seen is set by FETCH only with the "s" right.
    sets_seen = not sel.readonly and sel.may("s") and (bool(names & _SETS_SEEN) or any(
        t.name in ("BODY[]", "BINARY") and not t.peek for t in atts))
    if names <= _LIGHT or (names <= _COLUMN_ITEMS and listed is None):
        if await (light_fetch(s, uids, atts, listed) if names <= _LIGHT else column_fetch(s, uids, atts)):
            return "EXPUNGEISSUED", "Some messages were expunged meanwhile"  # RFC 9051 §7.1
        return "", "FETCH completed"
    infos = await plan(s, uids)
    want_preview = next((t for t in atts if t.name == "PREVIEW"), None)  # RFC 8970 (imap/preview.py)
    previews: dict[str, str | None] = {}
    ids = await _object_ids(s, infos) if names & _OBJECT_IDS else {}  # RFC 8474 EMAILID, THREADID
    seen_now: set[int] = set()
    if sets_seen:
        unseen = [m.uid for m in infos if not m.flags & _SEEN]
        if unseen:
            res = await s.store.store_flags(sel.id, unseen, StoreMode.ADD, int(Flag.SEEN))
            new_flags = {}
            for ch in res.changes:
                sel.own_change(ch.modseq)
                new_flags[ch.uid] = (ch.flags, ch.modseq)
                seen_now.add(ch.uid)
            infos = [_with_flags(m, *new_flags[m.uid]) if m.uid in new_flags else m for m in infos]
    expunged = len(infos) < len(uids)
    metas: dict[str, MessageMeta] = {}
    shapes: dict[str, ImapStructure | MessageMeta] = {}
    for k, m in enumerate(infos):
        if k % META_BATCH == 0:
            if structure_only:
                shapes = await prefetch_structure(s, infos[k:k + META_BATCH])
            elif need_meta:
                metas = await prefetch_meta(s, infos[k:k + META_BATCH])
        if want_preview is not None and k % META_BATCH == 0:
            previews = await preview.previews(s, infos[k:k + META_BATCH], want_preview.lazy)
        n = sel.msn(m.uid)
        if not n:
            continue
        try:
            raw = await s.store.read_message(m.blob_id) if need_raw else None
        except NotFound:  # expunged (and its body released) since the listing
            expunged = True
            continue
        meta: MessageMeta | None = None
        shape: ImapStructure | MessageMeta | None = None
        if structure_only:
            shape = shapes.get(m.blob_id) or await load_meta(s, m, raw)
        elif need_meta:
            meta = shape = metas.get(m.blob_id) or await load_meta(s, m, raw)
        if raw is not None and meta is not None:
            _check_binary(atts, raw, meta)  # the one item that can fail, before any of this response is written
        if m.keywords and ("FLAGS" in names or m.uid in seen_now):
            s.write(*sel.announce(m.keywords))  # state.py invariant 5: FLAGS before the FETCH
        # Invariant 2: item by item, so no response is ever built whole in memory.
        sep = sel.fetch_head(m.uid, n)
        for att in atts:
            if att.name == "PREVIEW":
                s.write(sep, preview.preview_item(previews.get(m.blob_id)))
            elif att.name in _OBJECT_IDS:
                s.write(sep, ids[att.name, m.uid])
            else:
                s.write(sep, *_item(s, att, m, raw, meta, shape))
            sep = b" "
            await s.maybe_flush()
        if m.uid in seen_now and "FLAGS" not in names:
            s.write(sep, b"FLAGS " + encoder.flag_list(m.flags, m.keywords, sel.is_recent(m.uid)))
        if m.uid in seen_now and sel.condstore:  # RFC 7162 §3.1, §3.2.4: a change this FETCH made
            if "MODSEQ" not in names:
                s.write(b" MODSEQ (%d)" % m.modseq)
            if sel.qresync and "UID" not in names and not sel.uidonly:
                s.write(b" UID %d" % m.uid)
        s.write(b")\r\n")
        await s.maybe_flush()
    if expunged:
        return "EXPUNGEISSUED", "Some messages were expunged meanwhile"  # RFC 9051 §7.1
    return "", "FETCH completed"


_OBJECT_IDS = {"EMAILID", "THREADID"}


async def _object_ids(s: Session, infos: Sequence[MessageInfo]) -> dict[tuple[str, int], bytes]:
    """(item, uid) -> `EMAILID (M...)` / `THREADID (T...)` or `THREADID NIL` (RFC 8474 §5, §7) of `infos`, with
    one store query for the thread ids; a message stored before thread ids existed gets one now
    (`objectid.ensure_keys`)."""
    if not infos:
        return {}
    sel = sel_of(s)
    user = s.user.id if s.user is not None else 0
    threads = await s.store.thread_ids(sel.id, infos[0].uid, infos[-1].uid)
    if any(not threads.get(m.uid, 1) for m in infos):
        wanted = {m.uid for m in infos if not threads.get(m.uid, 1)}
        rows = [r for r in await s.store.list_sort_rows(sel.id, min(wanted), max(wanted)) if r.uid in wanted]
        await objectid.ensure_keys(s, rows)
        threads = await s.store.thread_ids(sel.id, infos[0].uid, infos[-1].uid)
    out: dict[tuple[str, int], bytes] = {}
    for m in infos:
        out["EMAILID", m.uid] = b"EMAILID (%s)" % objectid.email_id(user, m.blob_id).encode()
        tid = objectid.thread_id(threads.get(m.uid, 0))
        out["THREADID", m.uid] = b"THREADID NIL" if tid is None else b"THREADID (%s)" % tid.encode()
    return out


def unique_atts(atts: Sequence[P.FetchAtt]) -> list[P.FetchAtt]:
    """The requested items, each once, in the order first asked (invariant 5). BODY.PEEK[x] and BODY[x] are
    one item: both are answered as BODY[x] (RFC 9051 §7.5.2); \\Seen is decided from the request as sent."""
    seen: set[tuple[str, str, tuple[int, int] | None]] = set()
    out: list[P.FetchAtt] = []
    for att in atts:
        key = (att.name, att.section_text, att.partial)
        if key not in seen:
            seen.add(key)
            out.append(att)
    return out


def _check_binary(atts: Sequence[P.FetchAtt], raw: bytes, meta: MessageMeta) -> None:
    """Raise No [UNKNOWN-CTE] (RFC 3516 §4.3) if a BINARY item names a part that cannot be decoded."""
    parts = {att.section.part for att in atts if att.name in ("BINARY", "BINARY.SIZE") and att.section is not None}
    for part in parts:
        try:
            meta.binary_size(raw, part)
        except UnknownCTE:
            raise No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None


def _with_flags(m: MessageInfo, flags: int, modseq: int) -> MessageInfo:
    return dataclasses.replace(m, flags=flags, modseq=modseq)


def _item(s: Session, att: P.FetchAtt, m: MessageInfo, raw: bytes | None, meta: MessageMeta | None,
          shape: ImapStructure | MessageMeta | None) -> list[bytes]:
    """One data item of a FETCH response, as pieces to write: a literal is not copied again to join its label.
    `shape` gives ENVELOPE, BODYSTRUCTURE and BODY; `meta` the sections."""
    name = att.name
    if name == "UID":
        return [b"UID %d" % m.uid]
    if name == "FLAGS":
        return [b"FLAGS " + encoder.flag_list(m.flags, m.keywords, sel_of(s).is_recent(m.uid))]
    if name == "INTERNALDATE":
        return [b"INTERNALDATE " + encoder.internal_date(m.internal_date)]
    if name == "RFC822.SIZE":
        return [b"RFC822.SIZE %d" % m.size]
    if name == "MODSEQ":  # RFC 7162 §3.1.4.2
        return [b"MODSEQ (%d)" % m.modseq]
    if name == "SAVEDATE":
        return [savedate_item(m.save_date)]
    if name == "ENVELOPE":
        assert shape is not None
        return [b"ENVELOPE ", shape.envelope]
    if name == "BODYSTRUCTURE":
        assert shape is not None
        return [b"BODYSTRUCTURE ", shape.bodystructure]
    if name == "BODY":
        assert shape is not None
        return [b"BODY ", shape.body]
    assert raw is not None
    if name == "RFC822":
        return _literal(b"RFC822", literal_safe(raw))
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        assert meta is not None
        part = meta.section(raw, _HEADER if name == "RFC822.HEADER" else _TEXT) or b""
        return _literal(name.encode(), literal_safe(part))
    assert att.section is not None
    if name == "BODY[]" and att.section == _WHOLE:
        whole = literal_safe(raw)
        if att.partial is not None:
            whole = partial(whole, att.partial[0], att.partial[1])
        return _literal(_label(att), whole)
    assert meta is not None
    if name == "BODY[]":
        data = meta.section(raw, att.section)
        if data is None:
            return [_label(att) + b" NIL"]
        data = literal_safe(data)
        if att.partial is not None:
            data = partial(data, att.partial[0], att.partial[1])
        return _literal(_label(att), data)
    if name == "BINARY.SIZE":
        try:
            size = meta.binary_size(raw, att.section.part)
        except UnknownCTE:
            raise No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
        return [_label(att) + (b" NIL" if size is None else b" %d" % size)]
    # BINARY
    try:
        data = meta.binary(raw, att.section.part)
    except UnknownCTE:
        raise No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None  # RFC 3516 §4.3
    if data is None:
        return [_label(att) + b" NIL"]
    if att.partial is not None:
        data = partial(data, att.partial[0], att.partial[1])
    if b"\x00" in data:
        return [_label(att) + b" ~{%d}\r\n" % len(data), data]  # invariant 4
    return _literal(_label(att), data)
