"""What an administrator does, shared by the `postroom` command (cli.py) and the web admin pages (web/admin.py).

Theory of operation
-------------------
Each operation takes the store (and the settings when it needs them), checks its input the way the command
line always did (names normalised, the domain of a new address local, the password long enough), does the
work through the store, and returns what it made; a refusal is `AdminError` with one line saying what to do,
and the exit status the command line gives it. The command line prints; the web pages render. Neither
re-implements the other, so a rule (DKIM keys made with a domain, the lock-out guard) holds for both.

DKIM rotation (as mox does it: publish first, switch later). `rotate_dkim` makes new keys under new selectors
and keeps them beside the ones that sign (`Domain.dkim_next`); the DNS records shown then include both, and
only once the operator has published the new records does `switch_dkim` make them the signing keys, in one
transaction. The old selectors' records should stay published for a few days more (messages in transit).

DNS check. `dns_records` is every record `postroom dns` prints; `check_dns` asks the server's resolver
(delivery/mx.py: its servers, with a short time limit and without its cache, so a record just published shows)
for each and says whether what DNS answers today matches, differs, or is missing (a TXT record of another kind
at the name, `v=` tag different, is not counted: SPF shares its name with verification strings). Host names
compare without case and final dot; TXT values by their joined strings, spaces around `;` ignored (DKIM's tag
lists allow them, RFC 6376 §3.2).

Invariants
1. An operation changes nothing when it refuses: every check comes before the first write.
2. `set_admin(..., on=False)` and `remove_user` refuse when `acting` (the admin doing it) names the user itself:
   an admin cannot lock themselves out (the command line passes no `acting`: root on the machine is the way back).
3. A password is never logged or returned, except `generate_password`'s, which the caller shows once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from postroom.auth.passwords import make_credentials
from postroom.config import Config
from postroom.store import names
from postroom.store.api import Domain, Invalid, QueueEntry, RcptState, Store, User

EXIT_REFUSED = 1
EXIT_USAGE = 2
MIN_PASSWORD = 8  # characters
DNS_CHECK_SECONDS = 3.0  # one record's lookup on the DNS page


class AdminError(Exception):
    """A refused admin operation: the message says why and what to do; `code` is the command line's exit status
    (1 refused, 2 usage)."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# ---- names -------------------------------------------------------------------------------------------------
def normalize_address(value: str, *, allow_catchall: bool = False, keep_case: bool = False) -> str:
    """'User@Example.ORG' -> 'user@example.org'; '"John Doe"@x' -> '"john doe"@x' (`store.names.local_part`).
    With keep_case the local part keeps its case ('User@example.org', '"John Doe"@x': cli invariant 2).
    '@example.org' only with allow_catchall. Raises AdminError (usage)."""
    value = value.strip() if keep_case else value.strip().lower()
    local, sep, domain = value.rpartition("@")
    if not sep:
        raise AdminError(f"{value!r} is not an address like user@example.org", EXIT_USAGE)
    if not local and not allow_catchall:
        raise AdminError(f"{value!r} has no local part (write user@{domain})", EXIT_USAGE)
    if local.startswith('"'):
        # RFC 5321 §4.1.2 Quoted-string: one spelling, the one SMTP resolves ('"john"' is 'john').
        try:
            local = names.local_part(local)
        except Invalid as exc:
            raise AdminError(f"{value!r}: {exc}", EXIT_USAGE) from None
    elif any(c.isspace() or c in '<>()[],;:\\"@' for c in local):
        raise AdminError(f"{value!r}: the part before @ has characters that need quotes (write \"{local}\"@...)",
                         EXIT_USAGE)
    if len(local.encode()) > 64:  # RFC 5321 §4.5.3.1.1: at most 64 octets
        raise AdminError(f"{value!r}: the part before @ is longer than 64 octets", EXIT_USAGE)
    return f"{local}@{normalize_domain(domain)}"


