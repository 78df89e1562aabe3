"""DMARC aggregate reports (RFC 7489 §7.2, Appendix C): what the MX saw of a domain's mail, sent daily to its rua.

Theory of operation
-------------------
Off by default (`inbound.dmarc_reports`). When on, the session (smtp/session.py) records each message whose DMARC
evaluation found a record with `rua` (`record_evaluation`: the policy domain and its published tags, the client
address, the From and envelope domains, the disposition applied, the aligned results and the raw SPF and DKIM
results) in the store, durably, before it answers the message (refused messages too: they matter most to the
domain's owner).

`DmarcReporter` (one task of `postroom serve`) runs at start and every hour: everything recorded before the start
of the current UTC day is aggregated (the store groups it: one row per distinct outcome with its count) and
turned into one report per policy domain:

1. The XML of RFC 7489 Appendix C (`report_xml`): `feedback` with `version`, `report_metadata` (org_name = our
   `server.hostname`, email = `inbound.dmarc_report_from`, report_id, date_range in seconds since the epoch),
   `policy_published` (the domain's newest record: adkim, aspf, p, sp, pct, fo) and one `record` per outcome:
   `row` (source_ip, count, policy_evaluated: disposition, dkim and spf as DMARC-aligned pass/fail),
   `identifiers` (envelope_from, header_from) and `auth_results` (every DKIM signature's domain, selector and
   result; the SPF domain, scope and result). Every element the Appendix C schema requires is present.
2. gzip-compressed and attached (`application/gzip`) to a message whose filename and Subject follow §7.2.1.1:
   `receiver!policy-domain!begin!end.xml.gz`, "Report Domain: ... Submitter: ... Report-ID: <...>".
3. Sent through the outbound queue (so retried, DKIM-signed like other mail of a local domain) to each `mailto:`
   URI of the record's `rua` (at most `MAX_RUA`), after the external destination check of §7.1: a URI whose
   domain is not in the policy domain's organisational domain is used only when
   `<policy-domain>._report._dmarc.<uri-domain>` has a TXT record starting with "v=DMARC1"; a URI's `!size`
   limit (§6.2) smaller than the report skips it. Other URI schemes are not used (§7.2.1: only mailto is
   required). Each skipped destination is one log line saying why.

The rows a run reports are claimed first (`Store.claim_dmarc_results`: marked with the run's claim in the
transaction that aggregates them, for `CLAIM_SECONDS`); then the rows each report covered are deleted under that
claim, so a message evaluated meanwhile is kept for the next day's report. A report that could not be queued
(the store failed) has its rows released for the next run. With several nodes on one store (docs/SCALING.md)
the run takes the cluster-wide lease `dmarc-reports` first (jobs.py), so one node reports at a time; and since
the claim is taken where the rows are read, even two runs at once (a node whose lease ran out while it worked)
report each row once. A run that dies after queueing a report but before deleting its rows leaves them to be
reported again when its claim runs out: at least once, never twice at the same time.

Invariants
1. Nothing is recorded or sent unless `inbound.dmarc_reports` is on.
2. A report goes only to destinations that passed the §7.1 check; never to a URI scheme other than mailto.
3. The rows of a policy domain are deleted only after its report was queued, or when it has no usable
   destination (reported nowhere, kept by nobody).
4. A row is reported only by the run that holds its claim (`claim_dmarc_results`), and deleted only under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol
from urllib.parse import unquote
from xml.etree import ElementTree as ET

from postroom.config import Config
from postroom.delivery.mx import DnsNotFound, DnsTemporary
from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult, organizational_domain
from postroom.inbound.spf import SpfResult
from postroom.jobs import ClusterJob
from postroom.net.listener import logfmt
from postroom.store.api import DmarcEvaluation, QueueRecipient, Store

log = logging.getLogger("postroom.inbound.dmarc_reports")

DAY = 86400
INTERVAL_SECONDS = 3600.0
CLAIM_SECONDS = 1800.0  # how long a run holds the rows it reports: longer than any run's DNS checks and queueing
MAX_RUA = 5  # destinations used per report (RFC 7489 §6.2 lets a receiver limit them)
_SIZE = re.compile(r"^(\d+)([kmgt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class TxtDns(Protocol):
    async def txt(self, name: str) -> list[bytes]: ...


def evaluation(*, now: float, ip: str, dmarc: DmarcResult, spf: SpfResult | None,
               dkim: Sequence[DkimResult] | None, action: str) -> DmarcEvaluation | None:
    """The row to record for a message (module doc), or None when its policy asks for no aggregate report.
    `action`: the session's verdict ("accept", "quarantine", "reject")."""
    record = dmarc.record
    if record is None or not record.rua or dmarc.result not in ("pass", "fail"):
        return None
    policy = {"adkim": "s" if record.adkim_strict else "r", "aspf": "s" if record.aspf_strict else "r",
              "p": record.p, "sp": record.sp, "pct": record.pct, "fo": record.fo, "rua": list(record.rua)}
    scope = "helo" if spf is not None and spf.identity == "helo" else "mfrom"
    auth = {"dkim": [[r.domain, r.selector, r.result] for r in dkim or () if r.domain],
            "spf": [spf.domain if spf else "", scope, spf.result if spf else "none"]}
    disposition = {"reject": "reject", "quarantine": "quarantine"}.get(action, "none")
    return DmarcEvaluation(now, dmarc.record_domain or dmarc.domain, json.dumps(policy, sort_keys=True), ip,
                           dmarc.domain, spf.domain if spf else "", disposition, dmarc.dkim_aligned,
                           dmarc.spf_aligned, json.dumps(auth, sort_keys=True))


