"""fetch.runs: requested UIDs into runs consecutive in the session's view (one store query per run)."""

from __future__ import annotations

from array import array

from postroom.imap.fetch import runs


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
