"""The `postroom` command: run the server and administer what it keeps.

Every admin command opens the same store the server uses (SQLite in WAL mode lets both run at once), does its
work, and exits. Errors are one line on stderr saying what to do next, and a non-zero exit status:
1 for a refused request (unknown user, taken name), 2 for a usage or configuration error.

Invariants:
1. A password never comes from the command line unless `--password` is given explicitly; it is read from a
   prompt or from `--password-stdin`, and it is never printed or logged.
2. Domain names are lower-cased before they reach the store, and so are the addresses Postroom answers for
   (users, alias sources, lists). Addresses that are sent onward (alias targets, list owners and members) keep
   their local part's case (RFC 5321 §2.4); the store compares them case-insensitively.
3. The configuration is found in one order (`config.discover`: --config, $POSTROOM_CONFIG, ./postroom.toml,
   /etc/postroom/postroom.toml, defaults), and only `serve`, `setup` and `domain add` make a store that does not
   exist: every other command refuses with one line naming the database it looked for and how the configuration
   was chosen (`require_store`), so a command run from the wrong directory leaves nothing behind.
4. A command that deletes what cannot be recovered (`user remove`, `domain remove`, `list delete`, `queue
   delete`) asks on a terminal, or needs `--yes`; without a terminal and without `--yes` it refuses and changes
   nothing (`confirm`).
5. Every failure ends in one line on stderr ("postroom: ...") and a non-zero status, never a traceback: bad
   names, missing users, domains and mailboxes, unreadable or missing files (OSError), a closed output pipe
   (`export ... - | head`: status 141, as a shell reports SIGPIPE) and Ctrl-C (130).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, adminops
from . import config as config_mod
from . import metapool as meta_pool
from .adminops import EXIT_REFUSED, EXIT_USAGE, AdminError, normalize_address, normalize_domain
from .mailformats import FormatError
from .process import PRIVATE_UMASK, PrivilegeError
from .store import names, open_store
from .store.api import ANYONE, RIGHTS, AlreadyExists, Invalid, ListPolicy, NotFound, Store, StoreError

EXIT_PIPE = 141  # what a shell reports for a program ended by SIGPIPE (128 + 13), e.g. in `set -o pipefail`

CliError = AdminError  # a refusal: one line on stderr and its exit status (invariant 5)


# ------------------------------------------------------------------------------------------------------------
# Small helpers


# The line `postroom serve` writes to stderr: "2026-12-01 02:46:19,123 WARNING postroom.auth login result=..."
# (docs/fail2ban/postroom.conf matches it).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def read_password(args: argparse.Namespace, *, confirm: bool = True) -> str:
    if getattr(args, "password", None) is not None:
        password: str = args.password
    elif getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ; nothing changed")
    else:
        raise CliError("no password: pipe it with --password-stdin, or run on a terminal to be asked", EXIT_USAGE)
    return adminops.check_password(password)


def confirm(args: argparse.Namespace, what: str) -> None:
    """Invariant 4: go on if `--yes` was given or a person at a terminal answers yes to "`what`?"; else raise
    CliError (nothing done). `what` says what is lost, e.g. "remove the user a@b and all their mail"."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise CliError(f"not done: {what} cannot be undone; add --yes to confirm (there is no terminal to ask on)",
                       EXIT_USAGE)
    print(f"{what[0].upper()}{what[1:]}? This cannot be undone. [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("not done: nothing was changed")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# Commands that may make a new, empty store: `domain add` is where every server's data starts (users, aliases and
# lists need a local domain first; `setup` and `serve` make theirs without coming here). Every other command only
# works on a store that exists (invariant 3).
CREATES_STORE = frozenset({("domain", "add")})


def store_exists(cfg: config_mod.Config) -> bool:
    """Whether the store `cfg` names has been made: its SQLite database file exists. A PostgreSQL database is
    made by its administrator (Postroom makes its tables on first use), so one named counts as made; a
    database that is not there is refused when the store opens."""
    if cfg.store_url.startswith("postgresql://"):
        return True
    return config_mod.sqlite_path(cfg.store_url).exists()


def require_store(args: argparse.Namespace, cfg: config_mod.Config, found: config_mod.Discovery) -> None:
    """Refuse (CliError, exit 2) when the store does not exist and the command is not one that creates it; say
    on stderr when `domain add` makes a new one. The message names the database and where the configuration
    was looked for, so a command run from the wrong directory says so instead of making an empty store."""
    if store_exists(cfg):
        return
    db = config_mod.sqlite_path(cfg.store_url)
    if (args.command, getattr(args, "action", None)) not in CREATES_STORE:
        raise CliError(f"no Postroom store at {db} (using {found.describe()}); nothing was created: give the "
                       f"server's configuration with --config or ${config_mod.ENV_VAR}, or make a new store with "
                       f"`postroom setup DOMAIN` or `postroom domain add DOMAIN`", EXIT_USAGE)
    print(f"postroom: making a new store at {db} (using {found.describe()})", file=sys.stderr)


async def with_store(cfg: config_mod.Config, work: Callable[[Store], Awaitable[int | None]]) -> int:
    """Open the store, run `work`, close it (and the parse workers that import or sendmail started); returns
    the command's exit status. The caller has checked that the store exists or may be made (`require_store`)."""
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.store_url, cfg.data_path)
    await store.open()
    try:
        return (await work(store)) or 0
    finally:
        await store.close()
        await meta_pool.shutdown()  # workers started by import or sendmail (metapool.py invariant 4)


# ------------------------------------------------------------------------------------------------------------
# Commands


