"""The out-of-office auto-reply (RFC 3834), with no I/O of its own: whether a delivered message gets one, and the
reply's bytes. The router (router.py invariant 16) asks after every local delivery, and sends the reply through
its own `accept`, like any mail this server sends.

Theory of operation
-------------------
A user turns the reply on in the webmail's settings (web/settings.py; `UserSettings.vacation*` in the store).
`active(settings, now)` says whether it is on at `now`: switched on, and `now` within the optional start and end
times (start inclusive, end exclusive). `skip_reason(mail_from, head, own)` then goes through the cases where
RFC 3834 says, or a careful responder knows, that no reply may go, and names the first that holds:

    null-sender      MAIL FROM:<> (§2: a response MUST NOT go to a null address; bounces, DSNs, other replies)
    own-address      the sender is one of the user's own addresses (a reply to oneself)
    auto-submitted   an Auto-Submitted field other than "no" (§2, §5: the message is itself automatic)
    list             any List-* field (RFC 2369, RFC 2919 List-Id: §2, mail from a list)
    precedence       Precedence bulk, list or junk, its first word (§2: the de facto markers of bulk mail)
    robot-sender     a sender local part owner-*, *-request, *-bounces, *-owner, MAILER-DAEMON, LISTSERV,
                     majordomo, or postmaster (the list-manager and daemon addresses RFC 5230 §4.6 names, which
                     RFC 3834 §2's advice on list traffic means in practice, and Mailman's)
    odd-sender       an envelope sender with an RFC 2047 word or a control character (no To field can carry it)
    not-addressed    none of the user's addresses (their own and the explicit aliases leading to them, with or
                     without a +detail) in To, Cc, Bcc, Resent-To, Resent-Cc or Resent-Bcc (§2: a personal
                     "away" notice SHOULD NOT be sent unless the recipient's address is explicitly there; mail
                     that reached the user by Bcc of a list expansion or a catch-all is not addressed to them)

The router adds one more, `list-sender`: the sender is one of this server's own lists or a list's own
address (a post relayed by a local list carries its List-* fields; a forged MAIL FROM of the list's address
does not). Then the store decides "at most once per sender per N days" (`Store.claim_auto_reply`, atomic
across processes: §2 "SHOULD NOT issue the same response to the same sender more than once within a period of
several days... a 7-day period is RECOMMENDED"). The router never asks about copies filed into Junk.

`build(...)` writes the reply (§3): To is the envelope sender (§4, where responses go), From the
user's address that the message was sent to with its display name, Subject the configured one or "Auto: " and
the original's (§3: the response's header fields), `In-Reply-To` the original's Message-ID and `References`
its References (or In-Reply-To) followed by it (§3, as a reply, RFC 5322 §3.6.4), `Auto-Submitted:
auto-replied` (§5), and
the text as text/plain UTF-8. The router sends it from the null reverse-path (MAIL FROM:<>, §3: so that a
failure or another responder never answers back), DKIM-signed by the queue when it leaves the server.

Invariants
1. No reply to a null sender, to mail with an Auto-Submitted field other than "no", a List-* field, Precedence
   bulk/list/junk, from a robot address, or not addressed to the user (module doc's table).
2. Every reply carries `Auto-Submitted: auto-replied` and goes out from the null reverse-path, so no responder
   (this one included: invariant 1) answers it.
3. Text from the original message (its subject, decoded once) and from the settings goes into the reply's
   header through `mime.headers.field_text`, so it is one line and the header registry never decodes an RFC
   2047 word in it again: no field and no body of the reply is written by the sender.
4. The work is bounded by the header (at most `router.HEAD_LIMIT` octets) and the user's settings (length-limited
   by web/settings.py): it runs on the event loop.
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
from collections.abc import Iterable, Sequence

from postroom.mime.address import parse_address_list
from postroom.mime.compose import make_message_id, msg_ids, rfc5322_date
from postroom.mime.headers import Field, field_text, split_fields
from postroom.mime.text import decode_words
from postroom.store.api import UserSettings

POLICY = email.policy.SMTP
DAY = 86400.0
MAX_DAYS = 365  # the window the settings page allows at most
RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")  # RFC 3834 §2
BULK = {"bulk", "list", "junk"}
ROBOT_LOCALS = {"mailer-daemon", "listserv", "majordomo", "postmaster", "mailer_daemon"}


def active(settings: UserSettings, now: float) -> bool:
    """Is the user's auto-reply on at `now` (seconds since the epoch): switched on and within its times?"""
    if not settings.vacation:
        return False
    if settings.vacation_start is not None and now < settings.vacation_start:
        return False
    return settings.vacation_end is None or now < settings.vacation_end


def window_start(settings: UserSettings, now: float) -> float:
    """The time before which an earlier reply to a sender no longer counts: `vacation_days` (1 to MAX_DAYS)
    before `now`."""
    return now - max(1, min(MAX_DAYS, settings.vacation_days)) * DAY