def _text(parent: ET.Element, tag: str, value: object) -> None:
    ET.SubElement(parent, tag).text = str(value)


def report_xml(*, org_name: str, email: str, report_id: str, begin: int, end: int, policy_domain: str,
               policy: dict[str, object], rows: Sequence[DmarcEvaluation]) -> bytes:
    """The aggregate report of RFC 7489 Appendix C for `rows` (one policy domain's), UTF-8 with declaration."""
    root = ET.Element("feedback")
    _text(root, "version", "1.0")
    meta = ET.SubElement(root, "report_metadata")
    _text(meta, "org_name", org_name)
    _text(meta, "email", email)
    _text(meta, "report_id", report_id)
    dates = ET.SubElement(meta, "date_range")
    _text(dates, "begin", begin)
    _text(dates, "end", end)
    published = ET.SubElement(root, "policy_published")
    _text(published, "domain", policy_domain)
    for tag in ("adkim", "aspf", "p", "sp", "pct", "fo"):
        _text(published, tag, policy.get(tag, ""))
    for r in rows:
        record = ET.SubElement(root, "record")
        row = ET.SubElement(record, "row")
        _text(row, "source_ip", r.source_ip)
        _text(row, "count", r.count)
        evaluated = ET.SubElement(row, "policy_evaluated")
        _text(evaluated, "disposition", r.disposition)
        _text(evaluated, "dkim", "pass" if r.dkim_aligned else "fail")
        _text(evaluated, "spf", "pass" if r.spf_aligned else "fail")
        ids = ET.SubElement(record, "identifiers")
        _text(ids, "envelope_from", r.envelope_from)
        _text(ids, "header_from", r.header_from)
        results = ET.SubElement(record, "auth_results")
        auth = json.loads(r.auth)
        for domain, selector, result in auth.get("dkim", []):
            dkim = ET.SubElement(results, "dkim")
            _text(dkim, "domain", domain)
            if selector:
                _text(dkim, "selector", selector)
            _text(dkim, "result", result)
        spf_domain, scope, spf_result = auth.get("spf", ["", "mfrom", "none"])
        spf = ET.SubElement(results, "spf")
        _text(spf, "domain", spf_domain)
        _text(spf, "scope", scope)
        _text(spf, "result", spf_result)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8")


def mailto_destinations(rua: Sequence[str]) -> list[tuple[str, int | None]]:
    """(address, size limit in bytes or None) of each `mailto:` URI of a `rua` tag (§6.2 "!size"; other schemes
    and broken URIs are left out), at most `MAX_RUA`."""
    out: list[tuple[str, int | None]] = []
    for uri in rua:
        scheme, _, rest = uri.strip().partition(":")
        if scheme.lower() != "mailto" or not rest:
            continue
        address, _, size = rest.partition("!")
        address = unquote(address.split("?", 1)[0]).strip()
        if (address.count("@") != 1 or any(c.isspace() or ord(c) < 32 for c in address)
                or not address.split("@")[0] or "=?" in address):
            continue  # broken, or an RFC 2047 word no To field can carry (the header registry decodes it)
        limit: int | None = None
        if size:
            m = _SIZE.match(size)
            if m is None:
                continue
            limit = int(m.group(1)) * _UNITS[m.group(2).lower()]
        out.append((address, limit))
    return out[:MAX_RUA]