def size_arg(text: str) -> int:
    """A quota in bytes for argparse (`adminops.parse_size`: K, M, G or T suffixes; 0 is none)."""
    try:
        return adminops.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    """A whole number, 0 or more, for argparse."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


_quota_text = adminops.quota_text


async def cmd_domain(args: argparse.Namespace, store: Store) -> int:
    if args.action == "add":
        name = (await adminops.add_domain(store, args.name, args.quota)).name
        print(f"domain {name} added, with DKIM keys; the DNS records to publish: postroom dns {name}")
    elif args.action == "set":
        name = normalize_domain(args.name)
        if await store.get_domain(name) is None:
            raise CliError(f"{name} is not a local domain; add it first: postroom domain add {name}")
        if args.quota is None:
            raise CliError("nothing to set: give --quota BYTES (0 = none)", EXIT_USAGE)
        await store.set_domain_quota(name, args.quota)
        print(f"quota of {name}: {_quota_text(args.quota, 0, 'bytes') if args.quota else 'none'}"
              " (all its users together)")
    elif args.action == "dkim":
        name = normalize_domain(args.name)
        if await store.get_domain(name) is None:
            raise CliError(f"{name} is not a local domain; add it first: postroom domain add {name}")
        if args.rotate:  # adminops module doc: publish first, switch later
            keys = await adminops.rotate_dkim(store, name)
            print(f"new DKIM keys for {name} (selectors {keys.rsa_selector}, {keys.ed25519_selector}), not signing "
                  f"yet: publish their records (postroom dns {name}), then: postroom domain dkim {name} --switch")
        elif args.switch:
            switched = await adminops.switch_dkim(store, name)
            print(f"{name} signs with selectors {switched.dkim_selector}, {switched.dkim_ed25519_selector} now; keep "
                  "the old records published for a few days")
        else:
            keys = await adminops.make_dkim_keys(store, name)
            print(f"new DKIM keys for {name} (selectors {keys.rsa_selector}, {keys.ed25519_selector}); publish them "
                  f"before the old records go: postroom dns {name}")
    elif args.action == "remove":
        name = normalize_domain(args.name)
        if await store.get_domain(name) is None:
            raise CliError(f"{name} is not a local domain (postroom domain list shows them)")
        confirm(args, f"remove the domain {name} and its DKIM keys")
        await adminops.remove_domain(store, name)
        print(f"domain {name} removed")
    elif args.action == "show":
        name = normalize_domain(args.name)
        domain = await store.get_domain(name)
        if domain is None:
            raise CliError(f"{name} is not a local domain; add it first: postroom domain add {name}")
        users = await store.list_users(name)
        aliases = [a for a in await store.list_aliases() if a.source.rpartition("@")[2] == name]
        lists = [m for m in await store.list_lists() if m.address.rpartition("@")[2] == name]
        print(f"domain     {name}\nusers      {len(users)}\naliases    {len(aliases)}\nlists      {len(lists)}")
        print(f"DKIM       {'yes' if domain.dkim_private_key else 'no'}")
        used = sum([(await store.get_quota(u.id)).storage for u in users])
        print(f"storage    {_quota_text(used, domain.quota_bytes, 'bytes')}")
        print(f"postmaster {await _postmaster_route(args, store, name)}")
    else:
        domains = await store.list_domains()
        users = await store.list_users()
        counts: dict[int, int] = {}
        for u in users:
            counts[u.domain_id] = counts.get(u.domain_id, 0) + 1
        rows = [(d.name, counts.get(d.id, 0), _quota_text(d.quota_bytes, 0, "bytes") if d.quota_bytes else "-",
                 await _postmaster_route(args, store, d.name)) for d in domains]
        print(table(rows, ("domain", "users", "quota", "postmaster")))
    return 0


async def _postmaster_route(args: argparse.Namespace, store: Store, domain: str) -> str:
    """Where mail for postmaster@domain goes (RFC 5321 §4.5.1), as the router resolves it (`Router.explain`,
    the code delivery runs), with the rule that decided and what that rule hides (`_shadow_note`)."""
    from .delivery.router import POSTMASTER, LocalUser, Router

    router = Router(store, args.cfg)
    route = await router.explain(f"{POSTMASTER}@{domain}")
    if not route.destinations:
        if route.rule:
            return f"nowhere: the {route.rule} leads to no mailbox (senders are told 451 4.3.5 and retry)"
        return "nowhere yet: no user on this server (senders are told 451 4.3.5 and retry)"
    notes = [route.rule]
    if route.rule == "alias":
        notes.append(await _shadow_note(router, store, route.address))
    elif route.rule in ("first user", "administrator"):
        for d in route.destinations:  # the implicit route is a mailbox; is that mailbox's own mail elsewhere?
            if isinstance(d, LocalUser) and (own := await router.explain(d.address)).rule == "alias" \
                    and d not in own.destinations:
                notes.append(f"its INBOX, though an alias sends {d.address}'s own mail to "
                             f"{_describe(own.destinations)}")
    return f"{_describe(route.destinations)} ({'; '.join(n for n in notes if n)})"


def _describe(dests: Sequence[Any]) -> str:
    from .delivery.router import LocalUser, Remote

    return ", ".join(d.address if isinstance(d, (LocalUser, Remote)) else d.ml.address for d in dests)


async def _shadow_note(router: Any, store: Store, address: str) -> str:
    """"" unless an alias of `address` takes the mail of a user or list with that same address (aliases win,
    as Postfix's virtual_alias_maps win over mailboxes: router module docstring); else says so and where the
    mail goes instead. Uses `Router.explain`, the resolution delivery runs."""
    from .delivery.router import ListPost, LocalUser

    user = await store.get_user(address)
    ml = None if user is not None else await store.get_list(address)
    if user is None and ml is None:
        return ""
    route = await router.explain(address)
    if route.rule != "alias":
        return ""
    owner = LocalUser(user.id, user.address) if user is not None else None
    if any(d == owner or (isinstance(d, ListPost) and ml is not None and d.ml.address == ml.address)
           for d in route.destinations):
        return ""  # the alias names the address itself: the mailbox or list keeps its copy
    what = f"the user {user.address}" if user is not None else f"the list {ml.address if ml else address}"
    where = _describe(route.destinations) if route.destinations else \
        "nowhere (no target exists: senders are told 550 5.1.1)"
    return f"the alias {route.address} takes the mail of {what}: it goes to {where} instead"


async def _warn_shadowing(store: Store, cfg: config_mod.Config, address: str) -> None:
    """Print a warning (not a refusal) when an alias shadows the user or list at `address`, with the way out."""
    from .delivery.router import Router

    note = await _shadow_note(Router(store, cfg), store, address)
    if note:
        print(f"warning: {note} (aliases come before mailboxes and lists). To keep a copy there too: "
              f"postroom alias add {address} {address}; to undo: postroom alias remove {address}",
              file=sys.stderr)


async def cmd_dns(args: argparse.Namespace, store: Store) -> int:
    from .delivery.dkim import txt_strings

    name = normalize_domain(args.domain)
    domain = await store.get_domain(name)
    if domain is None:
        raise CliError(f"{name} is not a local domain; add it first: postroom domain add {name}")
    hostname = args.cfg.server.hostname
    print(f"; DNS records for {name}: publish them in the zone of {name} at your DNS provider.")
    if hostname in ("localhost", "localhost.localdomain") or "." not in hostname:
        print(f"; server.hostname is {hostname!r}: set it to this server's public name (the MX target) first.")
    print(f"; MX: mail for {name} goes to {hostname}, which needs an A/AAAA record (and matching reverse DNS).")
    records = await adminops.dns_records(store, args.cfg, name)  # what the web admin's DNS page checks, too

    def show(what: tuple[str, ...], width: int) -> None:
        for r in records:
            if r.what in what:
                value = txt_strings(r.value) if r.rtype == "TXT" else r.value
                print(f"{r.name:<40} 3600 IN {r.rtype:<{width}} {value}")

    show(("mail exchanger", "SPF", "DKIM key (signing)", "DMARC policy"), 4)
    if any(r.what.startswith("DKIM key (new") for r in records):
        print("; new DKIM keys of a rotation under way: publish these, then switch to them (web admin, DNS page);")
        print("; keep the current keys' records published for a few days after the switch.")
        show(("DKIM key (new: publish, then switch)",), 4)
    if not domain.dkim_private_key:
        print(f"; no DKIM keys yet (the domain predates them): make them with: postroom domain dkim {name}")
    sts = args.cfg.mta_sts
    if sts.mode != "none":
        print(f"; MTA-STS (RFC 8461, mode {sts.mode}) and TLS reports (RFC 8460): senders fetch the policy from "
              f"https://mta-sts.{name}/.well-known/mta-sts.txt,")
        print(f"; served by this server's web listener; its certificate must name mta-sts.{name} (acme.names).")
        show(("MTA-STS / TLS reports",), 5)
    listeners = args.cfg.listeners.enabled()
    print("; Mail clients find the IMAP, POP3 and submission services by these (RFC 6186, RFC 8314), and by the")
    print("; autoconfiguration documents on the web listener, reached through the autoconfig/autodiscover names.")
    show(("client autoconfiguration",), 5)
    local = sorted(n for n, (host, _) in listeners.items() if host in ("127.0.0.1", "::1", "localhost"))
    if local:
        print(f"; these listeners bind a loopback address, so no other machine reaches them: {', '.join(local)}")
    return 0


def _when(t: float, now: float) -> str:
    if t <= now:
        return "now"
    left = int(t - now)
    return f"in {left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"in {left // 60}m{left % 60:02d}s"


async def cmd_queue(args: argparse.Namespace, store: Store) -> int:
    import time

    from .store.api import RcptState

    pending = (RcptState.QUEUED, RcptState.DEFERRED)
    now = time.time()
    if args.action == "list":
        entries = await store.queue_list()
        rows = []
        for e in entries:
            waiting = [r for r in e.recipients if r.state in pending]
            nxt = min((r.next_try for r in waiting), default=0.0)
            err = next((r.last_error for r in waiting if r.last_error), "")
            rows.append((e.id, time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created)), e.size,
                         f"<{e.mail_from}>", f"{len(waiting)}/{len(e.recipients)}", _when(nxt, now),
                         adminops.held_by(e, now) or "-", (err[:60] + "...") if len(err) > 60 else err))
        print(table(rows, ("id", "queued", "size", "from", "waiting", "next try", "held by", "last error")))
        print(f"{sum(len([r for r in e.recipients if r.state in pending]) for e in entries)} recipient(s) waiting")
        return 0
    if args.action == "show":
        found = await store.queue_get(args.id)
        if found is None:
            raise CliError(f"no queue entry {args.id} (it may have been delivered meanwhile)")
        e = found
        print(f"id        {e.id}\nqueued    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.created))}")
        print(f"from      <{e.mail_from}>\nsize      {e.size}")
        if e.envid or e.ret:
            print(f"envid     {e.envid or '-'}\nret       {e.ret or '-'}")
        for r in e.recipients:
            print(f"  {r.rcpt}  {r.state.value}  attempts={r.attempts}"
                  + (f"  next try {_when(r.next_try, now)}" if r.state in pending else "")
                  + (f"  notify={r.notify}" if r.notify else "") + (f"  orcpt={r.orcpt}" if r.orcpt else "")
                  + (f"  held by {r.lease_holder} (lease ends {_when(r.lease_until, now)})"
                     if r.state in pending and r.lease_holder and r.lease_until > now else ""))
            if r.last_error:
                print(f"      last error: {r.last_error}")
        raw = await store.read_message(e.blob_id)
        head = raw.split(b"\r\n\r\n", 1)[0]
        print("header:")
        print(head.decode("utf-8", "replace"))
        return 0
    if args.action == "delete":
        for qid in args.ids:
            if await store.queue_get(qid) is None:
                raise CliError(f"no queue entry {qid} (it may have been delivered meanwhile); nothing deleted")
        confirm(args, f"drop {len(args.ids)} queued message(s) without telling their senders")
        await adminops.queue_delete(store, args.ids)
        for qid in args.ids:
            print(f"queue entry {qid} deleted (no bounce is sent)")
        return 0
    # retry / flush: every waiting recipient becomes due now; the running server's queue picks them up at its
    # next look (delivery.poll_seconds).
    if args.action == "retry" and not args.ids:
        raise CliError("name queue ids to retry (or use: postroom queue flush)", EXIT_USAGE)
    count, n = await adminops.queue_retry(store, None if args.action == "flush" else args.ids)
    print(f"{count} recipient(s) in {n} entr{'y' if n == 1 else 'ies'} due now; "
          f"the running server sends them within a few seconds")
    return 0


async def cmd_sendmail(args: argparse.Namespace, store: Store) -> int:
    import getpass
    import re

    from .delivery.router import Envelope, Rcpt, RouteError, Router
    from .sendmail import SendmailError, prepare

    cfg: config_mod.Config = args.cfg
    limit = cfg.limits.message_size
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise CliError(f"the message is larger than limits.message_size ({limit} bytes); nothing was sent")
    try:
        user = re.sub(r"[^A-Za-z0-9._-]", "_", getpass.getuser()) or "nobody"
    except Exception:
        user = "nobody"
    try:
        prepared = prepare(data, recipients=args.recipients, sender=args.sender, extract=args.t,
                           ignore_dots=args.i or args.oi, hostname=cfg.server.hostname, user=user,
                           full_name=args.full_name or "", uid=os.getuid())
    except SendmailError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    router = Router(store, cfg)
    try:
        rcpts = tuple([Rcpt(await router.normalize(r)) for r in prepared.recipients])
        for r in rcpts:
            await router.check_recipient(r.address, prepared.sender, may_relay=True)
        # A local user is trusted like Postfix's sendmail: any From, signed by DKIM (sendmail.py says why).
        await router.accept(Envelope(prepared.sender, rcpts, prepared.raw, may_relay=True, from_checked=True))
    except RouteError as exc:
        raise CliError(f"refused: {exc.code} {exc.esc} {exc.text}") from None
    return 0


async def cmd_user(args: argparse.Namespace, store: Store) -> int:
    if args.action == "list":
        rows = [(r.user.address, _quota_text(r.storage, r.storage_limit, "bytes"),
                 _quota_text(r.messages, r.message_limit), "yes" if r.user.admin else "-")
                for r in await adminops.user_rows(store, args.domain)]  # the store's counters: one row per user
        print(table(rows, ("address", "storage used / quota", "messages / quota", "admin")))
        return 0
    address = normalize_address(args.address)
    if args.action == "add":
        domain = address.rpartition("@")[2]
        if await store.get_domain(domain) is None:  # asked before the password is
            raise CliError(f"domain {domain} is not local; add it first: postroom domain add {domain}")
        if await store.get_user(address) is not None:
            raise CliError(f"user {address} already exists (change the password with: postroom user passwd)")
        await adminops.add_user(store, address, read_password(args), quota=args.quota,
                                quota_messages=args.quota_messages, admin=args.admin)
        print(f"user {address} added{' (admin: may use the web admin pages)' if args.admin else ''}")
        await _warn_shadowing(store, args.cfg, address)
    elif args.action == "set":
        user = await adminops.set_user_quota(store, address, args.quota, args.quota_messages)
        q = await store.get_quota(user.id)
        print(f"{address}: storage {_quota_text(q.storage, q.storage_limit, 'bytes')}, "
              f"messages {_quota_text(q.messages, q.message_limit)}")
    elif args.action == "passwd":
        if await store.get_user(address) is None:
            raise CliError(f"no user {address}")
        await adminops.set_password(store, address, read_password(args))
        print(f"password of {address} changed")
    elif args.action == "admin":
        changed = await adminops.set_admin(store, address, args.state == "on")
        now = "an admin now (the web admin pages: /admin/)" if changed.admin else "no admin now"
        print(f"{changed.address} is {now}")
    elif args.action == "remove":
        gone = await store.get_user(address)
        if gone is None:
            raise CliError(f"no user {address}")
        boxes = await store.list_mailboxes(gone.id)
        count = sum([(await store.mailbox_status(b.id)).messages for b in boxes])
        confirm(args, f"remove the user {address} and all their mail ({count} messages in {len(boxes)} mailboxes)")
        await adminops.remove_user(store, address)
        print(f"user {address} removed, with all their mail")
    return 0


async def _require_local_domain(store: Store, address: str) -> None:
    domain = address.rpartition("@")[2]
    if await store.get_domain(domain) is None:
        raise CliError(f"{domain} is not a local domain; add it first: postroom domain add {domain}")


async def cmd_alias(args: argparse.Namespace, store: Store) -> int:
    if args.action == "list":
        aliases = await store.list_aliases()
        print(table([(a.source, a.target) for a in aliases], ("source", "target")))
        return 0
    source = normalize_address(args.source, allow_catchall=True)
    if args.action == "add":
        source, targets = await adminops.add_alias(store, source, args.targets)
        print(f"alias {source} -> {', '.join(targets)}")
        if not source.startswith("@"):  # a catch-all comes after users and lists: it shadows nothing
            await _warn_shadowing(store, args.cfg, source)
    else:
        target = normalize_address(args.target, keep_case=True) if args.target else None
        await adminops.remove_alias(store, source, target)
        print(f"alias {source}{' -> ' + target if target else ''} removed")
    return 0


async def cmd_senders(args: argparse.Namespace, store: Store) -> int:
    """`senders list | allow | block | remove`: the sender rules of a user or a domain (inbound/senders.py)."""
    scope = names.address(args.user) if args.user else names.domain(args.domain)
    if args.action == "list":
        rules = await store.list_sender_rules(scope)
        print(table([(r.kind, r.pattern) for r in rules], ("kind", "pattern")) if rules
              else f"no sender rules for {scope}")
        return 0
    if args.action == "remove":
        if not await store.remove_sender_rule(scope, args.pattern):
            raise CliError(f"{scope} has no sender rule for {names.sender_pattern(args.pattern)}")
        print(f"sender rule for {names.sender_pattern(args.pattern)} removed from {scope}")
        return 0
    rule = await store.add_sender_rule(scope, args.action, args.pattern)
    print(f"{scope}: {rule.kind} {rule.pattern}")
    if rule.kind == "allow":
        print("note: an allow rule counts only for a sender the checks authenticate (SPF pass of the MAIL FROM"
              " domain, an aligned DKIM pass, or DMARC pass); it skips spam filing and greylisting, never a DMARC"
              " reject or quarantine")
    return 0


def _grant(value: str) -> tuple[str, str]:
    """ID=RIGHTS of `mailbox share --grant`: ("anyone" or an address, "-" kept in front; the rights letters)."""
    ident, eq, rights = value.partition("=")
    if not eq or not ident:
        raise CliError(f"--grant takes ID=RIGHTS (an address or 'anyone', then RFC 4314 rights letters): {value!r}")
    negative = ident.startswith("-")
    ident = ident[1:] if negative else ident
    key = ANYONE if ident.lower() == ANYONE else normalize_address(ident)
    unknown = sorted(set(rights) - set(RIGHTS))
    if unknown:
        raise CliError(f"unknown rights {''.join(unknown)!r} in --grant {value!r} (rights are letters of {RIGHTS})")
    return ("-" if negative else "") + key, rights


async def cmd_mailbox(args: argparse.Namespace, store: Store) -> int:
    """`mailbox share` / `mailbox shared`: a domain's shared folders (RFC 2342 §5 "Shared Folders/<name>"),
    mailboxes of the domain's shared-folders owner that users reach only through their ACL (RFC 4314)."""
    domain = normalize_domain(args.domain)
    if await store.get_domain(domain) is None:
        raise CliError(f"domain {domain} is not local; add it first: postroom domain add {domain}")
    if args.action == "shared":
        owner = await store.shared_folders_owner(domain)
        rows = []
        for mbox in await store.list_mailboxes(owner) if owner is not None else []:
            acl = await store.get_acl(mbox.id)
            rows.append((mbox.name, " ".join(f"{e.identifier}={e.rights}" for e in acl) or "(nobody)"))
        print(table(rows, ("shared folder", "access (RFC 4314 rights)")))
        return 0
    grants = [_grant(g) for g in args.grant]
    for ident, _ in grants:  # every grantee checked before anything is made
        address = ident.lstrip("-")
        user = None if address == ANYONE else await store.get_user(address)
        if address != ANYONE and (user is None or names.domain_of(user.address) != domain):
            raise CliError(f"{address} is not a user of {domain}: only they can be given rights")
    owner = await store.shared_folders_owner(domain, create=True)
    assert owner is not None
    name = names.mailbox(args.name)
    try:
        mbox = await store.create_mailbox(owner, name)
        print(f"shared folder {name} of {domain} created (IMAP: Shared Folders/{name})")
    except AlreadyExists:
        mbox = next(m for m in await store.list_mailboxes(owner) if m.name == name)
        print(f"shared folder {name} of {domain} exists")
    for ident, rights in grants:
        await store.set_acl(mbox.id, ident, rights)
        print(f"  {ident}: {rights or '(entry removed)'}")
    return 0


async def cmd_list(args: argparse.Namespace, store: Store) -> int:
    if args.action == "create":
        address = normalize_address(args.address)
        await _require_local_domain(store, address)
        owner = normalize_address(args.owner, keep_case=True)
        ml = await store.create_list(address, owner, ListPolicy(args.policy))
        for member in args.members:
            await store.add_list_member(address, normalize_address(member, keep_case=True))
        print(f"list {ml.address} created (owner {ml.owner}, posting {ml.policy.value}, bounces {ml.bounce_address})")
        await _warn_shadowing(store, args.cfg, ml.address)
    elif args.action == "add":
        address = normalize_address(args.address)
        for member in args.members:
            await store.add_list_member(address, normalize_address(member, keep_case=True))
        print(f"{len(args.members)} member(s) added to {address}")
    elif args.action == "remove":
        address = normalize_address(args.address)
        for member in args.members:
            await store.remove_list_member(address, normalize_address(member, keep_case=True))
        print(f"{len(args.members)} member(s) removed from {address}")
    elif args.action == "policy":
        address = normalize_address(args.address)
        await store.set_list_policy(address, ListPolicy(args.policy))
        print(f"list {address}: posting is now {args.policy}")
    elif args.action == "show":
        address = normalize_address(args.address)
        shown = await store.get_list(address)
        if shown is None:
            raise CliError(f"no list {address}")
        print(f"list     {shown.address}\nowner    {shown.owner}\nposting  {shown.policy.value}\n"
              f"bounces  {shown.bounce_address}")
        print(f"members  {len(shown.members)}")
        for m in shown.members:
            print(f"  {m}")
    elif args.action == "delete":
        address = normalize_address(args.address)
        doomed = await store.get_list(address)
        if doomed is None:
            raise CliError(f"no list {address}")
        confirm(args, f"delete the list {address} and its {len(doomed.members)} members")
        await store.delete_list(address)
        print(f"list {address} deleted")
    else:
        lists = await store.list_lists()
        print(table([(m.address, m.owner, m.policy.value, len(m.members)) for m in lists],
                    ("list", "owner", "posting", "members")))
    return 0


async def cmd_import(args: argparse.Namespace, store: Store) -> int:
    from .progress import Progress
    from .transfer import import_messages

    address = normalize_address(args.user)
    if await store.get_user(address) is None:
        raise CliError(f"no user {address}")
    report = await import_messages(store, address, Path(args.path), args.format, mailbox=args.mailbox or "INBOX",
                                   progress=Progress, duplicates=args.duplicates)
    print(report.summary())
    return 0


async def cmd_export(args: argparse.Namespace, store: Store) -> int:
    from .progress import Progress
    from .transfer import export_messages

    address = normalize_address(args.user)
    if await store.get_user(address) is None:
        raise CliError(f"no user {address}")
    to_stdout = args.path == "-"
    if to_stdout and args.format != "mbox":
        raise CliError("only --format mbox can be written to standard output ('-')", EXIT_USAGE)
    path = Path("/dev/stdout") if to_stdout else Path(args.path)
    mailbox = args.mailbox or ("INBOX" if to_stdout else None)
    report = await export_messages(store, address, path, args.format, mailbox=mailbox, progress=Progress,
                                   incremental=not to_stdout)
    # With the mail on stdout, the summary goes to stderr so the two never mix.
    print(report.summary(), file=sys.stderr if to_stdout else sys.stdout)
    return 0


async def cmd_index(args: argparse.Namespace, store: Store) -> int:
    """Work off the full-text index backlog now, with a progress display (`postroom serve` does it too, in the
    background; this is for an upgrade done before the server starts, or to watch it)."""
    from .indexing import build_index
    from .progress import Progress

    done = await build_index(store, args.cfg.limits, Progress)
    print(f"full-text index: {done} bodies indexed; nothing left in the backlog")
    return 0


class _StageProgress:
    """The progress display of `postroom migrate`: one line per stage on stderr, redrawn in place on a terminal
    (at most ten times a second), else a line every 5 s and one when the stage ends."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        end = done >= total
        if not end and now - self.shown < (0.1 if self.tty else 5.0):
            return
        self.shown = now
        line = f"  {what:<16} {done:>9,}/{total:,}"
        if self.tty:
            sys.stderr.write(f"\r{line}" + ("\n" if end else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


async def cmd_migrate(args: argparse.Namespace, store: Store) -> int:
    """Copy this SQLite store into an empty PostgreSQL database and verify the copy (store/postgresql/
    fromsqlite.py): UIDVALIDITY, UIDs and MODSEQs unchanged. Stop the server first."""
    from .store.postgresql import PostgreSQLStore
    from .store.postgresql.fromsqlite import copy_store, verify
    from .store.sqlite import SQLiteStore

    if not isinstance(store, SQLiteStore):
        raise CliError("postroom migrate copies an SQLite store: store.url must be sqlite:///... (the source)",
                       EXIT_USAGE)
    config_mod.check_postgresql_url(args.to, "--to")
    target = PostgreSQLStore(args.to, args.cfg.data_path / "blobs")
    await target.open()  # makes the schema
    await target.close()
    progress = _StageProgress()
    print(f"copying {store.path} to {args.to.split('@')[-1]}", file=sys.stderr)
    report = await copy_store(store.path, store.blobs, args.to, progress)
    report = await verify(store.path, args.to, report, progress)
    for problem in report.problems:
        print(f"postroom: verification: {problem}", file=sys.stderr)
    if report.problems:
        return EXIT_REFUSED
    print(f"copied and verified: {report.rows.get('users', 0)} users, {report.rows.get('mailboxes', 0)} mailboxes,"
          f" {report.rows.get('messages', 0)} messages, {report.bodies} bodies ({report.body_bytes:,} bytes),"
          f" {report.rows.get('queue', 0)} queued; set store.url = \"{args.to}\" and start the server")
    return 0


def cmd_check(cfg: config_mod.Config, found: config_mod.Discovery) -> int:
    """`postroom check`: the configuration loaded (main did that; `found` says where from), the store, the
    certificate files and `server.user`. Generates nothing: a missing built-in certificate is reported as to be
    generated at the first start."""
    from .net.tls import CertificateError, check_files, fingerprint
    from .process import lookup_account

    print(f"{cfg.source}: OK")
    print(f"  config    {found.describe()}")
    made = "" if store_exists(cfg) else "  (not made yet: `postroom serve`, `setup` or `domain add` makes it)"
    print(f"  data_dir  {cfg.data_path}\n  store     {cfg.store_url}{made}")
    for name, (host, port) in cfg.listeners.enabled().items():
        print(f"  {name:<12}{host}:{port}")
    try:
        present = cfg.cert_path.exists(), cfg.key_path.exists()
        if not cfg.tls.cert and present == (False, False):
            print(f"  tls       {cfg.cert_path} (self-signed, generated at the first start)")
        elif not cfg.tls.cert and present != (True, True):
            there, missing = (cfg.cert_path, cfg.key_path) if present[0] else (cfg.key_path, cfg.cert_path)
            raise CertificateError(f"TLS: {there} exists but {missing} does not; restore it, or remove both to have "
                                   f"a new self-signed pair generated")
        else:
            print(f"  tls       {cfg.cert_path} ({fingerprint(check_files(cfg.cert_path, cfg.key_path))})")
        if cfg.server.user:
            account = lookup_account(cfg.server.user)
            print(f"  user      {account.name} (uid {account.uid}): the server drops to it when started as root")
    except (CertificateError, PrivilegeError) as exc:
        print(f"postroom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_reload(cfg: config_mod.Config) -> int:
    """`postroom reload`: check the configuration (main loaded it) and certificate here, so a mistake is told
    to the operator at once, then send SIGHUP to the `postroom serve` holding the data folder's lock."""
    import signal

    from .net.tls import CertificateError, check_files
    from .process import running_pid

    pid = running_pid(cfg.data_path)
    if pid is None:
        raise CliError(f"no postroom serve is running on the data folder {cfg.data_path} (nothing to reload; "
                       f"start it with: postroom serve)")
    if cfg.tls.cert or cfg.cert_path.exists():
        try:
            check_files(cfg.cert_path, cfg.key_path)
        except CertificateError as exc:
            raise CliError(f"{exc}; the server was not signalled and keeps its configuration", EXIT_USAGE) from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"the server (PID {pid}) has just ended; nothing to reload") from None
    except PermissionError:
        raise CliError(f"not allowed to signal the server (PID {pid}): run this as root or as its user") from None
    print(f"asked postroom serve (PID {pid}) to reload {cfg.source}; it logs a line \"reload result=...\" with "
          f"what changed")
    return 0


