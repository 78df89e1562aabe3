"""Delivery status notifications (RFC 3464) as the sender asked for them (RFC 3461): bounces, delays, successes.

Theory of operation
-------------------
The queue collects what happened to recipients of one message (`RecipientReport`: action, status, the remote's
reply) and calls `build_dsn`, which keeps the reports the sender asked for and returns the bytes of one
`multipart/report; report-type=delivery-status` message (RFC 6522, built by `mime.compose.compose_report`):

    1. text/plain               what happened, for people
    2. message/delivery-status  per-message fields, then one block per recipient (RFC 3464 §2.2, §2.3)
    3. message/rfc822           the original message (failures, unless RET=HDRS and if not too large)
       or text/rfc822-headers   its header only (RET=HDRS, delays and successes: RFC 3461 §4.3)

Which reports are sent (RFC 3461 §4.1, NOTIFY): NEVER -> none; a list -> the named kinds (SUCCESS covers
"delivered" and "relayed"); no NOTIFY -> FAILURE and DELAY (the RFC leaves the default to the MTA; Postroom, like
Postfix, also sends delay notices by default). ORCPT and ENVID come back decoded from xtext (RFC 3461 §4,
§4.2, §4.4: the DSN carries the values, not their SMTP encoding) in Original-Recipient and Original-Envelope-Id.
A message whose header is not ASCII (SMTPUTF8, RFC 6532) comes back as message/global or message/global-headers,
and reports naming non-ASCII addresses use message/global-delivery-status (RFC 6533 §3, §6).

Invariants
1. Never a DSN to the null reverse-path (RFC 5321 §4.5.5, RFC 3464 §2.2.1): `build_dsn` returns None for it.
2. The original message is included byte for byte (only a final CRLF is added if it lacked one), except that
   a stray CR, LF or NUL becomes what `mime.lineends.normalise` makes of it: none passes the router's door
   today, but an entry queued by an older version may carry one, and a DSN must not carry it onwards.
3. A DSN is sent from the null reverse-path and says `Auto-Submitted: auto-replied` (RFC 3834 §5), so a DSN
   about a DSN never happens.
4. `Diagnostic-Code: smtp; ...` carries only an SMTP reply that a remote MTA sent (RFC 3464 §2.3.6: the "smtp"
   diagnostic-type is for SMTP replies), and `Remote-MTA` names only the MTA that sent it (§2.3.5: the MTA that
   reported the delivery status). A status Postroom decided itself (no host took the connection, a DNS
   answer, a size or SMTPUTF8 refusal before the transaction, local delivery) has neither field: the Status
   code says what happened and the text/plain part explains it (`RecipientReport.explanation`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postroom.mime.compose import RawPart, compose_report, make_message_id, rfc5322_date
from postroom.mime.lineends import normalise

log = logging.getLogger("postroom.delivery")

RETURN_FULL_LIMIT = 2 * 1024 * 1024  # bytes; a larger original comes back as its header only
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_NOTIFY_OF = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS", "relayed": "SUCCESS",
              "expanded": "SUCCESS"}


@dataclass(frozen=True)
class RecipientReport:
    rcpt: str
    action: str  # one of ACTIONS (RFC 3464 §2.3.3)
    status: str  # RFC 3463 code, "5.1.1"
    orcpt: str = ""  # as stored: "rfc822;" + xtext
    notify: str = ""  # as stored
    # The SMTP reply of the remote MTA that decided the status ("550 5.1.1 No such user"), only when one did:
    # it becomes `Diagnostic-Code: smtp; ...` (invariant 4).
    diagnostic: str = ""
    remote_mta: str = ""  # host name of the MTA that gave `diagnostic`; "" when none answered (invariant 4)
    explanation: str = ""  # our own words for people (the text/plain part only): "connect to ... failed"
    last_attempt: float | None = None
    will_retry_until: float | None = None  # for "delayed"


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: "+XX" is the octet with hex value XX; everything else stands for itself."""
    if "+" not in value:
        return value
    out = bytearray()
    i = 0
    raw = value.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x2B and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789ABCDEFabcdef" for c in b)


def wanted(notify: str, action: str) -> bool:
    """Did the sender ask for a DSN of this `action`? (RFC 3461 §4.1; the default is FAILURE,DELAY.)"""
    kinds = {k.strip().upper() for k in notify.split(",") if k.strip()} or {"FAILURE", "DELAY"}
    if "NEVER" in kinds:
        return False
    return _NOTIFY_OF[action] in kinds


def _date(t: float) -> str:
    # RFC 3464 §2.2.5, §2.3.7, §2.3.9: RFC 5322 date-times, with the real zone offset (RFC 5322 §3.3: "-0000"
    # would say the zone is unknown).
    return rfc5322_date(t)


def mta_name(host: str) -> str:
    """The mta-name of a "dns" Remote-MTA (RFC 3464 §2.3.5): the host's DNS name as routing knew it (the MX
    exchange, the configured route host); a host known only by its address is written as an address literal
    (RFC 5321 §4.1.3: `[192.0.2.1]`, `[IPv6:2001:db8::1]`), which is what a domain position holds for it."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


def _clean(text: str) -> str:
    """A single line, no control characters (field values go into the report verbatim)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:900]


def header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end >= 0:
        return raw[:end + 2]
    end = raw.find(b"\n\n")
    return raw[:end + 1] if end >= 0 else raw


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"  # RFC 6533 §3: "utf-8" address type


