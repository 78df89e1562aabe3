"""The delivery limits split over the worker processes that deliver (delivery/queue.py invariant 10).

Expected values follow from the invariant, not from the code: the schedulers of one node together open at most
`delivery.concurrency` connections and `concurrency_per_domain` to one domain (invariant 4, per node), and each
has at least one of each, or it could never deliver.
"""

from __future__ import annotations

import pytest

from postroom import config as c
from postroom.delivery.queue import delivering_workers, share


def _cfg(concurrency: int, per_domain: int, workers: int = 0) -> c.Config:
    return c.load(None, {"delivery": {"concurrency": concurrency, "concurrency_per_domain": per_domain,
                                      "workers": workers}})


@pytest.mark.parametrize("count, concurrency, per_domain, expected", [
    (1, 50, 5, 1),  # one process: its scheduler, as before
    (2, 50, 5, 2),  # delivery.workers = 0 on two cores: both deliver
    (4, 50, 5, 4),
    (8, 50, 5, 5),  # no more schedulers than connections to one domain
    (4, 3, 5, 3),  # nor than connections in all
    (2, 50, 1, 1),  # one connection per domain: one scheduler
])
def test_every_worker_when_asked(count: int, concurrency: int, per_domain: int, expected: int) -> None:
    assert delivering_workers(_cfg(concurrency, per_domain), count) == expected


@pytest.mark.parametrize("workers, count, expected", [(1, 4, 1), (3, 4, 3), (3, 2, 2), (6, 8, 5)])
def test_delivery_workers_setting(workers: int, count: int, expected: int) -> None:
    """`delivery.workers` of the worker processes deliver, never more than there are, nor than
    concurrency_per_domain (5 by default); 1, worker 0 alone, is the default."""
    assert delivering_workers(_cfg(50, 5, workers), count) == expected
    assert c.load(None).delivery.workers == 1
    assert delivering_workers(c.load(None), 4) == 1
    with pytest.raises(c.ConfigError):
        c.load(None, {"delivery": {"workers": -1}})


@pytest.mark.parametrize("concurrency, per_domain", [(50, 5), (7, 3), (5, 5), (3, 2), (100, 10)])
def test_shares_add_up_to_the_configured_limits(concurrency: int, per_domain: int) -> None:
    cfg = _cfg(concurrency, per_domain)  # every worker delivering
    for count in range(1, 9):
        n = delivering_workers(cfg, count)
        parts = [share(cfg, slot, n).delivery for slot in range(n)]
        assert sum(d.concurrency for d in parts) == concurrency, count
        assert sum(d.concurrency_per_domain for d in parts) == per_domain, count
        assert all(d.concurrency >= 1 and d.concurrency_per_domain >= 1 for d in parts), count
        # as even as whole numbers go: no two shares differ by more than one
        assert max(d.concurrency for d in parts) - min(d.concurrency for d in parts) <= 1
        assert max(d.concurrency_per_domain for d in parts) - min(d.concurrency_per_domain for d in parts) <= 1
        # everything else is the configuration as given
        assert all(d.routes == cfg.delivery.routes and d.retry_seconds == cfg.delivery.retry_seconds for d in parts)


def test_one_scheduler_keeps_the_configuration_and_a_foreign_slot_is_refused() -> None:
    cfg = _cfg(50, 5)
    assert share(cfg, 0, 1) is cfg
    with pytest.raises(ValueError):
        share(cfg, 2, 2)


def test_a_reload_below_the_number_of_schedulers_leaves_each_one() -> None:
    """The number of schedulers is fixed at start; a reload to fewer connections than schedulers gives each
    one connection (documented: the node may exceed the new limit until a restart)."""
    lowered = _cfg(1, 1)
    assert [share(lowered, slot, 2).delivery.concurrency for slot in range(2)] == [1, 1]
    assert [share(lowered, slot, 2).delivery.concurrency_per_domain for slot in range(2)] == [1, 1]