async def external_allowed(dns: TxtDns, policy_domain: str, destination_domain: str) -> tuple[bool, str]:
    """RFC 7489 §7.1: may reports about `policy_domain` go to an address in `destination_domain`? (allowed, why)."""
    if organizational_domain(policy_domain) == organizational_domain(destination_domain):
        return True, "same organisational domain"
    name = f"{policy_domain}._report._dmarc.{destination_domain}"
    try:
        texts = await dns.txt(name)
    except DnsNotFound:
        return False, f"no authorization record at {name}"
    except (DnsTemporary, OSError, ValueError) as exc:
        return False, f"authorization lookup failed: {type(exc).__name__}"
    if any(re.match(rb"v\s*=\s*DMARC1\s*(;|\Z)", t) for t in texts):
        return True, f"authorized by {name}"
    return False, f"no v=DMARC1 record at {name}"


class DmarcReporter:
    """Makes and queues the daily reports (module doc). `wake`: called when something was queued; `job`: the
    cluster-wide lease a run takes first (None: run without one); `interval`: seconds between runs."""

    def __init__(self, store: Store, config: Config, dns: TxtDns, wake: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time, interval: float = INTERVAL_SECONDS,
                 job: ClusterJob | None = None) -> None:
        self.store = store
        self.job = job
        self.config = config
        self.dns = dns
        self.wake = wake
        self.clock = clock
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="dmarc-reports")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.job is not None:
            await self.job.release()

    async def _loop(self) -> None:
        while True:
            try:
                if self.config.inbound.dmarc_reports:  # invariant 1 (a reload may switch it)
                    await (self.job.run(self.run_once) if self.job is not None else self.run_once())
            except Exception:
                log.exception("dmarc reports: a run failed")
            await asyncio.sleep(self.interval)

    async def run_once(self) -> int:
        """Report everything recorded before today (UTC); returns how many reports were queued."""
        now = self.clock()
        before = float(int(now) // DAY * DAY)
        claim = f"{self.job.holder if self.job is not None else 'run'}.{uuid.uuid4().hex[:16]}"
        rows = await self.store.claim_dmarc_results(before, claim, CLAIM_SECONDS, now)  # invariant 4
        if not rows:
            return 0
        by_domain: dict[str, list[DmarcEvaluation]] = defaultdict(list)
        for r in rows:
            by_domain[r.policy_domain].append(r)
        sent = 0
        for domain, domain_rows in sorted(by_domain.items()):
            try:
                sent += await self._report(domain, domain_rows, before)
            except Exception:  # invariant 3: kept for the next run
                log.exception("dmarc reports: the report for %s could not be queued", domain)
                with contextlib.suppress(Exception):  # else the claim runs out by itself
                    await self.store.release_dmarc_results(claim, domain)
                continue
            await self.store.delete_dmarc_results(claim, domain)
        return sent

    async def _report(self, domain: str, rows: list[DmarcEvaluation], before: float) -> int:
        policy = json.loads(rows[0].policy)
        begin = int(min(r.at for r in rows)) // DAY * DAY
        end = int(before) - 1
        hostname = self.config.server.hostname
        sender = self.config.inbound.dmarc_report_from
        report_id = f"{begin}.{domain}.{uuid.uuid4().hex[:12]}@{hostname}"
        xml = report_xml(org_name=hostname, email=sender, report_id=report_id, begin=begin, end=end,
                         policy_domain=domain, policy=policy, rows=rows)
        attachment = gzip.compress(xml, mtime=0)
        filename = f"{hostname}!{domain}!{begin}!{end}.xml.gz"  # §7.2.1.1
        recipients: list[str] = []
        for address, limit in mailto_destinations(policy.get("rua", [])):
            ok, why = await external_allowed(self.dns, domain, address.rpartition("@")[2])
            if ok and limit is not None and len(attachment) > limit:
                ok, why = False, f"report of {len(attachment)} bytes over the URI's limit of {limit}"
            if not ok:  # invariant 2
                log.info("%s", logfmt("dmarc-report", [("result", "skipped"), ("domain", domain),
                                                       ("rua", address), ("reason", why)]))
                continue
            recipients.append(address)
        if not recipients:
            return 0
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = f"Report Domain: {domain} Submitter: {hostname} Report-ID: <{report_id}>"
        msg["Date"] = formatdate(self.clock(), usegmt=True)
        msg["Message-ID"] = f"<{report_id}>"
        msg.set_content(f"DMARC aggregate report (RFC 7489) for {domain} from {hostname}, "
                        f"{sum(r.count for r in rows)} messages.\n")
        msg.add_attachment(attachment, maintype="application", subtype="gzip", filename=filename)
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        entry = await self.store.enqueue(raw, sender, [QueueRecipient(r) for r in recipients])
        if self.wake is not None:
            self.wake()
        log.info("%s", logfmt("dmarc-report", [("result", "queued"), ("domain", domain),
                                               ("rua", ",".join(recipients)), ("messages", sum(r.count for r in rows)),
                                               ("queue_id", entry.id), ("report_id", report_id)]))
        return 1
