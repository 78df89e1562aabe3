"""The Starlette application: operational endpoints (health, metrics), client autoconfiguration
(autoconfig.py) and, when given, the webmail (mail.py) and the web admin (admin.py). The same application serves
the `http` and `https` listeners.

Theory of operation
-------------------
`create_app` receives what it serves (a `Metrics` object and a `health()` coroutine) instead of reaching for
globals, so a test can build an app around fakes and two servers in one process never share state.

Invariants
1. `GET /healthz` answers 200 only when `health()` returned `{"status": "ok", ...}`; anything else, including
   `health()` raising, is 503 with a JSON body (a load balancer takes the node out; nothing leaks but the
   exception's type).
2. `GET /metrics` is the Prometheus text exposition of the process's own registry.
3. Every response carries the security headers of mail.py invariant 3 (`SecurityHeaders`), the webmail's or not.
4. The autoconfiguration URLs (Thunderbird's two, Outlook's Autodiscover in both spellings) answer only for a
   domain `settings_for` knows, else 404; a malformed Autodiscover request is 400 with a one-line reason.
5. A request that needed the store while it cannot be reached (`StoreUnavailable`: the database down) gets a
   503 page with `Retry-After` (RFC 9110 §15.6.4, §10.2.3) and no traceback in the log (the engine logs the
   outage once per interval); any page of the webmail or the admin, sign-in included.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postroom.metrics import Metrics
from postroom.store.api import StoreUnavailable
from postroom.web import autoconfig
from postroom.web.admin import Admin
from postroom.web.mail import SecurityHeaders, Webmail

log = logging.getLogger("postroom.http")

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


RETRY_AFTER_SECONDS = 30  # invariant 5: when a browser or a script may try again
UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mail temporarily unavailable</title></head>
<body><h1>Mail temporarily unavailable</h1>
<p>The mail store cannot be reached right now. Nothing was changed; try again in a minute.</p></body></html>
"""


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """Invariant 5: 503 Service Unavailable with Retry-After (RFC 9110 §15.6.4: "the server is currently unable
    to handle the request due to a temporary overload or scheduled maintenance"; §10.2.3 Retry-After)."""
    log.info("web refused reason=store-unavailable path=%s", request.url.path)
    return HTMLResponse(UNAVAILABLE_PAGE, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"})


def create_app(metrics: Metrics, health: HealthCheck,
               before_scrape: Callable[[], Awaitable[None]] | None = None,
               settings_for: autoconfig.SettingsFor | None = None, webmail: Webmail | None = None,
               acme_challenges: Mapping[str, str] | None = None,
               mta_sts_policy: Callable[[str], Awaitable[str | None]] | None = None,
               admin: Admin | None = None) -> Starlette:
    """`before_scrape` refreshes values that need an async read (the store's queue length) before rendering;
    `settings_for(domain)` gives a hosted domain's client settings (None: not hosted), and without it the
    autoconfiguration URLs are not served; `webmail` adds its routes (`/` and `/mail/...`); `acme_challenges`
    (token -> key authorization, acme.py) is answered at `/.well-known/acme-challenge/TOKEN` (RFC 8555 §8.3)
    while an order is in progress; `mta_sts_policy(host)` is the MTA-STS policy text for a request's Host
    (`mta-sts.DOMAIN`), None when that domain is not hosted; `admin` adds the web admin's routes (`/admin/...`,
    web/admin.py)."""

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

    xml_headers = {"Cache-Control": "no-store"}

    async def thunderbird(request: Request) -> Response:
        assert settings_for is not None
        given = request.query_params.get("emailaddress", "")
        domain = autoconfig.address_domain(given) if given else autoconfig.host_domain(request.headers.get("host", ""))
        settings = await settings_for(domain) if domain else None
        if settings is None:
            return Response("no mail service for that domain here\n", status_code=404, media_type="text/plain")
        return Response(autoconfig.thunderbird_xml(settings), media_type="application/xml", headers=xml_headers)

    async def autodiscover(request: Request) -> Response:
        assert settings_for is not None
        if request.method == "POST":
            body = b""
            async for chunk in request.stream():  # invariant 2 of autoconfig: read no more than MAX_REQUEST
                body += chunk
                if len(body) > autoconfig.MAX_REQUEST:
                    break
            try:
                address = autoconfig.autodiscover_address(body)
            except autoconfig.BadRequest as exc:
                return Response(f"bad Autodiscover request: {exc}\n", status_code=400, media_type="text/plain")
        else:  # some clients ask with GET ?email= (or emailaddress=)
            address = request.query_params.get("email") or request.query_params.get("emailaddress") or ""
        domain = autoconfig.address_domain(address)
        settings = await settings_for(domain) if domain else None
        if settings is None:
            return Response("no mail service for that address here\n", status_code=404, media_type="text/plain")
        return Response(autoconfig.autodiscover_xml(settings, address), media_type="application/xml",
                        headers=xml_headers)

    async def acme_challenge(request: Request) -> Response:
        assert acme_challenges is not None
        answer = acme_challenges.get(request.path_params["token"])
        if answer is None:
            return Response("no such challenge\n", status_code=404, media_type="text/plain")
        return Response(answer, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    async def mta_sts(request: Request) -> Response:
        assert mta_sts_policy is not None
        text = await mta_sts_policy(request.headers.get("host", ""))
        if text is None:
            return Response("no MTA-STS policy for that name here\n", status_code=404, media_type="text/plain")
        # RFC 8461 §3.3: text/plain; senders cache it by max_age, not by HTTP caching
        return Response(text, media_type="text/plain", headers={"Cache-Control": "no-store"})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if settings_for is not None:
        routes += [
            Route("/mail/config-v1.1.xml", thunderbird, methods=["GET"]),
            Route("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird, methods=["GET"]),
            Route("/autodiscover/autodiscover.xml", autodiscover, methods=["GET", "POST"]),
            Route("/Autodiscover/Autodiscover.xml", autodiscover, methods=["GET", "POST"]),
        ]
    if mta_sts_policy is not None:
        routes.append(Route("/.well-known/mta-sts.txt", mta_sts, methods=["GET"]))
    if acme_challenges is not None:
        routes.append(Route("/.well-known/acme-challenge/{token}", acme_challenge, methods=["GET"]))
    if webmail is not None:
        routes += webmail.routes()
    if admin is not None:
        routes += admin.routes()
    if webmail is not None:
        routes.append(Route("/mail", lambda request: RedirectResponse("/mail/", status_code=308), methods=["GET"]))
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)],
                    exception_handlers={StoreUnavailable: store_unavailable})
    # No automatic "/x" -> "/x/" redirects: they would answer a signed-out visitor's /admin with a 307 instead of
    # the 404 of an unknown URL, showing that the web admin exists (web/admin.py invariant 1).
    app.router.redirect_slashes = False
    app.state.metrics = metrics
    return app
