"""Mailing lists: the headers list copies carry, and moderated posts held for the owner's approval.

Theory of operation
-------------------
A post to a list goes out as one copy per member with List-Id / List-Post / List-Unsubscribe prepended
(RFC 2919, RFC 2369) and the envelope sender rewritten to the list's bounce address, so bounces reach the list,
not the poster. Mail to the bounce address goes to the list owner.

The headers are valid for any list name, quoted local parts (`"the list"@dom`) included (invariant 4):

    List-Id            `<label.domain>`: RFC 2919 §2 makes the label dot-atom-text, so it is the list's local
                       part unquoted, each character outside ASCII atext (space, `"`, `@`, non-ASCII, ...)
                       replaced by "-", empty dot-separated pieces dropped: `"the list"` -> `the-list`. Two
                       lists can share a label (`"the list"` and `the-list`); the domain keeps it unique per
                       domain otherwise.
    List-Post          `<mailto:addr>`, List-Unsubscribe `<mailto:owner?subject=unsubscribe%20addr>`:
                       RFC 2369 §2 takes URLs, and in a mailto URI (RFC 6068 §2) everything a URI may not
                       hold, plus `%`, `"`, space, `@` inside a local part and gen-delims, is percent-encoded
                       (UTF-8 octets too): `"the list"@dom` -> `mailto:%22the%20list%22@dom`.

Who may post: anyone (`open`), the members and the owner (`members`: the owner runs the list, member or not),
or anyone but held for approval (`moderated`), except the owner's own posts, which go out at once (the owner is
the one who would approve them). The router checks the envelope sender (`Router.check_recipient`); there is no
separate moderator role: the owner moderates.

Moderation (policy `moderated`). The post is not distributed: it is held, and the owner gets a notice with the
post attached and two addresses carrying a random 128-bit token:

    <list-local>+approve-<token>@<domain>     send any message here to distribute the held post
    <list-local>+reject-<token>@<domain>      send any message here to drop it

The token is the capability (only the notice carries it); the router also requires the envelope sender of the
approval to be the list owner. Held posts live in the store (`Store.hold_post`: the token, the list, the
original sender, the message, the time), so every worker process and every node on one PostgreSQL database
sees the same queue (issue 16 item 3). Posts an older Postroom held as files under `<data_dir>/held/` are
moved into the store once, at start (`import_held_files`, one log line).

Invariants
1. A held post is durable (committed in the store) before the SMTP `250` that accepted it.
2. A token is used once: approval or rejection removes the held post; a second use is 550 5.1.1. Two uses at
   the same time (a double click, two moderators, two worker processes, two nodes) are one: the handler first
   claims the post in the store (`claim`: one atomic UPDATE that only takes a post nobody holds) and removes it
   only under that claim. A handler that dies mid-way leaves its claim to run out after `CLAIM_LEASE`, so the
   post can be approved again: delivered at least once, never by two handlers at once.
3. Held files are found only by a token of exactly 32 lower-case hex digits (no path can be smuggled in).
4. The header lines `list_headers` writes are ASCII and valid by their RFC's grammar for every list address,
   owner and bounce address the store accepts (see above).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from postroom.fsutil import fsync_dir
from postroom.mime.compose import Attachment, compose
from postroom.mime.text import decode_words
from postroom.store import names
from postroom.store.api import AlreadyExists, HeldPost, MailingList, Store

log = logging.getLogger("postroom.lists")

TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
ACTION_RE = re.compile(r"^(?P<base>.+)\+(?P<action>approve|reject)-(?P<token>[0-9a-f]{32})$")


# RFC 5322 §3.2.3 atext (ASCII only: the header must stay 7-bit for any receiver).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")


def list_label(address: str) -> str:
    """The RFC 2919 §2 list-label (dot-atom-text) of a list address: its local part unquoted, every character
    outside ASCII atext made "-", empty dot-separated pieces dropped (module doc). '"the list"@x' -> 'the-list'."""
    local = names.unquote_local(address.rpartition("@")[0])
    pieces = ["".join(c if c in _ATEXT else "-" for c in piece) for piece in local.split(".")]
    return ".".join(p for p in pieces if p) or "-"


def mailto_addr(address: str) -> str:
    """An addr-spec as the `to` of a mailto URI (RFC 6068 §2): the local part percent-encoded (UTF-8 octets,
    and `"`, space, `%`, `@`, `,`, gen-delims, `&`, `;`, `=`), then `@domain`. '"not@me"@example.org' ->
    '%22not%40me%22@example.org' (the RFC's own example, §6.1)."""
    local, _, domain = address.rpartition("@")
    return f"{quote(local, safe=_MAILTO_LOCAL_SAFE)}@{quote(domain, safe='')}"


_MAILTO_LOCAL_SAFE = "!$'()*+"  # sub-delims RFC 6068 §2 lets stay, minus ",", which separates addresses
_MAILTO_HFVALUE_SAFE = "!$'()*+,;:@"  # RFC 6068 §2 some-delims: what an hfvalue may hold unencoded


def _ascii_domain(domain: str) -> str:
    """A domain as ASCII for the List-Id namespace: IDNA A-labels (RFC 5890), or "-" for what cannot be."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "".join(c if ord(c) < 128 else "-" for c in domain)


def list_headers(ml: MailingList) -> bytes:
    """The header lines a list copy gets (module doc; invariant 4), CRLF-terminated ASCII."""
    domain = ml.address.rpartition("@")[2]
    subject = quote(f"unsubscribe {ml.address}", safe=_MAILTO_HFVALUE_SAFE)
    # RFC 2919 §2: list-id = "<" list-label "." namespace ">"; RFC 2369 §2: URLs in angle brackets.
    return (f"List-Id: <{list_label(ml.address)}.{_ascii_domain(domain)}>\r\n"
            f"List-Post: <mailto:{mailto_addr(ml.address)}>\r\n"
            f"List-Unsubscribe: <mailto:{mailto_addr(ml.owner)}?subject={subject}>\r\n"
            f"Precedence: list\r\n").encode("ascii")


def action_address(ml: MailingList, action: str, token: str) -> str:
    """`list+approve-<token>@domain`; for a quoted list name the suffix goes inside the quotes."""
    local, _, domain = ml.address.rpartition("@")
    return f"{names.quote_local(f'{names.unquote_local(local)}+{action}-{token}')}@{domain}"


CLAIM_LEASE = 600.0  # seconds a handler may take over one post (distributing to a large list) before its
# claim runs out and another approval may take the post (a handler that died: invariant 2)


class HeldPosts:
    """The moderation queue in the store (module doc): `hold`, `get`, `posts`, and `claim` / `drop` /
    `release` for the one handler of a post (invariant 2)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def hold(self, list_address: str, mail_from: str, raw: bytes) -> str:
        """Keep the post (durable when it returns, invariant 1) and return its token. A full disk is
        `InsufficientStorage`, as anywhere in the store."""
        token = secrets.token_hex(16)
        await self.store.hold_post(HeldPost(token, list_address, mail_from, raw, time.time()))
        return token

    async def get(self, token: str) -> HeldPost | None:
        if not TOKEN_RE.match(token):  # invariant 3
            return None
        return await self.store.get_held_post(token)

    async def posts(self) -> list[HeldPost]:
        """Every held post, oldest first."""
        return await self.store.list_held_posts()

    async def claim(self, token: str) -> tuple[HeldPost, str] | None:
        """Take the post for handling (invariant 2): the post and the claim to `drop` or `release` it with, or
        None when it is not held or another handler (of any process or node) has it. A handler that dies leaves
        its claim to run out after `CLAIM_LEASE`: delivered at least once, never twice at once."""
        if not TOKEN_RE.match(token):  # invariant 3
            return None
        claim = secrets.token_hex(16)
        post = await self.store.claim_held_post(token, claim, CLAIM_LEASE)
        return None if post is None else (post, claim)

    async def drop(self, token: str, claim: str) -> bool:
        """Remove the post handled under `claim`; False if the claim ran out and another handler took it."""
        return await self.store.drop_held_post(token, claim)

    async def release(self, token: str, claim: str) -> None:
        """Give the post back unhandled (the handler failed)."""
        await self.store.release_held_post(token, claim)


async def import_held_files(store: Store, directory: Path) -> int:
    """Move the posts an older Postroom held as files (`<token>.eml` and `<token>.json` under `directory`,
    `data_dir/held`) into the store, each file pair removed once its row is durable; the folder goes when empty.
    Returns how many moved (a post already in the store, from an import a crash cut short, counts too). Files
    that do not parse are left in place and logged."""
    def scan() -> list[tuple[str, str, str, bytes, float]]:
        found: list[tuple[str, str, str, bytes, float]] = []
        if not directory.is_dir():
            return found
        for meta in sorted(directory.glob("*.json")):
            token = meta.stem
            if not TOKEN_RE.match(token):
                continue
            try:
                info = json.loads(meta.read_bytes())
                eml = directory / f"{token}.eml"
                found.append((token, str(info["list"]), str(info["mail_from"]), eml.read_bytes(),
                              eml.stat().st_mtime))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("held post file %s not moved into the store: %s", meta, exc)
        return found

    moved = 0
    for token, list_address, mail_from, raw, held_at in await asyncio.to_thread(scan):
        try:
            await store.hold_post(HeldPost(token, list_address, mail_from, raw, held_at))
        except AlreadyExists:
            pass
        for suffix in (".json", ".eml"):
            (directory / f"{token}{suffix}").unlink(missing_ok=True)
        moved += 1
    if moved:
        await asyncio.to_thread(fsync_dir, directory)
        try:
            directory.rmdir()
        except OSError:
            pass  # something else is left in it (logged above if it was a post)
        log.info("held posts moved into the store count=%d from=%s", moved, directory)
    return moved


def moderation_notice(ml: MailingList, token: str, mail_from: str, raw: bytes, hostname: str) -> bytes:
    """The mail the owner gets for a held post: what it is, how to approve or reject, the post attached."""
    # Decoded once here (RFC 2047), then header-safe (`compose` puts it through `field_text`: never decoded again).
    subject = decode_words(_header(raw, b"subject").encode("utf-8")) or "(no subject)"
    approve = action_address(ml, "approve", token)
    reject = action_address(ml, "reject", token)
    text = (f"A post to {ml.address} from <{mail_from}> is waiting for your approval.\n\n"
            f"Subject: {subject}\n\n"
            f"To approve it, send any message to:\n    {approve}\n\n"
            f"To reject it, send any message to:\n    {reject}\n\n"
            f"The post is attached.\n")
    return compose(from_=ml.bounce_address, to=[ml.owner], subject=f"Approval needed: {subject}"[:200],
                   text=text, domain=hostname,
                   attachments=[Attachment("post.eml", raw, "text/plain")],
                   headers=[("Auto-Submitted", "auto-generated")])


def _header(raw: bytes, name: bytes) -> str:
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end]
    for line in head.split(b"\r\n"):
        if line[:len(name) + 1].lower() == name + b":":
            return line[len(name) + 1:].strip().decode("utf-8", "replace")[:200]
    return ""