def status_fields(reporting_mta: str, envid: str, arrival: float, reports: Sequence[RecipientReport]) -> str:
    """The message/delivery-status body (RFC 3464 §2.1: per-message fields, a blank line, per-recipient)."""
    lines = [f"Reporting-MTA: dns; {reporting_mta}"]
    if envid:
        lines.append(f"Original-Envelope-Id: {_clean(xtext_decode(envid))}")  # RFC 3464 §2.2.1
    lines.append(f"Arrival-Date: {_date(arrival)}")
    for r in reports:
        lines.append("")
        if r.orcpt:
            addr_type, _, addr = r.orcpt.partition(";")
            lines.append(f"Original-Recipient: {_clean(addr_type)};{_clean(xtext_decode(addr))}")  # §2.3.1
        lines.append(f"Final-Recipient: {_address_type(r.rcpt)};{_clean(r.rcpt)}")  # §2.3.2
        lines.append(f"Action: {r.action}")  # §2.3.3
        lines.append(f"Status: {r.status}")  # §2.3.4
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {_clean(mta_name(r.remote_mta))}")  # §2.3.5, invariant 4
        if r.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic)}")  # §2.3.6, invariant 4
        if r.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")  # §2.3.7
        if r.action == "delayed" and r.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")  # §2.3.9
    return "\r\n".join(lines) + "\r\n"


def _said(r: RecipientReport) -> str:
    """One recipient's line of the text/plain part: our explanation, else the remote's reply, else the status."""
    return _clean(r.explanation or r.diagnostic or r.status)


def _human(reporting_mta: str, reports: Sequence[RecipientReport]) -> str:
    failed = [r for r in reports if r.action == "failed"]
    delayed = [r for r in reports if r.action == "delayed"]
    done = [r for r in reports if r.action in ("delivered", "relayed", "expanded")]
    out = [f"This is the mail system at {reporting_mta}.", ""]
    if failed:
        out += ["Your message could not be delivered to the following recipients. It will not be tried again.", ""]
        out += [f"<{r.rcpt}>: {_said(r)}" for r in failed] + [""]
    if delayed:
        until = [r.will_retry_until for r in delayed if r.will_retry_until is not None]
        out += ["Your message could not be delivered yet to the following recipients. It is still being tried"
                + (f" until {_date(min(until))}." if until else "."), "You do not need to send it again.", ""]
        out += [f"<{r.rcpt}>: {_said(r)}" for r in delayed] + [""]
    if done:
        out += ["Your message was delivered to the following recipients"
                + (" (or handed to a server that does not report delivery)" if any(r.action == "relayed"
                                                                                 for r in done) else "") + ".", ""]
        out += [f"<{r.rcpt}>: {_said(r)}" for r in done] + [""]
    return "\r\n".join(out)


def build_dsn(
    *,
    reporting_mta: str,
    mail_from: str,
    envid: str,
    ret: str,
    arrival: float,
    reports: Sequence[RecipientReport],
    original: bytes,
    now: Callable[[], float] = time.time,
    make_id: Callable[[str], str] = make_message_id,
) -> bytes | None:
    """The DSN to send to `mail_from` about `reports`, or None when nothing is to be sent (null sender, or the
    sender asked for none of these kinds)."""
    if not mail_from:
        return None  # invariant 1
    chosen = [r for r in reports if wanted(r.notify, r.action)]
    if not chosen:
        return None
    any_failed = any(r.action == "failed" for r in chosen)
    original = normalise(original)  # invariant 2
    head = header_section(original)
    utf8_header = not head.isascii()
    utf8_addresses = not all(r.rcpt.isascii() and r.orcpt.isascii() for r in chosen)
    # RFC 3461 §4.3: RET applies to failure reports; others carry the header only.
    full = any_failed and ret.upper() != "HDRS" and len(original) <= RETURN_FULL_LIMIT
    if full:
        kind = "message/global" if utf8_header else "message/rfc822"
        body = original if original.endswith(b"\r\n") else original + b"\r\n"  # invariant 2
        # RFC 2046 §5.2.1: message/rfc822 is 7bit or 8bit (never encoded); RFC 6532 §3.5 lets message/global be 8bit.
        returned = RawPart(kind, body, "7bit" if original.isascii() else "8bit")
    else:
        kind = "message/global-headers" if utf8_header else "text/rfc822-headers"
        returned = RawPart(kind, head, "8bit" if not head.isascii() else "7bit")
    if any_failed:
        subject = "Undelivered Mail Returned to Sender"
    elif any(r.action == "delayed" for r in chosen):
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
    status = status_fields(reporting_mta, envid, arrival, chosen)
    status_type = "message/global-delivery-status" if utf8_addresses else "message/delivery-status"
    human = _human(reporting_mta, chosen)
    parts = [
        RawPart("text/plain; charset=utf-8", human.encode("utf-8"), "7bit" if human.isascii() else "8bit"),
        RawPart(status_type, status.encode("utf-8"), "7bit" if status.isascii() else "8bit"),
        returned,
    ]
    try:
        return compose_report(
            from_=f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
            to=[mail_from],
            subject=subject,
            report_type="delivery-status",
            parts=parts,
            headers=[("Auto-Submitted", "auto-replied")],  # invariant 3 (RFC 3834 §5)
            domain=reporting_mta,
            now=now,
            make_id=make_id,
        )
    except ValueError as exc:
        # An envelope sender no To field can carry (a quoted local part holding an encoded word that decodes to
        # CR LF): no report, as for the null sender. The caller records its results all the same; a report
        # that cannot be built must never keep a queue entry from being finished (it would be sent again).
        log.warning("dsn not made for sender %r: %s", mail_from[:200], exc)
        return None
