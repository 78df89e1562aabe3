"""`postroom setup DOMAIN` (issue 13 item 1): a configuration with every listener on its standard port on every
address, the store with the domain, its DKIM keys and the first user (password generated and printed once), a
systemd unit, and the DNS records; run again, it refuses to overwrite."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest

from postroom import cli
from postroom import config as config_mod
from postroom.auth.passwords import verify_password
from postroom.store import open_store


def _setup(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = cli.main(["--config", str(tmp_path / "etc" / "postroom.toml"), "setup", "Example.ORG",
                     "--hostname", "mail.example.org", "--data-dir", str(tmp_path / "data"),
                     "--systemd-unit", str(tmp_path / "postroom.service"), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_setup_writes_everything_and_prints_the_password_once(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _setup(tmp_path, capsys)
    assert code == 0, err
    conf = tmp_path / "etc" / "postroom.toml"
    cfg = config_mod.load(conf)
    assert cfg.server.hostname == "mail.example.org" and cfg.data_path == tmp_path / "data"
    # IANA ports (RFC 8314 for the implicit TLS ones), on every address of the machine
    assert cfg.listeners.enabled() == {"smtp": ("", 25), "submission": ("", 587), "submissions": ("", 465),
                                       "imap": ("", 143), "imaps": ("", 993), "pop3": ("", 110),
                                       "pop3s": ("", 995), "http": ("", 80),
                                       "https": ("", 443)}
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    unit = (tmp_path / "postroom.service").read_text()
    assert re.search(rf"^ExecStart=\S*postroom --config {re.escape(str(conf))} serve$", unit, re.M)
    assert f"ReadWritePaths={tmp_path / 'data'}" in unit and "WantedBy=multi-user.target" in unit

    [password] = re.findall(r"^    (\S+)$", out, re.M)  # printed once, on a line of its own
    assert out.count(password) == 1 and len(password) >= 20

    async def check() -> None:
        store = open_store(cfg.store_url, cfg.data_path)
        await store.open()
        try:
            domain = await store.get_domain("example.org")
            assert domain is not None and domain.dkim_private_key and domain.dkim_ed25519_key
            user = await store.get_user("postmaster@example.org")
            assert user is not None and verify_password(user.password_hash, password)
        finally:
            await store.close()

    asyncio.run(check())
    # the DNS records, as `postroom dns` prints them
    records = [line.split()[:4] for line in out.splitlines() if re.match(r"^\S+\.\s+3600 IN ", line)]
    assert ["example.org.", "3600", "IN", "MX"] in records
    assert ["_dmarc.example.org.", "3600", "IN", "TXT"] in records
    assert ["_imaps._tcp.example.org.", "3600", "IN", "SRV"] in records
    assert sum(r[3] == "TXT" and r[0].endswith("._domainkey.example.org.") for r in records) == 2

    # a second run does not overwrite the configuration (invariant 1)
    code, _, err = _setup(tmp_path, capsys)
    assert code == 1 and "exists" in err and "--force" in err
    # with --force it does, and keeps the user and its password
    code, out, err = _setup(tmp_path, capsys, "--force")
    assert code == 0 and "already there" in out and password not in out


def test_setup_refuses_a_user_of_another_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _setup(tmp_path, capsys, "--user", "admin@elsewhere.test")
    assert code == 1 and "must be in example.org" in err
    assert not (tmp_path / "etc" / "postroom.toml").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="server.user is only set when setup runs as root")
def test_setup_as_root_sets_the_user_to_run_as_when_it_exists(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The review's finding: a setup-made server ran as root. As root, setup names the system user the server
    drops to (server.user) when that user exists, and says how to make it when it does not."""
    code, out, err = _setup(tmp_path, capsys, "--run-as", "no-such-user-here")
    assert code == 0, err
    assert "useradd --system --no-create-home no-such-user-here" in out
    assert config_mod.load(tmp_path / "etc" / "postroom.toml").server.user == ""
    code, out, err = _setup(tmp_path, capsys, "--run-as", "nobody", "--force")
    assert code == 0, err
    assert config_mod.load(tmp_path / "etc" / "postroom.toml").server.user == "nobody"
