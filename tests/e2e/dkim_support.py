"""Test keys and signing for the inbound DKIM tests: dkimpy signs, the zone publishes the keys.

`SigningKey.rsa(bits)` and `SigningKey.ed25519()` make a key pair; `.record` is its DKIM TXT record (RFC 6376
§3.6.1, RFC 8463 §4.2) and `.sign(message, domain, selector, ...)` returns the message with dkimpy's
DKIM-Signature prepended. RSA keys under 1024 bits (which `cryptography` refuses to generate) are built from
primes made here, so RFC 8301's refusal can be tested with a real signature.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from dataclasses import dataclass
from unittest import mock

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# RFC 8463 Appendix A: the example message signed with both an Ed25519 and an RSA key (A.3), and the two keys'
# DNS records (A.2). The RFC's lines, with CRLF line ends.
RFC8463_KEYS = {
    "brisbane._domainkey.football.example.com": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    "test._domainkey.football.example.com": (
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
        "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
        "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
        "Ip3G+2kryOTIKT+l/K4w3QIDAQAB"),
}
RFC8463_MESSAGE = b"\r\n".join([
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;",
    b" d=football.example.com; i=@football.example.com;",
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :",
    b" subject : date : message-id : from : subject : date;",
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus",
    b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==",
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;",
    b" d=football.example.com; i=@football.example.com;",
    b" q=dns/txt; s=test; t=1528637909; h=from : to : subject :",
    b" date : message-id : from : subject : date;",
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
    b" b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3",
    b" DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz",
    b" dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=",
    b"From: Joe SixPack <joe@football.example.com>",
    b"To: Suzie Q <suzie@shopping.example.net>",
    b"Subject: Is dinner ready?",
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)",
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>",
    b"",
    b"Hi.",
    b"",
    b"We lost the game.  Are you hungry yet?",
    b"",
    b"Joe.",
    b"",
])


def _prime(bits: int) -> int:
    while True:
        n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43)):
            return n


@dataclass(frozen=True)
class SigningKey:
    algorithm: bytes  # b"rsa-sha256" | b"ed25519-sha256"
    private: bytes  # what dkim.sign takes
    record: str  # the TXT record to publish

    @classmethod
    def rsa(cls, bits: int = 2048) -> SigningKey:
        if bits >= 1024:
            key = rsa.generate_private_key(65537, bits)
        else:  # cryptography will not generate these: build one from two primes
            e = 65537
            while True:
                p, q = _prime(bits // 2), _prime(bits // 2)
                phi = (p - 1) * (q - 1)
                if p != q and math.gcd(e, phi) == 1:
                    break
            d = pow(e, -1, phi)
            numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                            rsa.RSAPublicNumbers(e, p * q))
            key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(b"rsa-sha256", pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")

    @classmethod
    def ed25519(cls) -> SigningKey:
        sk = nacl.signing.SigningKey.generate()
        return cls(b"ed25519-sha256", base64.b64encode(bytes(sk)),
                   f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(sk.verify_key)).decode()}")

    def sign(self, message: bytes, domain: str, selector: str = "sel", *, canon: bytes = b"relaxed/relaxed",
             length: bool = False, at: int | None = None, expires: int | None = None) -> bytes:
        """`message` with a DKIM-Signature by dkimpy prepended. `at`: the signing time (t=); `expires`: an x=
        value. dkimpy has no x= option: it goes in after the selector, which dkimpy writes as given, so it is
        signed like any other tag."""
        header, _, body = canon.partition(b"/")
        tag_s = selector.encode() + (b"; x=%d" % expires if expires is not None else b"")
        with mock.patch.object(time, "time", return_value=float(at if at is not None else time.time())):
            sig = dkim.sign(message, tag_s, domain.encode(), self.private,
                            signature_algorithm=self.algorithm, canonicalize=(header, body or header),
                            include_headers=[b"from", b"to", b"subject"], length=length)
        return bytes(sig) + message
