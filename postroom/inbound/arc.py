"""ARC (RFC 8617): is the Authenticated Received Chain on an inbound message intact, and what did its first hop see?

Theory of operation
-------------------
An ARC Set is three header fields with the same instance `i=` (RFC 8617 §4.1): ARC-Authentication-Results
(AAR: the sealer's Authentication-Results), ARC-Message-Signature (AMS: a DKIM-like signature of the message
as the sealer sent it) and ARC-Seal (AS: a signature over every ARC field up to its own set, with `cv=` the
sealer's verdict on the chain it received). `verify_chain(dns, head, raw | path, ip)` judges the chain in three
steps, as `inbound/dkim.py` judges DKIM signatures:

1. On the event loop, over the header only (`chain_structure`, linear in the header): the ARC fields and their
   tags. RFC 8617 §5.2 decides without cryptography when
     - there is no ARC field: `none` (step 1);
     - the newest AS says `cv=fail`: `fail` (step 2, the chain was already broken);
     - a field has no valid `i=`, an instance is outside 1..50 or there are more than `MAX_SETS` sets
       (§4.2.1: "i=" is 1 to 50), a set lacks a field or has one twice, or the instances are not exactly
       1..N without a gap: `fail` (step 3);
     - the oldest AS does not say `cv=none` or a later one does not say `cv=pass` (§5.1.1, §5.2 step 6):
       `fail`.
2. The keys named by every AMS and AS (`s=` / `d=`, `<s>._domainkey.<d>` TXT as DKIM, §4.1.2) are fetched
   through the injected DNS, at most `MAX_KEYS` distinct names, all at once. A key that is missing or did not
   come makes the signature that needs it invalid (for an AS or the newest AMS, the chain fails; the reason
   says a lookup failed for now, as RFC 8617 has no temperror result).
3. The message and the keys go to a worker process (`metapool.work`, kind "arc") where dkimpy's ARC verifier
   (`dkim.ARC.verify`, RFC 8617 §5.2 steps 4-6: the newest AMS, then every AS from the newest down) runs with
   a `dnsfunc` that answers only from the keys passed in. The worker also finds `oldest-pass` (§5.2 step 5:
   the oldest instance whose AMS still validates in the unbroken run down from the newest; 0 when all do) and
   reads the i=1 AAR with the `authres` package, so the MX can see what the first hop saw.

The result goes into Authentication-Results as `arc=pass|fail|none` with `smtp.remote-ip` and, on a pass,
`header.oldest-pass` (RFC 8617 §10.1 registers both properties) and into the message's log line. What a pass
is worth is local policy (§7.2): `inbound.arc_trusted_sealers` names the sealers whose i=1 verdict may stand in
for a DMARC failure (`trusted_pass` here, applied in inbound/check.py).

Invariants
1. No canonicalisation, hashing or public-key work on the event loop; the header scan is linear in the header.
2. `verify_chain` never raises for anything the message or DNS holds: every failure is a result.
3. Bounded: at most `MAX_SETS` sets (checked before any lookup) and `MAX_KEYS` key lookups per message.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postroom.inbound.dkim import KeyDns, _key, header_block
from postroom.inbound.dmarc import aligned

MAX_SETS = 50  # RFC 8617 §4.2.1: i= is 1 to 50
MAX_KEYS = 32  # distinct key names looked up per chain (invariant 3)
NAMES = ("arc-authentication-results", "arc-message-signature", "arc-seal")

_ARC_FIELD = re.compile(rb"(?im)^(arc-authentication-results|arc-message-signature|arc-seal)[ \t]*:"
                        rb"((?:.*)(?:\r?\n[ \t].*)*)")


@dataclass(frozen=True)
class ArcField:
    """One ARC header field: its lower-case `name` (one of NAMES), instance `i` (None: no valid i=) and, for
    AMS and AS, the tags (None when the tag list does not parse; the AAR has none)."""

    name: str
    i: int | None
    tags: dict[str, str] | None = None


def parse_tags(value: str) -> dict[str, str] | None:
    """A DKIM tag list (RFC 6376 §3.2, which RFC 8617 §4.1.2 / §4.1.3 use): name=value pairs split at ";",
    whitespace around them ignored. None when a pair has no "=", a bad name, or a name twice."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        name, eq, v = part.partition("=")
        name = name.strip()
        if not eq or not re.match(r"[A-Za-z][A-Za-z0-9_]*\Z", name) or name in tags:
            return None
        tags[name] = re.sub(r"\s+", "" if name in ("b", "bh") else " ", v.strip())
    return tags


