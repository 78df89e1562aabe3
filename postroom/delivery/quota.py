"""Quotas at delivery: whether a local user can take a message now, and the warning mails at 80 % and 95 %.

Theory of operation
-------------------
The store enforces every limit in the transaction that inserts (store/sqlite/quota.py); this module answers the
question earlier, from the counters (`RecipientFacts.quota`, read with the rest of what delivery needs of a
user: router invariant 19; one row, and the domain's total only when the domain has a limit), so SMTP can refuse
in the dialogue and the router can leave one recipient out instead of failing a delivery for all:

    at RCPT, no size known      refused only if the user (or domain) is already full: no room for one more
                                octet or message ("already over quota", 452 4.2.2)
    at RCPT with SIZE=n, and    refused if n does not fit now (452 4.2.2), or could never fit (n larger than
    at the end of DATA          the limit itself: 552 5.2.2, permanent)

RFC 3463 §3.3: X.2.2 is "mailbox full", "useful for both permanent and persistent transient errors"; 452 and
552 are RFC 5321 §4.2.2's "insufficient system storage" and "exceeded storage allocation" (RFC 1870 §6.2 gives
552 at RCPT for a SIZE that exceeds a recipient's fixed limit).

Warnings: after a delivery (and after an IMAP APPEND or COPY, imap/session.py), `warn` compares the user's
usage with `raise_quota_warned`'s mark; when usage has crossed 80 % or 95 % of a limit (storage or message
count) since the mark was last below, the one caller that raises the mark delivers a warning from
postmaster@<the user's domain> into the user's INBOX, exempt from the quota (else a 95 % warning could itself
be refused). The store lowers the mark when usage falls (schema
invariant 23), so each crossing warns once, not each message. Warnings are about the user's own limits; a
domain quota refuses mail without warning anyone first.

Invariants
1. `refusal` never lets a message through that the store would refuse for the same usage; the store's check
   stays the authority (two deliveries racing past the early check meet `OverQuota` in the transaction, which
   the router answers 452 4.2.2, so the sender retries).
2. A warning is delivered at most once per crossing, by the caller whose `raise_quota_warned` returned True,
   with the null envelope sender (RFC 3834 §3.1.7: an automatic message; nothing bounces back to it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from postroom import metapool as pool
from postroom.config import LimitsConfig
from postroom.delivery.local import return_path
from postroom.mime.compose import compose
from postroom.store.api import AppendRequest, QuotaUsage, Store, quota_level

log = logging.getLogger("postroom.delivery")


@dataclass(frozen=True)
class Refusal:
    """Why a user cannot take a message now. `permanent`: the message alone is larger than a limit (SMTP 552
    5.2.2); otherwise the mailbox is full for now (452 4.2.2). `reason` is a short phrase for logs and replies."""
    permanent: bool
    reason: str

    @property
    def code(self) -> tuple[int, str]:
        """(SMTP reply code, RFC 3463 enhanced status code)."""
        return (552, "5.2.2") if self.permanent else (452, "4.2.2")


def refusal(q: QuotaUsage, size: int | None) -> Refusal | None:
    """Whether a message of `size` octets (None: not known yet, RCPT without SIZE) fits the user's limits now
    (module doc; invariant 1). None when it fits."""
    if size is None:
        if q.storage_limit and q.storage >= q.storage_limit:
            return Refusal(False, "mailbox over quota")
        if q.message_limit and q.messages >= q.message_limit:
            return Refusal(False, "mailbox over its message quota")
        if q.domain_storage_limit and q.domain_storage >= q.domain_storage_limit:
            return Refusal(False, "domain over quota")
        return None
    if q.storage_limit and q.storage + size > q.storage_limit:
        if size > q.storage_limit:
            return Refusal(True, "message larger than the mailbox quota")
        return Refusal(False, "mailbox over quota")
    if q.message_limit and q.messages + 1 > q.message_limit:
        return Refusal(False, "mailbox over its message quota")
    if q.domain_storage_limit and q.domain_storage + size > q.domain_storage_limit:
        if size > q.domain_storage_limit:
            return Refusal(True, "message larger than the domain quota")
        return Refusal(False, "domain over quota")
    return None


def warning_text(address: str, q: QuotaUsage, percent: int) -> str:
    """The body of the warning mail: what is used of which limit, and what to do."""
    lines = [f"Your mailbox {address} has reached {percent} % of its quota.", ""]
    if q.storage_limit:
        lines.append(f"Storage: {q.storage:,} of {q.storage_limit:,} bytes "
                     f"({q.storage * 100 // q.storage_limit} %).")
    if q.message_limit:
        lines.append(f"Messages: {q.messages:,} of {q.message_limit:,} "
                     f"({q.messages * 100 // q.message_limit} %).")
    lines += ["", "When the quota is full, new mail is refused and senders are told the mailbox is full.",
              "Delete messages you no longer need (and expunge them, or empty the trash) to make room."]
    return "\n".join(lines) + "\n"


async def warn(store: Store, limits: LimitsConfig, hostname: str, user_id: int, address: str) -> int:
    """Send the user a quota warning if usage has crossed 80 % or 95 % since the last one (module doc,
    invariant 2). Returns the level warned about, 0 when none was sent."""
    q = await store.get_quota(user_id)
    percent = quota_level(q.storage, q.messages, q.storage_limit, q.message_limit)
    if percent <= q.warned or percent == 0:
        return 0
    if not await store.raise_quota_warned(user_id, percent):
        return 0  # another delivery raised it first and sends the warning
    domain = address.rpartition("@")[2]
    raw = compose(from_=f"postmaster@{domain}", to=[address], subject=f"Your mailbox is {percent} % full",
                  text=warning_text(address, q, percent), domain=hostname,
                  headers=[("Auto-Submitted", "auto-generated")])  # RFC 3834 §5
    box = await store.get_mailbox(user_id, "INBOX")
    if box is None:
        return 0
    stored = return_path("") + raw
    request = AppendRequest(stored, meta=await pool.meta_bytes(stored, limits))
    await store.deliver([box.id], request, enforce_quota=False)
    log.info("quota warning sent user=%s level=%d storage=%d messages=%d", address, percent, q.storage, q.messages)
    return percent
