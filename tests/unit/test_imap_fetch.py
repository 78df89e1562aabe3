"""fetch.runs: requested UIDs into runs consecutive in the session's view (one store query per run); the caches;
`merge_changes`: a kept flags listing brought up to date."""

from __future__ import annotations

import random
from array import array

from postroom.imap.fetch import merge_changes, runs
from postroom.store.api import MessageColumns


def test_runs_of_a_contiguous_range_is_one_run() -> None:
    view = array("I", [1, 2, 5, 9, 10, 11])
    assert runs(view, [1, 2, 5, 9, 10, 11]) == [(1, 11)]
    assert runs(view, [5, 9, 10]) == [(5, 10)]
    assert runs(view, [11]) == [(11, 11)]
    assert runs(view, []) == []


def test_runs_split_where_the_view_has_a_gap() -> None:
    view = array("I", [1, 2, 5, 9, 10, 11])
    assert runs(view, [1, 5, 9]) == [(1, 1), (5, 9)]
    assert runs(view, [1, 2, 10, 11]) == [(1, 2), (10, 11)]
    assert runs(view, [2, 11]) == [(2, 2), (11, 11)]


def test_meta_cache_is_bounded_by_bytes_not_only_count() -> None:
    # Issue 11: memory is bounded. 4,096 entries of ~300 KB search text each would be over a gigabyte.
    from postroom.imap.fetch import MetaCache
    from postroom.mime.meta import compute_meta

    big = compute_meta(b"Subject: s\r\n\r\n" + b"word " * 60_000)  # ~300 KB of search text
    cache = MetaCache(size=4096, max_bytes=2_000_000)
    for i in range(50):
        cache.put(f"b{i}", big)
    assert cache.held <= 2_000_000
    kept = [i for i in range(50) if cache.get(f"b{i}") is not None]
    assert kept == list(range(50 - len(kept), 50)) and 1 <= len(kept) < 50  # the most recent, not all
    small = MetaCache(max_bytes=1_000_000)
    small.put("one", compute_meta(b"Subject: s\r\n\r\nhi\r\n"))
    small.put("big", big)  # over a quarter of the bound: not cached, nothing pushed out
    assert small.get("big") is None and small.get("one") is not None


def _listing(box: dict[int, tuple[int, int, frozenset[str]]], stamp: tuple[int, int], lo: int = 1,
             hi: int = 2**32 - 1) -> MessageColumns:
    """The flags-only listing of UIDs lo..hi of a model mailbox (uid -> (flags, modseq, keywords)), as
    `Store.list_columns(flags_only=True)` gives it: columns in UID order, keywords only where there are some."""
    uids = sorted(u for u in box if lo <= u <= hi)
    return MessageColumns(array("I", uids), [box[u][1] for u in uids], [box[u][0] for u in uids], (), (), (),
                          {i: box[u][2] for i, u in enumerate(uids) if box[u][2]}, (), stamp=stamp)


def _same_columns(a: MessageColumns, b: MessageColumns) -> None:
    assert list(a.uids) == list(b.uids)
    assert list(a.flags) == list(b.flags) and list(a.modseqs) == list(b.modseqs)
    assert a.keywords == b.keywords and a.stamp == b.stamp


def test_merge_changes_gives_what_a_new_listing_gives() -> None:
    """`merge_changes` (fetch.py invariant 8): a kept listing, less the removals and with the rows changed after its
    MODSEQ (RFC 7162 §3.1: every change takes a new MODSEQ), is the listing of the mailbox as it is now: checked
    against a model mailbox over random flag, keyword and removal changes, the listing and the changes taken as
    the store gives them (removed UIDs of the whole mailbox, changed rows of the range)."""
    rng = random.Random(7162)
    for _ in range(200):
        modseq = 1
        box: dict[int, tuple[int, int, frozenset[str]]] = {}
        for uid in rng.sample(range(1, 200), rng.randint(0, 60)):
            modseq += 1
            box[uid] = (rng.choice([0, 1, 2, 5]), modseq, frozenset(rng.choice([(), (), ("$Work",), ("a", "b")])))
        lo, hi = rng.choice([(1, 2**32 - 1), (20, 150), (1, 100)])
        kept = _listing(box, (7, modseq), lo, hi)
        since = modseq
        removed: list[tuple[int, int]] = []  # (uid, modseq) of each removal, as `Store.vanished` keeps them
        for _ in range(rng.randint(0, 12)):
            if not box:
                break
            uid = rng.choice(sorted(box))
            modseq += 1
            if rng.random() < 0.3:
                del box[uid]
                removed.append((uid, modseq))
            else:
                box[uid] = (rng.choice([0, 1, 3, 8]), modseq, frozenset(rng.choice([(), ("$Work",), ("c",)])))
        changed = _listing({u: v for u, v in box.items() if v[1] > since}, (0, 0), lo, hi)
        gone = sorted(u for u, m in removed if m > since and lo <= u <= hi)
        merged = merge_changes(kept, gone, changed, (7, modseq))
        assert merged is not None
        _same_columns(merged, _listing(box, (7, modseq), lo, hi))
        assert kept.stamp == (7, since)  # the kept listing itself is not changed (other sessions may be using it)


