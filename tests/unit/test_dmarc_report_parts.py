"""inbound/dmarc_reports.py's parts: rua URIs (RFC 7489 §6.2: mailto with an optional "!size" of k/m/g/t
units), the record a message leaves (only for a policy with rua), and the Appendix C XML as one document."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcRecord, DmarcResult, parse_record
from postroom.inbound.dmarc_reports import MAX_RUA, evaluation, mailto_destinations, report_xml
from postroom.inbound.spf import SpfResult


def test_mailto_destinations() -> None:
    assert mailto_destinations(["mailto:a@x.example", "MAILTO:b@y.example!10m", "mailto:c@z.example!50k",
                                "https://x.example/report", "mailto:nobody", "mailto:d@w.example!lots",
                                "mailto:e%40odd@v.example",
                                "mailto:=%3Futf-8%3Fq%3Fa=0D=0AX:_1%3F=@evil.example"]) == \
        [("a@x.example", None), ("b@y.example", 10 << 20), ("c@z.example", 50 << 10)]
    many = [f"mailto:r{i}@x.example" for i in range(MAX_RUA + 3)]
    assert len(mailto_destinations(many)) == MAX_RUA


def test_record_keeps_rua_and_fo() -> None:
    record = parse_record("v=DMARC1; p=reject; rua=mailto:a@x.example, mailto:b@y.example!1m; fo=d:s")
    assert record is not None and record.rua == ("mailto:a@x.example", "mailto:b@y.example!1m")
    assert record.fo == "d:s"


def test_evaluation_only_for_a_policy_with_rua() -> None:
    spf = SpfResult("pass", "a.example")
    with_rua = DmarcResult("pass", "a.example", "none", record=DmarcRecord("none", "none", rua=("mailto:r@a.example",)),
                           record_domain="a.example", spf_aligned=True)
    row = evaluation(now=5.0, ip="192.0.2.1", dmarc=with_rua, spf=spf,
                     dkim=[DkimResult("fail", "a.example", "s1"), DkimResult("none")], action="accept")
    assert row is not None and (row.policy_domain, row.header_from, row.envelope_from, row.disposition) == \
        ("a.example", "a.example", "a.example", "none")
    assert json.loads(row.auth) == {"dkim": [["a.example", "s1", "fail"]], "spf": ["a.example", "mfrom", "pass"]}
    assert json.loads(row.policy)["rua"] == ["mailto:r@a.example"]
    no_rua = DmarcResult("pass", "a.example", "none", record=DmarcRecord("none", "none"))
    assert evaluation(now=5.0, ip="192.0.2.1", dmarc=no_rua, spf=spf, dkim=[], action="accept") is None
    assert evaluation(now=5.0, ip="192.0.2.1", dmarc=DmarcResult("temperror", "a.example",
                                                                   record=with_rua.record),
                      spf=spf, dkim=[], action="accept") is None


def test_report_is_one_well_formed_document() -> None:
    row = evaluation(now=5.0, ip="2001:db8::1", dmarc=DmarcResult(
        "fail", "a.example", "reject", "reject", record=DmarcRecord("reject", "reject", rua=("mailto:r@a.example",)),
        record_domain="a.example"), spf=SpfResult("softfail", "b.example"), dkim=[], action="reject")
    assert row is not None
    xml = report_xml(org_name="mx.example", email="r@mx.example", report_id="id<&>", begin=0, end=86399,
                     policy_domain="a.example", policy=json.loads(row.policy), rows=[row])
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<feedback>') and xml.count(b"<?xml") == 1
    root = ET.fromstring(xml)
    assert root.findtext("report_metadata/report_id") == "id<&>"  # escaped, read back as written
    assert root.findtext("record/row/policy_evaluated/disposition") == "reject"
    assert root.findtext("record/auth_results/spf/result") == "softfail"