def _instance(text: str | None) -> int | None:
    """An i= value (RFC 8617 §4.2.1: 1*3DIGIT); None when it is not one."""
    if text is None or not re.fullmatch(r"[0-9]{1,3}", text.strip()):
        return None
    return int(text.strip())


def arc_fields(head: bytes) -> list[ArcField]:
    """The ARC fields in the header of `head` (a message start), in order, with their instances and tags."""
    out: list[ArcField] = []
    for m in _ARC_FIELD.finditer(header_block(head)):
        name = m.group(1).decode("ascii").lower()
        value = re.sub(r"\r?\n[ \t]", " ", m.group(2).decode("ascii", "replace"))
        if name == "arc-authentication-results":
            # RFC 8617 §4.1.1: "i=" instance ";" then an Authentication-Results value.
            first = value.split(";", 1)[0]
            key, eq, v = first.partition("=")
            out.append(ArcField(name, _instance(v) if eq and key.strip().lower() == "i" else None))
            continue
        tags = parse_tags(value)
        if tags is None:  # still name its instance, so the reason can say what is wrong with it
            m_i = re.search(r"(?:^|;)\s*i\s*=\s*([0-9]+)\s*(?:;|$)", value)
            out.append(ArcField(name, _instance(m_i.group(1)) if m_i else None, None))
            continue
        out.append(ArcField(name, _instance(tags.get("i")), tags))
    return out


@dataclass(frozen=True)
class Structure:
    """What the header alone says about a chain (module doc, step 1): `result` "none", "fail" or "" (go on to
    the cryptography), a `reason`, the number of sets `n`, and the key names every AMS and AS needs."""

    result: str
    reason: str = ""
    n: int = 0
    keys: tuple[str, ...] = ()
    sealer: str = ""  # d= of the newest AS


def chain_structure(head: bytes) -> Structure:
    """RFC 8617 §5.2 steps 1-3 and the cv= rules of §5.1.1 over the header of `head` (module doc, step 1)."""
    fields = arc_fields(head)
    if not fields:
        return Structure("none")
    sets: dict[int, dict[str, ArcField]] = {}
    for f in fields:
        if f.i is None:
            return Structure("fail", f"{f.name} without a valid i=")
        if not 1 <= f.i <= MAX_SETS:
            return Structure("fail", f"instance i={f.i} outside 1..{MAX_SETS}")
        one = sets.setdefault(f.i, {})
        if f.name in one:
            return Structure("fail", f"two {f.name} fields with i={f.i}")
        if f.tags is None and f.name != "arc-authentication-results":
            return Structure("fail", f"{f.name} i={f.i}: malformed tag list")
        one[f.name] = f
    n = max(sets)
    if len(sets) > MAX_SETS:  # cannot happen with i in 1..50 and no duplicates; kept as the explicit bound
        return Structure("fail", f"more than {MAX_SETS} ARC sets")
    for i in range(1, n + 1):
        if i not in sets:
            return Structure("fail", f"ARC set i={i} missing (instances must be 1..{n})")
        if len(sets[i]) != 3:
            missing = [x for x in NAMES if x not in sets[i]]
            return Structure("fail", f"ARC set i={i} lacks {', '.join(missing)}")
    newest = sets[n]["arc-seal"].tags or {}
    if newest.get("cv", "").lower() == "fail":
        return Structure("fail", f"ARC-Seal i={n} says cv=fail", n)
    for i in range(1, n + 1):
        cv = (sets[i]["arc-seal"].tags or {}).get("cv", "").lower()
        want = "none" if i == 1 else "pass"
        if cv != want:
            return Structure("fail", f"ARC-Seal i={i} says cv={cv or '(missing)'}, not cv={want}", n)
    names: list[str] = []
    for i in range(n, 0, -1):
        for which in ("arc-seal", "arc-message-signature"):
            tags = sets[i][which].tags or {}
            d, s = tags.get("d", "").lower().rstrip("."), tags.get("s", "")
            if not d or not s:
                return Structure("fail", f"{which} i={i} lacks d= or s=", n)
            name = f"{s}._domainkey.{d}"
            if name not in names:
                names.append(name)
    if len(names) > MAX_KEYS:
        return Structure("fail", f"the chain needs more than {MAX_KEYS} keys", n)
    sealer = (sets[n]["arc-seal"].tags or {}).get("d", "").lower().rstrip(".")
    return Structure("", "", n, tuple(names), sealer)


