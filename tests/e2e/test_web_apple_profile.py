"""The Apple configuration profile a signed-in webmail user downloads (issue 13 item 5; web/profile.py): the
`com.apple.mail.managed` payload checked field by field with plistlib, the PKCS#7 signature checked by OpenSSL
against the server's certificate, no password anywhere in it."""

from __future__ import annotations

import plistlib
import subprocess
from typing import Any

from web_support import client, signed_in

ALICE, PW = "alice@example.org", "profile-pass-1"


def _unwrap(server: Any, body: bytes, tmp: Any) -> bytes:
    """The signed content of the DER PKCS#7 `body`, after OpenSSL checked the signature (by the server's
    certificate, which it must carry) and that signer is the server's certificate."""
    der, signer = tmp / "profile.p7s", tmp / "signer.pem"
    der.write_bytes(body)
    out = subprocess.run(["openssl", "smime", "-verify", "-inform", "DER", "-in", str(der), "-noverify",
                          "-signer", str(signer)], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()  # the signature over the content holds
    assert b"Verification successful" in out.stderr
    ours = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in",
                           str(server.config.cert_path)], capture_output=True, check=True).stdout
    theirs = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(signer)],
                            capture_output=True, check=True).stdout
    assert ours == theirs
    return out.stdout


def test_profile_fields_from_the_bound_listeners_signed_and_without_password(server: Any, tmp_path: Any) -> None:
    server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    inbox = c.get(c.get("/mail/").headers["location"])
    assert 'href="/mail/apple.mobileconfig"' in inbox.text  # offered from the account menu
    r = c.get("/mail/apple.mobileconfig")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-apple-aspen-config"
    assert r.headers["content-disposition"].startswith('attachment; filename="alice@example.org.mobileconfig"')
    assert PW.encode() not in r.content
    plist = plistlib.loads(_unwrap(server, r.content, tmp_path))
    assert PW.encode() not in plistlib.dumps(plist)
    # The top level: Apple's Configuration payload, one account payload in it.
    assert plist["PayloadType"] == "Configuration" and plist["PayloadVersion"] == 1
    assert plist["PayloadRemovalDisallowed"] is False
    assert isinstance(plist["PayloadUUID"], str) and len(plist["PayloadUUID"]) == 36
    [mail] = plist["PayloadContent"]
    host = server.config.server.hostname
    assert mail == {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"org.postroom.{host}.{ALICE}.mail",
        "PayloadUUID": mail["PayloadUUID"],
        "PayloadDisplayName": f"Mail: {ALICE}",
        "EmailAccountDescription": ALICE,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": ALICE,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": host,
        "IncomingMailServerPortNumber": server.port("imaps"),  # implicit TLS first (RFC 8314 §3)
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": ALICE,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": host,
        "OutgoingMailServerPortNumber": server.port("submissions"),
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": ALICE,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    assert mail["PayloadUUID"] != plist["PayloadUUID"]
    # Stable identifiers: installing it again replaces the account instead of adding one.
    again = plistlib.loads(_unwrap(server, c.get("/mail/apple.mobileconfig").content, tmp_path))
    assert again["PayloadUUID"] == plist["PayloadUUID"]


def test_profile_needs_a_session(server: Any) -> None:
    r = client(server).get("/mail/apple.mobileconfig")
    assert r.status_code == 303 and r.headers["location"] == "/mail/"
