"""Builds the running server from a Config and runs it in one asyncio event loop.

Start order: data folder -> TLS certificate -> store (schema) -> metrics -> server secret -> protocol listeners
-> HTTP.
Stop order is the reverse: stop accepting, let sessions finish up to `server.shutdown_grace_seconds`, stop
HTTP, close the store (which finishes pending writes). SIGTERM and SIGINT both start a graceful stop.

Invariants:
1. Nothing listens until the store is open: a client never reaches a session that cannot store.
2. Every listener that is configured is bound before `start()` returns, or start fails naming it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .acme import CertificateManager
from .auth.authenticator import Authenticator
from .auth.passwords import make_credentials
from .auth.secret import load_or_create as load_secret
from .config import IMPLICIT_TLS, Config
from .delivery.queue import Scheduler, router_bounce
from .delivery.router import Router
from .imap.session import imap_handler
from .indexing import LogProgress, build_index
from .metrics import Metrics
from .mime import pool as meta_pool
from .net.listener import Handler, ListenerSpec, NetServer, refusal
from .net.tls import ensure_certificate, server_context
from .pop3.session import pop3_handler
from .smtp.door import Door
from .smtp.server import smtp_handler_factory
from .store import open_store
from .store.api import Invalid, Store
from .store.retention import ExpungedRetention
from .web.app import create_app
from .web.autoconfig import ClientSettings
from .web.autoconfig import endpoints as autoconfig_endpoints
from .web.server import HttpServer, serve_http

log = logging.getLogger("postroom")

PROTOCOL_OF = {
    "smtp": "smtp",
    "submission": "smtp",
    "submissions": "smtp",
    "imap": "imap",
    "imaps": "imap",
    "pop3": "pop3",
    "pop3s": "pop3",
}

@dataclass(frozen=True)
class Services:
    """What a protocol session may use. Built once by `Postroom.start()`, shared by every session."""

    config: Config
    store: Store
    auth: Authenticator
    metrics: Metrics
    tls: ssl.SSLContext
    wake_queue: Callable[[], None] = lambda: None  # the outbound scheduler's wake(), when it runs
    door: Door | None = None  # SMTP defence at the door (smtp/door.py): pregreet passes, rates, send limits


# Listener name -> factory of its session handler.
HANDLER_FACTORIES: dict[str, Callable[[Services, str], Handler]] = {
    "smtp": smtp_handler_factory,
    "submission": smtp_handler_factory,
    "submissions": smtp_handler_factory,
    "imap": imap_handler,
    "imaps": imap_handler,
    "pop3": pop3_handler,
    "pop3s": pop3_handler,
}

DEMO_DOMAIN = "localhost"
DEMO_USER = "demo@localhost"


@dataclass
class Postroom:
    """The running server: what `start()` built, for `stop()` and for tests."""

    config: Config
    store: Store | None = None
    metrics: Metrics | None = None
    net: NetServer | None = None
    http: HttpServer | None = None
    services: Services | None = None
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    queue: Scheduler | None = None  # the outbound queue scheduler (delivery/queue.py), if delivery.enabled
    queue_options: dict[str, Any] = field(default_factory=dict)  # Scheduler keywords (tests: resolver, clock)
    retention: ExpungedRetention | None = None  # forgets expunged UIDs past imap.expunged_retention_days
    indexer: asyncio.Task[None] | None = None  # the full-text index backlog, worked off in the background
    certificates: CertificateManager | None = None  # ACME (acme.py), when acme.directory is set
    acme_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        if ensure_certificate(cfg.cert_path, cfg.key_path, cfg.server.hostname):
            log.info("tls generated self-signed certificate path=%s", cfg.cert_path)
        tls = server_context(cfg.cert_path, cfg.key_path)
        if cfg.acme.directory:  # the certificate comes from the CA, and is swapped into `tls` when it does
            self.certificates = CertificateManager(cfg, tls)

        self.metrics = Metrics()
        self.store = open_store(cfg.store_url, cfg.data_path)
        self.store.on_commit = self.metrics.observe_commit  # type: ignore[attr-defined]
        await self.store.open()
        store = self.store
        self.retention = ExpungedRetention(store, cfg.imap.expunged_retention_days)
        self.retention.start()
        self.indexer = asyncio.create_task(_index_in_background(store, cfg))

        def wake() -> None:  # mail was queued: the scheduler starts on it now, not at its next poll
            if self.queue is not None:
                self.queue.wake()

        if cfg.delivery.enabled:  # outbound delivery; DSNs enter through the router like any mail
            bounce = router_bounce(Router(store, cfg, on_queued=wake))
            self.queue = Scheduler(store, cfg, bounce=bounce, **self.queue_options)
            self.queue.start()
        secret = await asyncio.to_thread(load_secret, cfg.data_path)  # SCRAM's answers for unknown users
        self.services = Services(cfg, store, Authenticator(store, cfg.auth, secret=secret), self.metrics, tls, wake,
                                 Door(cfg.smtp))

        specs = []
        for name, (host, port) in cfg.listeners.enabled().items():
            if name == "http":
                continue
            protocol = PROTOCOL_OF[name]
            idle = {"smtp": cfg.limits.smtp_idle_seconds, "imap": cfg.limits.imap_idle_seconds,
                    "pop3": cfg.limits.pop3_idle_seconds}[protocol]
            handler = HANDLER_FACTORIES[name](self.services, name)
            refuse = refusal(protocol, cfg.server.hostname)
            specs.append(ListenerSpec(name=name, host=host, port=port, handler=handler,
                                      implicit_tls=name in IMPLICIT_TLS, idle_timeout=idle,
                                      protocol=protocol, refuse=refuse))
        self.net = NetServer(specs, tls, cfg.limits, metrics=self.metrics)
        await self.net.start()
        self.addresses.update(self.net.addresses)

        if "http" in cfg.listeners.enabled():
            host, port = cfg.listeners.enabled()["http"]

            async def health() -> dict[str, Any]:
                try:
                    await store.list_domains()
                except Exception as exc:  # the health check reports; it does not raise
                    log.warning("health check: store unreachable: %s", exc)
                    return {"status": "error", "store": type(exc).__name__}
                return {"status": "ok", "store": "ok"}

            metrics = self.metrics

            async def refresh() -> None:
                metrics.queue_length.set(await store.queue_length())

            addresses = self.addresses

            async def settings_for(domain: str) -> ClientSettings | None:
                try:
                    if await store.get_domain(domain) is None:
                        return None
                except Invalid:  # not a domain name at all
                    return None
                return ClientSettings(domain, cfg.server.hostname, autoconfig_endpoints(addresses))

            challenges = self.certificates.challenges if self.certificates is not None else None
            app = create_app(self.metrics, health, refresh, settings_for, acme_challenges=challenges)
            self.http = await serve_http(app, host, port)
            self.addresses["http"] = (host, self.http.port)
        if self.certificates is not None:  # after the http listener: the CA checks the challenge there
            self.acme_task = asyncio.create_task(self.certificates.run(), name="acme")

    async def stop(self) -> None:
        for task in (self.indexer, self.acme_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.net is not None:
            await self.net.stop(self.config.server.shutdown_grace_seconds)
        if self.http is not None:
            await self.http.stop()
        if self.queue is not None:
            await self.queue.stop(self.config.server.shutdown_grace_seconds)
        if self.retention is not None:
            await self.retention.stop()
        if self.store is not None:
            await self.store.close()
        await meta_pool.shutdown()  # the metadata workers (mime/pool.py invariant 4)


async def _index_in_background(store: Store, cfg: Config) -> None:
    """Index the bodies stored before the full-text index existed (indexing.py), with log lines for progress.
    SEARCH is right meanwhile (it scans what is not indexed); a failure is logged and leaves the scan."""
    try:
        await build_index(store, cfg.limits, LogProgress, pause=0.05)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the index is an accelerator: the server runs on without it
        log.exception("full-text index: building the backlog failed; SEARCH scans what is not indexed")


async def ensure_demo(store: Store, data_dir: Path) -> str:
    """The Quickstart's domain and user. The demo password is made once and kept (mode 0600) in data_dir."""
    pw_file = data_dir / "demo-password"
    if await store.get_domain(DEMO_DOMAIN) is None:
        await store.add_domain(DEMO_DOMAIN)
    if pw_file.exists() and await store.get_user(DEMO_USER) is not None:
        return pw_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    password_hash, scram = await asyncio.to_thread(make_credentials, password)
    if await store.get_user(DEMO_USER) is None:
        await store.add_user(DEMO_USER, password_hash, scram)
    else:
        await store.set_password(DEMO_USER, password_hash, scram)
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


