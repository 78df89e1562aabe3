"""A real Postroom server for end-to-end tests, in-process on random loopback ports.

`server` starts `app.Postroom` in an event loop on a thread of its own, every listener on 127.0.0.1:0, data in
the test's tmp_path; sync clients (smtplib, imaplib, poplib, subprocesses) talk to it over real sockets, and
`server.run(coro)` runs a coroutine (a store call) in the server's loop. Override settings per test module with
a `server_overrides` fixture returning a dict shaped like the TOML file.

The loop is the one `server.event_loop` names (as `postroom serve` makes it); the environment variable
POSTROOM_TEST_EVENT_LOOP sets that key for every test here, so the whole suite can be run on uvloop once:
`POSTROOM_TEST_EVENT_LOOP=uvloop ./run test tests/e2e`. Likewise POSTROOM_TEST_STORE=postgresql puts every
such server on the PostgreSQL engine (a database of its own on the session's test PostgreSQL, tests/pgcluster.py):
`POSTROOM_TEST_STORE=postgresql ./run test tests/e2e`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from postroom import config as config_mod
from postroom.app import Postroom, loop_factory
from postroom.store.api import Store, User
from tests.credentials import cheap_credentials  # argon2id at the lowest cost: why there

T = TypeVar("T")
INBOUND_OFF = {"spf": False, "dkim": False, "dmarc": False, "arc": False}
TEST_LOOP = os.environ.get("POSTROOM_TEST_EVENT_LOOP", "")
TEST_STORE = os.environ.get("POSTROOM_TEST_STORE", "")
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")


class ServerHandle:
    def __init__(self, cfg: config_mod.Config) -> None:
        self.config = cfg
        self.postroom = Postroom(cfg)
        self.loop = loop_factory(cfg.server.event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, name="postroom-test-server", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def store(self) -> Store:
        assert self.postroom.store is not None
        return self.postroom.store

    def port(self, listener: str) -> int:
        return self.postroom.addresses[listener][1]

    def add_user(self, address: str, password: str = "secret-password") -> User:
        domain = address.rpartition("@")[2]

        async def go() -> User:
            if await self.store.get_domain(domain) is None:
                await self.store.add_domain(domain)
            h, scram = cheap_credentials(password)
            return await self.store.add_user(address, h, scram)

        return self.run(go())

    def tls_client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.config.cert_path))
        ctx.check_hostname = False  # the certificate names the hostname; tests connect to 127.0.0.1 by number
        return ctx

    def stop(self) -> None:
        try:
            self.run(self.postroom.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium (tests/debian-packages.txt): Playwright downloads nothing


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright from PyPI (`executable_path`), headless, one per test module; its
    sandbox off, since CI runs the tests as root, where chromium's sandbox cannot start. Skipped with the package
    to install when either is missing."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, chromium_sandbox=False)
        yield b
        b.close()


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path, server_overrides: dict[str, Any]) -> Iterator[ServerHandle]:
    store: dict[str, Any] = {}
    if TEST_STORE == "postgresql":
        store = {"store": {"url": request.getfixturevalue("pg_cluster").create_database()}}
    elif TEST_STORE:
        raise ValueError(f"POSTROOM_TEST_STORE must be postgresql or empty, not {TEST_STORE!r}")
    base: dict[str, Any] = {
        **store,
        "server": {"data_dir": str(tmp_path / "data"), "shutdown_grace_seconds": 2.0,
                   **({"event_loop": TEST_LOOP} if TEST_LOOP else {})},
        "listeners": {name: "127.0.0.1:0" for name in LISTENERS},
        # The outbound queue stays off unless a test turns it on with its own loopback DNS and peers: a test
        # must never look up or connect to anything beyond this machine.
        "delivery": {"enabled": False},
        # Likewise the inbound checks (SPF, DKIM, DMARC look up DNS): on only where a test gives its own DNS.
        "inbound": INBOUND_OFF,
        # And the reverse DNS of MX clients that are not exempt (the door tests make loopback not exempt).
        "smtp": {"reverse_dns": False},
    }
    cfg = config_mod.load(None, config_mod.merge(base, server_overrides))
    handle = ServerHandle(cfg)
    try:
        handle.run(handle.postroom.start())
    except BaseException:
        handle.stop()
        raise
    yield handle
    handle.stop()
