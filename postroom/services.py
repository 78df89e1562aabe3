"""`Services`: what a protocol session may use, built once by `app.Postroom.start()` and shared by every session.

Its own module so that the protocol sessions (smtp/server.py, imap/session.py, pop3/session.py) name it without
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
    """What a protocol session may use. Built once by `Postroom.start()`, shared by every session."""

    config: Config
    store: Store
    auth: Authenticator
    metrics: Metrics
    tls: ssl.SSLContext
    wake_queue: Callable[[], None] = lambda: None  # the outbound scheduler's wake(), when it runs
    door: Door | None = None  # SMTP defence at the door (smtp/door.py): pregreet passes, rates, send limits
    dns: DnsResolver | None = None  # the one resolver and its cache (delivery/mx.py): delivery, inbound, door


__all__ = ["Services"]
