"""An Apple configuration profile (`.mobileconfig`) that sets up a signed-in user's account on iOS, iPadOS and macOS.

Theory of operation
-------------------
A configuration profile is a property list (Apple's "Configuration Profile Reference" / Device Management
"Mail" payload): a top-level dictionary of `PayloadType` "Configuration" whose `PayloadContent` array holds one
`com.apple.mail.managed` payload describing the account: `EmailAccountType` `EmailTypeIMAP` (or
`EmailTypePOP` when only POP3 is offered), `EmailAddress`, the incoming server (`IncomingMailServerHostName`,
`...PortNumber`, `...UseSSL`, `...Username`, `...Authentication` `EmailAuthPassword`) and the submission server
(`OutgoingMailServer...` likewise, `OutgoingPasswordSameAsIncomingPassword` true). The host name and ports are
the ones autoconfig.py offers (`ClientSettings`, from the listeners actually bound), implicit TLS preferred
(RFC 8314 §3); every Postroom endpoint has TLS, so `UseSSL` is true (Apple Mail then speaks STARTTLS on a
STARTTLS port). No password is in the profile: the device asks for it once when the profile is installed.

Signing: when the server's TLS key is RSA or ECDSA, the property list is wrapped in a PKCS#7 / CMS SignedData
(RFC 5652, DER, the content attached, the TLS certificate chain included), made with `cryptography`; a device
shows the profile as signed by that certificate ("Verified" when a trusted CA issued it). With another key type,
or when the files cannot be read, the profile is served unsigned (the device says "Unsigned"; it installs all
the same). Served `application/x-apple-aspen-config`, which Safari hands to the profile installer.

Invariants
1. The profile never holds a password or any secret; identifiers are derived from the address (stable: the
   same profile installed twice replaces the first instead of adding a second account).
2. Values are serialised by `plistlib` (escaped); nothing is pasted into XML.
"""

from __future__ import annotations

import plistlib
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from postroom.web.autoconfig import ClientSettings

MEDIA_TYPE = "application/x-apple-aspen-config"
_NAMESPACE = uuid.UUID("8f0f6a52-3c1e-4d47-9a56-6b7c1f0e2d11")  # for the payloads' stable UUIDs (invariant 1)


def _pick(settings: ClientSettings, protocol: str) -> Any:
    return next((ep for ep in settings.endpoints if ep.protocol == protocol), None)


def profile_plist(settings: ClientSettings, address: str) -> bytes:
    """The unsigned profile (XML property list) for `address` under `settings`. ValueError when the server
    offers no incoming service or no submission service (nothing to set up)."""
    incoming = _pick(settings, "imap") or _pick(settings, "pop3")
    outgoing = _pick(settings, "smtp")
    if incoming is None or outgoing is None:
        raise ValueError("this server offers no IMAP/POP3 or no submission listener to set up")
    ident = f"org.postroom.{settings.hostname}.{address}"
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail",
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, f"{ident}.mail")).upper(),
        "PayloadDisplayName": f"Mail: {address}",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    top = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, ident)).upper(),
        "PayloadDisplayName": f"{settings.domain} mail ({address})",
        "PayloadDescription": f"Sets up the mail account {address} on {settings.hostname}. "
                              "You are asked for its password when you install it.",
        "PayloadOrganization": settings.domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(top, fmt=plistlib.FMT_XML, sort_keys=True)


def sign(data: bytes, cert_path: Path, key_path: Path) -> bytes | None:
    """`data` wrapped in a DER PKCS#7 SignedData by the key at `key_path`, with the certificates of `cert_path`
    (the server's first); None when the key is not RSA or ECDSA or the files do not load (module doc)."""
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return None
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(chain[0], key, hashes.SHA256())
    for extra in chain[1:]:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def file_name(address: str) -> str:
    """The download's file name: the address with characters outside [A-Za-z0-9.@_-] made "_"."""
    return "".join(c if c.isascii() and (c.isalnum() or c in ".@_-") else "_" for c in address) + ".mobileconfig"
