"""FETCH and UID FETCH (RFC 9051 §6.4.5, §7.5.2; BINARY RFC 3516): the planner and the response writer.

Theory of operation
-------------------
`plan()` turns the requested UIDs into runs that are consecutive in the session's view and asks the store
once per run (`list_messages(mailbox, first, last)`): UID, flags, internal date and size come from there,
never from bodies. A FETCH of only those items (FETCH 1:* FLAGS, STORE's answer) reads the runs as columns
instead (`light_fetch`, `list_columns`), making no object per message. Only items that need more load more:
ENVELOPE, BODY, BODYSTRUCTURE read the stored metadata, `META_BATCH` messages per store call
(`read_metas`, cached process-wide by blob id); sections, RFC822*, BINARY read the body too, per message.
A message stored without metadata (imported before it was computed) gets it computed on first use.

Non-PEEK body items set \\Seen (RFC 9051 §6.4.5) before the responses are built, with one `store_flags`
call for all of them; their FETCH then carries FLAGS even when not asked for.

Invariants
1. One store query per run of the sequence set for the message records; bodies and metadata only when an
   item needs them.
2. Responses are written in sequence-number order, one `* n FETCH (...)` per message, flushing every
   `session.FLUSH_BYTES`; a message expunged by another session (but not yet reported) is skipped.
3. UID FETCH always includes UID (RFC 9051 §6.4.9).
4. BODY[...] data goes out as a literal with NUL turned into 0x80 (`literal_safe`); BINARY[...] data with NUL
   as literal8 `~{n}` (RFC 3516 §4.2).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

from postroom.mime import pool
from postroom.mime.imap import Section, UnknownCTE, literal_safe, partial
from postroom.mime.meta import MessageMeta, MetaFormatError
from postroom.store.api import Flag, MessageInfo, NotFound, StoreMode

from . import encoder
from . import parser as P
from .messages import resolve, sel_of
from .session import ONLY_SELECTED, No, Result, Session, command

_META_NEEDED = {"ENVELOPE", "BODY", "BODYSTRUCTURE", "BODY[]", "BINARY", "BINARY.SIZE", "RFC822.HEADER",
                "RFC822.TEXT"}
_RAW_NEEDED = {"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY[]", "BINARY", "BINARY.SIZE"}
_SETS_SEEN = {"RFC822", "RFC822.TEXT"}
_HEADER = Section((), "HEADER")
_TEXT = Section((), "TEXT")
_WHOLE = Section()

_LIGHT = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"}  # items the message rows answer alone
META_BATCH = 1000  # messages whose metadata is read in one store call
PARSE_SLICE = 1024 * 1024  # bytes of stored metadata parsed (JSON) between two yields to the event loop

_SEEN = int(Flag.SEEN)  # plain int: IntFlag arithmetic is slow in per-message loops


class MetaCache:
    """blob id -> MessageMeta, least recently used out (metadata is per body and never changes)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._d: OrderedDict[str, MessageMeta] = OrderedDict()

    def get(self, key: str) -> MessageMeta | None:
        m = self._d.get(key)
        if m is not None:
            self._d.move_to_end(key)
        return m

    def put(self, key: str, meta: MessageMeta) -> None:
        self._d[key] = meta
        if len(self._d) > self.size:
            self._d.popitem(last=False)


META_CACHE = MetaCache()


async def load_meta(s: Session, info: MessageInfo, raw: bytes | None = None) -> MessageMeta:
    meta = META_CACHE.get(info.blob_id)
    if meta is not None:
        return meta
    data = await s.store.read_meta(info.blob_id)
    meta = None
    if data is not None:
        try:
            meta = MessageMeta.from_bytes(data)
        except MetaFormatError:
            meta = None
    if meta is None:  # imported before metadata existed, or an older format: compute it now
        if raw is None:
            raw = await s.store.read_message(info.blob_id)
        meta = await pool.meta_of(raw, s.limits)
    META_CACHE.put(info.blob_id, meta)
    return meta


def runs(view: Sequence[int], uids: list[int]) -> list[tuple[int, int]]:
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