def normalize_domain(value: str) -> str:
    """'Example.ORG.' -> 'example.org' (LDH labels of 1-63 characters, at most 253 in all). Raises AdminError."""
    value = value.strip().lower().rstrip(".")
    labels = value.split(".")
    if not value or any(not label or len(label) > 63 for label in labels) or len(value) > 253:
        raise AdminError(f"{value!r} is not a domain name like example.org", EXIT_USAGE)
    for label in labels:
        if label.startswith("-") or label.endswith("-") or not all(c.isalnum() or c == "-" for c in label):
            raise AdminError(f"{value!r} is not a domain name like example.org", EXIT_USAGE)
    return value


def check_password(password: str) -> str:
    """The password if it is usable, else AdminError (usage): at least MIN_PASSWORD characters, printable (no
    control characters: SASLprep, RFC 4013 §2.3, prohibits them, so a SCRAM client could not send it) and not
    blanks only."""
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password must have at least {MIN_PASSWORD} characters", EXIT_USAGE)
    if not password.isprintable():
        raise AdminError("the password must not contain control characters (tabs, line breaks...)", EXIT_USAGE)
    if not password.strip():
        raise AdminError("the password must not be blanks only", EXIT_USAGE)
    return password


def generate_password() -> str:
    """A new random password: 16 base64url characters (96 bits), to be shown once (invariant 3)."""
    return secrets.token_urlsafe(12)


