"""The order of a queue claim (issue 17), on every engine: whichever way the engine finds them (SQLite: the sort of
a small due set, the ordered walk, the walk's fall-back to the sort; store/sqlite/queue.py "What a claim reads"),
a claim takes the due and free recipients oldest entry first (created, then id), each entry's in position order
(store/sqlite/queue.py invariant 3, delivery/queue.py "oldest first"), and never a held or not-yet-due one.

The entries are made with a clock that goes back and stands still, so creation time and id order disagree: the
expected orders below are written out from the invariant, not read from a run."""

from __future__ import annotations

import pytest

from postroom.store.api import QueueRecipient, RcptState, Store
from postroom.store.sqlite import queue as sqlite_queue

from .conftest import BACKENDS

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

R = QueueRecipient
NOW = 100.0


async def fill(store: Store) -> dict[str, int]:
    """Five entries made at clock 50, 10, 10, 30, 5 (ids rising); returns entry name -> id."""
    made: dict[str, int] = {}
    plan = [
        ("e1", 50.0, [R("a@x.example"), R("b@x.example", state=RcptState.DEFERRED, next_try=1000.0),
                      R("c@x.example", next_try=NOW)]),
        ("e2", 10.0, [R("d@x.example")]),
        ("e3", 10.0, [R("e@x.example"), R("f@x.example", state=RcptState.DEFERRED, attempts=1, next_try=99.0)]),
        ("e4", 30.0, [R("g@x.example", state=RcptState.DEFERRED, next_try=500.0),
                      R("z@x.example", state=RcptState.DELIVERED)]),
        ("e5", 5.0, [R("h@x.example")]),
    ]
    for name, created, rcpts in plan:
        store._clock = lambda created=created: created  # type: ignore[attr-defined]  # the engines' clock
        made[name] = (await store.enqueue(name.encode(), "s@example.org", rcpts)).id
    return made


def expected(made: dict[str, int]) -> list[tuple[int, str]]:
    """Due (next_try <= NOW) and pending, by (created, id, position): e5 (5), e2 and e3 (10, by id), e1 (50); e4
    has nothing due, e1's b waits for 1000."""
    return [(made["e5"], "h@x.example"), (made["e2"], "d@x.example"), (made["e3"], "e@x.example"),
            (made["e3"], "f@x.example"), (made["e1"], "a@x.example"), (made["e1"], "c@x.example")]


@pytest.mark.parametrize("walk_skip", [sqlite_queue.WALK_SKIP, 0])
@pytest.mark.parametrize("limit", [1, 2, 4, 10])
async def test_claims_take_the_oldest_due_and_free_first(store: Store, limit: int, walk_skip: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # WALK_SKIP 0: the SQLite walk gives up at the first held recipient and falls back to the sort of the due set.
    monkeypatch.setattr(sqlite_queue, "WALK_SKIP", walk_skip)
    made = await fill(store)
    want = expected(made)
    taken: list[tuple[int, str]] = []
    for _ in range(len(want)):
        got = await store.queue_claim(NOW, "n1#1", 60.0, limit)
        assert got.claimed == want[len(taken) : len(taken) + limit]  # each claim: the next ones, in order
        assert [e.id for e in got.entries] == list(dict.fromkeys(q for q, _ in got.claimed))  # oldest first
        taken += got.claimed
        if len(taken) == len(want):
            break
    assert taken == want
    assert (await store.queue_claim(NOW, "n2#1", 60.0, limit)).claimed == []  # all held, the rest not due
    # Later: the leases expired (the claim at 160 takes them over) and e4's g and e1's b came due, in order.
    later = await store.queue_claim(1000.0, "n2#1", 60.0, 100)
    assert later.claimed == [want[0], *want[1:4], (made["e4"], "g@x.example"), want[4],
                             (made["e1"], "b@x.example"), want[5]]
    assert sorted(later.taken_over) == sorted((q, r, "n1#1") for q, r in want)


async def test_the_walk_steps_over_held_recipients(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Many due (so SQLite walks), the oldest held by another: the claim takes the next free ones in order.
    monkeypatch.setattr(sqlite_queue, "WALK_SKIP", 8)
    ids = []
    for i in range(30):
        store._clock = lambda i=i: 1000.0 - i  # type: ignore[attr-defined]  # the newest id is the oldest entry
        ids.append((await store.enqueue(b"%d" % i, "s@example.org", [R(f"r{i}@x.example")])).id)
    order = [(ids[i], f"r{i}@x.example") for i in reversed(range(30))]
    assert (await store.queue_claim(NOW, "n1#1", 60.0, 5)).claimed == order[:5]
    assert (await store.queue_claim(NOW, "n2#1", 60.0, 3)).claimed == order[5:8]
    # Past WALK_SKIP held ones: SQLite falls back to the sort; the answer is the same.
    assert (await store.queue_claim(NOW, "n3#1", 60.0, 2)).claimed == order[8:10]
    held = await store.queue_claim(NOW, "n1#1", 60.0, 10)
    assert held.claimed == order[10:20]
    assert (await store.queue_claim(NOW, "n4#1", 60.0, 1)).claimed == [order[20]]
