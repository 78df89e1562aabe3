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
* **Rates per client address** (anvil's; IPv6 per /64): connections per minute and messages (MAIL commands)
  per minute on the MX listener; past either the connection is answered `421 4.7.0` or MAIL `450 4.7.1`, temporary, so a
  real server retries later.
* **Send limits per user** on submission: messages and recipients per hour, so that a stolen password cannot
  make the server a spam cannon. MAIL is `450 4.7.1` once the messages are used up, RCPT `450 4.7.1` once
  the recipients are; each MAIL and RCPT is counted when it is accepted (so parallel sessions share the limit;
  an abandoned transaction still counts).

* **Greylisting** (optional, `smtp.greylist_seconds`, off by default): the first attempt of a triplet (the
  client's network, /24 for IPv4 and /64 for IPv6 as senders retry from pools; the envelope sender; the
  recipient) is answered `450 4.7.1` at RCPT; a retry after the delay and within `GREY_RETRY_SECONDS` is
  accepted, and the triplet is then let through at once for `GREY_KEEP_SECONDS` (postgrey's defaults: retry
  within a day, remembered 35 days).

DNS blocklists and the client's forward-confirmed reverse DNS, also asked at the door, are in smtp/dnsbl.py.

Addresses in `smtp.screen_exempt` (loopback by default, as Postfix's `permit_mynetworks`) and in
`smtp.relay_networks` pass the MX tests without a delay and are not rate-limited; users are never exempt.

The state is in memory: a restart forgets passes and counts (a client waits once more). With several worker
processes (`server.workers`, workers.py) the tables live in one `SharedMap` (net/sharedmap.py) that the parent
made before forking, so every worker counts the same connections, messages, recipients, passes and triplets;
each read-modify-write holds the map's lock. Every table is bounded (`MAX_KEYS`, or the shared map's fixed
size; least recently used forgotten first), so a flood of addresses cannot grow it.

Invariants
1. Counters use fixed windows aligned to their length (a minute, an hour): `Window.count` is the number of
   hits in the current window, never more than the hits recorded in it.
2. A table never holds more than `MAX_KEYS` keys.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

from postroom.config import SMTPConfig
from postroom.net.sharedmap import SharedMap

MAX_KEYS = 100_000  # per table: ~10 MB at most
PASS_SECONDS = 86400.0  # a passed pregreet test is remembered this long (postscreen_greet_ttl is 1 day)
GREY_RETRY_SECONDS = 86400.0  # a greylisted triplet must be retried within this
GREY_KEEP_SECONDS = 35 * 86400.0  # a triplet that passed is let through this long after its last message

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Window:
    """Hits per key in fixed windows of `seconds` (invariant 1), for at most `max_keys` keys (invariant 2); in
    `shared` under the table name `tag` when given (module doc)."""

    def __init__(self, seconds: float, max_keys: int = MAX_KEYS, shared: SharedMap | None = None,
                 tag: str = "") -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self.shared, self.tag = shared, tag
        self._slots: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key -> (window number, hits)

    def count(self, key: str, now: float) -> int:
        """Hits of `key` in the window `now` falls in."""
        if self.shared is not None:
            with self.shared.locked():
                found = self.shared.get(SharedMap.key(self.tag, key))
            return int(found[1]) if found is not None and int(found[0]) == int(now // self.seconds) else 0
        slot = self._slots.get(key)
        return slot[1] if slot is not None and slot[0] == int(now // self.seconds) else 0

    def hit(self, key: str, now: float, n: int = 1) -> int:
        """Record `n` hits of `key` at `now`; the count after them."""
        window = int(now // self.seconds)
        if self.shared is not None:
            k = SharedMap.key(self.tag, key)
            with self.shared.locked():
                found = self.shared.get(k)
                hits = (int(found[1]) if found is not None and found[0] == window else 0) + n
                self.shared.put(k, window, hits, now)
            return hits
        slot = self._slots.pop(key, None)
        hits = (slot[1] if slot is not None and slot[0] == window else 0) + n
        self._slots[key] = (window, hits)
        while len(self._slots) > self.max_keys:
            self._slots.popitem(last=False)
        return hits

    def __len__(self) -> int:
        return len(self._slots)


class PassCache:
    """Client addresses that passed the pregreet test, until when (invariant 2); in `shared` when given."""

    def __init__(self, max_keys: int = MAX_KEYS, shared: SharedMap | None = None) -> None:
        self.max_keys = max_keys
        self.shared = shared
        self._until: OrderedDict[str, float] = OrderedDict()

    def passed(self, ip: str, now: float) -> bool:
        if self.shared is not None:
            with self.shared.locked():
                found = self.shared.get(SharedMap.key("pass", ip))
            return found is not None and found[0] > now
        until = self._until.get(ip)
        if until is None:
            return False
        if until <= now:
            del self._until[ip]
            return False
        return True

    def add(self, ip: str, now: float) -> None:
        if self.shared is not None:
            with self.shared.locked():
                self.shared.put(SharedMap.key("pass", ip), now + PASS_SECONDS, 0.0, now)
            return
        self._until.pop(ip, None)
        self._until[ip] = now + PASS_SECONDS
        while len(self._until) > self.max_keys:
            self._until.popitem(last=False)


class Greylist:
    """First-seen and passed times of (network, sender, recipient) triplets (module essay; invariant 2)."""

    def __init__(self, delay: float, max_keys: int = MAX_KEYS, shared: SharedMap | None = None) -> None:
        self.delay = delay
        self.max_keys = max_keys
        self.shared = shared
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
        if self.shared is not None:  # the same steps, on the shared entry, in one locked step
            with self.shared.locked():
                return self._check(key, self._shared_get(key), now)
        return self._check(key, self._seen.pop(key, None), now)

    def _shared_get(self, key: tuple[str, str, str]) -> tuple[float, bool] | None:
        assert self.shared is not None
        found = self.shared.get(SharedMap.key("grey", "\0".join(key)))
        return (found[0], found[1] > 0) if found is not None else None

    def _check(self, key: tuple[str, str, str], entry: tuple[float, bool] | None, now: float) -> float:
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
        if self.shared is not None:
            self.shared.put(SharedMap.key("grey", "\0".join(key)), value[0], float(value[1]), value[0])
            return
        self._seen[key] = value
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)


def client_key(ip: str) -> str:
    """What the rates count a client by: its IPv4 address, or its IPv6 /64 (a host gets a whole /64 and could
    otherwise take a fresh address for every connection)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    except ValueError:
        return ip


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings as networks (config validation has checked them)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


class Door:
    """The door state of one server (module essay), from its `[smtp]` settings; in `shared` (one map for every
    worker process) when given, else in this object."""

    def __init__(self, cfg: SMTPConfig, shared: SharedMap | None = None) -> None:
        self.cfg = cfg
        self.shared = shared
        self.exempt_networks = networks((*cfg.screen_exempt, *cfg.relay_networks))
        self.passes = PassCache(shared=shared)
        self.connections = Window(60.0, shared=shared, tag="conn")
        self.messages = Window(60.0, shared=shared, tag="msg")
        self.user_messages = Window(3600.0, shared=shared, tag="user-msg")
        self.user_recipients = Window(3600.0, shared=shared, tag="user-rcpt")
        self.greylist = Greylist(cfg.greylist_seconds, shared=shared) if cfg.greylist_seconds > 0 else None

    def reconfigure(self, cfg: SMTPConfig) -> None:
        """New `[smtp]` settings (a reload, `app.Postroom.reload`): limits, exempt networks and the greylisting
        delay apply from the next check on; passes, counts and triplets are kept (greylisting switched off
        forgets its triplets; switched on, it starts empty)."""
        self.cfg = cfg
        self.exempt_networks = networks((*cfg.screen_exempt, *cfg.relay_networks))
        if cfg.greylist_seconds <= 0:
            self.greylist = None
        elif self.greylist is None:
            self.greylist = Greylist(cfg.greylist_seconds, shared=self.shared)
        else:
            self.greylist.delay = cfg.greylist_seconds

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
        """Count a connection of `ip` to the MX; False past `smtp.client_connection_rate` per minute. IPv6
        addresses count per /64 (`client_key`), as one host usually holds the whole prefix."""
        limit = self.cfg.client_connection_rate
        return limit <= 0 or self.connections.hit(client_key(ip), now) <= limit

    def message_allowed(self, ip: str, now: float) -> bool:
        """Count a MAIL of `ip` on the MX; False past `smtp.client_message_rate` per minute (IPv6 per /64)."""
        limit = self.cfg.client_message_rate
        return limit <= 0 or self.messages.hit(client_key(ip), now) <= limit

    def take_message(self, user: str, now: float) -> bool:
        """Count a MAIL of `user` on submission; False (nothing counted) once `smtp.submission_messages_per_hour`
        are used. Counted when asked, not when the message is accepted, so parallel sessions share the limit."""
        limit = self.cfg.submission_messages_per_hour
        with self._locked():  # the count and the hit in one step across workers
            if limit > 0 and self.user_messages.count(user, now) >= limit:
                return False
            self.user_messages.hit(user, now)
        return True

    def take_recipient(self, user: str, now: float) -> bool:
        """Count a RCPT of `user` on submission; False (nothing counted) once
        `smtp.submission_recipients_per_hour` are used (counted when asked, like `take_message`)."""
        limit = self.cfg.submission_recipients_per_hour
        with self._locked():
            if limit > 0 and self.user_recipients.count(user, now) >= limit:
                return False
            self.user_recipients.hit(user, now)
        return True

    def _locked(self) -> AbstractContextManager[None]:
        return self.shared.locked() if self.shared is not None else nullcontext()


__all__ = ["Door", "Greylist", "PassCache", "Window"]