def become_server_user(cfg: config_mod.Config) -> None:
    """An admin command run as root with `server.user` set runs as that user (process.py), so the files it
    creates in the data folder belong to the server. Raises PrivilegeError or OSError."""
    from .process import drop_privileges, own_data_dir, switch_needed

    if os.geteuid() != 0 or not cfg.server.user:
        return
    account = switch_needed(cfg.server.user)
    if account is None:
        return
    cfg.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    own_data_dir(cfg.data_path, account, deep=False)
    drop_privileges(account)


# ------------------------------------------------------------------------------------------------------------
# Argument parsing

DESCRIPTION = """\
Postroom: an all-in-one Internet mail server (SMTP, submission, queue, IMAP, POP3, web) in one program.

Start the server with `postroom serve` (no configuration needed: it listens on high ports on 127.0.0.1 and
keeps its data in ./postroom-data). Administer it with the other commands; they work while it runs.

The configuration is the first of: --config FILE, the file named by $POSTROOM_CONFIG, ./postroom.toml,
/etc/postroom/postroom.toml; with none of them, the built-in defaults. Commands other than `serve`, `setup`
and `domain add` never make a store: run where none exists, they say where they looked and stop.
"""

EPILOG = """\
examples:
  postroom serve --demo                      run with a demo domain and user, print how to connect
  postroom setup example.org                 a real server for example.org: config, user, DKIM, unit, DNS
  postroom domain add example.org
  postroom user add alice@example.org        (asks for the password)
  echo "$PW" | postroom user add bob@example.org --password-stdin
  postroom alias add postmaster@example.org alice@example.org
  postroom alias add @example.org alice@example.org          (catch-all)
  postroom list create team@example.org --owner alice@example.org --policy members
  postroom import --user alice@example.org ~/mail/inbox.mbox
  postroom export --user alice@example.org --format maildir ./alice-backup
  postroom index                             index mail stored before the full-text index existed, now
  postroom dns example.org                   the DNS records to publish: MX, SPF, DKIM, DMARC, SRV
  postroom queue list                        what waits in the outbound queue, and why
  printf 'Subject: hi\\n\\nhello\\n' | postroom sendmail -f alice@example.org bob@example.net
  postroom config-sample > postroom.toml     then: postroom --config postroom.toml serve
  postroom reload                            re-read the configuration and certificates (or: kill -HUP PID)
"""


