"""Configuration loading: defaults, overrides, and one clear error per kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom import config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(text)
    return p


def test_defaults_need_no_file() -> None:
    cfg = config.load()
    assert cfg.server.hostname == "localhost"
    assert cfg.listeners.enabled()["smtp"] == ("127.0.0.1", 2525)
    assert cfg.listeners.enabled()["imaps"] == ("127.0.0.1", 2993)
    assert cfg.auth.allow_plaintext is False
    assert cfg.store_url.startswith("sqlite:///") and cfg.store_url.endswith("postroom-data/postroom.db")
    assert cfg.cert_path == cfg.data_path / "tls" / "cert.pem"
    # IMAP's whole-command limit is its own (64 KiB, like Dovecot); SMTP and POP3 keep limits.line_length.
    assert cfg.limits.imap_command_length == 65536 and cfg.limits.line_length == 8192


def test_sample_is_the_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, config.SAMPLE))
    base = config.load()
    assert cfg.listeners == base.listeners
    assert cfg.limits == base.limits
    assert cfg.auth == base.auth


def test_file_values_and_disabled_listener(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, """
[server]
hostname = "mx.example.org"
data_dir = "data"
[listeners]
pop3 = ""
imap = "[::1]:1143"
[limits]
message_size = 1000000
smtp_idle_seconds = 600
[store]
url = "sqlite:///db/x.db"
"""))
    assert cfg.server.hostname == "mx.example.org"
    assert Path(cfg.server.data_dir).is_absolute()
    assert "pop3" not in cfg.listeners.enabled()
    assert cfg.listeners.enabled()["imap"] == ("::1", 1143)
    assert cfg.limits.message_size == 1000000
    assert cfg.limits.smtp_idle_seconds == 600.0
    assert config.sqlite_path(cfg.store_url).is_absolute()


@pytest.mark.parametrize("text, fragment", [
    ("[server]\nhostnme = 'x'\n", "unknown key 'server.hostnme'"),
    ("[nosuch]\nx = 1\n", "unknown key 'nosuch'"),
    ("[limits]\nmessage_size = 'big'\n", "limits.message_size must be a whole number"),
    ("[limits]\nrecipients = 0\n", "limits.recipients must be at least 1"),
    ("[limits]\nline_length = 100\n", "limits.line_length must be at least 1000"),
    ("[limits]\nimap_command_length = 4096\n", "limits.imap_command_length must be at least 8192"),
    ("[limits]\ncommand_deadline_seconds = -1\n", "limits.command_deadline_seconds must be 0 (off) or more"),
    ("[limits]\nmin_data_rate = -5\n", "limits.min_data_rate must be 0 (off) or more"),
    ("[auth]\nallow_plaintext = 'yes'\n", "auth.allow_plaintext must be true or false"),
    ("[inbound]\ndmarc_reject = 'drop'\n", "inbound.dmarc_reject must be \"reject\" or \"quarantine\""),
    ("[inbound]\narc_trusted_sealers = ['not a domain']\n", "inbound.arc_trusted_sealers[0]: 'not a domain'"),
    ("[inbound]\narc = false\narc_trusted_sealers = ['lists.example.org']\n",
     "inbound.arc_trusted_sealers needs inbound.arc and inbound.dmarc on"),
    ("[inbound]\ndkim = false\n", "inbound.dmarc needs inbound.spf and inbound.dkim on"),
    ("[inbound]\ndns_timeout_seconds = 0\n", "inbound.dns_timeout_seconds must be positive"),
    ("[listeners]\nsmtp = 'nohostport'\n", "listeners.smtp"),
    ("[listeners]\nsmtp = '127.0.0.1:99999'\n", "out of range"),
    ("[listeners]\nsmtp = '127.0.0.1:2000'\nimap = '127.0.0.1:2000'\n", "already used by listeners.smtp"),
    ("[tls]\ncert = 'a.pem'\n", "tls.cert and tls.key must be given together"),
    ("[store]\nurl = 'mysql://x'\n", "store.url must start with"),
    ("[store]\nurl = 'postgresql://postroom@db.example/'\n", "store.url must be postgresql://user@host:port/database"),
    ("[store]\nurl = 'postgresql:///mail'\n", "store.url must be postgresql://user@host:port/database"),
    ("[store]\nurl = 'postgresql://postroom@db.example:99999/mail'\n", "store.url: Port out of range"),
    ("[server\n", "not valid TOML"),
    ("server = 3\n", "[server] must be a table"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(str(path) + ":"), message
    assert fragment in message, message


def test_a_postgresql_store_url_is_taken() -> None:
    """store.url names a PostgreSQL database (issue 16): accepted as given, with or without port and password."""
    for url in ("postgresql://postroom@db.example:5432/mail", "postgresql://postroom:secret@127.0.0.1/mail",
                "postgresql://db.example/mail"):
        assert config.load(None, {"store": {"url": url}}).store_url == url


def test_listener_on_every_address() -> None:
    """"*:port": every address of the machine, IPv4 and IPv6 (host "" for the listeners)."""
    cfg = config.load(None, {"listeners": {"smtp": "*:25", "imaps": "*:993"}})
    assert cfg.listeners.enabled()["smtp"] == ("", 25) and cfg.listeners.enabled()["imaps"] == ("", 993)
    with pytest.raises(config.ConfigError, match="already used by listeners.smtp"):
        config.load(None, {"listeners": {"smtp": "*:25", "imap": "*:25"}})
    with pytest.raises(config.ConfigError, match="every address"):
        config.load(None, {"listeners": {"smtp": "*:x"}})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml")


def test_overrides_merge(tmp_path: Path) -> None:
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path)}, "listeners": {"smtp": "127.0.0.1:0"}})
    assert cfg.data_path == tmp_path.resolve()
    assert cfg.listeners.enabled()["smtp"] == ("127.0.0.1", 0)


def test_imap_expunged_retention_days(tmp_path: Path) -> None:
    assert config.load().imap.expunged_retention_days == 30  # a client syncing weekly gets exact answers
    assert config.load(write(tmp_path, config.SAMPLE)).imap == config.load().imap
    assert config.load(write(tmp_path, "[imap]\nexpunged_retention_days = 90\n")).imap.expunged_retention_days == 90
    with pytest.raises(config.ConfigError, match="imap.expunged_retention_days"):
        config.load(write(tmp_path, "[imap]\nexpunged_retention_days = 0\n"))


def test_the_sample_in_the_docs_is_the_sample() -> None:
    """docs/CONFIG.md shows `postroom config-sample` as it is: the block and config.SAMPLE are the same text."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()
    start = doc.index("```toml\n") + len("```toml\n")
    assert doc[start:doc.index("```", start)] == config.SAMPLE


