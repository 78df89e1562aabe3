"""Building the full-text index of a store that has bodies stored before it existed (the schema-8 backlog).

Theory of operation
-------------------
The schema step that adds the index (store/sqlite/schema.py, 8) indexes nothing: it names every body in the
backlog, so opening a large store is quick. `build_index` then works the backlog off in steps of `STEP`
bodies, each one short write transaction (`Store.index_backlog`), so deliveries and flag changes get the
writer between steps and no step holds the write lock for long. A body whose stored metadata is missing or of an
older format has it computed (`metapool`, as delivery does) and stored with `Store.write_metas`, which
indexes it; indexing also writes the body's scan form (store/scanform.py). Until a body is indexed, SEARCH
reads it by the exact scan of its metadata (`Store.search_text` counts it as a candidate, `Store.scan_texts`
leaves it out), so answers are right at every moment of the build.

It runs from `postroom index` (with the progress display of `postroom.progress`) and in the background of
`postroom serve` (progress lines in the log), whichever comes first; both may run at once (each step is its own
transaction; a body indexed by the other is skipped). With several nodes on one store, `postroom serve` builds
on the node that holds the cluster-wide lease `index-backlog` (jobs.py, app.py): two nodes building at once
would be correct, only each would read and index the same bodies.

Invariants
1. One step is at most `STEP` bodies in one transaction; between steps the loop yields (`asyncio.sleep`).
2. The build ends when the backlog has nothing after the last body looked at; bodies it could not index
   (metadata it could not store) stay in the backlog and are searched exactly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from postroom import metapool as pool
from postroom.config import LimitsConfig
from postroom.progress import ProgressSink
from postroom.store.api import NotFound, Store, StoreError

STEP = 200  # bodies per write transaction: ~0.1-0.3 s of the writer for 20 KB messages
log = logging.getLogger("postroom.index")


async def build_index(store: Store, limits: LimitsConfig,
                      progress: Callable[[int | None, str], ProgressSink] | None = None,
                      pause: float = 0.0) -> int:
    """Index every body in the store's backlog; returns how many were indexed. `progress` is called once with
    (bodies in the backlog, label) when there is work; `pause` seconds are slept between steps (the server's
    background build leaves the writer to deliveries)."""
    first = await store.index_backlog(STEP)
    if first.looked == 0:
        return 0
    sink = progress(first.looked + first.remaining, "index") if progress is not None else None
    done = 0
    step = first
    try:
        while True:
            done += step.indexed
            for blob_id in step.needs_meta:
                if await _upgrade(store, limits, blob_id):
                    done += 1
            if sink is not None:
                sink.advance(step.looked)
            if step.remaining == 0:
                break
            await asyncio.sleep(pause)  # invariant 1
            step = await store.index_backlog(STEP, step.last)
    finally:
        if sink is not None:
            sink.close()
    return done


async def _upgrade(store: Store, limits: LimitsConfig, blob_id: str) -> bool:
    """Metadata computed and stored for a body that had none of the current format (which indexes it)."""
    try:
        raw = await store.read_message(blob_id)
    except (NotFound, FileNotFoundError):
        return False  # removed meanwhile
    meta = await pool.meta_bytes(raw, limits)
    try:
        await store.write_metas({blob_id: meta})
    except StoreError:
        log.warning("index: could not store the metadata of %s; it stays searched by scan", blob_id, exc_info=True)
        return False
    return True


class LogProgress:
    """A `ProgressSink` for the server's log: a line every `every` bodies and one at the end."""

    def __init__(self, total: int | None, label: str, every: int = 5000) -> None:
        self.total = total
        self.label = label
        self.every = every
        self.count = 0
        self._next = every

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        self.count += n
        if self.count >= self._next:
            self._next = self.count + self.every
            log.info("full-text index: %d of %s bodies looked at", self.count, self.total)

    def close(self) -> None:
        log.info("full-text index: backlog done, %d bodies looked at", self.count)
