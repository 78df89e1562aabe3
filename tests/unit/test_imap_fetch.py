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