@dataclass(frozen=True)
class ArcResult:
    """The chain's verdict: `result` "none" | "pass" | "fail", a `reason`, the number of sets `n`, `oldest_pass`
    (RFC 8617 §5.2 step 5; None unless pass), the newest sealer's domain `sealer`, and `origin`: the results of
    the i=1 ARC-Authentication-Results as (method, result, {"ptype.property": value}) (empty unless pass)."""

    result: str
    reason: str = ""
    n: int = 0
    oldest_pass: int | None = None
    sealer: str = ""
    origin: tuple[tuple[str, str, dict[str, str]], ...] = field(default=())

    def log_value(self) -> str:
        """`arc=` in the message's log line: the result, with the sealer and the number of sets when there are any."""
        return f"{self.result}:{self.sealer}/{self.n}" if self.n and self.sealer else self.result


def trusted_pass(arc: ArcResult | None, from_domain: str, trusted: tuple[str, ...] | list[str]) -> str:
    """Why a DMARC failure of `from_domain` may be overridden by this chain (RFC 7489 §7.2 local policy, RFC 8617
    §7.2): the chain passed, its newest sealer is in `trusted`, and its i=1 AAR recorded `dmarc=pass` for that
    domain, or an SPF or DKIM pass aligned with it (relaxed). Returns a short explanation, or "" (no override)."""
    if arc is None or arc.result != "pass" or not from_domain:
        return ""
    if arc.sealer not in {t.lower().rstrip(".") for t in trusted}:
        return ""
    passes = [(m, p) for m, r, p in arc.origin if r == "pass"]
    passes.sort(key=lambda mp: ("dmarc", "spf", "dkim", mp[0]).index(mp[0]))  # DMARC's own verdict first
    for method, props in passes:
        if method == "dmarc" and props.get("header.from", "").lower().rstrip(".") == from_domain:
            return f"sealer {arc.sealer}, i=1 dmarc=pass"
        if method == "spf":
            who = props.get("smtp.mailfrom", "") or props.get("smtp.helo", "")
            domain = who.rpartition("@")[2]
            if domain and aligned(domain, from_domain, strict=False):
                return f"sealer {arc.sealer}, i=1 spf=pass {domain}"
        if method == "dkim":
            d = props.get("header.d", "") or props.get("header.i", "").rpartition("@")[2]
            if d and aligned(d, from_domain, strict=False):
                return f"sealer {arc.sealer}, i=1 dkim=pass {d}"
    return ""