def parse_size(text: str) -> int:
    """A size in octets: a whole number, optionally with K, M, G or T (powers of 1024; a trailing B or iB is
    allowed); 0 is none. ValueError for anything else."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    number = t[:-1] if unit else t
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (bytes, or a number with K, M, G, T)")
    return int(number) * units[unit]


def quota_text(used: int, limit: int, unit: str = "") -> str:
    """"used / limit (percent)" with sizes in KiB/MiB/GiB when `unit` is "bytes"; "used" alone without a limit."""
    def show(n: int) -> str:
        if unit != "bytes":
            return str(n)
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if n >= size:
                return f"{n / size:.1f} {name}"
        return f"{n} B"
    if not limit:
        return show(used)
    return f"{show(used)} / {show(limit)} ({used * 100 // limit} %)"


async def _domain(store: Store, name: str) -> Domain:
    domain = await store.get_domain(name)
    if domain is None:
        raise AdminError(f"{name} is not a local domain; add it first: postroom domain add {name}")
    return domain


async def _user(store: Store, address: str) -> User:
    user = await store.get_user(address)
    if user is None:
        raise AdminError(f"no user {address}")
    return user


# ---- domains and DKIM ----------------------------------------------------------------------------------------
async def make_dkim_keys(store: Store, name: str) -> Any:
    """New DKIM keys (delivery/dkim.py `generate_keys`, made in a thread) that sign for `name` from now on;
    returns the `Keys`."""
    from postroom.delivery.dkim import generate_keys

    keys = await asyncio.to_thread(generate_keys)
    await store.set_dkim(name, keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector, keys.ed25519_pem)
    return keys


async def add_domain(store: Store, name: str, quota: int = 0) -> Domain:
    """Accept mail for `name` (normalised): the domain, its DKIM keys, its quota (octets, 0: none)."""
    name = normalize_domain(name)
    await store.add_domain(name)
    await make_dkim_keys(store, name)
    if quota:
        await store.set_domain_quota(name, quota)
    return await _domain(store, name)


async def remove_domain(store: Store, name: str) -> None:
    """Stop accepting mail for `name`; refused (store Invalid) while it has users, aliases or lists."""
    name = normalize_domain(name)
    await _domain(store, name)
    await store.remove_domain(name)


async def rotate_dkim(store: Store, name: str) -> Any:
    """Make new DKIM keys for `name` under new selectors and keep them beside the signing ones (module doc);
    returns the `Keys`. Selectors already in use are never reused (a second rotation in one month gets a
    longer stamp). AdminError while keys of an earlier rotation wait for their switch."""
    from postroom.delivery.dkim import generate_keys

    domain = await _domain(store, normalize_domain(name))
    if domain.dkim_next:  # they may be published already: replacing them would break that (switch them first)
        raise AdminError(f"{domain.name} has new DKIM keys waiting already: publish them and switch to them first")
    taken = {domain.dkim_selector, domain.dkim_ed25519_selector}
    keys = await asyncio.to_thread(generate_keys)
    if {keys.rsa_selector, keys.ed25519_selector} & taken:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        keys = dataclasses.replace(keys, rsa_selector=f"pr{stamp}r", ed25519_selector=f"pr{stamp}e")
    # Checked again in the write: another rotation may have run while the keys were made (two admins at once).
    if not await store.set_dkim_next(domain.name, keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector,
                                     keys.ed25519_pem):
        raise AdminError(f"{domain.name} has new DKIM keys waiting already: publish them and switch to them first")
    return keys


def next_dkim(domain: Domain) -> Domain | None:
    """The domain as it will be after `switch_dkim`: its kept keys in the DKIM fields; None without a rotation."""
    if not domain.dkim_next:
        return None
    kept = json.loads(domain.dkim_next)
    return dataclasses.replace(domain, dkim_selector=kept["selector"], dkim_private_key=kept["private_key"],
                               dkim_ed25519_selector=kept["ed25519_selector"], dkim_ed25519_key=kept["ed25519_key"],
                               dkim_next="")


async def switch_dkim(store: Store, name: str) -> Domain:
    """Sign with the keys `rotate_dkim` made (one transaction); AdminError when there is no rotation under way."""
    name = normalize_domain(name)
    await _domain(store, name)
    if not await store.switch_dkim(name):
        raise AdminError(f"{name} has no new DKIM keys waiting: make them first (rotate), publish, then switch")
    return await _domain(store, name)


# ---- users ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserRow:
    """A user with their quota use (octets and messages; limits 0 = none)."""

    user: User
    storage: int
    storage_limit: int
    messages: int
    message_limit: int


async def user_rows(store: Store, domain: str | None = None) -> list[UserRow]:
    """Every user (of `domain`), by address, with their usage (one counter row each: no mailbox is read)."""
    rows = []
    for u in await store.list_users(normalize_domain(domain) if domain else None):
        q = await store.get_quota(u.id)
        rows.append(UserRow(u, q.storage, q.storage_limit, q.messages, q.message_limit))
    return rows


async def add_user(store: Store, address: str, password: str, *, quota: int = 0, quota_messages: int = 0,
                   admin: bool = False) -> User:
    """A new user (login = address, the standard mailboxes) with the password's argon2 hash and SCRAM
    verifier, quotas (0: none) and the admin flag. AdminError for a domain that is not local, a taken
    address or a short password."""
    address = normalize_address(address)
    check_password(password)
    domain = address.rpartition("@")[2]
    await _domain(store, domain)
    if await store.get_user(address) is not None:
        raise AdminError(f"user {address} already exists (change the password with: postroom user passwd)")
    password_hash, scram = await asyncio.to_thread(make_credentials, password)  # argon2: ~0.1 s of CPU
    await store.add_user(address, password_hash, scram, quota_bytes=quota)
    if quota_messages:
        await store.set_user_quota(address, messages=quota_messages)
    if admin:
        await store.set_admin(address, True)
    return await _user(store, address)


async def set_user_quota(store: Store, address: str, storage: int | None, messages: int | None) -> User:
    """Set the user's storage (octets) and/or message quota (None: unchanged; 0: none)."""
    address = normalize_address(address)
    await _user(store, address)
    if storage is None and messages is None:
        raise AdminError("nothing to set: give --quota BYTES and/or --quota-messages N (0 = none)", EXIT_USAGE)
    if (storage or 0) < 0 or (messages or 0) < 0:
        raise AdminError("a quota cannot be negative", EXIT_USAGE)
    await store.set_user_quota(address, storage=storage, messages=messages)
    return await _user(store, address)