def test_auth_cache_trusted_networks_and_event_loop_are_checked() -> None:
    cfg = config.load(None, {"auth": {"trusted_networks": ["192.0.2.0/24", "2001:db8::1"], "cache_ttl": 0},
                             "server": {"event_loop": "asyncio"}})
    assert cfg.auth.trusted_networks == ("192.0.2.0/24", "2001:db8::1") and cfg.auth.cache_ttl == 0.0
    with pytest.raises(config.ConfigError, match=r"auth.trusted_networks\[1\]: 'office' is not an address"):
        config.load(None, {"auth": {"trusted_networks": ["192.0.2.0/24", "office"]}})
    with pytest.raises(config.ConfigError, match="auth.cache_ttl and auth.cache_size must be 0"):
        config.load(None, {"auth": {"cache_ttl": -1}})
    with pytest.raises(config.ConfigError, match="server.event_loop must be one of asyncio, uvloop, auto"):
        config.load(None, {"server": {"event_loop": "tokio"}})


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13: run from another directory, admin commands made an empty ./postroom-data. Paths in a file now
    # belong to the file's folder; without a file, to the current directory.
    site = tmp_path / "site"
    site.mkdir()
    (site / "postroom.toml").write_text('[server]\ndata_dir = "data"\n[tls]\ncert = "tls/c.pem"\nkey = "tls/k.pem"\n'
                                        '[store]\nurl = "sqlite:///db/p.db"\n[acme]\nca_bundle = "ca.pem"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load("../site/postroom.toml")
    assert cfg.data_path == site / "data"
    assert (cfg.tls.cert, cfg.tls.key) == (str(site / "tls/c.pem"), str(site / "tls/k.pem"))
    assert cfg.store_url == f"sqlite:///{site / 'db/p.db'}"
    assert cfg.acme.ca_bundle == str(site / "ca.pem")
    assert config.load(None, {"server": {"data_dir": "d"}}).data_path == elsewhere / "d"


def test_queue_lease_seconds(tmp_path: Path) -> None:
    assert config.load().queue.lease_seconds == 300  # a dead node's mail waits at most five minutes
    assert config.load(write(tmp_path, "[queue]\nlease_seconds = 30\n")).queue.lease_seconds == 30
    for bad in ("2", "0", "-5", "100000"):
        with pytest.raises(config.ConfigError, match="queue.lease_seconds"):
            config.load(write(tmp_path, f"[queue]\nlease_seconds = {bad}\n"))
