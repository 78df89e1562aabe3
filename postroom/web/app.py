"""The Starlette application: operational endpoints (health, metrics). Webmail and admin will mount here.

Theory of operation
-------------------
`create_app` receives what it serves (a `Metrics` object and a `health()` coroutine) instead of reaching for
globals, so a test can build an app around fakes and two servers in one process never share state.

Invariants
1. `GET /healthz` answers 200 only when `health()` returned `{"status": "ok", ...}`; anything else, including
   `health()` raising, is 503 with a JSON body (a load balancer takes the node out; nothing leaks but the
   exception's type).
2. `GET /metrics` is the Prometheus text exposition of the process's own registry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from postroom.metrics import Metrics

log = logging.getLogger("postroom.http")

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def create_app(metrics: Metrics, health: HealthCheck,
               before_scrape: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    """`before_scrape` refreshes values that need an async read (the store's queue length) before rendering."""

    async def healthz(request: Request) -> Response:
        try:
            report = await health()
        except Exception as exc:
            log.exception("health check failed")
            return JSONResponse({"status": "error", "error": type(exc).__name__}, status_code=503)
        ok = isinstance(report, dict) and report.get("status") == "ok"
        return JSONResponse(report, status_code=200 if ok else 503,
                            headers={"Cache-Control": "no-store"})

    async def metrics_endpoint(request: Request) -> Response:
        if before_scrape is not None:
            try:
                await before_scrape()
            except Exception:  # a stale gauge is better than no metrics at all
                log.exception("metrics refresh failed")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    app = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ])
    app.state.metrics = metrics
    return app