async def plan(s: Session, uids: list[int]) -> list[MessageInfo]:
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
    """The metadata of `infos` that is cached or stored, with one store call (`read_metas`) for what is not
    cached; `load_meta` does the rest (metadata missing or of an older format)."""
    out: dict[str, MessageMeta] = {}
    missing: list[str] = []
    for m in infos:
        meta = META_CACHE.get(m.blob_id)
        if meta is None:
            missing.append(m.blob_id)
        else:
            out[m.blob_id] = meta
    if missing:
        parsed = 0
        for blob_id, data in (await s.store.read_metas(missing)).items():
            if data is None:
                continue
            parsed += len(data)
            if parsed >= PARSE_SLICE:  # a batch can be 1,000 metas of ~300 KB (search text): not in one go
                parsed = 0
                await asyncio.sleep(0)
            try:
                meta = MessageMeta.from_bytes(data)
            except MetaFormatError:
                continue
            out[blob_id] = meta
            META_CACHE.put(blob_id, meta)
    return out


async def light_fetch(s: Session, uids: list[int], atts: Sequence[P.FetchAtt]) -> bool:
    """`* n FETCH (...)` for items found in the message rows only (UID, FLAGS, INTERNALDATE, RFC822.SIZE), from
    one columnar listing per run (`list_columns`): no object per message. True if a message named was
    expunged meanwhile."""
    sel = sel_of(s)
    view = sel.uids
    recent = sel.is_recent
    found = 0
    for first, last in runs(view, uids):
        cols = await s.store.list_columns(sel.id, first, last)
        found += len(cols)
        j = bisect.bisect_left(view, first)  # a run's listed UIDs are all in the view: arrivals come after it
        flags, kw_at = cols.flags, cols.keywords_at
        lines: list[bytes] = []
        for i, uid in enumerate(cols.uids):
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
                    items.append(b"FLAGS " + encoder.flag_list(flags[i], kw_at(i), recent(uid)))
                elif name == "INTERNALDATE":
                    items.append(b"INTERNALDATE " + encoder.internal_date(cols.internal_dates[i]))
                else:  # RFC822.SIZE
                    items.append(b"RFC822.SIZE %d" % cols.sizes[i])
            lines.append(b"* %d FETCH (%b)\r\n" % (j + 1, b" ".join(items)))
            if len(lines) >= 1000:
                s.write(*lines)
                lines = []
                await s.maybe_flush()
        s.write(*lines)
        await s.maybe_flush()
    return found < len(uids)


async def flags_fetch(s: Session, uids: list[int], with_uid: bool = True) -> None:
    """`* n FETCH (FLAGS (...) UID u)` for each UID still present (STORE's answer, resyncs)."""
    atts = [P.FetchAtt("FLAGS"), P.FetchAtt("UID")] if with_uid else [P.FetchAtt("FLAGS")]
    await light_fetch(s, uids, atts)


def _label(att: P.FetchAtt) -> bytes:
    base = b"BINARY" if att.name == "BINARY" else b"BINARY.SIZE" if att.name == "BINARY.SIZE" else b"BODY"
    label = base + b"[" + att.section_text.encode("utf-8", "surrogateescape") + b"]"
    if att.partial is not None and att.name != "BINARY.SIZE":
        label += b"<%d>" % att.partial[0]  # RFC 9051 §7.5.2: only the origin octet is echoed
    return label


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


