"""Builds the running server from a Config and runs it in one asyncio event loop.

Start order: data folder and its PID lock (process.py) -> TLS certificate -> listeners bound, not accepting ->
(as root with `server.user`: data folder handed to that user, privileges dropped) -> store (schema) -> metrics
-> server secret -> listeners accept -> HTTP.
Stop order is the reverse: stop accepting, let sessions finish up to `server.shutdown_grace_seconds`, stop
HTTP, close the store (which finishes pending writes), release the lock. SIGTERM and SIGINT both start a
graceful stop.

With `server.workers` > 1 (`run_workers`, workers.py) this process is the parent: it takes the lock, makes the
certificate, binds one socket per worker for every listener, drops privileges, makes the server secret and
opens the store once (its schema steps), then forks the workers. Each runs `Postroom.start(worker=...)`: the
same steps from the certificate on, minus the lock, the binding and the privilege drop (done), on its own
inherited sockets; `delivery.workers` of them (worker 0 alone by default) run an outbound queue scheduler with
their shares of the connection limits (queue.py invariant 10); only worker 0 runs expunged-UID retention, the
index backlog, the DMARC report run, the rspamd learning sender and ACME. With several nodes on one PostgreSQL
store, worker 0 of each node runs them too, and the once-per-cluster ones (retention, the index backlog, DMARC
reports, learning) each run a round only while the node holds that job's lease in the store (jobs.py).

What a process imports follows its configuration (issue 17, memory of the idle server): the web stack
(starlette, uvicorn, jinja2, nh3, the webmail and admin pages) only with a web listener (`import_web`, in the
parent before the fork, so the workers share it); the content jobs' code (dkimpy for DKIM and ARC) only in the
metadata workers that run one (metaworker.py). Every process of the server shares one large-job slot for
metadata (`metapool.share_large_slot`: `data_dir/metapool.lock`).

Reload
------
SIGHUP, or `postroom reload` (which signals the PID in the data folder's lock file), runs `Postroom.reload`:
the configuration file is read again and the certificate files too, and both are checked in full before
anything changes. A file that does not load, or a certificate that does not, changes nothing: the server keeps
running as it was and logs one `reload result=refused reason=...` line. Otherwise the new settings serve every
session accepted from then on (limits, auth, smtp, pop3, imap, server.hostname, the certificate for implicit
TLS and STARTTLS), every login (the `auth.*` throttling settings apply at once, to open sessions too: the
Authenticator is shared), and every delivery the queue starts (routes, DNS servers, smart host, retry schedule,
timeouts, concurrency). Mailing lists keep their settings in the store, read per message, so they never need a
reload. A session already open keeps the settings it started with (its limits, its offers, the context its
STARTTLS would use). ACME (acme.py) takes the new `acme.*` names for its next order and loads renewals into the
new context (and into the https listener's, which keeps the context it started with). What cannot change in a
running process (`RESTART_ONLY`: listener addresses, the data folder, the store, `server.user`,
`server.event_loop`, `delivery.enabled`, `delivery.workers`, `acme.directory`) keeps its running value; the log
line names it under `restart_needed=`. One structured line reports each reload:

    reload result=applied source=/etc/postroom/postroom.toml changed=limits.message_size,tls.certificate
           certificate=sha256:3f5a... restart_needed=listeners.imaps

Invariants:
1. Nothing accepts connections until the store is open: a client never reaches a session that cannot store.
   (Listening sockets are bound earlier, while the process may still be root, but accept nothing yet.)
2. Every listener that is configured is bound before `start()` returns, or start fails naming it.
3. One `postroom serve` per data folder: `start()` takes the folder's lock first, or fails naming the PID
   that holds it (process.py).
4. A reload either applies a configuration and certificate that loaded in full, or changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import metapool as meta_pool
from . import mtasts
from .acme import CertificateManager, settle_pair
from .adminops import DNS_CHECK_SECONDS
from .auth.authenticator import Authenticator
from .auth.passwords import make_credentials
from .auth.secret import for_store as store_secret
from .auth.secret import load_or_create as load_secret
from .config import IMPLICIT_TLS, Config, ConfigError
from .config import load as config_load
from .delivery.lists import import_held_files
from .delivery.mx import DnsCache, DnsResolver
from .delivery.queue import Scheduler, delivering_workers, node_id, router_bounce, share
from .delivery.router import Router
from .imap.session import imap_handler
from .inbound.dmarc_reports import DmarcReporter
from .inbound.learn import Learner
from .indexing import LogProgress, build_index
from .jobs import ClusterJob
from .metrics import Metrics
from .net.connection import Connection
from .net.listener import Handler, ListenerSpec, NetServer, logfmt, refusal
from .net.tls import STORE_NAME as CERT_STORE_NAME
from .net.tls import CertificateError, ensure_certificate, fingerprint, install_shared, load_context, shared_candidate
from .pop3.session import pop3_handler
from .process import (
    AlreadyRunning,
    PrivilegeError,
    ServerLock,
    drop_privileges,
    own_data_dir,
    switch_needed,
    tune_malloc,
)
from .services import Services
from .smtp.door import Door
from .smtp.session import smtp_handler_factory
from .store import open_store
from .store.api import AlreadyExists, Invalid, Store
from .store.retention import ExpungedRetention
from .workers import ChallengeFiles, Supervisor, Worker, bind_per_worker, worker_count

if TYPE_CHECKING:  # the web stack is imported only by a server with a web listener (`import_web`)
    from .web.autoconfig import ClientSettings
    from .web.mail import Webmail
    from .web.server import HttpServer


def import_web(cfg: Config) -> bool:
    """Import the web stack (starlette, uvicorn, jinja2, nh3, the webmail and admin pages: ~7 MiB of Python
    objects, 137 modules) if a web listener is enabled, else leave it out of the process (issue 17: an SMTP or
    IMAP only server does not hold it). `run_workers` calls it before the fork, so the workers share its pages
    (workers.py invariant 5); `Postroom.start` imports what it uses where it uses it. Returns whether it did."""
    if not any(name in cfg.listeners.enabled() for name in ("http", "https")):
        return False
    from .web import admin, app, autoconfig, mail, server  # noqa: F401 - imported for the fork's sake

    return True

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
    https: HttpServer | None = None  # the same web app over TLS (listeners.https)
    webmail: Webmail | None = None  # the webmail both serve (its live event streams end at stop)
    services: Services | None = None
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    queue: Scheduler | None = None  # the outbound queue scheduler (delivery/queue.py), if delivery.enabled
    queue_options: dict[str, Any] = field(default_factory=dict)  # Scheduler keywords (tests: resolver, clock)
    retention: ExpungedRetention | None = None  # forgets expunged UIDs past imap.expunged_retention_days
    learner: Learner | None = None  # sends users' Junk verdicts to rspamd's controller (inbound/learn.py)
    dmarc_reports: DmarcReporter | None = None  # daily DMARC aggregate reports (inbound/dmarc_reports.py)
    indexer: asyncio.Task[None] | None = None  # the full-text index backlog, worked off in the background
    certificates: CertificateManager | None = None  # ACME (acme.py), when acme.directory is set
    acme_task: asyncio.Task[None] | None = None
    loader: Callable[[], Config] | None = None  # what `reload()` reads; None: the file `config` came from
    lock: ServerLock | None = None  # the data folder's PID lock (process.py), held while running
    tls: ssl.SSLContext | None = None  # the server TLS context now in use (replaced by a reload)
    certificate: str = ""  # its certificate's fingerprint (net.tls.fingerprint)
    handlers: dict[str, Handler] = field(default_factory=dict)  # listener -> its session handler, current config
    _bounce_router: Router | None = None  # the router the scheduler's DSNs enter by
    _web_tls: ssl.SSLContext | None = None  # the context the https listener was started with
    _web_socks: dict[str, list[socket.socket]] = field(default_factory=dict)  # http/https: bound before the
    # privilege drop, served after
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    worker: Worker | None = None  # one of several worker processes (workers.py); None: the only process
    _schedulers: int = 1  # the workers that deliver (queue.py invariant 10), decided at start

    async def start(self) -> None:
        cfg, worker = self.config, self.worker
        # A worker's parent did the first steps (workers.py): lock, certificate, binding, privilege drop.
        account = None
        if worker is None:
            cfg.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.lock = ServerLock(cfg.data_path)
            self.lock.acquire()  # invariant 3
            account = switch_needed(cfg.server.user)
            if account is None and os.geteuid() == 0:
                log.warning("running as root: every session runs as root too; set server.user to a system user "
                            "(e.g. useradd --system postroom) to have the server drop to it after binding its ports")
        if worker is None:  # nodes on one PostgreSQL store: the store's generated certificate (workers: the parent's)
            await share_certificate(cfg)
        tls, cert = await asyncio.to_thread(load_tls, cfg)  # as root: the key may be readable by root only
        self.tls, self.certificate = tls, fingerprint(cert)
        singletons = worker is None or worker.slot == 0  # what runs once per server (workers.py invariant 2)
        if cfg.acme.directory and singletons:  # the certificate comes from the CA, and is swapped into `tls`
            self.certificates = CertificateManager(cfg, tls)
            if worker is not None:  # the other workers load the new files through a reload (workers.py)
                self.certificates.on_obtained = worker.reload_all
                self.certificates.challenges = ChallengeFiles(worker.challenges_dir)
        self.metrics = Metrics(worker.metrics_dir if worker is not None else None)

        specs = []
        for name, (host, port) in cfg.listeners.enabled().items():
            if name in ("http", "https"):
                continue
            protocol = PROTOCOL_OF[name]
            idle = {"smtp": cfg.limits.smtp_idle_seconds, "imap": cfg.limits.imap_idle_seconds,
                    "pop3": cfg.limits.pop3_idle_seconds}[protocol]
            refuse = refusal(protocol, cfg.server.hostname)
            specs.append(ListenerSpec(name=name, host=host, port=port, handler=self._dispatcher(name),
                                      implicit_tls=name in IMPLICIT_TLS, idle_timeout=idle,
                                      protocol=protocol, refuse=refuse))
        self.net = NetServer(specs, tls, cfg.limits, metrics=self.metrics,
                             sockets=worker.sockets if worker is not None else None,
                             shared=worker.counts if worker is not None else None)
        await self.net.bind()  # bound, not accepting yet (invariant 1): ports below 1024 need root
        for name in ("http", "https"):  # the web listeners, bound now too (ports 80 and 443 need root)
            if name in cfg.listeners.enabled():
                from .web.server import bind_http

                self._web_socks[name] = worker.sockets[name] if worker is not None else \
                    bind_http(*cfg.listeners.enabled()[name], name=name)
        if worker is not None:  # the parent handed the data folder over and dropped privileges already
            pass
        elif account is not None:  # process.py: hand the data folder over, then drop root for good
            assert self.lock is not None
            self.lock.chown(account.uid, account.gid)
            changed = await asyncio.to_thread(own_data_dir, cfg.data_path, account, deep=True)
            drop_privileges(account)
            log.info("privileges dropped user=%s uid=%d gid=%d data_entries_changed=%d", account.name, account.uid,
                     account.gid, changed)
        else:
            await asyncio.to_thread(own_data_dir, cfg.data_path, None, deep=False)

        # One large metadata job at a time across the server's processes (metapool.py invariant 7); opened after
        # the privilege drop, so the lock file is the server user's.
        meta_pool.share_large_slot(cfg.data_path / meta_pool.LOCK_NAME)
        self.store = open_store(cfg.store_url, cfg.data_path)
        self.store.on_commit = self.metrics.observe_commit  # type: ignore[attr-defined]
        self.store.on_lock_wait = self.metrics.observe_lock_wait  # type: ignore[attr-defined]
        # SQLite: a burst's full-text rows may wait for an idle writer; what a stopped or dead worker left parked
        # is worked off at the next start (store/sqlite/engine.py invariant 10, workers.py invariant 2).
        self.store.parks = True  # type: ignore[attr-defined]
        await self.store.open()
        store = self.store
        # What runs once per cluster takes a lease named for the job, held by this node's id (jobs.py).
        # Delivery runs in `delivery.workers` workers (queue.py invariant 10), each with its share of the connections.
        self._schedulers = delivering_workers(cfg, worker.count) if worker is not None else 1
        delivers = cfg.delivery.enabled and (worker is None or worker.slot < self._schedulers)
        # A replacement worker also works off the index backlog once (workers.py invariant 2): what its dead
        # predecessor parked is recorded only there (store/sqlite/engine.py invariant 10).
        reindexes = singletons or (worker is not None and worker.replacement)
        node = await asyncio.to_thread(node_id, cfg.data_path) if reindexes or delivers else ""

        def job(name: str) -> ClusterJob:
            return ClusterJob(store, name, node)

        # rspamd learning from users' Junk verdicts, when configured: every worker records, one sends.
        self.learner = Learner(store, cfg.rspamd, sending=singletons, job=job("rspamd-learn") if singletons else None)
        self.learner.start()
        if singletons:  # list posts an older Postroom held as files: into the store, once (lists.py)
            await import_held_files(store, cfg.data_path / "held")
            self.retention = ExpungedRetention(store, cfg.imap.expunged_retention_days,
                                               job=job("expunged-retention"))
            self.retention.start()
        if reindexes:
            self.indexer = asyncio.create_task(_index_in_background(store, cfg, job("index-backlog")))

        def wake() -> None:  # mail was queued: the scheduler starts on it now, not at its next poll
            if self.queue is not None:
                self.queue.wake()
            elif worker is not None:  # no scheduler here (queue.py invariant 10): wake worker 0 by the pipe
                worker.wake_queue()

        # One resolver with one cache for outbound delivery, the inbound checks and the door (issue 12 item 9).
        dns = DnsResolver(cfg.delivery.dns_servers, cache=DnsCache(cfg.delivery.dns_cache_size,
                                                                   cfg.delivery.dns_cache_max_ttl_seconds))
        # DMARC aggregate reports (inbound/dmarc_reports.py): the task runs always (in one worker), and reports
        # only while inbound.dmarc_reports is on (a reload may switch it).
        if singletons:
            self.dmarc_reports = DmarcReporter(store, cfg, dns.with_lifetime(cfg.inbound.dns_timeout_seconds), wake,
                                               job=job("dmarc-reports"))
            self.dmarc_reports.start()
        if delivers:  # outbound delivery; DSNs enter through the router like any mail
            self._bounce_router = Router(store, cfg, on_queued=wake)
            # `node` is also the id its queue leases carry; a worker's scheduler frees only its own slot's
            # earlier leases (the parent freed the node's of a one-process run before the fork)
            self.queue = Scheduler(store, self._queue_config(cfg), bounce=router_bounce(self._bounce_router),
                                   **{"resolver": dns, "node": node if worker is None else f"{node}/{worker.slot}",
                                      **self.queue_options})
            self.queue.start()
            if worker is not None and worker.slot == 0:  # the wake pipe's reader (workers without a scheduler)
                worker.on_wake(self.queue.wake)
        secret = await store_secret(store, cfg.data_path)  # SCRAM decoys, auth cache keys: the store's on PostgreSQL
        auth = Authenticator(store, cfg.auth, secret=secret, metrics=self.metrics,
                             shared=worker is not None or store.shared_by_nodes,  # other nodes count too
                             logins=worker.door if worker is not None else None)
        auth.pop_before_smtp_seconds = cfg.smtp.pop_before_smtp_minutes * 60.0  # in the store too on PostgreSQL
        door = Door(cfg.smtp, shared=worker.door if worker is not None else None)  # counted across workers
        self.services = Services(cfg, store, auth, self.metrics, tls, wake, door, dns)
        self.handlers = self._make_handlers(self.services)
        await self.net.start()
        self.addresses.update(self.net.addresses)

        if self._web_socks:
            from .web.admin import Admin
            from .web.app import create_app
            from .web.autoconfig import ClientSettings
            from .web.autoconfig import endpoints as autoconfig_endpoints
            from .web.mail import Webmail
            from .web.server import serve_http

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
                return ClientSettings(domain, self.config.server.hostname, autoconfig_endpoints(addresses))

            async def mta_sts_policy(host: str) -> str | None:
                name = host.strip().lower().rsplit(":", 1)[0].rstrip(".") if not host.startswith("[") else ""
                if not name.startswith("mta-sts.") or self.config.mta_sts.mode == "none":
                    return None
                try:
                    if await store.get_domain(name[len("mta-sts."):]) is None:
                        return None
                except Invalid:
                    return None
                live = self.config  # a reload's mta_sts.* and hostname apply to the next request
                return mtasts.policy_text(live.mta_sts.mode, live.server.hostname, live.mta_sts.max_age_days * 86400)

            challenges: Mapping[str, str] | None = None
            if self.certificates is not None:
                challenges = self.certificates.challenges
            elif worker is not None and cfg.acme.directory:  # worker 0 orders; whichever worker the CA reaches answers
                challenges = ChallengeFiles(worker.challenges_dir)
            webmail = self.webmail = Webmail(store, self.services.auth, cfg, settings_for, door=self.services.door,
                              on_queued=wake)
            admin = Admin(webmail, lambda: self.config, self.metrics, addresses,
                          router=lambda: Router(store, self.config, on_queued=wake),
                          lookup=dns.uncached(DNS_CHECK_SECONDS))
            app = create_app(self.metrics, health, refresh, settings_for, webmail, acme_challenges=challenges,
                             mta_sts_policy=mta_sts_policy, admin=admin)
            for name, socks in list(self._web_socks.items()):
                host, port = cfg.listeners.enabled()[name]
                server = await serve_http(app, host, port, socks=socks, name=name,
                                          ssl_context=tls if name == "https" else None)
                if name == "https":  # its context is the one made at start: reloads and ACME load into it too
                    self.https, self._web_tls = server, tls
                    if self.certificates is not None:
                        self.certificates.more_contexts = [tls]
                else:
                    self.http = server
                self.addresses[name] = (host, server.port)
            self._web_socks = {}
        if self.certificates is not None:  # after the http listener: the CA checks the challenge there
            self.acme_task = asyncio.create_task(self.certificates.run(), name="acme")

    def _dispatcher(self, listener: str) -> Handler:
        """The handler a listener calls: the one `self.handlers` has for it when the connection arrives, so a
        reload's new handlers (new settings) serve new connections while open ones keep theirs."""
        def handler(conn: Connection) -> Awaitable[None]:
            # Not a coroutine of its own: the session's coroutine is returned, so no frame of this one waits
            # above every idle session's (memory per connection, bench/RESULTS.md).
            return self.handlers[listener](conn)

        return handler

    def _make_handlers(self, services: Services) -> dict[str, Handler]:
        return {name: HANDLER_FACTORIES[name](services, name)
                for name in self.config.listeners.enabled() if name not in ("http", "https")}

    async def reload(self, new: Config | None = None) -> bool:
        """Re-read the configuration (`new`, or `self.loader()`: the file the server started with) and the
        certificate, and use them for new sessions, deliveries and logins (module doc, "Reload"). Settings that
        need a restart keep their running values and are named in the log line. When the file or the
        certificate is unusable nothing changes and the log line says why. Returns whether it was applied.
        Reloads run one at a time (two quick SIGHUPs: the second reads the file after the first applied)."""
        async with self._reload_lock:
            return await self._reload(new)

    async def _reload(self, new: Config | None) -> bool:
        old = self.config
        try:
            if new is None:
                new = await asyncio.to_thread(self.loader or _reloader(old))
            new, restart = keep_restart_only(old, new)
            tls, cert = await asyncio.to_thread(load_tls, new)
        except (ConfigError, CertificateError, OSError) as exc:
            log.warning("%s", logfmt("reload", [("result", "refused"), ("reason", str(exc)),
                                               ("kept", "the running configuration")]))
            return False
        changed = config_changes(old, new)
        certificate = fingerprint(cert)
        if certificate != self.certificate:
            changed.append("tls.certificate")
        self.config, self.tls, self.certificate = new, tls, certificate
        if self.services is not None:
            self.services.auth.config = new.auth  # the failure records are kept: the auth.* limits apply to them
            self.services.auth.pop_before_smtp_seconds = new.smtp.pop_before_smtp_minutes * 60.0
            if self.services.door is not None:  # its passes and counts are kept; the new limits apply to them
                self.services.door.reconfigure(new.smtp)
            self.services = dataclasses.replace(self.services, config=new, tls=tls)
            self.handlers = self._make_handlers(self.services)
        if self.net is not None:
            self.net.reconfigure(tls, new.limits)
        if self.queue is not None:
            self.queue.reconfigure(self._queue_config(new))
        if self._bounce_router is not None:
            self._bounce_router.config = new
        if self.retention is not None:
            self.retention.days = new.imap.expunged_retention_days
        if self.learner is not None:
            self.learner.configure(new.rspamd)
        if self.dmarc_reports is not None:
            self.dmarc_reports.config = new
        if self.certificates is not None:  # ACME: the next order uses the new names; it loads into the new context
            self.certificates.cfg, self.certificates.context = new, tls
        if self._web_tls is not None and "tls.certificate" in changed:  # https serves through its first context
            try:
                self._web_tls.load_cert_chain(new.cert_path, new.key_path)
            except (OSError, ssl.SSLError) as exc:
                log.warning("reload: the https listener keeps its certificate: %s", exc)
        fields: list[tuple[str, Any]] = [("result", "applied"), ("source", new.source),
                                         ("changed", ",".join(changed) or "nothing"), ("certificate", certificate)]
        if restart:
            fields.append(("restart_needed", ",".join(restart)))
        log.log(logging.WARNING if restart else logging.INFO, "%s", logfmt("reload", fields))
        return True

    def _queue_config(self, cfg: Config) -> Config:
        """`cfg` with this worker's share of the delivery limits (queue.py invariant 10), of the number of
        schedulers decided at start."""
        if self.worker is None:
            return cfg
        return share(cfg, self.worker.slot, self._schedulers)

    async def stop(self) -> None:
        for sock in (s for socks in self._web_socks.values() for s in socks):
            sock.close()
        self._web_socks = {}
        for task in (self.indexer, self.acme_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.net is not None:
            await self.net.stop(self.config.server.shutdown_grace_seconds)
        if self.webmail is not None:
            self.webmail.live.close()  # open pages' event streams end now, so the listeners stop at once
        # Both web listeners at once: uvicorn notices a stop on its next 0.1 s tick and then waits another 0.1 s
        # for open connections, so one after the other cost twice that on every stop.
        await asyncio.gather(*(web.stop() for web in (self.http, self.https) if web is not None))
        if self.queue is not None:
            await self.queue.stop(self.config.server.shutdown_grace_seconds)
        if self.retention is not None:
            await self.retention.stop()
        if self.learner is not None:
            await self.learner.stop()
        if self.dmarc_reports is not None:
            await self.dmarc_reports.stop()
        if self.store is not None:
            await self.store.close()
        await meta_pool.shutdown()  # the metadata workers (metapool.py invariant 4)
        if self.lock is not None:
            self.lock.release()


# Settings a running server cannot change: its sockets are bound, its store open, its privileges dropped, the
# scheduler started or not. A reload keeps their running values and names them as needing a restart.
RESTART_ONLY = ("listeners", "server.data_dir", "server.user", "server.event_loop", "server.workers", "store",
                "delivery.enabled", "delivery.workers", "acme.directory")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name == "source":
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def config_changes(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ between `old` and `new` (e.g. ['limits.message_size'])."""
    a, b = _flatten(old), _flatten(new)
    return [key for key in a if a[key] != b[key]]


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with the `RESTART_ONLY` settings of `old` (what the running server keeps), and the dotted keys of
    those that differ (for the log line: they need a restart)."""
    restart = [key for key in config_changes(old, new)
               if any(key == k or key.startswith(k + ".") for k in RESTART_ONLY)]
    kept = dataclasses.replace(
        new, listeners=old.listeners, store=old.store,
        server=dataclasses.replace(new.server, data_dir=old.server.data_dir, user=old.server.user,
                                   workers=old.server.workers),
        delivery=dataclasses.replace(new.delivery, enabled=old.delivery.enabled),
        acme=dataclasses.replace(new.acme, directory=old.acme.directory))
    return kept, restart


def _reloader(cfg: Config) -> Callable[[], Config]:
    path = None if cfg.source == "<defaults>" else cfg.source
    return lambda: config_load(path)


def load_tls(cfg: Config) -> tuple[ssl.SSLContext, Any]:
    """The server TLS context of `cfg` and its certificate. The built-in location (`tls.cert` empty) is
    generated when missing; configured files must exist and parse. With ACME, an installation a crash
    interrupted is settled first (acme.py `settle_pair`). Raises CertificateError naming the file."""
    if cfg.acme.directory:
        try:
            settle_pair(cfg.cert_path, cfg.key_path)
        except OSError as exc:
            raise CertificateError(f"TLS: {exc}") from None
    if not cfg.tls.cert:
        try:
            if ensure_certificate(cfg.cert_path, cfg.key_path, cfg.server.hostname):
                log.info("tls generated self-signed certificate path=%s", cfg.cert_path)
        except OSError as exc:
            raise CertificateError(f"TLS: {exc}") from None
    return load_context(cfg.cert_path, cfg.key_path)


async def share_certificate(cfg: Config) -> None:
    """Several nodes on one PostgreSQL store serve one generated certificate (net/tls.py invariant 3): with
    `tls.cert` empty and no ACME, the store's pair (the first node's) is written to this node's built-in files
    before they load. Nothing for SQLite, configured files or ACME. Opens the store for the moment (its schema
    steps run here on a first start). Raises CertificateError, StoreError, OSError."""
    if not cfg.store_url.startswith("postgresql://") or cfg.tls.cert or cfg.acme.directory:
        return
    store = open_store(cfg.store_url, cfg.data_path)
    await store.open()
    try:
        candidate = await asyncio.to_thread(shared_candidate, cfg.cert_path, cfg.key_path, cfg.server.hostname)
        value = await store.shared_value(CERT_STORE_NAME, candidate)
        if await asyncio.to_thread(install_shared, value, cfg.cert_path, cfg.key_path):
            log.info("tls certificate taken from the store (shared by every node) path=%s", cfg.cert_path)
    finally:
        await store.close()


async def _index_in_background(store: Store, cfg: Config, job: ClusterJob) -> None:
    """Index the bodies stored before the full-text index existed (indexing.py), with log lines for progress,
    on the node that holds `job`'s lease; another node asks again every lease length, and ends once it held the
    lease and found the backlog empty (so a holder that died mid-way is taken over). SEARCH is right meanwhile
    (it scans what is not indexed); a failure is logged and leaves the scan."""
    try:
        while await job.run(lambda: build_index(store, cfg.limits, LogProgress, pause=0.05)) is None:
            await asyncio.sleep(job.seconds)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the index is an accelerator: the server runs on without it
        log.exception("full-text index: building the backlog failed; SEARCH scans what is not indexed")
    finally:
        await job.release()  # (cancelled at stop: released while the store is still open)


async def ensure_demo(store: Store, data_dir: Path) -> str:
    """The Quickstart's domain and user. The demo password is made once and kept (mode 0600) in data_dir. Nodes
    on one store started at the same moment may both find the domain or user missing: the second to add it
    takes the first's (AlreadyExists), and sets its own password (the last node started knows it)."""
    pw_file = data_dir / "demo-password"
    if await store.get_domain(DEMO_DOMAIN) is None:
        try:
            await store.add_domain(DEMO_DOMAIN)
        except AlreadyExists:
            pass
    if pw_file.exists() and await store.get_user(DEMO_USER) is not None:
        return pw_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    password_hash, scram = await asyncio.to_thread(make_credentials, password)
    try:
        await store.add_user(DEMO_USER, password_hash, scram)
    except AlreadyExists:
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


def banner(server: Postroom, demo_password: str | None, user: str | None = None, workers: int = 1) -> str:
    """What `postroom serve` prints once listening: the addresses, and commands that send a message to a user
    who exists and read it back: the demo user with `demo_password`, else `user` (with PASSWORD for its
    password, which the server does not know), else how to add one. `workers` > 1 is said in the first line."""
    cfg = server.config
    conf = "built-in defaults" if cfg.source == "<defaults>" else cfg.source  # config.discover chose it
    procs = f"; {workers} worker processes" if workers > 1 else ""
    lines = [f"Postroom is running (configuration {conf}; data in {cfg.data_path}, store {cfg.store_url}{procs})",
             ""]
    for name, (host, port) in server.addresses.items():
        shown = "*" if host in _WILDCARDS else f"[{host}]" if ":" in host else host  # "*": every address
        kind = "implicit TLS" if name in IMPLICIT_TLS else ("HTTP" if name == "http" else "plain")
        lines.append(f"  {name:<12} {shown}:{port}  ({kind})")
    lines.append("")
    if demo_password is not None:
        kept = cfg.data_path / "demo-password"
        lines.append(f"  demo login  {DEMO_USER}  password {demo_password}  (kept in {kept})")
    http, https = server.addresses.get("http"), server.addresses.get("https")
    if http:
        lines.append(f"  webmail     http://{_url_host(http[0])}:{http[1]}/   (password sign-in over plain HTTP: "
                     f"from this machine only)")
    if https:
        lines.append(f"  webmail     https://{_url_host(https[0])}:{https[1]}/   (the server's certificate: "
                     f"{'self-signed' if not cfg.tls.cert and not cfg.acme.directory else 'as configured'})")
    if http:
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


async def serve_forever(cfg: Config, demo: bool = False, worker: Worker | None = None) -> None:
    """Run one server process until SIGTERM/SIGINT: the only one (prints the banner), or `worker` (its parent
    prints the banner once every worker said `ready`)."""
    server = Postroom(cfg, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def hangup() -> None:  # SIGHUP: re-read the configuration and certificates (module doc, "Reload")
        if server.services is None:
            log.warning("%s", logfmt("reload", [("result", "refused"), ("reason", "the server is still starting")]))
            return
        task = loop.create_task(server.reload(), name="postroom-reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        await server.start()
        if worker is None:
            demo_password = await ensure_demo(server.store, cfg.data_path) if demo and server.store else None
            print(banner(server, demo_password, await banner_user(server.store)), flush=True)
        else:
            worker.ready()
        log.info("started listeners=%s loop=%s%s",
                 ",".join(f"{n}={h}:{p}" for n, (h, p) in server.addresses.items()),
                 type(loop).__module__.partition(".")[0],
                 f" worker={worker.slot} pid={os.getpid()}" if worker is not None else "")
        await stop.wait()
        log.info("stopping grace=%ss", server.config.server.shutdown_grace_seconds)
    finally:
        for task in list(reloads):
            task.cancel()
        await server.stop()
        log.info("stopped")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop for `server.event_loop` (`choice`): "asyncio" the standard library's loop,
    "uvloop" libuv's (ImportError when the package is missing; config validation refuses that earlier), "auto"
    uvloop when it imports, else the standard loop."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _worker_main(cfg: Config, worker: Worker) -> int:
    """A worker process's life (workers.py): its own event loop, until SIGTERM."""
    with asyncio.Runner(loop_factory=loop_factory(cfg.server.event_loop)) as runner:
        runner.run(serve_forever(cfg, worker=worker))
    return 0


async def _prepare_store(cfg: Config, demo: bool) -> tuple[str | None, str | None]:
    """The parent of workers opens the store once before the fork (its schema steps run here, once), makes the
    demo user if asked, and reads the banner's user; then closes it: (demo password, banner user). With
    delivery on it also makes the node id, so every worker reads the same one, and frees the queue leases a
    one-process run of this node left (the data folder's lock says it is gone); each worker's scheduler frees
    its own slot's (queue.py invariant 10)."""
    store = open_store(cfg.store_url, cfg.data_path)
    await store.open()
    try:
        if cfg.delivery.enabled:
            node = await asyncio.to_thread(node_id, cfg.data_path)
            freed = await store.queue_free_leases(node)
            if freed:
                log.info("queue freed %d lease(s) of this node's earlier process node=%s", freed, node)
        demo_password = await ensure_demo(store, cfg.data_path) if demo else None
        return demo_password, await banner_user(store)
    finally:
        await store.close()
        await meta_pool.shutdown()


def run_workers(cfg: Config, demo: bool, count: int) -> int:
    """`postroom serve` with `count` > 1 worker processes (workers.py): this process binds, drops privileges,
    prepares the store, forks the workers, prints the banner and supervises them until SIGTERM/SIGINT."""
    cfg.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = ServerLock(cfg.data_path)
    lock.acquire()  # invariant 3: the parent's, for as long as it runs
    sockets: list[dict[str, list[socket.socket]]] = []
    try:
        account = switch_needed(cfg.server.user)
        if account is None and os.geteuid() == 0:
            log.warning("running as root: every session runs as root too; set server.user to a system user (e.g. "
                        "useradd --system postroom) to have the server drop to it after binding its ports")
        asyncio.run(share_certificate(cfg))  # nodes on one PostgreSQL store: the store's generated certificate
        load_tls(cfg)  # generated once, here, when missing: every worker loads the same files
        sockets = bind_per_worker(cfg.listeners.enabled(), count)  # bound; listening only once the store is ready
        if account is not None:
            lock.chown(account.uid, account.gid)
            changed = own_data_dir(cfg.data_path, account, deep=True)
            drop_privileges(account)
            log.info("privileges dropped user=%s uid=%d gid=%d data_entries_changed=%d", account.name, account.uid,
                     account.gid, changed)
        else:
            own_data_dir(cfg.data_path, None, deep=False)
        if not cfg.store_url.startswith("postgresql://"):  # there the store holds it (auth/secret.py)
            load_secret(cfg.data_path)  # made once, here: SCRAM decoys and auth cache keys agree across workers
        demo_password, user = asyncio.run(_prepare_store(cfg, demo))
        import_web(cfg)  # before the fork: one shared copy of the web stack, or none without a web listener
        supervisor = Supervisor(count, sockets, cfg.data_path, lambda worker: _worker_main(cfg, worker),
                                cfg.server.shutdown_grace_seconds, lock_fd=lock.fileno())
        supervisor.prepare()
        if not supervisor.start():
            return 1
        shown = Postroom(cfg)
        for name in sorted(sockets[0], key=lambda n: n in ("http", "https")):  # mail listeners first, as before
            host, port = sockets[0][name][0].getsockname()[:2]
            shown.addresses[name] = (str(host), int(port))
        print(banner(shown, demo_password, user, workers=count), flush=True)
        log.info("started workers=%d pids=%s", count, ",".join(str(s.pid) for s in supervisor.slots))
        supervisor.run()
        log.info("stopped")
        return 0
    finally:
        for sock in (s for slot in sockets for socks in slot.values() for s in socks):
            sock.close()
        lock.release()


def run_server(cfg: Config, demo: bool = False) -> int:
    """`postroom serve`: run until SIGTERM/SIGINT, as one process or as a parent of `server.workers` worker
    processes (workers.py). Returns the exit status; start failures are one line on stderr naming what to fix
    (1; 2 for a certificate or `server.user` that the configuration names wrongly)."""
    try:
        tune_malloc()  # process.py "Memory": before any thread or fork, so every process of the server has it
        count = worker_count(cfg.server.workers)
        if count > 1:
            return run_workers(cfg, demo, count)
        with asyncio.Runner(loop_factory=loop_factory(cfg.server.event_loop)) as runner:
            runner.run(serve_forever(cfg, demo))
    except AlreadyRunning as exc:
        print(f"postroom: cannot start: {exc}", file=sys.stderr)
        return 1
    except (CertificateError, PrivilegeError) as exc:
        print(f"postroom: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        hint = " (is another server using that port? change [listeners] in the config)" \
            if "cannot listen on" in str(exc) else ""
        print(f"postroom: cannot start: {exc}{hint}", file=sys.stderr)
        return 1
    return 0
