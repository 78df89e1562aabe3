"""DKIM: keys made at `domain add`, outbound signatures (RFC 6376, RSA and Ed25519 RFC 8463), DNS records to publish.

Theory of operation
-------------------
Each local domain gets two keys at `postroom domain add` (`generate_keys`): RSA 2048 (what every verifier
understands) and Ed25519 (RFC 8463: small and fast; verifiers that do not know it ignore that signature), each
under its own selector (`<prefix>r` and `<prefix>e`, where the prefix names the month the keys were made, so
keys can be rotated by publishing new selectors beside the old ones). The store keeps both as PKCS#8 PEM.

`Signer.sign(raw)` runs in the queue just before a message leaves: it finds the signing domain (the domain of
the From header when it is local and has keys, for DMARC alignment; else that of the envelope sender) and
prepends one DKIM-Signature per key. Canonicalization is relaxed/relaxed (RFC 6376 §3.4.2, §3.4.4), which
survives the header refolding and whitespace changes relays make. The signature covers the usual identity and
content headers that are present, and From once more than present (RFC 6376 §8.15 "over-signing"), so a second
From cannot be added without breaking it.

Postroom signs with `cryptography` itself instead of dkimpy: dkimpy signs RSA in pure Python (slow for a queue)
and needs PyNaCl for Ed25519. dkimpy verifies in the tests, so any disagreement with the RFC shows there.

`dns_records(domain, hostname)` gives what `postroom dns DOMAIN` prints: MX, SPF, both DKIM keys, DMARC.

Invariants
1. A message is signed only for a local domain with keys; the bytes after the prepended fields are unchanged.
2. Domain keys are cached for `KEY_TTL` seconds, so a key made by `postroom domain add` in another process is
   used at most that long after.
3. A signature aligned with the From domain (the one DMARC looks at) is made only for queue entries whose From
   was checked (`QueueEntry.from_checked`: submission checks every From address, `Router.may_send_as`) or whose
   source is trusted (`postroom sendmail`, `smtp.relay_networks`, POP-before-SMTP, the server's own DSNs and
   notices). Mail relayed for others (forwards, list copies of outside posts) gets at most a signature of the
   envelope sender's domain, and none when that domain aligns with a From domain: an outsider who sends
   `From: ceo@our.domain` to an alias that forwards cannot get our domain's signature on it.
4. The From field is parsed only when a signature could depend on it: when some local domain has a key and,
   for a checked From, when one of those domains' names occurs in the header section (a From address whose
   domain is ours has its name there; the one exception is RFC 5322's obsolete syntax with a comment or space
   inside the domain, `a@example (x).org`, which then gets the envelope sender's domain's signature, or none);
   for mail relayed for others, when the envelope sender's domain has a key. Parsing every From cost a drain
   about 55 us a message (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from postroom.mime.address import sender_addresses
from postroom.store.api import Domain, Store

SIGNED_HEADERS = ("from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
                  "references", "mime-version", "content-type", "content-transfer-encoding", "list-id",
                  "list-post", "list-unsubscribe", "auto-submitted")
KEY_TTL = 60.0
SIGN_IN_THREAD = 256 * 1024  # bytes; hashing larger bodies happens off the event loop
_WSP = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")


# ---- keys ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    rsa_selector: str
    rsa_pem: str
    ed25519_selector: str
    ed25519_pem: str


def generate_keys(now: float | None = None) -> Keys:
    """A new RSA 2048 and Ed25519 key pair with selectors named after the month."""
    stamp = time.strftime("%Y%m", time.gmtime(time.time() if now is None else now))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()

    def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode("ascii")

    return Keys(f"pr{stamp}r", pem(rsa_key), f"pr{stamp}e", pem(ed_key))


def public_key_b64(private_pem: str) -> tuple[str, str]:
    """("rsa"|"ed25519", base64 public key as published in p=). RSA: SubjectPublicKeyInfo DER (RFC 6376
    §3.6.1); Ed25519: the raw 32 bytes (RFC 8463 §4.2)."""
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return "rsa", base64.b64encode(der).decode("ascii")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519", base64.b64encode(raw).decode("ascii")
    raise ValueError("DKIM keys are RSA or Ed25519")


def dkim_txt(private_pem: str) -> str:
    k, p = public_key_b64(private_pem)
    return f"v=DKIM1; k={k}; p={p}"


def dns_records(domain: Domain, hostname: str) -> list[tuple[str, str, str]]:
    """(name, type, value) of the records to publish for `domain` whose mail host is `hostname`."""
    d = domain.name
    out = [
        (f"{d}.", "MX", f"10 {hostname.rstrip('.')}."),
        (f"{d}.", "TXT", "v=spf1 mx -all"),  # RFC 7208: only the MX hosts send for the domain
    ]
    if domain.dkim_private_key:
        out.append((f"{domain.dkim_selector}._domainkey.{d}.", "TXT", dkim_txt(domain.dkim_private_key)))
    if domain.dkim_ed25519_key:
        out.append((f"{domain.dkim_ed25519_selector}._domainkey.{d}.", "TXT", dkim_txt(domain.dkim_ed25519_key)))
    # RFC 7489 §6.3: start by watching reports (p=none); raise to quarantine or reject once they are clean.
    out.append((f"_dmarc.{d}.", "TXT", f"v=DMARC1; p=none; rua=mailto:postmaster@{d}"))
    return out


def txt_strings(value: str) -> str:
    """A TXT value as zone-file strings of at most 255 octets each (RFC 1035 §3.3.14)."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


