"""Authentication-Results (RFC 8601): the header field that carries this server's verdicts to the reader.

Theory of operation
-------------------
`header(authserv_id, spf, helo_spf, dkim, dmarc)` writes one field, one result per folded line:

    Authentication-Results: mx.example.org;
        iprev=pass policy.iprev=192.0.2.7 (mail.a.example);
        spf=pass smtp.mailfrom=alice@a.example;
        spf=pass smtp.helo=mail.a.example;
        dkim=pass header.d=a.example header.s=sel header.b=AbCdEfGh;
        dmarc=pass header.from=a.example;
        arc=pass (i=1 sealer=list.example) header.oldest-pass=0 smtp.remote-ip=192.0.2.7

(continuation lines start with a tab; RFC 8601 §2.2 syntax, §2.7 methods and properties, §3 iprev from the
door's forward-confirmed reverse DNS (smtp/dnsbl.py), RFC 6008 header.b, RFC 7489 §11.2 header.from, RFC 8617
§10.1 smtp.remote-ip and header.oldest-pass). A check
that was not run is left out; with none run the field says `none` (§2.2). Reasons go in `reason="..."` (§2.3).

`own_fields(head, authserv_id)` finds the Authentication-Results fields in a message's header that claim our
authserv-id, which the MX must remove before adding its own (§5: a border MTA "MUST ... delete" such fields
that claim to be from it, else anyone could write "dkim=pass" in our name). `remove_spans` cuts them out.

Invariants
1. The field is ASCII, each line under 998 octets (RFC 5322 §2.1.1): values are cut at `MAX_VALUE` and anything
   outside the token characters is quoted (§2.2 `value` is a token or a quoted-string).
2. Only fields whose authserv-id equals ours (case-insensitive) are removed; every other byte of the message is
   left as it came.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from postroom.inbound.arc import ArcResult
from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcResult
from postroom.inbound.spf import SpfResult

MAX_VALUE = 300  # characters of one property value or reason (invariant 1)
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+\Z")  # RFC 2045 token plus "@" (RFC 8601 §2.2 pvalue)


def _value(text: str) -> str:
    text = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text[:MAX_VALUE])
    if text and _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    """Text safe inside an RFC 5322 comment: printable ASCII without parentheses or backslashes."""
    return "".join(c if 0x20 <= ord(c) < 0x7F and c not in "()\\" else "?" for c in text[:MAX_VALUE])


def _reason(text: str) -> str:
    return f" reason={_value(text)}" if text else ""


def header(authserv_id: str, *, spf: SpfResult | None = None, helo_spf: SpfResult | None = None,
           mail_from: str = "", helo: str = "", dkim: Sequence[DkimResult] | None = None,
           dmarc: DmarcResult | None = None, arc: ArcResult | None = None, remote_ip: str = "",
           iprev: tuple[str, str, str] | None = None) -> bytes:
    """The Authentication-Results field (with its CRLF) for the results given (module doc); `remote_ip` is the
    client's address, written with the ARC result (RFC 8617 §10.1 smtp.remote-ip). `iprev`: (result, client
    address, confirmed name or "unknown") of the reverse DNS check (RFC 8601 §3)."""
    parts: list[str] = []
    if iprev is not None:
        result, ip, name = iprev
        # RFC 8601 §2.7.3: the property is policy.iprev, the address queried; the name goes in a comment.
        comment = f" ({_comment(name)})" if result == "pass" and name else ""
        parts.append(f"iprev={result} policy.iprev={_value(ip)}{comment}")
    if spf is not None:
        identity = f"smtp.mailfrom={_value(mail_from)}" if mail_from else f"smtp.helo={_value(helo)}"
        parts.append(f"spf={spf.result}{_reason(spf.reason)} {identity}")
    if helo_spf is not None:
        parts.append(f"spf={helo_spf.result}{_reason(helo_spf.reason)} smtp.helo={_value(helo)}")
    if dkim is not None:
        if not dkim:
            parts.append("dkim=none")
        for r in dkim:
            props = "".join(f" header.{k}={_value(v)}" for k, v in (("d", r.domain), ("s", r.selector),
                                                                    ("b", r.b)) if v)
            parts.append(f"dkim={r.result}{_reason(r.reason)}{props}")
    if dmarc is not None:
        comment = f" (p={dmarc.policy} dis={dmarc.disposition})" if dmarc.policy else ""
        prop = f" header.from={_value(dmarc.domain)}" if dmarc.domain else ""
        if dmarc.override:
            # RFC 7489 §7.2 local policy: the owner's policy was not applied; RFC 8617 §7.2: because of ARC. The
            # reason names the override ("arc"), the comment the sealer and what its first hop recorded.
            comment = f" (p={dmarc.policy} dis=none; arc override: {_comment(dmarc.override)})"
            parts.append(f'dmarc={dmarc.result}{comment} reason="arc"{prop}')
        else:
            parts.append(f"dmarc={dmarc.result}{comment}{_reason(dmarc.reason)}{prop}")
    if arc is not None:
        # RFC 8617 §10.1 registers smtp.remote-ip and header.oldest-pass for the "arc" method.
        props = f" header.oldest-pass={arc.oldest_pass}" if arc.result == "pass" and arc.oldest_pass is not None \
            else ""
        ip = f" smtp.remote-ip={_value(remote_ip)}" if remote_ip else ""
        comment = f" (i={arc.n} sealer={_comment(arc.sealer)})" if arc.n and arc.sealer else ""
        parts.append(f"arc={arc.result}{comment}{_reason(arc.reason)}{props}{ip}")
    if not parts:
        parts.append("none")
    text = f"Authentication-Results: {_value(authserv_id)};\r\n\t" + ";\r\n\t".join(parts) + "\r\n"
    return text.encode("ascii", "replace")


def _header_end(head: bytes) -> int:
    if head.startswith(b"\r\n"):
        return 0
    end = head.find(b"\r\n\r\n")
    return len(head) if end < 0 else end + 2


_FIELD_START = re.compile(rb"(?im)^authentication-results[ \t]*:")


def _authserv_id(value: bytes) -> str:
    """The authserv-id of a field value (RFC 8601 §2.2: [CFWS] authserv-id): comments and folding skipped."""
    text = re.sub(rb"\r?\n[ \t]", b" ", value).decode("ascii", "replace")
    while True:
        text = text.lstrip()
        if not text.startswith("("):
            break
        depth, cut = 0, len(text)
        for i, c in enumerate(text):
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    cut = i + 1
                    break
        text = text[cut:]
    if text.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        return re.sub(r"\\(.)", r"\1", m.group(1)).lower() if m else ""
    return re.split(r"[\s;(]", text, maxsplit=1)[0].lower()


def field_end(block: bytes, pos: int) -> int:
    """The end of the header field that goes on at `pos` in a header `block`: past its line end and every
    continuation line (RFC 5322 §2.2.3: a line that starts with a space or tab goes on the field before)."""
    stop = pos
    while True:
        nl = block.find(b"\n", stop)
        if nl < 0:
            return len(block)
        stop = nl + 1
        if stop >= len(block) or block[stop:stop + 1] not in (b" ", b"\t"):
            return stop


def own_fields(head: bytes, authserv_id: str) -> list[tuple[int, int]]:
    """Byte spans [start, end) in `head` (the message start, CRLF line ends) of the Authentication-Results fields
    in its header that claim `authserv_id` (invariant 2), continuation lines included."""
    end = _header_end(head)
    block = head[:end]
    ours = authserv_id.lower()
    spans = []
    for m in _FIELD_START.finditer(block):
        stop = field_end(block, m.end())
        if _authserv_id(block[m.end():stop]) == ours:
            spans.append((m.start(), stop))
    return spans


def remove_spans(data: bytes, spans: Sequence[tuple[int, int]]) -> bytes:
    """`data` without the byte ranges `spans` (sorted, not overlapping)."""
    out, pos = [], 0
    for start, stop in spans:
        out.append(data[pos:start])
        pos = stop
    out.append(data[pos:])
    return b"".join(out)