def test_merge_changes_refuses_a_row_it_never_had() -> None:
    """A changed row whose UID is not in the kept listing cannot be placed: None, and the caller lists again."""
    kept = _listing({1: (0, 2, frozenset()), 3: (0, 3, frozenset())}, (7, 3))
    assert merge_changes(kept, [], _listing({2: (1, 4, frozenset())}, (0, 0)), (7, 4)) is None
    merged = merge_changes(kept, [1], _listing({3: (1, 5, frozenset({"x"}))}, (0, 0)), (7, 5))
    assert merged is not None and list(merged.uids) == [3] and merged.keywords == {0: frozenset({"x"})}
    assert list(kept.uids) == [1, 3] and list(kept.flags) == [0, 0] and kept.keywords == {}  # not changed in place


def test_resolve_of_one_range_is_the_view_slice_the_general_path_gives() -> None:
    """`arguments.resolve` answers a set of one range (1:*, the commonest) with a slice of the view: the same UIDs
    as the general path, which is what the same range written twice takes (RFC 9051 §9: a set names each message
    once; "*" is the last message or the highest UID, n:m is m:n)."""
    from types import SimpleNamespace
    from typing import Any

    import pytest

    from postroom.imap.arguments import resolve
    from postroom.imap.errors import Bad
    from postroom.imap.state import Selected
    from postroom.imap.syntax import STAR, SeqSet
    from postroom.store.api import Mailbox

    mbox = Mailbox(7, 1, "INBOX", 99, 10, 20, None, True)
    for view in ([], [4], [1, 2, 5, 9, 10, 11], list(range(3, 60, 3))):
        s: Any = SimpleNamespace(sel=Selected(mbox, False, view))
        n, top = len(view), view[-1] if view else 0
        for lo, hi in [(1, STAR), (STAR, 1), (STAR, STAR), (2, 3), (3, 2), (1, 1), (4, 100), (12, 12), (1, n)]:
            for uid in (False, True):
                want: list[int] | type[Bad]
                try:
                    want = resolve(s, SeqSet(((lo, hi), (lo, hi))), uid)
                except Bad:
                    want = Bad
                if want is Bad:
                    with pytest.raises(Bad):
                        resolve(s, SeqSet(((lo, hi),)), uid)
                else:
                    assert resolve(s, SeqSet(((lo, hi),)), uid) == want, (view, lo, hi, uid)
        if view:
            assert resolve(s, SeqSet(((1, STAR),)), False) == view == resolve(s, SeqSet(((1, STAR),)), True)
            assert resolve(s, SeqSet(((STAR, STAR),)), True) == [top]


def test_flag_cache_texts_are_bounded_and_go_with_their_listing() -> None:
    """The encoded answers kept with a listing (fetch.py invariant 9): at most `texts_per_listing` each, counted in
    the byte bound, never kept for a listing that is not the one kept under the key, carried to an updated
    listing only from the listing the update was made from, with the changed messages' blocks stale."""
    from postroom.imap.fetch import FlagCache

    def cols(n: int, stamp: int) -> MessageColumns:
        return MessageColumns(array("I", range(1, n + 1)), [1] * n, [0] * n, (), (), (), {}, (), stamp=(1, stamp))

    cache = FlagCache(max_bytes=800_000, texts_per_listing=2)
    key = (1, 1, 3000)
    kept = cache.put(key, cols(3000, 5))  # 60 KB
    base = cache.held
    for name in ("a", "b", "c"):
        cache.keep_text(key, kept, name, [b"x" * 10_000, b"y" * 5_000])
    assert cache.text(key, kept, "a") is None and cache.text(key, kept, "c") is not None  # the oldest out
    assert cache.held == base + 2 * 15_000
    cache.keep_text(key, cols(3000, 5), "d", [b"z"])  # not the kept listing: not kept
    assert cache.text(key, kept, "d") is None and cache.held == base + 30_000
    cache.keep_text(key, kept, "big", [b"x" * 150_000])  # the entry would pass a quarter of the bound: not kept
    assert cache.text(key, kept, "big") is None and cache.held <= 800_000
    newer = cache.put(key, cols(3000, 6), carry=[0, 2500], base=kept)
    text = cache.text(key, newer, "c")
    assert text is not None and text.stale == frozenset({0, 2}) and cache.text(key, kept, "c") is None
    assert cache.held == base + 30_000
    other = cache.put(key, cols(3000, 7), carry=[5], base=kept)  # made from a listing no longer kept: no texts
    assert cache.text(key, other, "c") is None and cache.held == base
    cache.drop(key)
    assert cache.held == 0
