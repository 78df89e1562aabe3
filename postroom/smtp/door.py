"""Defence at the door: what a client may do before and besides the SMTP dialogue (issue 12's item 7, in part).

Theory of operation
-------------------
A public MX meets bots long before it meets mail. Postfix answers them with postscreen and anvil; Postroom
keeps the same ideas in one small object per server (`Door`, made by `app.Postroom.start` and shared by every
SMTP session):

* **The pregreet test** (postscreen's): on the MX listener a client whose address has not passed within a day
  is greeted only after `smtp.greet_delay_seconds`. RFC 5321 §3.1 has the client wait for the greeting; a
  client that talks first is a bot that does not read replies, and is answered `554 5.5.1` and disconnected.
  A client that waited passes for a day (`PASS_SECONDS`) and is greeted at once after that.
* **Rates per client address** (anvil's): connections per minute and messages (MAIL commands) per minute on
  the MX listener; past either the connection is answered `421 4.7.0` or MAIL `450 4.7.1`, temporary, so a
  real server retries later.
* **Send limits per user** on submission: messages and recipients per hour, so that a stolen password cannot
  make the server a spam cannon. MAIL is `450 4.7.1` once the messages are used up, RCPT `450 4.7.1` once
  the recipients are; both count what was accepted (a message when its data is accepted).

* **Greylisting** (optional, `smtp.greylist_seconds`, off by default): the first attempt of a triplet (the
  client's network, /24 for IPv4 and /64 for IPv6 as senders retry from pools; the envelope sender; the
  recipient) is answered `450 4.7.1` at RCPT; a retry after the delay and within `GREY_RETRY_SECONDS` is
  accepted, and the triplet is then let through at once for `GREY_KEEP_SECONDS` (postgrey's defaults: retry
  within a day, remembered 35 days).

Addresses in `smtp.screen_exempt` (loopback by default, as Postfix's `permit_mynetworks`) and in
`smtp.relay_networks` pass the MX tests without a delay and are not rate-limited; users are never exempt.

The state is in memory, per server process: a restart forgets passes and counts (a client waits once more).
Every table is bounded (`MAX_KEYS`, least recently used forgotten first), so a flood of addresses cannot
grow it.

Invariants
1. Counters use fixed windows aligned to their length (a minute, an hour): `Window.count` is the number of
   hits in the current window, never more than the hits recorded in it.
2. A table never holds more than `MAX_KEYS` keys.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable

from postroom.config import SMTPConfig

MAX_KEYS = 100_000  # per table: ~10 MB at most
PASS_SECONDS = 86400.0  # a passed pregreet test is remembered this long (postscreen_greet_ttl is 1 day)
GREY_RETRY_SECONDS = 86400.0  # a greylisted triplet must be retried within this
GREY_KEEP_SECONDS = 35 * 86400.0  # a triplet that passed is let through this long after its last message

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Window:
    """Hits per key in fixed windows of `seconds` (invariant 1), for at most `max_keys` keys (invariant 2)."""

    def __init__(self, seconds: float, max_keys: int = MAX_KEYS) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._slots: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key -> (window number, hits)

    def count(self, key: str, now: float) -> int:
        """Hits of `key` in the window `now` falls in."""
        slot = self._slots.get(key)
        return slot[1] if slot is not None and slot[0] == int(now // self.seconds) else 0

    def hit(self, key: str, now: float, n: int = 1) -> int:
        """Record `n` hits of `key` at `now`; the count after them."""
        window = int(now // self.seconds)
        slot = self._slots.pop(key, None)
        hits = (slot[1] if slot is not None and slot[0] == window else 0) + n
        self._slots[key] = (window, hits)
        while len(self._slots) > self.max_keys:
            self._slots.popitem(last=False)
        return hits

    def __len__(self) -> int:
        return len(self._slots)


class PassCache:
    """Client addresses that passed the pregreet test, until when (invariant 2)."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._until: OrderedDict[str, float] = OrderedDict()

    def passed(self, ip: str, now: float) -> bool:
        until = self._until.get(ip)
        if until is None:
            return False
        if until <= now:
            del self._until[ip]
            return False
        return True

    def add(self, ip: str, now: float) -> None:
        self._until.pop(ip, None)
        self._until[ip] = now + PASS_SECONDS
        while len(self._until) > self.max_keys:
            self._until.popitem(last=False)