async def banner_user(store: Store | None) -> str | None:
    """The user the banner's "send mail" line names when there is no demo user: the first one there is (the
    one postmaster mail goes to: delivery/router.py), or None on a server without users."""
    if store is None:
        return None
    users = await store.list_users()
    return min(users, key=lambda u: u.id).address if users else None


_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # "every address" -> one that reaches it here


def _url_host(host: str) -> str:
    """A listener's host as the banner's commands use it: a wildcard becomes loopback, IPv6 gets brackets."""
    host = _WILDCARDS.get(host, host)
    return f"[{host}]" if ":" in host else host


def banner(server: Postroom, demo_password: str | None, user: str | None = None) -> str:
    """What `postroom serve` prints once listening: the addresses, and commands that send a message to a user
    who exists and read it back: the demo user with `demo_password`, else `user` (with PASSWORD for its
    password, which the server does not know), else how to add one."""
    cfg = server.config
    conf = "built-in defaults" if cfg.source == "<defaults>" else cfg.source  # config.discover chose it
    lines = [f"Postroom is running (configuration {conf}; data in {cfg.data_path}, store {cfg.store_url})", ""]
    for name, (host, port) in server.addresses.items():
        shown = "*" if host in _WILDCARDS else f"[{host}]" if ":" in host else host  # "*": every address
        kind = "implicit TLS" if name in IMPLICIT_TLS else ("HTTP" if name == "http" else "plain")
        lines.append(f"  {name:<12} {shown}:{port}  ({kind})")
    lines.append("")
    if demo_password is not None:
        kept = cfg.data_path / "demo-password"
        lines.append(f"  demo login  {DEMO_USER}  password {demo_password}  (kept in {kept})")
    http = server.addresses.get("http")
    if http:  # what the web listener serves today (webmail and admin will join them)
        web = f"http://{_url_host(http[0])}:{http[1]}"
        lines.append(f"  health      curl {web}/healthz")
        lines.append(f"  metrics     curl {web}/metrics")
    who = DEMO_USER if demo_password is not None else user
    if who is None:
        lines.append("  no user yet: postroom domain add example.org; postroom user add you@example.org"
                     "   (or try it out: postroom serve --demo)")
        lines.append("")
        lines.append("Stop with Ctrl-C or SIGTERM.")
        return "\n".join(lines)
    login = f"{who}:{demo_password}" if demo_password is not None else f"{who}:PASSWORD"
    smtp = server.addresses.get("smtp")
    if smtp:
        host = _WILDCARDS.get(smtp[0], smtp[0])
        lines.append(f"  send mail   python3 -c \"import smtplib; smtplib.SMTP('{host}', {smtp[1]}).sendmail("
                     f"'you@example.org', ['{who}'], 'Subject: hello\\\\r\\\\n\\\\r\\\\nHi!\\\\r\\\\n')\"")
    imaps = server.addresses.get("imaps")
    if imaps:
        url = f"imaps://{_url_host(imaps[0])}:{imaps[1]}/INBOX;UID=1"
        lines.append(f"  read mail   curl -k -u '{login}' '{url}'   (IMAP)")
    pop3s = server.addresses.get("pop3s")
    if pop3s:
        lines.append(f"  or          curl -k -u '{login}' pop3s://{_url_host(pop3s[0])}:{pop3s[1]}/1   (POP3)")
    lines.append("")
    lines.append("Stop with Ctrl-C or SIGTERM.")
    return "\n".join(lines)


async def serve_forever(cfg: Config, demo: bool = False) -> None:
    server = Postroom(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        demo_password = await ensure_demo(server.store, cfg.data_path) if demo and server.store else None
        print(banner(server, demo_password, await banner_user(server.store)), flush=True)
        log.info("started listeners=%s", ",".join(f"{n}={h}:{p}" for n, (h, p) in server.addresses.items()))
        await stop.wait()
        log.info("stopping grace=%ss", cfg.server.shutdown_grace_seconds)
    finally:
        await server.stop()
        log.info("stopped")


def run_server(cfg: Config, demo: bool = False) -> int:
    try:
        asyncio.run(serve_forever(cfg, demo))
    except OSError as exc:
        print(f"postroom: cannot start: {exc} (is another server using that port? change [listeners] in the config)",
              file=sys.stderr)
        return 1
    return 0
