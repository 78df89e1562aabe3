"""Prometheus metrics for one Postroom process.

Theory of operation
-------------------
A `Metrics` object owns its own `CollectorRegistry`, so two servers in one test process never share counters and
nothing depends on prometheus_client's global default registry. The object graph (`app.py`) makes one and hands
it to whoever reports: the connection driver (sessions), delivery (messages accepted / delivered), the store
(commit timings), the queue (its length, read through a callback at scrape time). `render()` produces the text
exposition format served on `GET /metrics`.

Every metric name carries the `postroom_` namespace (Prometheus naming practice); the Python attributes drop it.

Several worker processes (`server.workers` > 1, workers.py): each worker makes its `Metrics` with
`multiprocess_dir` (the data folder's `metrics/`, emptied by the parent at start). prometheus-client's
multiprocess mode then keeps every value in a memory-mapped file per process there, and `render()` (in whichever
worker serves the scrape) sums the files of every worker: counters and histograms over all workers, dead ones
included (what they counted happened); `sessions_open` over the live ones (`livesum`: the parent marks a dead
worker's files); `queue_length` is the most recent reading of a live worker. The names are the same as with one
process.

Invariants
1. Reporting never raises into the caller's path: the methods only touch in-memory counters.
2. `queue_length` is computed at scrape time when a callback is set, so it is never stale.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

NAMESPACE = "postroom"

# Group commits should take milliseconds; the tail shows fsync trouble.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Operations folded into one commit: how well group commit batches.
COMMIT_OPS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The process's metrics, on a private registry."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:  # module doc: values in per-process files, summed by `render`
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.sessions_open = Gauge("sessions_open", "Protocol sessions currently open.", ["protocol"],
                                   namespace=NAMESPACE, registry=reg, multiprocess_mode="livesum")
        self.sessions_total = Counter("sessions", "Protocol sessions started.", ["protocol"],
                                      namespace=NAMESPACE, registry=reg)
        self.connections_refused_total = Counter(
            "connections_refused", "Connections refused over the per-IP or total connection limit.",
            ["protocol"], namespace=NAMESPACE, registry=reg)
        self.messages_accepted_total = Counter("messages_accepted", "Messages accepted (SMTP 250 / APPEND OK).",
                                               namespace=NAMESPACE, registry=reg)
        self.messages_delivered_total = Counter("messages_delivered", "Messages delivered to a mailbox or a "
                                                "remote server.", namespace=NAMESPACE, registry=reg)
        self.queue_length = Gauge("queue_length", "Messages waiting in the outbound queue.",
                                  namespace=NAMESPACE, registry=reg, multiprocess_mode="livemostrecent")
        self.store_commit_seconds = Histogram("store_commit_seconds", "Duration of one store commit.",
                                              namespace=NAMESPACE, registry=reg, buckets=COMMIT_BUCKETS)
        self.store_commit_ops = Histogram("store_commit_ops", "Write operations folded into one store commit.",
                                          namespace=NAMESPACE, registry=reg, buckets=COMMIT_OPS_BUCKETS)
        self.store_lock_wait_seconds = Histogram(
            "store_lock_wait_seconds", "Time a batch of store writes waited for the database's write lock held by "
            "another process (SQLite: the other worker processes, an admin command).",
            namespace=NAMESPACE, registry=reg, buckets=COMMIT_BUCKETS)
        self.password_checks_total = Counter(
            "password_checks", "Password logins judged, by how: argon2 (a hash check ran) or cache (a remembered "
            "success, auth.cache_ttl).", ["how"], namespace=NAMESPACE, registry=reg)

    # --- reporting helpers -------------------------------------------------------------------------------
    def session_started(self, protocol: str) -> None:
        self.sessions_open.labels(protocol).inc()
        self.sessions_total.labels(protocol).inc()

    def session_ended(self, protocol: str) -> None:
        self.sessions_open.labels(protocol).dec()

    def connection_refused(self, protocol: str) -> None:
        self.connections_refused_total.labels(protocol).inc()

    def message_accepted(self, count: int = 1) -> None:
        self.messages_accepted_total.inc(count)

    def message_delivered(self, count: int = 1) -> None:
        self.messages_delivered_total.inc(count)

    def password_checked(self, how: str) -> None:
        """One password login judged: `how` is "argon2" or "cache"."""
        self.password_checks_total.labels(how).inc()

    def observe_commit(self, seconds: float, ops: int) -> None:
        """One store commit took `seconds` and carried `ops` write operations."""
        self.store_commit_seconds.observe(seconds)
        self.store_commit_ops.observe(ops)

    def observe_lock_wait(self, seconds: float) -> None:
        """A batch of store writes waited `seconds` for the write lock before it began (SQLite engine)."""
        self.store_lock_wait_seconds.observe(seconds)

    def set_queue_length_callback(self, callback: Callable[[], float]) -> None:
        """Read the queue length from `callback` at every scrape (invariant 2). It must be cheap and sync."""
        self.queue_length.set_function(callback)

    def figures(self) -> list[tuple[str, str, float]]:
        """The counters and gauges of the registry as (metric name, labels as `k="v"` text, value), read from
        the registry itself (the web admin's status page; no HTTP scrape). Histograms are left out."""
        out = []
        for family in self.registry.collect():
            if family.type not in ("counter", "gauge"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out.append((sample.name, labels, float(sample.value)))
        return out

    # --- exposition ----------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type; with `multiprocess_dir`, the sum
        of every worker's files there (module doc)."""
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