def _yes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (needed when not run on a terminal)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postroom", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="FILE",
                   help=f"TOML configuration file. Without it: {config_mod.DISCOVERY_ORDER}. Relative paths in the "
                   "file are relative to its folder")
    p.add_argument("--version", action="version", version=f"postroom {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "serve", help="run the server until SIGTERM or Ctrl-C (SIGHUP: reload)",
        description="Run the server until SIGTERM or Ctrl-C. SIGHUP (or `postroom reload`) re-reads the"
        " configuration and certificates. Started as root with server.user set, it binds its ports, then runs"
        " as that user; one server per data folder (a second one refuses, naming the first one's PID).")
    s.add_argument("--demo", action="store_true",
                   help="make sure the domain 'localhost' and the user demo@localhost exist; print how to connect")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--workers", type=int, metavar="N",
                   help="worker processes sharing the listeners (server.workers: 0 one per CPU, 1 one process)")

    sub.add_parser("check", help="read the configuration and certificate, report problems, print the settings")
    sub.add_parser(
        "reload", help="make the running server re-read its configuration and certificates (as SIGHUP does)",
        description="Check the configuration and certificate files, then send SIGHUP to the `postroom serve`"
        " running on the data folder (its PID is in <data_dir>/postroom.pid). The server reads its own"
        " configuration file again: limits, auth, smtp, pop3, imap, delivery (routes, DNS, smart host) and the"
        " certificate apply to new sessions and deliveries at once; sessions already open keep theirs. A file that"
        " does not load changes nothing (the server logs why). Listener addresses, data_dir, store, server.user,"
        " delivery.enabled and acme.directory need a restart (the log line names them).")
    sub.add_parser("config-sample", help="print a commented configuration file with every default")

    d = sub.add_parser("domain", help="local domains: add | set | list | show | remove")
    dsub = d.add_subparsers(dest="action", required=True)
    da = dsub.add_parser("add", help="accept mail for a domain")
    da.add_argument("name")
    da.add_argument("--quota", type=size_arg, default=0, metavar="BYTES",
                    help="what all the domain's users may hold together (K, M, G suffixes; 0 = none)")
    ds = dsub.add_parser("set", help="change a domain's settings: --quota")
    ds.add_argument("name")
    ds.add_argument("--quota", type=size_arg, metavar="BYTES",
                    help="what all the domain's users may hold together (K, M, G suffixes; 0 = none)")
    dr = dsub.add_parser("remove", help="stop accepting mail for a domain (it must have no users left)")
    dr.add_argument("name")
    _yes(dr)
    dsub.add_parser("list", help="list local domains (with where mail for postmaster goes)")
    dsub.add_parser("show", help="show a domain: users, aliases, lists, DKIM, postmaster").add_argument("name")
    dk = dsub.add_parser("dkim", help="DKIM keys (RSA 2048 and Ed25519) of a domain: replace now, or rotate safely "
                                      "with --rotate (publish) then --switch")
    dk.add_argument("name")
    step = dk.add_mutually_exclusive_group()
    step.add_argument("--rotate", action="store_true", help="make new keys under new selectors, kept beside the "
                      "signing ones: publish their records (postroom dns), then --switch")
    step.add_argument("--switch", action="store_true", help="sign with the keys --rotate made (publish them first)")

    st = sub.add_parser("setup", help="set up a mail server for DOMAIN on this machine: configuration, domain, "
                                      "first user, DKIM keys, systemd unit, and the DNS records to publish",
                        description="Writes the configuration (--config, else /etc/postroom/postroom.toml as root, "
                                    "else ./postroom.toml) with every listener on its standard port on every "
                                    "address, creates the store, DOMAIN with DKIM keys and the first user (its "
                                    "password asked on a terminal, else generated and printed once), writes a "
                                    "systemd unit, and prints the DNS records to publish and what is left to do.")
    st.add_argument("domain", help="the mail domain, e.g. example.org")
    st.add_argument("--hostname", help="this server's public name, the MX target (default: the machine's fully "
                                       "qualified name, else mail.DOMAIN)")
    st.add_argument("--data-dir", help="the data folder (default /var/lib/postroom as root, else ./postroom-data)")
    st.add_argument("--user", help="the first user's address (default postmaster@DOMAIN)")
    st.add_argument("--systemd-unit", metavar="PATH", help="where to write the systemd unit (default as root: "
                                                          "/etc/systemd/system/postroom.service; \"\": none)")
    st.add_argument("--run-as", default="postroom", metavar="USER",
                    help="as root: the system user the server runs as after binding its ports (server.user), if it "
                         "exists (default postroom; make it with: useradd --system --no-create-home postroom)")
    st.add_argument("--force", action="store_true", help="replace an existing configuration file")

    dn = sub.add_parser("dns", help="print the DNS records to publish for a domain: MX, SPF, DKIM, DMARC, and the SRV "
                                         "records and autoconfig names mail clients use to find the services")
    dn.add_argument("domain")

    q = sub.add_parser("queue", help="the outbound queue: list | show | retry | delete | flush")
    qsub = q.add_subparsers(dest="action", required=True)
    qsub.add_parser("list", help="list queued messages")
    qsub.add_parser("show", help="show one queued message: envelope, recipients, errors, header").add_argument(
        "id", type=int)
    qsub.add_parser("retry", help="try these entries again now").add_argument("ids", type=int, nargs="*")
    qd = qsub.add_parser("delete", help="drop entries from the queue (no bounce)")
    qd.add_argument("ids", type=int, nargs="+")
    _yes(qd)
    qsub.add_parser("flush", help="try every queued message again now")

    sm = sub.add_parser("sendmail", help="send the message on standard input (sendmail(8) flags)")
    sm.add_argument("-t", action="store_true", help="take recipients from To, Cc and Bcc (Bcc is removed)")
    sm.add_argument("-f", dest="sender", metavar="SENDER", help="envelope sender (default USER@server.hostname)")
    sm.add_argument("-i", action="store_true", help="a line with a single '.' does not end the message")
    sm.add_argument("-oi", action="store_true", help="same as -i")
    sm.add_argument("-F", dest="full_name", metavar="NAME", help="full name for a From header that is added")
    sm.add_argument("recipients", nargs="*")

    u = sub.add_parser("user", help="mail users: add | set | passwd | admin | list | remove")
    usub = u.add_subparsers(dest="action", required=True)
    for action, helptext in (("add", "create a user (login = full address) with the standard mailboxes"),
                             ("passwd", "change a user's password")):
        ua = usub.add_parser(action, help=helptext)
        ua.add_argument("address")
        src = ua.add_mutually_exclusive_group()
        src.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
        src.add_argument("--password", help="the password itself (visible to other local users in `ps`: avoid)")
        if action == "add":
            ua.add_argument("--quota", type=size_arg, default=0, metavar="BYTES",
                            help="storage quota: the sum of the user's message sizes (K, M, G suffixes; 0 = none)")
            ua.add_argument("--quota-messages", type=count_arg, default=0, metavar="N",
                            help="how many messages the user may keep (0 = no limit)")
            ua.add_argument("--admin", action="store_true", help="the user may use the web admin pages (/admin/)")
    us = usub.add_parser("set", help="change a user's quotas (usage is shown by: postroom user list)")
    us.add_argument("address")
    us.add_argument("--quota", type=size_arg, metavar="BYTES",
                    help="storage quota: the sum of the user's message sizes (K, M, G suffixes; 0 = none)")
    us.add_argument("--quota-messages", type=count_arg, metavar="N", help="message count quota (0 = none)")
    uad = usub.add_parser("admin", help="give or take the admin flag (the web admin pages, /admin/)")
    uad.add_argument("address")
    uad.add_argument("state", choices=["on", "off"])
    ur = usub.add_parser("remove", help="delete a user and all their mail (asks first, or --yes)")
    ur.add_argument("address")
    _yes(ur)
    ul = usub.add_parser("list", help="list users")
    ul.add_argument("--domain")

    a = sub.add_parser("alias", help="aliases: add | list | remove")
    asub = a.add_subparsers(dest="action", required=True)
    aa = asub.add_parser("add", help="deliver mail for SOURCE (address or @domain catch-all) to TARGETs")
    aa.add_argument("source")
    aa.add_argument("targets", nargs="+")
    ar = asub.add_parser("remove", help="remove an alias (all its targets, or one)")
    ar.add_argument("source")
    ar.add_argument("target", nargs="?")
    asub.add_parser("list", help="list aliases")

    sn = sub.add_parser(
        "senders", help="sender allow and block lists of a user or a domain: list | allow | block | remove",
        description="Sender rules for mail to a user (--user) or to every user of a hosted domain (--domain)."
        " PATTERN is an address (bob@example.com), a domain (@example.com: that domain only) or the subdomains"
        " of one (@.example.com: not example.com itself). block: an envelope sender that matches is refused at"
        " RCPT for that recipient (550 5.7.1); a matching From header address sends the copy to the user's Junk"
        " with $Junk. allow: skips spam filing (the built-in score and rspamd's add header) and greylisting,"
        " but only when the checks authenticate the sender (SPF pass of the MAIL FROM domain, an aligned DKIM"
        " pass, or DMARC pass): an unauthenticated allow list would let anyone in who forges an allowed"
        " address. Which rule decides: the user's own before the domain's, then the most specific pattern"
        " (address, @domain, the longest @.domain); block wins over allow across a message's addresses.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    snsub = sn.add_subparsers(dest="action", required=True)
    for action, helptext in (("list", "show the rules of the user or domain"),
                             ("allow", "allow senders matching PATTERN (when authenticated)"),
                             ("block", "block senders matching PATTERN"),
                             ("remove", "remove the rule for PATTERN")):
        sa = snsub.add_parser(action, help=helptext)
        who = sa.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", metavar="ADDR", help="the rules of one user")
        who.add_argument("--domain", metavar="DOMAIN", help="the rules of every user of a hosted domain")
        if action != "list":
            sa.add_argument("pattern", metavar="PATTERN", help="bob@example.com, @example.com or @.example.com")

    ml = sub.add_parser("list", help="mailing lists: create | add | remove | policy | show | delete | all")
    msub = ml.add_subparsers(dest="action", required=True)
    mc = msub.add_parser("create", help="create a mailing list")
    mc.add_argument("address")
    mc.add_argument("--owner", required=True)
    mc.add_argument("--policy", choices=[p.value for p in ListPolicy], default=ListPolicy.MEMBERS.value,
                    help="who may post: open (anyone), members (default), moderated (owner approves each post)")
    mc.add_argument("--member", dest="members", action="append", default=[], metavar="ADDRESS",
                    help="a first member (repeat for more)")
    for action, helptext in (("add", "add members"), ("remove", "remove members")):
        mm = msub.add_parser(action, help=helptext)
        mm.add_argument("address")
        mm.add_argument("members", nargs="+")
    mp = msub.add_parser("policy", help="change who may post")
    mp.add_argument("address")
    mp.add_argument("policy", choices=[p.value for p in ListPolicy])
    msub.add_parser("show", help="show a list and its members").add_argument("address")
    mdel = msub.add_parser("delete", help="delete a list (asks first, or --yes)")
    mdel.add_argument("address")
    _yes(mdel)
    msub.add_parser("all", help="list every mailing list")

    mb = sub.add_parser("mailbox", help="a domain's shared folders: share | shared")
    mbsub = mb.add_subparsers(dest="action", required=True)
    ms = mbsub.add_parser(
        "share", help="create a shared folder of a domain (or change its access)",
        description="Create the shared folder NAME of DOMAIN, seen by IMAP clients as 'Shared Folders/NAME' (RFC"
        " 2342 §5), or change who may use it. Nobody owns it: users of the domain reach it only through the"
        " rights given here (RFC 4314: l lookup, r read, s keep seen, w write flags, i insert, p post, k create"
        " below, x delete, t delete messages, e expunge, a administer), and users with 'a' may change them with"
        " SETACL. Example: postroom mailbox share example.org Team --grant alice@example.org=lrsi"
        " --grant anyone=lr")
    ms.add_argument("domain")
    ms.add_argument("name", help="the folder's name ('/' separates levels)")
    ms.add_argument("--grant", action="append", default=[], metavar="ID=RIGHTS",
                    help="give RIGHTS to ID (an address of the domain, 'anyone' for all its users, '-ID' for"
                    " rights taken away); empty RIGHTS removes the entry; repeatable")
    mbsub.add_parser("shared", help="list a domain's shared folders with their access").add_argument("domain")

    im = sub.add_parser(
        "import", help="import mbox, Maildir or single-message files into a user's mailbox",
        description="Import mail into a user's mailboxes (created as needed). A message whose exact bytes the"
        " target mailbox already holds is left out (importing the same file twice, or an export of the same"
        " mailbox, adds nothing); --duplicates imports every message regardless.")
    im.add_argument("--user", required=True)
    im.add_argument("--mailbox", default=None,
                    help="target mailbox (default INBOX; Maildir++ trees keep their folders)")
    im.add_argument("--format", choices=["auto", "mbox", "maildir", "eml"], default="auto",
                    help="auto (default): a folder with cur/ or new/ is Maildir, a file starting with 'From ' is mbox, "
                         "any other file is one message (eml)")
    im.add_argument("--duplicates", action="store_true",
                    help="import messages the mailbox already holds (same bytes) too")
    im.add_argument("path")
    ex = sub.add_parser(
        "export", help="export a user's mail as mbox or Maildir (incremental)",
        description="Export a user's mail. Existing files and Maildirs are added to, and only with what they did"
        " not get before: each destination keeps a list of the messages written to it (postroom-exported inside"
        " a Maildir folder, .NAME.postroom-exported beside an mbox file), so running the same export again"
        " writes only new mail. Delete that file (or empty the mbox) to write everything again. '-' (standard"
        " output) always gets everything.")
    ex.add_argument("--user", required=True)
    ex.add_argument("--mailbox", default=None, help="one mailbox (default: all of them)")
    ex.add_argument("--format", choices=["mbox", "maildir"], required=True)
    ex.add_argument("path", help="file or folder to write; '-' writes one mailbox as mbox to standard output")
    sub.add_parser(
        "index", help="build the full-text index for mail stored before it existed (after an upgrade)",
        description="Index every message body stored before the full-text index existed (an upgrade from schema"
        " 9 or older), 200 bodies per transaction, with a progress display. `postroom serve` does the same in the"
        " background; SEARCH is exact meanwhile (bodies not indexed yet are always searched in full). Safe to run"
        " while the server runs and to interrupt.",
    )
    mg = sub.add_parser(
        "migrate", help="copy this SQLite store into an empty PostgreSQL database, then verify the copy",
        description="Copy the whole store (accounts, mailboxes with their UIDVALIDITY, UIDs and MODSEQs, flags,"
        " bodies, the queue, lists, sessions) into an empty PostgreSQL database in one transaction, with a progress"
        " display; then compare counts and digests and hash every body again. Stop the server first; afterwards"
        " set store.url to the new database. Clients resynchronise nothing.",
    )
    mg.add_argument("--to", required=True, help="postgresql://user@host:port/database (it must exist, empty)")
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {
    "domain": cmd_domain,
    "dns": cmd_dns,
    "queue": cmd_queue,
    "sendmail": cmd_sendmail,
    "user": cmd_user,
    "alias": cmd_alias,
    "senders": cmd_senders,
    "list": cmd_list,
    "mailbox": cmd_mailbox,
    "import": cmd_import,
    "export": cmd_export,
    "index": cmd_index,
    "migrate": cmd_migrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `postroom` command line; returns the exit status (invariant 5: failures are one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe is found here, not by the interpreter's flush at exit
        return code
    except config_mod.ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_USAGE)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except NotFound as exc:
        return _fail(f"not found: {exc}", EXIT_REFUSED)
    except AlreadyExists as exc:
        return _fail(f"already exists: {exc}", EXIT_REFUSED)
    except (Invalid, StoreError) as exc:
        return _fail(f"refused: {exc}", EXIT_REFUSED)
    except FormatError as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except BrokenPipeError:
        # `postroom export ... - | head`: the reader left. Later writes to stdout (and the interpreter's own flush
        # at exit) must not fail again, so stdout now goes nowhere (Python's documented SIGPIPE recipe).
        _silence_stdout()
        return _fail("stopped: the output was closed before the end (broken pipe)", EXIT_PIPE)
    except OSError as exc:  # a missing or unreadable file, a full disk, a folder that cannot be made
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", EXIT_REFUSED)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        os.umask(umask)  # in-process callers (tests) get theirs back


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config-sample":
        sys.stdout.write(config_mod.SAMPLE)
        return 0
    if args.command == "setup":  # writes a configuration: its path is setup's own choice (setup.py step 1)
        from .setup import SetupError, run

        try:
            return run(args)
        except SetupError as exc:
            print(f"postroom setup: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    found = config_mod.discover(args.config)
    cfg = config_mod.load(found.path, how=found.how)
    if args.command == "check":
        return cmd_check(cfg, found)
    if args.command == "reload":
        return cmd_reload(cfg)
    os.umask(PRIVATE_UMASK)  # process.py: the data folder's files 0600, folders 0700
    if args.command == "serve":
        from .app import run_server
        from .logsetup import setup as setup_logging

        setup_logging(args.log_level.upper(), LOG_FORMAT)  # written off the event loop (logsetup.py)
        if args.workers is not None:
            if not 0 <= args.workers <= config_mod.MAX_WORKERS:
                print(f"postroom: --workers must be 0 (one per CPU) to {config_mod.MAX_WORKERS}", file=sys.stderr)
                return 2
            cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, workers=args.workers))
        return run_server(cfg, demo=args.demo)
    handler = COMMANDS[args.command]
    require_store(args, cfg, found)
    args.cfg = cfg  # commands that need settings (dns, sendmail) read them here
    try:
        become_server_user(cfg)
    except (PrivilegeError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return asyncio.run(with_store(cfg, lambda store: handler(args, store)))


def _fail(message: str, code: int) -> int:
    """Print "postroom: message" on stderr (if stderr itself is gone, say nothing) and return `code`."""
    try:
        print(f"postroom: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no file descriptor (replaced by a test's capture): nothing to do
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
