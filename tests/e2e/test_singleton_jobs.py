"""Once-per-cluster jobs with two `postroom serve` nodes on one PostgreSQL (issue 16 item 3, jobs.py).

DMARC reports: both nodes have them on and start at the same moment, each running its report round at start;
the DMARC results of the previous UTC day recorded in the shared store reach the rua address in exactly one
report (RFC 7489 §7.2: one report per reporting period), which one node's lease holder queued and the queue
delivered to a scripted SMTP server standing in for the domain's MX.

rspamd learning: both nodes send training signals to Debian's rspamd (with Redis, as test_rspamd_learn.py starts
them); each signal recorded in the shared store is learnt once.

The nodes are real server processes on a real PostgreSQL (tests/pgcluster.py), as in test_queue_nodes.py, whose
node, sink and store helpers this reuses; the results are recorded through the store API as the SMTP session
records them (test_dmarc_reports_e2e.py shows that path from smtplib on), dated yesterday so that the round at
start reports them.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from postroom.store.api import AppendRequest, DmarcEvaluation
from postroom.store.postgresql import PostgreSQLStore
from tests.e2e import test_rspamd_learn as learn_support
from tests.e2e.test_queue_nodes import Node, Sink, config, run, wait_for

DAY = 86400
POLICY = json.dumps({"adkim": "r", "aspf": "r", "fo": "0", "p": "none", "pct": 100, "rua": ["mailto:dmarc@a.test"],
                     "sp": "none"}, sort_keys=True)
AUTH = json.dumps({"dkim": [["a.test", "sel", "pass"]], "spf": ["a.test", "mfrom", "pass"]}, sort_keys=True)
RESULTS = 30


@pytest.mark.timeout(240)
def test_two_nodes_send_one_dmarc_report_per_period(tmp_path: Path, pg_cluster: Any) -> None:
    url = pg_cluster.create_database()
    yesterday = (int(time.time()) // DAY - 1) * DAY

    async def record(store: PostgreSQLStore) -> None:  # opening the store makes the schema
        for i in range(RESULTS):
            await store.add_dmarc_result(DmarcEvaluation(yesterday + 60.0 * i, "a.test", POLICY, f"192.0.2.{i % 3 + 1}",
                                                         "a.test", "a.test", "none", True, True, AUTH))

    run(url, tmp_path, record)
    sink = Sink()
    nodes: list[Node] = []
    try:
        # The [inbound] table of each node's configuration (test_serve_postgresql.start_on), then the routes.
        extra = ('[inbound]\nspf = true\ndkim = true\ndmarc = true\ndmarc_reports = true\n'
                 'dmarc_report_from = "dmarc-reports@b.test"\n' + config({"a.test": sink.peer.port}, 300))
        with ThreadPoolExecutor(2) as pool:  # both start at once: both run a report round at start
            started = [pool.submit(Node, tmp_path / name, url, extra) for name in ("a", "b")]
            for future in started:
                if future.exception() is None:
                    nodes.append(future.result())
            for future in started:
                future.result()  # raises the first failure to start

        async def left(store: PostgreSQLStore) -> tuple[int, int]:
            rows, _ = await store.dmarc_aggregate(1e12)
            return len(rows), await store.queue_length()

        wait_for(lambda: len(sink.peer.delivered) >= 1 and run(url, tmp_path, left) == (0, 0), 120,
                 "the report delivered and the results gone")
        texts = []
        for node in nodes:
            node.stop()  # releases its leases; nothing in flight any more
            texts.append(node.text())
        reports = [seen for seen in list(sink.peer.delivered) if b"Report Domain: a.test" in seen.data]
        assert len(reports) == 1, f"{len(reports)} reports reached the rua address"
        msg = email.message_from_bytes(reports[0].data, policy=email.policy.default)
        [part] = [p for p in msg.iter_attachments() if p.get_content_type() == "application/gzip"]
        root = ET.fromstring(gzip.decompress(part.get_content()))
        counts = {r.findtext("row/source_ip"): int(r.findtext("row/count") or 0) for r in root.iter("record")}
        assert counts == {"192.0.2.1": 10, "192.0.2.2": 10, "192.0.2.3": 10}  # every result of the day, once
        assert root.findtext("report_metadata/date_range/begin") == str(yesterday)
        queued = [len(re.findall(r"dmarc-report result=queued", text)) for text in texts]
        assert sorted(queued) == [0, 1], queued  # one node made the report
        leases = [re.findall(r"job lease result=(\w+) job=dmarc-reports", text) for text in texts]
        holder = queued.index(1)
        assert leases[holder][0] == "taken" and leases[1 - holder][:1] == ["elsewhere"], leases
    finally:
        for node in nodes:
            node.stop()
        sink.close()


rspamd = learn_support.rspamd  # the real rspamd and Redis of test_rspamd_learn.py, started once for this module
SIGNALS = 6


@pytest.mark.timeout(300)
def test_two_nodes_teach_rspamd_each_verdict_once(tmp_path: Path, pg_cluster: Any, rspamd: Any) -> None:
    """Both nodes have rspamd learning on and poll for training signals every 2 s; the signals recorded in the
    shared store (as an IMAP MOVE into Junk records them) reach rspamd's controller once each: the nodes' `learn`
    lines add up to one per signal, none "already-learned" (which a second send of the same message gets)."""
    url = pg_cluster.create_database()
    raws = [learn_support.message(100 + n, "junk") for n in range(SIGNALS)]

    async def record(store: PostgreSQLStore) -> None:
        await store.add_domain("b.test")
        user = await store.add_user("bob@b.test", "$argon2id$unused")
        box = await store.get_mailbox(user.id, "INBOX")
        assert box is not None
        for raw in raws:
            await store.append(box.id, AppendRequest(raw=raw))
        ids = [hashlib.sha256(raw).hexdigest() for raw in raws]  # bodies are content-addressed
        assert [await store.read_message(i) for i in ids] == raws
        assert await store.add_training_signals(user.id, "spam", ids, time.time()) == SIGNALS

    spam0 = rspamd.learns("spam")
    run(url, tmp_path, record)
    extra = (f'[rspamd]\ncontroller_url = "{rspamd.controller}"\n'
             f'controller_password = "{learn_support.PASSWORD}"\ntimeout_seconds = 20\n')
    nodes: list[Node] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(Node, tmp_path / name, url, extra) for name in ("a", "b")]
            for future in started:
                if future.exception() is None:
                    nodes.append(future.result())
            for future in started:
                future.result()

        async def pending(store: PostgreSQLStore) -> int:
            return len(await store.due_training_signals(1e12))

        wait_for(lambda: run(url, tmp_path, pending) == 0, 120, "every training signal sent")
        for node in nodes:
            node.stop()
        texts = [node.text() for node in nodes]
        outcomes = [re.findall(r"learn result=([\w-]+) kind=spam", text) for text in texts]
        assert sorted(outcomes[0] + outcomes[1]) == ["learned"] * SIGNALS, outcomes
        assert rspamd.learns("spam") == spam0 + SIGNALS
        leases = [re.findall(r"job lease result=(\w+) job=rspamd-learn", text) for text in texts]
        assert sorted(x[0] for x in leases) == ["elsewhere", "taken"], leases
    finally:
        for node in nodes:
            node.stop()