async def set_password(store: Store, address: str, password: str) -> None:
    """Replace the user's password (argon2 hash and SCRAM verifier together)."""
    address = normalize_address(address)
    check_password(password)
    await _user(store, address)
    password_hash, scram = await asyncio.to_thread(make_credentials, password)
    await store.set_password(address, password_hash, scram)


async def set_admin(store: Store, address: str, on: bool, acting: str | None = None) -> User:
    """Give or take the admin flag; refuses to take the acting admin's own (invariant 2)."""
    address = normalize_address(address)
    await _user(store, address)
    if not on and acting is not None and normalize_address(acting) == address:
        raise AdminError("you cannot remove your own admin flag (another admin, or `postroom user admin "
                         f"{address} off` on the server, can)")
    await store.set_admin(address, on)
    return await _user(store, address)


async def remove_user(store: Store, address: str, acting: str | None = None) -> None:
    """Remove the user and all their mail; refuses to remove the acting admin (invariant 2)."""
    address = normalize_address(address)
    await _user(store, address)
    if acting is not None and normalize_address(acting) == address:
        raise AdminError("you cannot remove your own account here (another admin, or `postroom user remove` on "
                         "the server, can)")
    await store.remove_user(address)


# ---- aliases -------------------------------------------------------------------------------------------------
async def add_alias(store: Store, source: str, targets: list[str]) -> tuple[str, list[str]]:
    """Deliver mail for `source` (address, or @domain catch-all) to `targets` too; returns them normalised."""
    source = normalize_address(source, allow_catchall=True)
    await _domain(store, source.rpartition("@")[2])
    shown = [normalize_address(t, keep_case=True) for t in targets]
    if not shown:
        raise AdminError("an alias needs at least one target", EXIT_USAGE)
    await store.add_alias(source, shown)
    return source, shown


async def remove_alias(store: Store, source: str, target: str | None = None) -> None:
    """Remove an alias (every target, or one)."""
    await store.remove_alias(normalize_address(source, allow_catchall=True),
                             normalize_address(target, keep_case=True) if target else None)


# ---- the outbound queue --------------------------------------------------------------------------------------
PENDING = (RcptState.QUEUED, RcptState.DEFERRED)


def held_by(entry: QueueEntry, now: float) -> str:
    """The holders (scheduler ids "<node>#<pid>.<random>", delivery/queue.py) whose lease on a waiting recipient
    of `entry` runs past `now` (seconds since the epoch), comma-separated; "" when nobody is sending it."""
    holders = dict.fromkeys(r.lease_holder for r in entry.recipients
                            if r.state in PENDING and r.lease_holder and r.lease_until > now)
    return ",".join(holders)


async def queue_retry(store: Store, ids: list[int] | None) -> tuple[int, int]:
    """Make every waiting recipient of these entries (None: of every entry) due now; the running server's queue
    sends them at its next look. Returns (recipients, entries)."""
    entries: list[QueueEntry] = await store.queue_list() if ids is None else \
        [e for e in [await store.queue_get(i) for i in ids] if e is not None]
    count = 0
    for e in entries:
        due = [dataclasses.replace(r, next_try=0.0) for r in e.recipients if r.state in PENDING]
        if due:
            await store.queue_update(e.id, due)
            count += len(due)
    return count, len(entries)


async def queue_delete(store: Store, ids: list[int]) -> None:
    """Drop these entries (no bounce); AdminError naming the first that does not exist, before any is dropped."""
    for qid in ids:
        if await store.queue_get(qid) is None:
            raise AdminError(f"no queue entry {qid} (it may have been delivered meanwhile); nothing deleted")
    for qid in ids:
        await store.queue_delete(qid)


