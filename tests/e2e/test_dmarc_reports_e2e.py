"""DMARC aggregate reports end to end (inbound/dmarc_reports.py, RFC 7489 §7.1, §7.2, Appendix C): messages sent
with smtplib to the MX listener, SPF/DKIM/DMARC records (with rua) from a DNS server on a loopback port, then
the server's reporter run as on the next UTC day; the report is read back from the outbound queue, gunzipped
and parsed.

Expected values come from the RFC: Appendix C's elements (version, report_metadata with date_range in seconds,
policy_published with every tag, one record per outcome with its count, policy_evaluated's DMARC-aligned
pass/fail, identifiers, auth_results with the DKIM selector and the SPF scope), §7.2.1.1's filename
"receiver!policy-domain!begin!end.xml.gz" and Subject, and §7.1: a rua address outside the policy domain's
organisational domain gets a report only when `<domain>._report._dmarc.<its domain>` says "v=DMARC1".
"""

from __future__ import annotations

import email
import email.policy
import gzip
import logging
import smtplib
import time
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from dkim_support import SigningKey
from dns_support import ZoneThread

HOST = "mx.postroom.test"
KEY = SigningKey.rsa(2048)
DAY = 86400


@pytest.fixture
def zone() -> Iterator[ZoneThread]:
    z = ZoneThread()
    z.add("a.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    z.add("sel._domainkey.a.test", "TXT", KEY.record)
    # Reports to an address of a.test's own organisational domain, and to an outside one that authorizes it.
    z.add("_dmarc.a.test", "TXT", "v=DMARC1; p=quarantine; rua=mailto:dmarc@reports.a.test,"
          "mailto:agg@reports.example!10m; adkim=s; fo=1")
    z.add("a.test._report._dmarc.reports.example", "TXT", "v=DMARC1")
    # c.test: its rua is outside and not authorized; e.test: no rua at all.
    z.add("c.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    z.add("_dmarc.c.test", "TXT", "v=DMARC1; p=none; rua=mailto:dmarc@collector.example")
    z.add("e.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    z.add("_dmarc.e.test", "TXT", "v=DMARC1; p=none")
    yield z
    z.close()


@pytest.fixture
def reports_on() -> bool:
    return True


@pytest.fixture
def server_overrides(zone: ZoneThread, reports_on: bool) -> dict[str, Any]:
    return {"server": {"hostname": HOST},
            "delivery": {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]},
            "inbound": {"spf": True, "dkim": True, "dmarc": True, "dns_timeout_seconds": 1.0,
                        "dmarc_reports": reports_on, "dmarc_report_from": "dmarc-reports@b.test"}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("bob@b.test")
    return server


def send(server: Any, mail_from: str, header_from: str, sign: bool = False) -> None:
    raw = (f"From: <{header_from}>\r\nTo: bob@b.test\r\nSubject: hi\r\nMessage-ID: <{time.time_ns()}@x>\r\n\r\n"
           "Hello.\r\n").encode()
    if sign:
        raw = KEY.sign(raw, "a.test")
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), local_hostname="client.a.test") as c:
        c.sendmail(mail_from, ["bob@b.test"], raw)


def queued(server: Any) -> list[tuple[Any, bytes]]:
    async def go() -> list[tuple[Any, bytes]]:
        return [(e, await server.store.read_message(e.blob_id)) for e in await server.store.queue_list()]

    return list(server.run(go()))


def run_reporter(server: Any, when: float) -> int:
    reporter = server.postroom.dmarc_reports
    reporter.clock = lambda: when
    return int(server.run(reporter.run_once()))


def test_daily_report_to_the_authorized_rua(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.inbound.dmarc_reports")
    send(srv, "alice@a.test", "alice@a.test", sign=True)  # SPF and DKIM pass, aligned
    send(srv, "alice@a.test", "alice@a.test", sign=True)  # the same outcome: one record, count 2
    send(srv, "x@c.test", "boss@a.test")  # SPF passes for c.test, nothing aligns with a.test: quarantined
    send(srv, "x@c.test", "x@c.test")  # c.test's report has no authorized destination
    send(srv, "x@e.test", "x@e.test")  # no rua: nothing recorded
    assert run_reporter(srv, time.time()) == 0  # today's results wait for the day to end
    assert queued(srv) == []
    tomorrow = (int(time.time()) // DAY + 1) * DAY + 60
    assert run_reporter(srv, tomorrow) == 1
    [(entry, raw)] = queued(srv)
    assert entry.mail_from == "dmarc-reports@b.test"
    assert sorted(r.rcpt for r in entry.recipients) == ["agg@reports.example", "dmarc@reports.a.test"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    begin, end = (int(time.time()) // DAY) * DAY, tomorrow // DAY * DAY - 1
    report_id = msg["Subject"].split("Report-ID: <", 1)[1].rstrip(">")
    assert msg["Subject"] == f"Report Domain: a.test Submitter: {HOST} Report-ID: <{report_id}>"
    [part] = [p for p in msg.iter_attachments() if p.get_content_type() == "application/gzip"]
    assert part.get_filename() == f"{HOST}!a.test!{begin}!{end}.xml.gz"
    root = ET.fromstring(gzip.decompress(part.get_content()))
    assert root.tag == "feedback" and root.findtext("version") == "1.0"
    meta = root.find("report_metadata")
    assert meta is not None and meta.findtext("org_name") == HOST and meta.findtext("email") == "dmarc-reports@b.test"
    assert meta.findtext("report_id") == report_id
    assert (meta.findtext("date_range/begin"), meta.findtext("date_range/end")) == (str(begin), str(end))
    published = root.find("policy_published")
    assert published is not None
    assert [(c.tag, c.text) for c in published] == [("domain", "a.test"), ("adkim", "s"), ("aspf", "r"),
                                                    ("p", "quarantine"), ("sp", "quarantine"), ("pct", "100"),
                                                    ("fo", "1")]
    records = {(r.findtext("row/policy_evaluated/disposition"), r.findtext("identifiers/envelope_from")): r
               for r in root.findall("record")}
    assert set(records) == {("none", "a.test"), ("quarantine", "c.test")}
    good = records[("none", "a.test")]
    assert good.findtext("row/source_ip") == "127.0.0.1" and good.findtext("row/count") == "2"
    assert (good.findtext("row/policy_evaluated/dkim"), good.findtext("row/policy_evaluated/spf")) == ("pass", "pass")
    assert good.findtext("identifiers/header_from") == "a.test"
    assert [(d.findtext("domain"), d.findtext("selector"), d.findtext("result"))
            for d in good.findall("auth_results/dkim")] == [("a.test", "sel", "pass")]
    assert [(s.findtext("domain"), s.findtext("scope"), s.findtext("result"))
            for s in good.findall("auth_results/spf")] == [("a.test", "mfrom", "pass")]
    bad = records[("quarantine", "c.test")]
    assert bad.findtext("row/count") == "1" and bad.findtext("identifiers/header_from") == "a.test"
    assert (bad.findtext("row/policy_evaluated/dkim"), bad.findtext("row/policy_evaluated/spf")) == ("fail", "fail")
    assert bad.findall("auth_results/dkim") == [] and bad.findtext("auth_results/spf/result") == "pass"
    # c.test's outside destination has no authorization record (§7.1): skipped, and said so.
    line = next(r.getMessage() for r in caplog.records if "result=skipped" in r.getMessage())
    assert "domain=c.test" in line and "rua=dmarc@collector.example" in line and "authorization" in line
    # Everything reported is gone: the next run sends nothing again.
    assert run_reporter(srv, tomorrow + 3600) == 0 and len(queued(srv)) == 1


@pytest.mark.parametrize("reports_on", [False])
def test_off_by_default_records_nothing(srv: Any) -> None:
    send(srv, "alice@a.test", "alice@a.test", sign=True)

    async def rows() -> int:
        found, _ = await srv.store.dmarc_aggregate(1e12)
        return len(found)

    assert srv.run(rows()) == 0
    assert run_reporter(srv, time.time() + 2 * DAY) == 0 and queued(srv) == []
