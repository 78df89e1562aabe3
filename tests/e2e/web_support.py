"""Helpers for the webmail tests: sign in with httpx as a browser without script would, deliver test mail."""

from __future__ import annotations

import re
import time
import weakref
from typing import Any

import httpx

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def base(server: Any, tls: bool = False) -> str:
    return f"https://127.0.0.1:{server.port('https')}" if tls else f"http://127.0.0.1:{server.port('http')}"


_VERIFY: weakref.WeakKeyDictionary[httpx.Client, Any] = weakref.WeakKeyDictionary()


def client(server: Any, tls: bool = False) -> httpx.Client:
    verify: Any = server.tls_client_context() if tls else True
    c = httpx.Client(base_url=base(server, tls), verify=verify, follow_redirects=False, timeout=30)
    _VERIFY[c] = verify
    return c


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, html[:500]
    return m.group(1)


def sign_in(c: httpx.Client, address: str, password: str) -> httpx.Response:
    """GET the sign-in form, POST it; the response to the POST."""
    page = c.get("/mail/")
    if page.status_code == 303:  # signed in already: the form comes from a fresh browser, its token cookie too
        fresh = httpx.Client(base_url=str(c.base_url), verify=_VERIFY.get(c, True))
        page = fresh.get("/mail/")
        for name, value in fresh.cookies.items():
            c.cookies.set(name, value)
    assert page.status_code == 200, page.text[:300]
    return c.post("/mail/signin", data={"csrf": csrf_of(page.text), "username": address, "password": password})


def signed_in(server: Any, address: str, password: str, tls: bool = False) -> httpx.Client:
    c = client(server, tls)
    r = sign_in(c, address, password)
    assert r.status_code == 303 and r.headers["location"] == "/mail/", (r.status_code, r.text[:300])
    return c


def page_csrf(c: httpx.Client, path: str) -> str:
    r = c.get(path)
    assert r.status_code == 200, (path, r.status_code)
    return csrf_of(r.text)


def deliver(server: Any, user: Any, raw: bytes, mailbox: str = "INBOX", flags: int = 0) -> int:
    """Append `raw` (with its metadata, as delivery stores it) to the user's mailbox; the new UID."""

    async def go() -> int:
        box = await server.store.get_mailbox(user.id, mailbox)
        r = await server.store.append(box.id, AppendRequest(raw, flags=flags, internal_date=time.time(),
                                                            meta=compute_meta(raw).to_bytes()))
        return r.uid

    return int(server.run(go()))


def mailbox_id(server: Any, user: Any, name: str = "INBOX") -> int:
    box = server.run(server.store.get_mailbox(user.id, name))
    assert box is not None
    return int(box.id)