# ---- DNS -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """One DNS record to publish: owner name (absolute, final dot), type, value (TXT: the text unquoted),
    and `what` it is for (a few words)."""

    name: str
    rtype: str
    value: str
    what: str


async def dns_records(store: Store, cfg: Config, name: str) -> list[Record]:
    """Every record to publish for the local domain `name` (what `postroom dns` prints): MX, SPF, the DKIM
    keys (those of a rotation under way too), DMARC, MTA-STS and TLS-RPT (when `mta_sts.mode` is not none), the
    RFC 6186 / RFC 8314 SRV records and the autoconfig names."""
    from postroom import mtasts
    from postroom.delivery.dkim import dns_records as mail_records
    from postroom.web.autoconfig import srv_records

    domain = await _domain(store, normalize_domain(name))
    hostname = cfg.server.hostname
    out = []
    for rname, rtype, value in mail_records(domain, hostname):
        what = {"MX": "mail exchanger", "TXT": "SPF"}.get(rtype, "")
        if "._domainkey." in rname:
            what = "DKIM key (signing)"
        elif rname.startswith("_dmarc."):
            what = "DMARC policy"
        out.append(Record(rname, rtype, value, what))
    upcoming = next_dkim(domain)
    if upcoming is not None:
        out += [Record(r, t, v, "DKIM key (new: publish, then switch)") for r, t, v in mail_records(upcoming, hostname)
                if "._domainkey." in r]
    if cfg.mta_sts.mode != "none":
        out += [Record(r, t, v, "MTA-STS / TLS reports") for r, t, v in
                mtasts.dns_records(domain.name, hostname, cfg.mta_sts.mode, cfg.mta_sts.max_age_days * 86400)]
    out += [Record(r, t, v, "client autoconfiguration") for r, t, v in
            srv_records(domain.name, hostname, cfg.listeners.enabled())]
    return out


class Lookup(Protocol):
    """What `check_dns` needs of a resolver (delivery/mx.py `DnsResolver.records`)."""

    async def records(self, name: str, rdtype: str) -> list[str]: ...


@dataclass(frozen=True)
class Checked:
    """A record beside what DNS answers: `state` "match", "differs" (`found` holds the answers), "missing"
    (no such record) or "unknown" (the lookup failed: `found` holds why)."""

    record: Record
    state: str
    found: tuple[str, ...]


def _canonical(rtype: str, value: str) -> str:
    text = value.strip()
    if rtype == "TXT":
        return re.sub(r"\s*;\s*", ";", text).rstrip(";")
    return " ".join(p.lower().rstrip(".") if i == len(text.split()) - 1 else p.lower()
                    for i, p in enumerate(text.split()))


def _version(text: str) -> str:
    """The `v=` tag a TXT record starts with, lower-case ("v=spf1", "v=dkim1"); "" without one."""
    m = re.match(r"v=[^;\s]+", text.strip())
    return m.group(0).lower() if m else ""


async def check_dns(lookup: Lookup, records: list[Record], timeout: float = DNS_CHECK_SECONDS) -> list[Checked]:
    """Each record beside the answer DNS gives today (module doc), all asked at once, each within `timeout`
    seconds."""
    async def one(record: Record) -> Checked:
        try:
            found = await asyncio.wait_for(lookup.records(record.name, record.rtype), timeout)
        except TimeoutError:
            return Checked(record, "unknown", ("no answer in time",))
        except Exception as exc:  # noqa: BLE001 - the page shows why a lookup failed; it does not fail
            if type(exc).__name__ == "DnsNotFound":
                return Checked(record, "missing", ())
            return Checked(record, "unknown", (str(exc)[:200],))
        want = _canonical(record.rtype, record.value)
        if any(_canonical(record.rtype, f) == want for f in found):
            return Checked(record, "match", tuple(found))
        version = _version(record.value) if record.rtype == "TXT" else ""
        if version:  # other TXT records may share the name (SPF beside verification strings): only this kind
            found = [f for f in found if _version(f) == version]
        return Checked(record, "differs" if found else "missing", tuple(found))

    return list(await asyncio.gather(*(one(r) for r in records)))