# ---- canonicalization and signing (RFC 6376) ------------------------------------------------------------------

def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """[(name, whole field including name, colon and folded lines with CRLFs)], body."""
    end = raw.find(b"\r\n\r\n")
    head, body = (raw[:end + 2], raw[end + 4:]) if end >= 0 else (raw, b"")
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, whole = fields[-1]
            fields[-1] = (name, whole + b"\r\n" + line)
        elif b":" in line:
            fields.append((line.split(b":", 1)[0].strip().lower(), line))
    return fields, body


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 §3.4.2, without the final CRLF."""
    name, _, value = field.partition(b":")
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4."""
    body = _WSP.sub(b" ", body)
    body = _TRAILING_WSP.sub(b"\r\n", body if body.endswith(b"\r\n") else body + b"\r\n")
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _select(fields: list[tuple[bytes, bytes]], names: list[str]) -> list[bytes]:
    """RFC 6376 §5.4.2: for each name, the last instance not yet used, from the bottom; none left: nothing."""
    used: dict[bytes, int] = {}
    out: list[bytes] = []
    for n in names:
        key = n.encode("ascii")
        instances = [f for name, f in fields if name == key]
        k = used.get(key, 0)
        if k < len(instances):
            out.append(instances[len(instances) - 1 - k])
        used[key] = k + 1
    return out


def sign_message(raw: bytes, domain: str, selector: str, private_pem: str, now: float | None = None) -> bytes:
    """The DKIM-Signature field (ending in CRLF) for `raw` (CRLF line ends)."""
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    fields, body = split_message(raw)
    present = [n for n in SIGNED_HEADERS if any(name == n.encode() for name, _ in fields)]
    names = [n for n in present for _ in range(sum(1 for name, _ in fields if name == n.encode()))]
    names.append("from")  # over-sign From (RFC 6376 §8.15)
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "rsa-sha256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = "ed25519-sha256"
    else:
        raise ValueError("DKIM keys are RSA or Ed25519")
    t = int(time.time() if now is None else now)
    value = (f" v=1; a={algorithm}; c=relaxed/relaxed; d={domain}; s={selector}; t={t};\r\n"
             f"\th={':'.join(names)};\r\n\tbh={bh};\r\n\tb=")
    signed = b"".join(relaxed_header(f) + b"\r\n" for f in _select(fields, names))
    signed += relaxed_header(b"DKIM-Signature:" + value.encode("ascii"))  # b= empty, no final CRLF (§3.7)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(hashlib.sha256(signed).digest())  # RFC 8463 §3: Ed25519 over the SHA-256 hash
    b = base64.b64encode(signature).decode("ascii")
    folded = "\r\n\t ".join(b[i:i + 72] for i in range(0, len(b), 72))
    return f"DKIM-Signature:{value}{folded}\r\n".encode("ascii")


# ---- the queue's signer ---------------------------------------------------------------------------------------

def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def from_domains(raw: bytes) -> list[str] | None:
    """The domains of every From address, in order (RFC 5322 §3.6.2 allows several); None if a From field is
    too long to be read on the event loop (`address.sender_addresses`): the caller then does not sign in
    alignment with it."""
    fields, _ = split_message(raw[:256 * 1024])
    out: list[str] = []
    for name, whole in fields:
        if name == b"from":
            found = sender_addresses(whole.split(b":", 1)[1])
            if found is None:
                return None
            out += [a.host.lower().rstrip(".") for a in found if a.mailbox and a.host]
    return out


