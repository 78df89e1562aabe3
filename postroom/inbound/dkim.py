"""DKIM verification (RFC 6376) of every signature on an inbound message, with RFC 8301 and RFC 8463.

Theory of operation
-------------------
`verify_message(dns, raw | path, head)` works in three steps:

1. On the event loop, over the header only (`head`, bounded by the caller): find the DKIM-Signature fields and
   read their tags (`signature_tags`). Signatures that need no cryptography to judge are judged here: a tag list
   that does not parse or lacks a required tag is `neutral`; `a=rsa-sha1` is `policy` (RFC 8301 §3.1: "MUST
   NOT consider signatures using SHA-1 valid"). At most `MAX_SIGNATURES` are verified; the rest are `policy`.
2. The keys (`<s>._domainkey.<d>` TXT, RFC 6376 §3.6.2.1) are fetched through the injected async DNS
   (`SpfDns.txt`, the server's bounded resolver), all at once. A time-out or server failure is `temperror`
   for that signature; no such name or no record is `permerror` ("no key", §6.1.2).
3. The message and the keys found go to a worker process (`metapool.work`, job kind "dkim"), where dkimpy
   verifies each remaining signature with a `dnsfunc` that only answers from the keys passed in, so the worker
   does no I/O but reading the message. Canonicalisation and hashing grow with the message: never on the loop.

What each outcome is called (RFC 8601 §2.7.1):

    pass        the signature verified
    fail        it did not (body hash or signature mismatch)
    policy      verified or not, not acceptable here: an RSA key under 1024 bits (RFC 8301 §3.2), SHA-1,
                an expired signature (`x=` in the past, §3.5) or one dated in the future (`t=`); dkimpy allows
                10 hours of clock slop on both
    neutral     the signature's tags are malformed (§6.1.1)
    permerror   the key is missing or malformed (§6.1.2)
    temperror   the key lookup failed for now, or the worker did not finish in time

A passing signature with `l=` that covers less than the whole (canonicalised) body says so in its reason and has
`whole_body` False: DMARC does not count it as aligned (content was added after signing, RFC 6376 §8.2).

Invariants
1. No canonicalisation, hashing or public-key work on the event loop; the header scan is linear in the header.
2. Every signature gets exactly one result, in the order the signatures appear; nothing here raises for
   anything the message or DNS holds.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from postroom.delivery.mx import DnsNotFound, DnsTemporary

MAX_SIGNATURES = 10  # signatures verified per message (RFC 6376 §6.1 lets verifiers limit them)
REQUIRED = ("v", "a", "b", "bh", "d", "h", "s")  # RFC 6376 §3.5: required tags


class KeyDns(Protocol):
    async def txt(self, name: str) -> list[bytes]: ...


@dataclass(frozen=True)
class DkimResult:
    """One signature's verdict: `result` (module doc), its `domain` (d=), `selector` (s=), the start of its
    `b=` value (RFC 6008 header.b), `reason` for logs and comments, and whether a pass covers the whole body."""

    result: str
    domain: str = ""
    selector: str = ""
    b: str = ""
    reason: str = ""
    whole_body: bool = True


_FIELD = re.compile(rb"(?m)^DKIM-Signature:((?:.*)(?:\r?\n[ \t].*)*)", re.IGNORECASE)


def header_block(head: bytes) -> bytes:
    """The header section of a message start (RFC 5322 §2.1: up to the first empty line)."""
    if head.startswith(b"\r\n") or head.startswith(b"\n"):
        return b""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    return head if end < 0 else head[:end + 2]


def signature_tags(head: bytes) -> list[dict[str, str] | None]:
    """The tags of each DKIM-Signature field in the header of `head`, in order; None for a field whose tag list
    does not parse (RFC 6376 §3.2: tag=value; a tag twice is an error)."""
    out: list[dict[str, str] | None] = []
    for m in _FIELD.finditer(header_block(head)):
        value = re.sub(rb"\r?\n[ \t]", b" ", m.group(1)).decode("ascii", "replace")
        tags: dict[str, str] | None = {}
        for part in value.split(";"):
            if not part.strip():
                continue
            name, eq, v = part.partition("=")
            name = name.strip()
            if not eq or not re.match(r"[A-Za-z][A-Za-z0-9_]*\Z", name) or tags is None or name in tags:
                tags = None
                break
            tags[name] = v.strip()
        out.append(tags)
    return out


def _b_start(tags: dict[str, str]) -> str:
    return re.sub(r"\s+", "", tags.get("b", ""))[:8]


async def _key(dns: KeyDns, name: str) -> tuple[str, bytes | None, str]:
    """(outcome, key record, reason): "ok", "permerror" or "temperror"."""
    try:
        records = await dns.txt(name)
    except DnsNotFound:
        return "permerror", None, f"no key at {name}"
    except DnsTemporary as e:
        return "temperror", None, f"key lookup: {e}"
    if not records:
        return "permerror", None, f"no key at {name}"
    return "ok", records[0], ""  # RFC 6376 §3.6.2.2: several records give undefined results; take the first


async def verify_message(dns: KeyDns, head: bytes, raw: bytes | None = None, path: Path | None = None,
                         ) -> list[DkimResult]:
    """Verify every DKIM-Signature of the message `raw` (or the file at `path`), whose start is `head`.
    Returns one DkimResult per signature field, in order ([] for an unsigned message). Never raises (inv. 2)."""
    from postroom import metapool as pool  # the pool imports this module in its workers

    all_tags = signature_tags(head)
    results: list[DkimResult | None] = []
    todo: dict[int, str] = {}  # signature index -> key name
    for i, tags in enumerate(all_tags):
        if tags is None:
            results.append(DkimResult("neutral", reason="malformed tag list"))
            continue
        d, s, b = tags.get("d", "").lower(), tags.get("s", ""), _b_start(tags)
        missing = [t for t in REQUIRED if t not in tags]
        if missing:
            results.append(DkimResult("neutral", d, s, b, f"missing {'/'.join(missing)}="))
        elif tags["a"].lower() == "rsa-sha1":
            results.append(DkimResult("policy", d, s, b, "rsa-sha1 (RFC 8301)"))
        elif len(todo) >= MAX_SIGNATURES:
            results.append(DkimResult("policy", d, s, b, f"more than {MAX_SIGNATURES} signatures"))
        else:
            results.append(None)
            todo[i] = f"{s}._domainkey.{d}"
    if not todo:
        return [r for r in results if r is not None]
    names = sorted(set(todo.values()))
    looked = dict(zip(names, await asyncio.gather(*(_key(dns, n) for n in names))))
    keys = {n: k.decode("ascii", "replace") for n, (o, k, _) in looked.items() if o == "ok" and k is not None}
    verify = [i for i, n in todo.items() if looked[n][0] == "ok"]
    verdicts: dict[int, dict[str, Any]] = {}
    if verify:
        params: dict[str, object] = {"keys": keys, "indices": verify}
        try:
            payload = await pool.work("dkim", params, raw=raw, path=path)
            verdicts = {int(k): v for k, v in json.loads(payload).items()}
        except Exception as e:  # noqa: BLE001 - a dead or slow worker: temperror, never an exception (inv. 2)
            verdicts = {i: {"result": "temperror", "reason": f"verifier: {type(e).__name__}"} for i in verify}
    out: list[DkimResult] = []
    for i, r in enumerate(results):
        if r is not None:
            out.append(r)
            continue
        tags = all_tags[i]
        assert tags is not None
        d, s, b = tags["d"].lower(), tags["s"], _b_start(tags)
        outcome, _, why = looked[todo[i]]
        if outcome != "ok":
            out.append(DkimResult(outcome, d, s, b, why))
            continue
        v = verdicts.get(i, {"result": "temperror", "reason": "not verified"})
        out.append(DkimResult(str(v["result"]), d, s, b, str(v.get("reason", "")), bool(v.get("whole", True))))
    return out


# ---- in the worker process (metapool.py job kind "dkim") --------------------------------------------------------

def verify_in_worker(raw: bytes, params: dict[str, Any]) -> bytes:
    """Verify the signatures `params["indices"]` of `raw` with the keys `params["keys"]` (name -> TXT record).
    Returns JSON {index: {"result", "reason", "whole"}}. Runs dkimpy; no DNS (the dnsfunc answers from keys)."""
    import dkim  # type: ignore[import-untyped]
    from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]

    keys: dict[str, str] = params["keys"]

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes:
        n = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        return keys.get(n.rstrip(".").lower(), keys.get(n.rstrip("."), "")).encode("ascii", "replace")

    keys = {k.lower(): v for k, v in keys.items()}
    out: dict[str, dict[str, object]] = {}
    for idx in params["indices"]:
        d = dkim.DKIM(raw, minkey=1024)  # RFC 8301 §3.2: RSA keys under 1024 bits are refused
        verdict: dict[str, object]
        try:
            tags = dkim.util.parse_tag_value(
                [v for k, v in d.headers if k.lower() == b"dkim-signature"][idx])
            name = tags[b"s"] + b"._domainkey." + tags[b"d"]
            # dkimpy's verify() turns a bad key into a plain False; judge the key first (RFC 6376 §6.1.2).
            dkim.evaluate_pk(name, dnsfunc(name))
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
            verdict = {"result": "pass" if ok else "fail", "reason": "" if ok else "signature did not verify"}
            if ok and d.signature_fields and b"l" in d.signature_fields:
                sig = d.signature_fields
                length = int(sig[b"l"])
                body = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple")).canonicalize_body(d.body)
                if len(body) > length:
                    verdict["reason"] = f"l={length} covers {length} of {len(body)} body bytes"
                    verdict["whole"] = False
                else:
                    verdict["reason"] = f"l={length} covers the whole body"
        except dkim.KeyFormatError as e:
            text = str(e)
            if "too small" in text:
                verdict = {"result": "policy", "reason": f"key under 1024 bits ({text.rsplit(' ', 1)[-1]})"}
            else:
                verdict = {"result": "permerror", "reason": f"bad key: {text[:80]}"}
        except dkim.ValidationError as e:
            text = str(e)
            if "body hash mismatch" in text:
                verdict = {"result": "fail", "reason": "body hash did not verify"}
            elif "x= value is past" in text:
                verdict = {"result": "policy", "reason": "signature expired"}
            elif "in the future" in text:
                verdict = {"result": "policy", "reason": "signature dated in the future"}
            else:
                verdict = {"result": "neutral", "reason": text[:80]}
        except dkim.DKIMException as e:
            verdict = {"result": "neutral", "reason": str(e)[:80]}
        except Exception as e:  # noqa: BLE001 - dkimpy on hostile input: a verdict, never a dead worker
            verdict = {"result": "permerror", "reason": f"{type(e).__name__}"}
        out[str(idx)] = verdict
    return json.dumps(out).encode()

