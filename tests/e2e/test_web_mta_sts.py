"""MTA-STS (RFC 8461) end to end: the policy file served for hosted domains at /.well-known/mta-sts.txt under
the mta-sts.DOMAIN name, its fields as RFC 8461 §3.2 defines them, and the `_mta-sts` TXT id `postroom dns`
prints being the one of the policy served (so it changes when the policy does)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from postroom import cli, mtasts


def _get(server: Any, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port('http')}/.well-known/mta-sts.txt", headers={"Host": host})


def test_policy_served_for_hosted_domains(server: Any) -> None:
    server.add_user("carol@example.org")
    r = _get(server, "mta-sts.example.org")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    # RFC 8461 §3.2: "key: value" lines; version first, one mx per MX host, max_age in seconds (at most a year)
    fields = [tuple(line.split(": ", 1)) for line in r.text.split("\r\n") if line]
    assert fields == [("version", "STSv1"), ("mode", "testing"), ("mx", server.postroom.config.server.hostname),
                      ("max_age", str(7 * 86400))]
    assert r.text.endswith("\r\n")
    for host in ("mta-sts.elsewhere.test", "example.org", "autoconfig.example.org", "[::1]:8080"):
        assert _get(server, host).status_code == 404, host


@pytest.mark.parametrize("server_overrides", [{"mta_sts": {"mode": "none"}}])
def test_mode_none_serves_no_policy(server: Any) -> None:
    server.add_user("carol@example.org")
    assert _get(server, "mta-sts.example.org").status_code == 404


def test_dns_prints_the_records_with_the_served_policys_id(server: Any, tmp_path: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "d"}"\nhostname = "mx.a.test"\n'
                    '[mta_sts]\nmode = "enforce"\nmax_age_days = 30\n')
    assert cli.main(["--config", str(conf), "domain", "add", "a.test"]) == 0
    assert cli.main(["--config", str(conf), "dns", "a.test"]) == 0
    out = capsys.readouterr().out
    [txt] = [line for line in out.splitlines() if line.startswith("_mta-sts.a.test.")]
    served = mtasts.policy_text("enforce", "mx.a.test", 30 * 86400)
    assert re.search(r'"v=STSv1; id=([A-Za-z0-9]{1,32})"$', txt).group(1) == mtasts.policy_id(served)  # RFC 8461 §3.1
    assert any(re.match(r"mta-sts\.a\.test\.\s+3600 IN CNAME\s+mx\.a\.test\.$", line) for line in out.splitlines())
    assert '"v=TLSRPTv1; rua=mailto:postmaster@a.test"' in out  # RFC 8460 §3
    assert mtasts.policy_id(mtasts.policy_text("testing", "mx.a.test", 30 * 86400)) != mtasts.policy_id(served)