@command("FETCH", ONLY_SELECTED)
@command("UID FETCH", ONLY_SELECTED)
async def fetch(s: Session, cmd: P.Command) -> Result:
    a = cmd.args
    assert isinstance(a, P.FetchArgs)
    sel = sel_of(s)
    uids = resolve(s, a.seqset, cmd.uid)
    atts = list(a.atts)
    if cmd.uid and not any(t.name == "UID" for t in atts):
        atts.insert(0, P.FetchAtt("UID"))  # invariant 3
    names = {t.name for t in atts}
    # BODY[] of the whole message is the raw bytes: no metadata needed for the commonest body fetch.
    need_meta = any(t.name in _META_NEEDED and not (t.name == "BODY[]" and t.section == _WHOLE) for t in atts)
    need_raw = bool(names & _RAW_NEEDED)
    sets_seen = not sel.readonly and (bool(names & _SETS_SEEN) or any(
        t.name in ("BODY[]", "BINARY") and not t.peek for t in atts))
    if names <= _LIGHT:
        if await light_fetch(s, uids, atts):
            return "EXPUNGEISSUED", "Some messages were expunged meanwhile"  # RFC 9051 §7.1
        return "", "FETCH completed"
    infos = await plan(s, uids)
    seen_now: set[int] = set()
    if sets_seen:
        unseen = [m.uid for m in infos if not m.flags & _SEEN]
        if unseen:
            res = await s.store.store_flags(sel.id, unseen, StoreMode.ADD, int(Flag.SEEN))
            new_flags = {}
            for ch in res.changes:
                sel.own_modseqs.add(ch.modseq)
                new_flags[ch.uid] = ch.flags
                seen_now.add(ch.uid)
            infos = [_with_flags(m, new_flags[m.uid]) if m.uid in new_flags else m for m in infos]
    expunged = len(infos) < len(uids)
    metas: dict[str, MessageMeta] = {}
    for k, m in enumerate(infos):
        if need_meta and k % META_BATCH == 0:
            metas = await prefetch_meta(s, infos[k:k + META_BATCH])
        n = sel.msn(m.uid)
        if not n:
            continue
        try:
            raw = await s.store.read_message(m.blob_id) if need_raw else None
        except NotFound:  # expunged (and its body released) since the listing
            expunged = True
            continue
        meta = (metas.get(m.blob_id) or await load_meta(s, m, raw)) if need_meta else None
        items: list[bytes] = []
        for att in atts:
            items.append(_item(s, att, m, raw, meta))
        if m.uid in seen_now and "FLAGS" not in names:
            items.append(b"FLAGS " + encoder.flag_list(m.flags, m.keywords, sel.is_recent(m.uid)))
        s.write(b"* %d FETCH (%b)\r\n" % (n, b" ".join(items)))
        await s.maybe_flush()
    if expunged:
        return "EXPUNGEISSUED", "Some messages were expunged meanwhile"  # RFC 9051 §7.1
    return "", "FETCH completed"


def _with_flags(m: MessageInfo, flags: int) -> MessageInfo:
    return dataclasses.replace(m, flags=flags)


def _item(s: Session, att: P.FetchAtt, m: MessageInfo, raw: bytes | None, meta: MessageMeta | None) -> bytes:
    name = att.name
    if name == "UID":
        return b"UID %d" % m.uid
    if name == "FLAGS":
        return b"FLAGS " + encoder.flag_list(m.flags, m.keywords, sel_of(s).is_recent(m.uid))
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + encoder.internal_date(m.internal_date)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % m.size
    if name == "ENVELOPE":
        assert meta is not None
        return b"ENVELOPE " + meta.envelope
    if name == "BODYSTRUCTURE":
        assert meta is not None
        return b"BODYSTRUCTURE " + meta.bodystructure
    if name == "BODY":
        assert meta is not None
        return b"BODY " + meta.body
    assert raw is not None
    if name == "RFC822":
        return b"RFC822 " + _literal(literal_safe(raw))
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        assert meta is not None
        part = meta.section(raw, _HEADER if name == "RFC822.HEADER" else _TEXT) or b""
        return name.encode() + b" " + _literal(literal_safe(part))
    assert att.section is not None
    if name == "BODY[]" and att.section == _WHOLE:
        whole = literal_safe(raw)
        if att.partial is not None:
            whole = partial(whole, att.partial[0], att.partial[1])
        return _label(att) + b" " + _literal(whole)
    assert meta is not None
    if name == "BODY[]":
        data = meta.section(raw, att.section)
        if data is None:
            return _label(att) + b" NIL"
        data = literal_safe(data)
        if att.partial is not None:
            data = partial(data, att.partial[0], att.partial[1])
        return _label(att) + b" " + _literal(data)
    if name == "BINARY.SIZE":
        try:
            size = meta.binary_size(raw, att.section.part)
        except UnknownCTE:
            raise No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
        return _label(att) + (b" NIL" if size is None else b" %d" % size)
    # BINARY
    try:
        data = meta.binary(raw, att.section.part)
    except UnknownCTE:
        raise No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None  # RFC 3516 §4.3
    if data is None:
        return _label(att) + b" NIL"
    if att.partial is not None:
        data = partial(data, att.partial[0], att.partial[1])
    if b"\x00" in data:
        return _label(att) + b" ~{%d}\r\n" % len(data) + data  # invariant 4
    return _label(att) + b" " + _literal(data)
