"""FETCH PREVIEW and PREVIEW (LAZY) (RFC 8970): the preview text of each message, computed once per body.

Theory of operation
-------------------
`previews(s, infos, lazy)` answers a FETCH batch: one store call (`read_previews`) gives the previews already
kept; for a body without one, the text is computed from its stored metadata's part table and the bytes of one
part (`mime.preview.preview_text`: no MIME parsing again) and written back in one store call
(`write_previews`), so every later FETCH PREVIEW of that body is one small read. With LAZY (RFC 8970 §4.1: the
client accepts NIL when a preview is not readily available and asks again without LAZY later) a body without a
kept preview answers NIL and nothing is computed.

Invariants
1. A body's preview is computed at most once while it stays stored (then read); a FETCH computes previews
   for at most one batch (`fetch.META_BATCH` messages) between two store reads, yielding between bodies.
2. Without LAZY every message gets a string (possibly empty, for a message without text); NIL only with LAZY.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from postroom.mime.imap import istring
from postroom.mime.preview import preview_text
from postroom.store.api import MessageInfo, NotFound, StoreError

from .session import Session

log = logging.getLogger("postroom.imap")


async def previews(s: Session, infos: Sequence[MessageInfo], lazy: bool) -> dict[str, str | None]:
    """blob id -> preview text (None: not computed, LAZY only) for the messages `infos` (module doc)."""
    from .fetch import load_meta  # fetch imports this module

    out: dict[str, str | None] = dict(await s.store.read_previews(m.blob_id for m in infos))
    fresh: dict[str, str] = {}
    for m in infos:
        if m.blob_id in out:
            continue
        if lazy:  # RFC 8970 §4.1: not readily available
            out[m.blob_id] = None
            continue
        try:
            raw = await s.store.read_message(m.blob_id)
        except NotFound:  # expunged meanwhile: the FETCH skips it
            continue
        meta = await load_meta(s, m, raw)
        out[m.blob_id] = fresh[m.blob_id] = preview_text(raw, meta)
        await asyncio.sleep(0)  # invariant 1: other sessions run between bodies
    if fresh:
        try:
            await s.store.write_previews(fresh)
        except StoreError:  # the answer does not depend on it; it is computed again next time
            log.warning("could not keep the previews of %d bodies", len(fresh), exc_info=True)
    return out


def preview_item(text: str | None) -> bytes:
    """`PREVIEW nstring` (RFC 8970 §6): UTF-8 text as a quoted string, or a literal when it is not ASCII."""
    return b"PREVIEW " + istring(text)
