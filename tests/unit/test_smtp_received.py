"""The Received field this hop prepends (RFC 5321 §4.4): its date-time in the server's zone (RFC 5322 §3.3),
formatted once per second of the clock, and still right when the zone changes within that second."""

from __future__ import annotations

import os
import time

from postroom.smtp.session import received_header


def _received(now: float) -> bytes:
    return received_header(helo="client.test", ip="192.0.2.7", hostname="mx.example.org", esmtp=True,
                           tls_version=None, tls_cipher=None, user="", smtputf8=False, message_id="abc.1",
                           recipients=["alice@example.org"], now=now)


def test_received_field_shape_and_date(india_time: None) -> None:
    # 1700000000 is 2023-11-14 22:13:20 UTC, a Tuesday; in Asia/Kolkata (+05:30) it is Wednesday 03:43:20.
    assert _received(1700000000.25) == (b"Received: from client.test ([192.0.2.7])\r\n"
                                        b"\tby mx.example.org (Postroom) with ESMTP id abc.1\r\n"
                                        b"\tfor <alice@example.org>; Wed, 15 Nov 2023 03:43:20 +0530\r\n")
    assert _received(1700000000.75).endswith(b"; Wed, 15 Nov 2023 03:43:20 +0530\r\n")  # the same second
    assert _received(1700000001.0).endswith(b"; Wed, 15 Nov 2023 03:43:21 +0530\r\n")  # the next one


def test_a_zone_changed_within_the_second_is_not_answered_stale(india_time: None) -> None:
    assert _received(1700000000.5).endswith(b"; Wed, 15 Nov 2023 03:43:20 +0530\r\n")
    os.environ["TZ"] = "UTC"  # the fixture puts the zone back afterwards
    time.tzset()
    assert _received(1700000000.5).endswith(b"; Tue, 14 Nov 2023 22:13:20 +0000\r\n")