async def verify_chain(dns: KeyDns, head: bytes, raw: bytes | None = None, path: Path | None = None) -> ArcResult:
    """Judge the ARC chain of the message `raw` (or the file at `path`) whose start is `head` (module doc).
    Never raises (invariant 2)."""
    from postroom import metapool as pool  # the pool imports this module in its workers

    st = chain_structure(head)
    if st.result:
        return ArcResult(st.result, st.reason, st.n)
    looked = await asyncio.gather(*(_key(dns, name) for name in st.keys))
    keys = {name: k.decode("ascii", "replace") for name, (o, k, _) in zip(st.keys, looked) if o == "ok" and k}
    transient = [name for name, (o, _, _) in zip(st.keys, looked) if o == "temperror"]
    try:
        payload = await pool.work("arc", {"keys": keys}, raw=raw, path=path)
        v: dict[str, Any] = json.loads(payload)
    except Exception as e:  # noqa: BLE001 - a dead or slow worker: the chain could not be judged (inv. 2)
        return ArcResult("fail", f"verifier: {type(e).__name__}", st.n, sealer=st.sealer)
    result, reason = str(v["result"]), str(v.get("reason", ""))
    if result != "pass":
        if transient:
            reason = f"{reason}; key lookup failed for now: {', '.join(transient)}"
        return ArcResult(result, reason[:200], st.n, sealer=st.sealer)
    origin = tuple((str(m), str(r), {str(k): str(x) for k, x in p.items()}) for m, r, p in v.get("origin", []))
    return ArcResult("pass", "", st.n, int(v.get("oldest_pass", 0)), st.sealer, origin)


# ---- in the worker process (metapool.py job kind "arc") ---------------------------------------------------------

def verify_in_worker(raw: bytes, params: dict[str, Any]) -> bytes:
    """Verify the ARC chain of `raw` with the keys `params["keys"]` (name -> TXT record) by dkimpy (module doc,
    step 3). Returns JSON {"result", "reason", "oldest_pass", "origin"}. No DNS: the dnsfunc answers from keys."""
    import dkim  # type: ignore[import-untyped]

    keys = {k.lower(): v for k, v in dict(params["keys"]).items()}

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes:
        n = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        return str(keys.get(n.rstrip(".").lower(), "")).encode("ascii", "replace")

    try:
        cv, results, reason = dkim.arc_verify(raw, dnsfunc=dnsfunc, minkey=1024)  # RFC 8301 §3.2 key sizes
    except Exception as e:  # noqa: BLE001 - dkimpy on hostile input: a verdict, never a dead worker
        return json.dumps({"result": "fail", "reason": f"{type(e).__name__}"}).encode()
    reason = reason if isinstance(reason, str) else str(reason)
    if cv is None:  # dkimpy: an older seal said cv=fail (the chain had ended)
        return json.dumps({"result": "fail", "reason": reason}).encode()
    if cv != dkim.CV_Pass:
        return json.dumps({"result": "none" if cv == dkim.CV_None else "fail", "reason": reason}).encode()
    # RFC 8617 §5.2 step 5: down from the newest, the last instance whose AMS still validates; 0 when all do.
    valid = [bool(r.get("ams-valid")) for r in results]  # newest first
    oldest = 0 if all(valid) else int(results[valid.index(False) - 1]["instance"])
    origin: list[tuple[str, str, dict[str, str]]] = []
    first = [r for r in results if int(r["instance"]) == 1]
    if first:
        origin = _aar_results(bytes(first[0].get("aar-value", b"")))
    return json.dumps({"result": "pass", "reason": "", "oldest_pass": oldest, "origin": origin}).encode()


def _aar_results(value: bytes) -> list[tuple[str, str, dict[str, str]]]:
    """The results of an ARC-Authentication-Results value ("i=1; authserv-id; method=result ...", RFC 8617
    §4.1.1), read by the `authres` package (RFC 8601 grammar); [] when it does not parse."""
    import authres  # type: ignore[import-untyped]

    text = re.sub(r"\r?\n[ \t]", " ", value.decode("utf-8", "replace")).strip()
    rest = text.split(";", 1)[1] if ";" in text else ""
    try:
        header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + rest.strip())
    except Exception:  # noqa: BLE001 - authres raises its own SyntaxError and others on odd input
        return []
    out = []
    for res in header.results:
        props = {f"{p.type}.{p.name}".lower(): str(p.value) for p in res.properties}
        out.append((str(res.method).lower(), str(res.result).lower(), props))
    return out
