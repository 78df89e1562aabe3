"""inbound/score.py: each sign adds its configured weight, and only signs the message shows (RFC 7208 §2.6 result
names; RFC 5321 §4.1.1.1 / §4.1.3 for HELO), the field and the log fields, forged fields found for removal."""

from __future__ import annotations

import dataclasses

from postroom.config import ScoreConfig
from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult
from postroom.inbound.score import Score, field_spans, score
from postroom.inbound.spf import SpfResult

CFG = ScoreConfig()


def parts(**kw: object) -> dict[str, float]:
    args: dict[str, object] = {"spf": None, "dkim": None, "dmarc": None, "helo": "mail.example.org", "rdns": None}
    args.update(kw)
    return dict(score(CFG, **args).parts)  # type: ignore[arg-type]


def test_each_sign_adds_its_weight() -> None:
    assert parts() == {}
    for result, weight in (("fail", 2.5), ("softfail", 1.0), ("none", 0.5), ("permerror", 0.5)):
        assert parts(spf=SpfResult(result, "a.example")) == {f"spf_{result}": weight}
    for result in ("pass", "neutral", "temperror"):
        assert parts(spf=SpfResult(result, "a.example")) == {}
    assert parts(dkim=[]) == {"dkim_none": 0.5}
    assert parts(dkim=[DkimResult("fail", "a.example")]) == {"dkim_fail": 1.0}
    assert parts(dkim=[DkimResult("fail", "a.example"), DkimResult("pass", "b.example")]) == {}
    assert parts(dkim=[DkimResult("temperror", "a.example")]) == {}
    assert parts(dmarc=DmarcResult("fail", "a.example", "none", "none")) == {"dmarc_fail": 2.0}
    # a quarantine or reject disposition is the policy's business, not the score's
    assert parts(dmarc=DmarcResult("fail", "a.example", "quarantine", "quarantine")) == {}
    assert parts(dmarc=DmarcResult("pass", "a.example", "none", "none")) == {}
    assert parts(listed=[("a.bl", "127.0.0.2"), ("b.bl", "127.0.0.4")]) == {"dnsbl": 3.0} and \
        score(CFG, spf=None, dkim=None, dmarc=None, helo="x.example", rdns=None,
              listed=[("a.bl", "127.0.0.2"), ("b.bl", "127.0.0.4")]).total == 6.0
    assert parts(rdns="unknown") == {"rdns_none": 1.0}
    assert parts(rdns="mail.example.org") == {}
    assert parts(helo="192.0.2.1") == {"helo_bare_ip": 2.0}
    assert parts(helo="[192.0.2.1]") == {} and parts(helo="[IPv6:2001:db8::1]") == {}
    assert parts(helo="localhost") == {"helo_not_fqdn": 1.0}


def test_total_weights_from_config_and_zero_weights() -> None:
    s = score(CFG, spf=SpfResult("fail", "a.example"), dkim=[], dmarc=DmarcResult("fail", "a.example", "none"),
              helo="box", rdns="unknown")
    assert s.total == 2.5 + 0.5 + 2.0 + 1.0 + 1.0
    quiet = dataclasses.replace(CFG, spf_fail=0.0, rdns_none=4.0)
    s = score(quiet, spf=SpfResult("fail", "a.example"), dkim=None, dmarc=None, helo="a.example", rdns="unknown")
    assert s.parts == (("rdns_none", 4.0),) and s.total == 4.0


def test_field_and_log_fields() -> None:
    s = Score(3.5, (("spf_softfail", 1.0), ("helo_bare_ip", 2.0), ("dkim_none", 0.5)))
    assert s.field() == b"X-Postroom-Score: 3.5 (spf_softfail=1, helo_bare_ip=2, dkim_none=0.5)\r\n"
    assert s.log_fields() == [("score", "3.5"), ("score_parts", "spf_softfail:1,helo_bare_ip:2,dkim_none:0.5")]
    assert Score(0.0).field() == b"X-Postroom-Score: 0\r\n"


def test_forged_fields_found_with_their_continuation_lines() -> None:
    head = (b"Received: x\r\nx-postroom-score: -100\r\n (trust me)\r\nSubject: s\r\n"
            b"X-Postroom-Score:0\r\n\r\nX-Postroom-Score: in the body\r\n")
    spans = field_spans(head)
    assert [head[a:b] for a, b in spans] == [b"x-postroom-score: -100\r\n (trust me)\r\n", b"X-Postroom-Score:0\r\n"]
    assert field_spans(b"\r\nX-Postroom-Score: 1\r\n") == []


def test_the_trust_settings_are_checked() -> None:
    """Every new setting of issue 12's trust work is validated at load (one line naming the key)."""
    import pytest

    from postroom import config

    cfg = config.load(None, {"inbound": {"score": {"spf_fail": 4, "dnsbl_zones": ["pbl.example"]}}})
    assert cfg.inbound.score.spf_fail == 4.0 and cfg.inbound.score.dnsbl_zones == ("pbl.example",)
    for bad, key in (({"inbound": {"score": {"junk_threshold": 0}}}, "junk_threshold"),
                     ({"inbound": {"score": {"reject_threshold": 3}}}, "reject_threshold"),
                     ({"inbound": {"score": {"dkim_none": -1}}}, "dkim_none"),
                     ({"inbound": {"score": {"dnsbl_zones": ["a b"]}}}, "dnsbl_zones"),
                     ({"inbound": {"score": {"weight": 1}}}, "inbound.score.weight"),
                     ({"inbound": {"dmarc_reports": True}}, "dmarc_report_from"),
                     ({"rspamd": {"controller_url": "https://x"}}, "rspamd.controller_url"),
                     ({"rspamd": {"learn_days": 0}}, "rspamd.learn_days")):
        with pytest.raises(config.ConfigError, match=key):
            config.load(None, bad)
    ok = config.load(None, {"inbound": {"dmarc_reports": True, "dmarc_report_from": "r@example.org"},
                            "rspamd": {"controller_url": "http://127.0.0.1:11334", "controller_password": "x"}})
    assert ok.inbound.dmarc_reports and ok.rspamd.controller_url == "http://127.0.0.1:11334"
