"""A message written in the webmail leaves like a submission (issue 10 item 5): a.test's queue DKIM-signs it and
delivers it to b.test's MX, where the signatures verify. The two servers and the DNS server are those of
test_outbound_e2e.py (its `pair` fixture)."""

from __future__ import annotations

import email
import email.policy

import dkim as dkimpy
from test_outbound_e2e import Pair, inbox, pair, wait_for  # noqa: F401 - `pair` is the fixture
from web_support import page_csrf, signed_in


def test_webmail_message_is_queued_dkim_signed_and_delivered(pair: Pair) -> None:  # noqa: F811
    c = signed_in(pair.a, "alice@a.test", "secret-password")
    token = page_csrf(c, "/mail/compose")
    r = c.post("/mail/compose", data={"csrf": token, "action": "send", "to": "Bob <bob@b.test>",
                                      "subject": "from the web", "body": "Hello Bob, from a browser."},
               files={"files": ("", b"")})
    assert r.status_code == 303, r.text[:500]
    got = wait_for(lambda: inbox(pair.b, "bob@b.test"))
    assert got, "the message did not arrive at b.test"
    [raw] = got
    assert raw.count(b"DKIM-Signature:") == 2  # RSA and Ed25519, by a.test's queue

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return pair.dns.txt.get(name.decode().rstrip("."), "").encode()

    signed = raw[raw.index(b"DKIM-Signature:"):]
    verifier = dkimpy.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc) and verifier.verify(idx=1, dnsfunc=dnsfunc)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "from the web" and msg["From"] == "alice@a.test"
    assert b"(Postroom webmail)" in raw  # a's Received field for the web hop
    assert wait_for(lambda: pair.a.run(pair.a.store.queue_length()) == 0)
