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
approval to be the list owner. Held posts live under `<data_dir>/held/` as `<token>.eml` plus `<token>.json`
(list address and original sender), each written to a temporary file, fsync'd, renamed and the directory
fsync'd, before the poster gets `250`.

Invariants
1. A held post is durable before the SMTP `250` that accepted it.
2. A token is used once: approval or rejection removes the held files; a second use is 550 5.1.1. Two uses at
   the same time (a double click, two moderators, two worker processes) are one: the handler holds an exclusive
   `flock` on the post's `.json` file (`claim`) from before it reads the post until after it removed it.
3. Held files are found only by a token of exactly 32 lower-case hex digits (no path can be smuggled in).
4. The header lines `list_headers` writes are ASCII and valid by their RFC's grammar for every list address,
   owner and bounce address the store accepts (see above).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from postroom.fsutil import fsync_dir, write_all
from postroom.mime.compose import Attachment, compose
from postroom.store import names
from postroom.store.api import InsufficientStorage, MailingList, is_out_of_space

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


@dataclass(frozen=True)
class HeldPost:
    token: str
    list_address: str
    mail_from: str
    raw: bytes


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class HeldPosts:
    """The moderation queue on disk (see the module doc)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _hold_sync(self, list_address: str, mail_from: str, raw: bytes) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        _write_durably(self.directory / f"{token}.eml", raw)
        _write_durably(self.directory / f"{token}.json",
                       json.dumps({"list": list_address, "mail_from": mail_from}).encode())
        fsync_dir(self.directory)  # invariant 1
        return token

    async def hold(self, list_address: str, mail_from: str, raw: bytes) -> str:
        """Keep the post (fsync'd) and return its token. A full disk is `InsufficientStorage`, as in the store."""
        try:
            return await asyncio.to_thread(self._hold_sync, list_address, mail_from, raw)
        except OSError as exc:
            if is_out_of_space(exc):
                raise InsufficientStorage.from_os_error(exc) from exc
            raise

    def _get_sync(self, token: str) -> HeldPost | None:
        if not TOKEN_RE.match(token):  # invariant 3
            return None
        try:
            info = json.loads((self.directory / f"{token}.json").read_bytes())
            raw = (self.directory / f"{token}.eml").read_bytes()
        except (OSError, ValueError):
            return None
        return HeldPost(token, str(info["list"]), str(info["mail_from"]), raw)

    async def get(self, token: str) -> HeldPost | None:
        return await asyncio.to_thread(self._get_sync, token)

    def claim(self, token: str) -> int | None:
        """Take the post for handling (invariant 2): an open descriptor holding an exclusive `flock` on its
        `.json` file, or None when it is not held or another request (this process's or another worker's) is
        handling it. Release with `release` after `drop`. A crashed handler's lock goes with its process, so the
        post can be approved again: delivered at least once, never twice at once."""
        if not TOKEN_RE.match(token):  # invariant 3
            return None
        try:
            fd = os.open(self.directory / f"{token}.json", os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def release(fd: int) -> None:
        """End a `claim` (closing the descriptor drops the lock)."""
        os.close(fd)

    def _drop_sync(self, token: str) -> None:
        if not TOKEN_RE.match(token):
            return
        for suffix in (".json", ".eml"):
            try:
                (self.directory / f"{token}{suffix}").unlink()
            except FileNotFoundError:
                pass
        fsync_dir(self.directory)

    async def drop(self, token: str) -> None:
        await asyncio.to_thread(self._drop_sync, token)

    def list_tokens(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if TOKEN_RE.match(p.stem))


def moderation_notice(ml: MailingList, token: str, mail_from: str, raw: bytes, hostname: str) -> bytes:
    """The mail the owner gets for a held post: what it is, how to approve or reject, the post attached."""
    subject = _header(raw, b"subject") or "(no subject)"
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