class Greylist:
    """First-seen and passed times of (network, sender, recipient) triplets (module essay; invariant 2)."""

    def __init__(self, delay: float, max_keys: int = MAX_KEYS) -> None:
        self.delay = delay
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str, str], tuple[float, bool]] = OrderedDict()  # -> (time, passed)

    @staticmethod
    def network(ip: str) -> str:
        """The client's network as greylisting counts it: /24 (IPv4) or /64 (IPv6)."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        prefix = 24 if addr.version == 4 else 64
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))

    def check(self, ip: str, sender: str, recipient: str, now: float) -> float:
        """0 if the triplet may pass now (and it is remembered as passed), else the seconds left to wait."""
        key = (self.network(ip), sender.lower(), recipient.lower())
        entry = self._seen.pop(key, None)
        if entry is not None:
            when, passed = entry
            if passed and now - when <= GREY_KEEP_SECONDS:
                self._remember(key, (now, True))
                return 0.0
            if not passed and self.delay <= now - when <= GREY_RETRY_SECONDS:
                self._remember(key, (now, True))
                return 0.0
            if not passed and now - when < self.delay:
                self._remember(key, entry)  # too early: the first sighting still counts
                return self.delay - (now - when)
        self._remember(key, (now, False))  # new, or expired: start again
        return self.delay

    def _remember(self, key: tuple[str, str, str], value: tuple[float, bool]) -> None:
        self._seen[key] = value
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings as networks (config validation has checked them)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


class Door:
    """The door state of one server (module essay), from its `[smtp]` settings."""

    def __init__(self, cfg: SMTPConfig) -> None:
        self.cfg = cfg
        self.exempt_networks = networks((*cfg.screen_exempt, *cfg.relay_networks))
        self.passes = PassCache()
        self.connections = Window(60.0)
        self.messages = Window(60.0)
        self.user_messages = Window(3600.0)
        self.user_recipients = Window(3600.0)
        self.greylist = Greylist(cfg.greylist_seconds) if cfg.greylist_seconds > 0 else None

    def exempt(self, ip: str) -> bool:
        """Whether a client address skips the MX tests and rates (screen_exempt, relay_networks)."""
        if not self.exempt_networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.exempt_networks)

    def connection_allowed(self, ip: str, now: float) -> bool:
        """Count a connection of `ip` to the MX; False past `smtp.client_connection_rate` per minute."""
        limit = self.cfg.client_connection_rate
        return limit <= 0 or self.connections.hit(ip, now) <= limit

    def message_allowed(self, ip: str, now: float) -> bool:
        """Count a MAIL of `ip` on the MX; False past `smtp.client_message_rate` per minute."""
        limit = self.cfg.client_message_rate
        return limit <= 0 or self.messages.hit(ip, now) <= limit

    def user_may_send(self, user: str, now: float) -> bool:
        """Whether `user` has messages left this hour (`smtp.submission_messages_per_hour`)."""
        limit = self.cfg.submission_messages_per_hour
        return limit <= 0 or self.user_messages.count(user, now) < limit

    def user_may_add_recipient(self, user: str, in_transaction: int, now: float) -> bool:
        """Whether `user` may have one recipient more, with `in_transaction` already accepted for the message
        being built (`smtp.submission_recipients_per_hour`)."""
        limit = self.cfg.submission_recipients_per_hour
        return limit <= 0 or self.user_recipients.count(user, now) + in_transaction < limit

    def user_sent(self, user: str, recipients: int, now: float) -> None:
        """A message of `user` with `recipients` recipients was accepted."""
        self.user_messages.hit(user, now)
        self.user_recipients.hit(user, now, recipients)


__all__ = ["Door", "Greylist", "PassCache", "Window"]
