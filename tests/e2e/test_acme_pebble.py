"""ACME end to end (issue 13 item 3) against Debian's `pebble` (Let's Encrypt's test CA) and
`pebble-challtestsrv` (its DNS server, answering 127.0.0.1 for every name), both started here on loopback and
stopped by PID: the server starts with its self-signed certificate, obtains one for its host name by HTTP-01
(RFC 8555 §8.3) answered on its web listener, and imaps serves it without a restart; a renewal is served the
same way. The client trusts pebble's root (fetched from pebble's management port) and checks the host name."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postroom import config as config_mod
from postroom.acme import CertState, read_state, renewal_time
from postroom.app import Postroom
from postroom.net.tls import ensure_certificate
from tests.conftest import require_command

HOST = "mail.example.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """pebble and its DNS on loopback; yields the ports, pebble's own HTTPS certificate and the web port
    Postroom must listen on (pebble checks HTTP-01 challenges there)."""
    pebble_bin, dns_bin = require_command("pebble"), require_command("pebble-challtestsrv")
    ports = {k: _free_port() for k in ("acme", "mgmt", "dns", "dns_mgmt", "http")}
    ca_dir = tmp_path / "pebble"
    ensure_certificate(ca_dir / "cert.pem", ca_dir / "key.pem", "localhost")  # SANs: localhost, 127.0.0.1
    conf = ca_dir / "pebble-config.json"
    conf.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{ports['acme']}", "managementListenAddress": f"127.0.0.1:{ports['mgmt']}",
        "certificate": str(ca_dir / "cert.pem"), "privateKey": str(ca_dir / "key.pem"),
        "httpPort": ports["http"], "tlsPort": _free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    dns = subprocess.Popen([dns_bin, "-dns01", f"127.0.0.1:{ports['dns']}", "-http01", "", "-https01", "",
                            "-tlsalpn01", "", "-management", f"127.0.0.1:{ports['dns_mgmt']}",
                            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    ca = subprocess.Popen([pebble_bin, "-config", str(conf), "-dnsserver", f"127.0.0.1:{ports['dns']}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_port(ports["dns_mgmt"], dns, "pebble-challtestsrv")
        _wait_port(ports["acme"], ca, "pebble")
        yield {"ports": ports, "https_ca": ca_dir / "cert.pem"}
    finally:
        _stop(ca)
        _stop(dns)


def _pebble_root(p: dict[str, Any]) -> str:
    ctx = ssl.create_default_context(cafile=str(p["https_ca"]))
    with urllib.request.urlopen(f"https://127.0.0.1:{p['ports']['mgmt']}/roots/0", context=ctx, timeout=10) as r:
        return str(r.read().decode())


def _served_certificate(port: int, root_pem: str) -> dict[str, Any]:
    """The certificate imaps presents, verified against pebble's root for the host name HOST."""
    ctx = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            cert = tls.getpeercert()
            assert cert is not None
            return cert


def test_certificate_obtained_by_http01_and_served_without_restart(tmp_path: Path, pebble: dict[str, Any]) -> None:
    ports = pebble["ports"]
    listeners = {name: "" for name in config_mod.LISTENER_NAMES}
    listeners.update(imaps="127.0.0.1:0", http=f"127.0.0.1:{ports['http']}")
    cfg = config_mod.load(None, {
        "server": {"data_dir": str(tmp_path / "data"), "hostname": HOST, "shutdown_grace_seconds": 1},
        "listeners": listeners, "delivery": {"enabled": False},
        "acme": {"directory": f"https://127.0.0.1:{ports['acme']}/dir", "email": "postmaster@example.test",
                 "ca_bundle": str(pebble["https_ca"])}})

    async def go() -> None:
        server = Postroom(cfg)
        await server.start()
        try:
            imaps = server.addresses["imaps"][1]
            root = await asyncio.to_thread(_pebble_root, pebble)
            with pytest.raises(ssl.SSLCertVerificationError):  # before: the self-signed certificate
                await asyncio.to_thread(_served_certificate, imaps, root)
            assert server.certificates is not None
            await asyncio.wait_for(server.certificates.issued.wait(), 90)
            first = await asyncio.to_thread(_served_certificate, imaps, root)
            assert ("DNS", HOST) in first["subjectAltName"]
            state = read_state(cfg.cert_path)
            assert state is not None and not state.self_signed and HOST in state.names
            assert oct(cfg.key_path.stat().st_mode & 0o777) == "0o600"
            # nothing left of the challenge once the order is done (acme.py invariant 2)
            assert server.certificates.challenges == {}
            # a renewal (what `run` does when the certificate is due) is served the same way
            server.certificates.issued.clear()
            await server.certificates.obtain()
            second = await asyncio.to_thread(_served_certificate, imaps, root)
            assert second["serialNumber"] != first["serialNumber"]
        finally:
            await server.stop()

    asyncio.run(go())


def test_renewal_is_due_at_two_thirds_of_the_lifetime() -> None:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    state = CertState(frozenset({HOST}), start, start + datetime.timedelta(days=90), False)
    assert renewal_time(state, [HOST]) == start + datetime.timedelta(days=60)
    assert renewal_time(state, [HOST, "autoconfig.example.test"]) is None  # a name is missing: now
    assert renewal_time(CertState(frozenset({HOST}), start, start, True), [HOST]) is None  # self-signed: now
    assert renewal_time(None, [HOST]) is None


def test_acme_configuration_is_checked() -> None:
    base = {"server": {"hostname": HOST}}
    with pytest.raises(config_mod.ConfigError, match="https://"):
        config_mod.load(None, {**base, "acme": {"directory": "http://ca.test/dir"}})
    with pytest.raises(config_mod.ConfigError, match="tls.cert"):
        config_mod.load(None, {**base, "acme": {"directory": "https://ca.test/dir"}, "tls": {"cert": "/x"}})
    with pytest.raises(config_mod.ConfigError, match="public host name"):
        config_mod.load(None, {"acme": {"directory": "https://ca.test/dir"}})  # hostname "localhost"
    with pytest.raises(config_mod.ConfigError, match="listeners.http"):
        config_mod.load(None, {**base, "acme": {"directory": "https://ca.test/dir"}, "listeners": {"http": ""}})