def _key(address: str) -> str:
    """An address's comparison key: lower case, the +detail of the local part taken off."""
    local, _, domain = address.strip().lower().rpartition("@")
    if "+" in local and not local.startswith('"'):
        local = local.split("+", 1)[0]
    return f"{local}@{domain}"


def header_fields(head: bytes) -> list[Field]:
    """The header fields of a message's start (`head`: at least its whole header, or all of it if shorter)."""
    end = head.find(b"\r\n\r\n")
    return split_fields(head, 0, len(head) if end < 0 else end + 2)[0]


def skip_reason(mail_from: str, fields: Sequence[Field], own: Iterable[str]) -> str | None:
    """Why no auto-reply may answer this message (invariant 1; the module doc's table), or None: it may (then
    only the once-per-window record decides). `own` are the user's addresses."""
    if not mail_from:
        return "null-sender"
    own_keys = {_key(a) for a in own}
    sender = _key(mail_from)
    if sender in own_keys:
        return "own-address"
    for f in fields:
        if f.name == "auto-submitted":
            # RFC 3834 §5: "auto-submitted: no" is the only value that means a person sent it; parameters may
            # follow a ";" (§5.1).
            value = f.unfolded().split(b";", 1)[0].strip().lower()
            if value != b"no":
                return "auto-submitted"
        elif f.name.startswith("list-"):
            return "list"
        elif f.name == "precedence" and _precedence(f.unfolded()) in BULK:
            return "precedence"
    local = sender.rpartition("@")[0]
    if (local.startswith("owner-") or local.endswith(("-request", "-bounces", "-owner"))
            or local in ROBOT_LOCALS):
        return "robot-sender"
    if "=?" in mail_from or any(ord(c) < 33 or ord(c) == 127 for c in mail_from):
        return "odd-sender"  # an encoded word or a control character in the address: no header can carry it
    for f in fields:
        if f.name in RECIPIENT_FIELDS:
            for a in parse_address_list(f.value):
                if a.mailbox and a.host and _key(f"{a.mailbox}@{a.host}") in own_keys:
                    return None
    return "not-addressed"


def _precedence(value: bytes) -> str:
    """The first word of a Precedence field, lower case ("bulk (list)" and "Bulk" are bulk)."""
    words = value.decode("ascii", "replace").replace("(", " ").split()
    return words[0].lower() if words else ""


def addressed_as(fields: Sequence[Field], own: Sequence[str]) -> str:
    """Which of the user's addresses `own` (their own first) the message names in a recipient field; the first
    of `own` when none (a message `skip_reason` let through names one)."""
    keys = {_key(a): a for a in own}
    for f in fields:
        if f.name in RECIPIENT_FIELDS:
            for a in parse_address_list(f.value):
                if a.mailbox and a.host:
                    found = keys.get(_key(f"{a.mailbox}@{a.host}"))
                    if found is not None:
                        return found
    return own[0] if own else ""


def build(settings: UserSettings, *, from_address: str, to: str, fields: Sequence[Field], hostname: str,
          now: float) -> bytes:
    """The reply's bytes (CRLF, ASCII header: RFC 2047 for names and subjects) to the envelope sender `to`, from
    `from_address` with its display name (the identity's, else the user's), answering the message whose header
    fields are `fields` (module doc; invariant 2)."""
    original = {f.name: f for f in reversed(fields)}  # the first of each name

    def value(name: str) -> str:
        f = original.get(name)
        return decode_words(f.unfolded()) if f is not None else ""

    # invariant 3: text goes into the header through field_text, never decoded twice
    subject = field_text(settings.vacation_subject) or "Auto: " + (field_text(value("subject")) or "(no subject)")
    name = settings.identity_names.get(from_address.lower(), "") or settings.display_name
    msg = email.message.EmailMessage(policy=POLICY)
    msg["From"] = email.utils.formataddr((field_text(name, 200), from_address)) if name else from_address
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = rfc5322_date(now)
    msg["Message-ID"] = make_message_id(hostname)
    # msg_ids drops an id holding "=?": decoded once here, the header registry would decode it again (invariant 3)
    message_id = msg_ids(value("message-id"), limit=1)
    if message_id:
        refs = msg_ids(value("references"), limit=19) or msg_ids(value("in-reply-to"), limit=1)
        msg["In-Reply-To"] = message_id
        msg["References"] = f"{refs} {message_id}".strip()  # the last few ancestors: a bounded field
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5 (invariant 2)
    text = settings.vacation_text.replace("\r\n", "\n").replace("\r", "\n")
    text = text if text.endswith("\n") else text + "\n"
    # 7bit or quoted-printable, never 8bit: the reply may leave through a server without 8BITMIME (RFC 6152)
    msg.set_content(text, charset="utf-8", cte="7bit" if text.isascii() else "quoted-printable")
    return msg.as_bytes(policy=POLICY)
