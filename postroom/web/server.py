"""Run an ASGI app with uvicorn inside the caller's event loop, beside the mail listeners.

Theory of operation
-------------------
uvicorn normally owns the process: it creates the loop, installs signal handlers and configures logging. Here it
is a guest. We bind the socket ourselves (so port 0 works and `.port` is known before the first request), run
`uvicorn.Server.serve(sockets=[sock])` as a task in the running loop, and wait for `started`. `app.py` owns the
signals, so the server's signal capture is switched off (`_GuestServer.capture_signals`); logging is left to the
application (`log_config=None`), uvicorn's access log is off and replaced by one line per request on logger
`postroom.http` (DEBUG for successful health and metrics scrapes, which would otherwise flood the log).

Invariants
1. `serve_http` returns only once the server accepts connections, or raises what stopped it from starting.
2. `stop()` stops accepting at once, lets requests in flight finish for up to `grace` seconds, and returns
   with the socket closed. Calling it twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("postroom.http")

_QUIET_PATHS = frozenset({"/healthz", "/metrics"})


class _GuestServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the host application handles SIGTERM/SIGINT (see module doc)


class AccessLog:
    """ASGI middleware: one logfmt line per HTTP request on `postroom.http`. Logs no bodies, no query strings
    (they may carry tokens)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            client = scope.get("client") or ("", 0)
            level = logging.DEBUG if path in _QUIET_PATHS and 200 <= status < 300 else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "http method=%s path=%s status=%d duration=%.3f peer=%s", scope.get("method", ""),
                        _safe(path), status, time.monotonic() - started, _safe(f"{client[0]}:{client[1]}"))


def _safe(text: str) -> str:
    """Quote a logfmt value when needed (paths are attacker-chosen)."""
    if text and all(33 <= ord(c) < 127 and c not in '"\\=' for c in text):
        return text
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


class HttpServer:
    """A running uvicorn server in this loop. `.port` is the bound port."""

    def __init__(self, server: uvicorn.Server, socks: list[socket.socket], task: asyncio.Task[None]) -> None:
        self._server = server
        self._socks = socks
        self._task = task
        name = socks[0].getsockname()
        self.host: str = str(name[0])
        self.port: int = int(name[1])

    async def stop(self, grace: float = 5.0) -> None:
        if self._task.done():
            return
        self._server.config.timeout_graceful_shutdown = max(1, int(grace + 0.999))  # uvicorn wants whole seconds
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace + 2.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        except Exception:
            log.exception("HTTP server failed while stopping")
        finally:
            for sock in self._socks:
                sock.close()


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for host:port; host "" is every address: one socket per address family (as the mail
    listeners get from asyncio), except with port 0, where the families could get different ports."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if host or port == 0:
        infos = infos[:1]
    socks: list[socket.socket] = []
    try:
        for family, _, _, _, addr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(512)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


async def serve_http(app: ASGIApp, host: str, port: int, **uvicorn_options: Any) -> HttpServer:
    """Start serving `app` on host:port (port 0: any free port) in the running loop (invariant 1)."""
    try:
        socks = _bind(host, port)
    except OSError as exc:
        raise OSError(exc.errno, f"listener http: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    options: dict[str, Any] = {
        "loop": "none",
        "lifespan": "off",
        "log_config": None,
        "access_log": False,
        "ws": "none",
        "proxy_headers": False,  # do not trust X-Forwarded-For from anyone by default
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    }
    options.update(uvicorn_options)
    config = uvicorn.Config(AccessLog(app), **options)
    server = _GuestServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=socks), name="http-server")
    while not server.started:
        if task.done():
            for sock in socks:
                sock.close()
            failure = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"HTTP server did not start: {failure!r}") from failure
        await asyncio.sleep(0.005)
    http = HttpServer(server, socks, task)
    log.info("listening listener=http address=%s:%d", http.host, http.port)
    return http
