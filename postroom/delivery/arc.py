"""ARC sealing (RFC 8617 §5.1) of the copies Postroom itself sends on: list posts exploded to remote members and
mail forwarded (an alias, a catch-all) to remote addresses.

Theory of operation
-------------------
A forward or a list breaks what the receiver could check: SPF (the list's or the SRS envelope sender is not the
author's), and DKIM when the list changes the message. ARC lets the next hop see what Postroom saw: each copy
gets one ARC Set (RFC 8617 §4.1), prepended just before it is queued:

    ARC-Seal: i=N+1; cv=none|pass|fail; a=rsa-sha256; d=<domain>; s=<selector>; t=...; b=...
    ARC-Message-Signature: i=N+1; a=rsa-sha256; c=relaxed/relaxed; d=...; s=...; h=...; bh=...; b=...
    ARC-Authentication-Results: i=N+1; <our authserv-id>; <our Authentication-Results>

`Sealer.seal(raw | staged, domain, submitted)` makes it, where `domain` is the forwarding domain (the list's
domain; the domain of the local address that forwarded) and must be local with DKIM keys: the set is signed
with its RSA key and selector (dkimpy's ARC signer writes rsa-sha256 only; the Ed25519 key is not used here).

- The AAR (§4.1.1) copies the Authentication-Results field this server added when the message arrived on the MX
  (inbound/check.py; any field claiming our authserv-id that came from outside was removed at the door, RFC
  8601 §5). A message that came in by submission (`submitted`: its sender was checked) has none: the AAR then
  says `auth=pass` (RFC 8601 §2.7.4), and for anything else without one, `none` (nothing was checked).
- `cv=` (§4.1.3) is the chain's result in that field (`arc=` written by inbound/arc.py): `none` for the first
  set, `pass`, or `fail`. A failed chain is sealed with only our own set in the seal's scope (§5.1.2), which
  tells every later hop the chain is over; a chain whose newest seal already says `cv=fail` gets no new set
  (§5.1: "MUST NOT"), and neither does one at 50 sets (§4.2.1) or one whose result we do not know (the field
  has no `arc=`: dkimpy's signer then declines).
- The AMS (§4.1.2) signs the identity and content fields present (delivery/dkim.py `SIGNED_HEADERS`, with
  the List-* fields a list copy carries, and From once more than present) and the body: it is made after the
  list's own changes, so it covers what the next hop sees. Nothing else in the copy changes (invariant 1).

The signing (canonicalisation, hashing, RSA) runs in a `metapool.work` worker (kind "arc_seal"), never on the
event loop; a staged message goes there as its start plus its file.

Invariants
1. The copy's bytes are the original's with the ARC Set prepended, or the original unchanged; never refolded.
2. Sealing never stops a message: any failure (no keys, a worker error, dkimpy declining) is logged and the
   copy goes out unsealed.
3. Only a local domain with a DKIM RSA key seals, and only as itself (`d=` is the forwarding domain).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from postroom.delivery.dkim import SIGNED_HEADERS, Signer, split_message
from postroom.inbound.arc import MAX_SETS, arc_fields
from postroom.inbound.authres import own_fields
from postroom.store.api import Store

log = logging.getLogger("postroom.arc")

HEAD_LIMIT = 256 * 1024  # bytes of a message start read for its header fields


class Sealer:
    """Seals copies for the forwarding domains of one store (module doc). `authserv_id` is this server's
    (`server.hostname`), the one its Authentication-Results fields carry."""

    def __init__(self, store: Store, authserv_id: str, signer: Signer | None = None) -> None:
        self.authserv_id = authserv_id
        self.keys = signer if signer is not None else Signer(store)  # its 60-second cache of domain keys

    async def seal(self, raw: bytes, domain: str, *, staged: Path | None = None, submitted: bool = False) -> bytes:
        """The ARC Set (three fields, CRLF line ends) to prepend to the message `raw` (with `staged`: its start,
        the rest in that file) forwarded by the local `domain`; b"" when it gets none (module doc, invariant 2).
        `submitted`: the message came by submission or another checked source (its sender was checked)."""
        head = raw[:HEAD_LIMIT]
        fields = arc_fields(head)
        if fields:
            newest = max((f for f in fields if f.i is not None and f.name == "arc-seal"), key=lambda f: f.i or 0,
                         default=None)
            if newest is not None and (newest.tags or {}).get("cv", "").lower() == "fail":
                return b""  # RFC 8617 §5.1: no set after a seal that says cv=fail
            if max((f.i or 0) for f in fields) >= MAX_SETS:
                return b""  # RFC 8617 §4.2.1: no instance past 50
        d = await self.keys._domain(domain.lower().rstrip("."))
        if d is None or not d.dkim_private_key:
            return b""  # invariant 3
        prepend = ""
        if not own_fields(head, self.authserv_id):
            prepend = (f"Authentication-Results: {self.authserv_id};"
                       f" {'auth=pass' if submitted else 'none'}\r\n")
        fields_present, _ = split_message(head)
        present = {name.decode("ascii", "replace") for name, _ in fields_present}
        names = [n for n in SIGNED_HEADERS if n in present] + ["from"]  # From over-signed (RFC 6376 §8.15)
        params: dict[str, object] = {"selector": d.dkim_selector, "domain": d.name, "key": d.dkim_private_key,
                                     "srv_id": self.authserv_id, "prepend": prepend, "headers": names}
        from postroom import metapool as pool

        try:
            out = await pool.work("arc_seal", params, raw=raw, path=staged)
        except pool.WorkFailed as e:
            log.warning("arc seal not added domain=%s reason=%r", d.name, str(e)[:200])
            return b""
        if not out:
            log.info("arc seal not added domain=%s reason=%r", d.name, "the chain's result is unknown")
            return b""
        m = re.match(rb"ARC-Seal: i=([0-9]+); cv=([a-z]+)", out)
        log.info("arc sealed domain=%s i=%s cv=%s", d.name, m.group(1).decode() if m else "?",
                 m.group(2).decode() if m else "?")
        return out


# ---- in the worker process (metapool.py job kind "arc_seal") ----------------------------------------------------

def seal_in_worker(raw: bytes, params: dict[str, Any]) -> bytes:
    """The ARC Set for `raw` by dkimpy's `arc_sign` with `params` (selector, domain, key: PKCS#8 PEM, srv_id,
    prepend: an Authentication-Results field to read the AAR from when the message has none of ours, headers:
    the names the AMS signs). Returns the three fields (CRLF line ends), or b"" when dkimpy declines to seal."""
    import dkim  # type: ignore[import-untyped]

    message = str(params.get("prepend", "")).encode("ascii", "replace") + raw
    # A DKIMException (a bad key, a malformed chain) goes back as the job's error: logged, unsealed (invariant 2).
    fields = dkim.arc_sign(message, str(params["selector"]).encode("ascii"), str(params["domain"]).encode("ascii"),
                           str(params["key"]).encode("ascii"), str(params["srv_id"]).encode("ascii"),
                           include_headers=[str(h).encode("ascii") for h in params["headers"]])
    out = b"".join(fields)
    # dkimpy folds with CRLF (its linesep); make sure every line ends with one and nothing else.
    return re.sub(rb"\r?\n", b"\r\n", out)