def from_domain(raw: bytes) -> str:
    domains = from_domains(raw)
    return domains[0] if domains else ""


MAY_NAME_MAX = 64  # more signing domains than this: the From is parsed, not searched for each name


def _may_name(raw: bytes, names: frozenset[bytes]) -> bool:
    """False when no name of `names` occurs in the header section of `raw` (any case): then no From address has
    one of them as its domain (invariant 4), and the From need not be parsed (~55 us a message). True when one
    occurs, or when there are too many names to look for each."""
    if len(names) > MAY_NAME_MAX:
        return True
    end = raw.find(b"\r\n\r\n", 0, 256 * 1024)
    head = (raw[:end] if end >= 0 else raw[:256 * 1024]).lower()
    return any(name in head for name in names)


def aligned(a: str, b: str) -> bool:
    """DMARC relaxed alignment (RFC 7489 §3.1.1) without a public suffix list: the same name, or one below the
    other. Errs towards "aligned", which is the safe side for the one use here (refusing to sign)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


class Signer:
    """Signs outbound messages of local domains with their keys (see the module doc)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._cache: dict[str, tuple[float, Domain | None]] = {}
        self._names: tuple[float, frozenset[bytes]] | None = None  # when read, the names of domains with keys

    async def _signing_names(self) -> frozenset[bytes] | None:
        """The lower-case names (ASCII bytes) of the local domains that have a key, read again after KEY_TTL
        (invariant 2); None when the store could not say (then every From is parsed, as `_domain` decides)."""
        now = time.monotonic()
        if self._names is None or now - self._names[0] >= KEY_TTL:
            try:
                domains = await self.store.list_domains()
            except Exception:  # noqa: BLE001 - the per-domain lookups below answer (or not) as before
                return None
            self._names = (now, frozenset(d.name.lower().rstrip(".").encode("utf-8") for d in domains
                                          if d.dkim_private_key or d.dkim_ed25519_key))
        return self._names[1]

    async def _domain(self, name: str) -> Domain | None:
        if not name:
            return None
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < KEY_TTL:  # invariant 2
            return hit[1]
        try:
            domain = await self.store.get_domain(name)
        except Exception:  # a malformed name is simply not ours
            domain = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = (now, domain)
        return domain

    async def sign(self, raw: bytes, mail_from: str, from_checked: bool = True) -> bytes:
        """`raw` with our DKIM-Signature fields prepended, or unchanged (invariants 1 and 3). `from_checked`: the
        queue entry's mark (the From was checked at submission, or the source is trusted)."""
        names = await self._signing_names()
        if names is not None and not names:
            return raw  # invariant 1: no local domain has a key
        domain: Domain | None = None
        if from_checked:
            if names is None or _may_name(raw, names):  # invariant 4: parsed when it may name ours
                domain = await self._domain(from_domain(raw))
            if domain is None or not (domain.dkim_private_key or domain.dkim_ed25519_key):
                domain = await self._domain(_domain_of(mail_from))
        else:
            # Relayed for others (a forward, a list copy of an outside post): our signature must not vouch for
            # a From nobody checked (invariant 3). Sign as the envelope sender's domain only when no From
            # domain would align with it, so the signature can never make the From pass DMARC. The From is
            # parsed only when the envelope domain has a key (else nothing is signed either way).
            env = _domain_of(mail_from)
            domain = await self._domain(env)
            if domain is not None and (domain.dkim_private_key or domain.dkim_ed25519_key):
                domains = from_domains(raw)
                if domains is None or any(aligned(env, d) for d in domains):
                    domain = None
        if domain is None or not (domain.dkim_private_key or domain.dkim_ed25519_key):
            return raw  # invariant 1
        keys = [(domain.dkim_selector, domain.dkim_private_key),
                (domain.dkim_ed25519_selector, domain.dkim_ed25519_key)]
        now = self.clock()

        def work() -> bytes:
            sigs = [sign_message(raw, domain.name, sel, pem, now) for sel, pem in keys if pem]
            return b"".join(sigs) + raw

        return await asyncio.to_thread(work) if len(raw) > SIGN_IN_THREAD else work()
