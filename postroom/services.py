"""`Services`: what a protocol session may use, built by `app.Postroom.start()` and again by each reload.

Its own module so that the protocol sessions (smtp/session.py, imap/session.py, pop3/session.py) name it without
importing the application that starts them (only cli.py imports app.py).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from postroom.auth.authenticator import Authenticator
from postroom.config import Config
from postroom.delivery.mx import DnsResolver
from postroom.metrics import Metrics
from postroom.smtp.door import Door
from postroom.store.api import Store


@dataclass(frozen=True)
class Services:
    """What a protocol session may use. Built by `Postroom.start()` and again by each reload (with the new
    `config` and `tls`); a session keeps the one it started with. `auth` and `door` are one object throughout."""

    config: Config
    store: Store
    auth: Authenticator
    metrics: Metrics
    tls: ssl.SSLContext
    wake_queue: Callable[[], None] = lambda: None  # the outbound scheduler's wake(), when it runs
    door: Door | None = None  # SMTP defence at the door (smtp/door.py): pregreet passes, rates, send limits
    dns: DnsResolver | None = None  # the one resolver and its cache (delivery/mx.py): delivery, inbound, door


__all__ = ["Services"]
