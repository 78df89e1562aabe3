"""DSNs (delivery/dsn.py): parsed back with `email`, every field checked; NOTIFY, RET, ENVID, ORCPT rules."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from postroom.delivery.dsn import RETURN_FULL_LIMIT, RecipientReport, build_dsn, wanted, xtext_decode
from postroom.mime.structure import scan

ORIGINAL = (b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hello\r\nMessage-ID: <m1@a.test>\r\n\r\n"
            b"Hi Bob,\r\n-- \r\nAlice\r\n")
T0 = 1_700_000_000.0


def dsn(reports: list[RecipientReport], *, ret: str = "", envid: str = "", original: bytes = ORIGINAL,
        mail_from: str = "alice@a.test") -> bytes | None:
    return build_dsn(reporting_mta="mx.a.test", mail_from=mail_from, envid=envid, ret=ret, arrival=T0,
                     reports=reports, original=original, now=lambda: T0 + 60, make_id=lambda d: f"<dsn1@{d}>")


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def fields(block: EmailMessage) -> dict[str, str]:
    return {k: str(v) for k, v in block.items()}


def test_failure_report_every_field(india_time: None) -> None:
    raw = dsn([RecipientReport("bob@b.test", "failed", "5.1.1", orcpt="rfc822;Bob+2B1@b.test",
                               diagnostic="550 5.1.1 No such user", remote_mta="mx.b.test", last_attempt=T0 + 30)],
              envid="ENV+2Bid")
    assert raw is not None and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = parse(raw)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.a.test>"
    assert msg["To"] == "alice@a.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Message-ID"] == "<dsn1@mx.a.test>" and msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, returned = msg.get_payload()  # type: ignore[misc]
    assert text.get_content_type() == "text/plain"
    assert "<bob@b.test>: 550 5.1.1 No such user" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = status.get_payload()
    assert fields(per_message) == {"Reporting-MTA": "dns; mx.a.test", "Original-Envelope-Id": "ENV+id",
                                   # RFC 3464 §2.2.5 / RFC 5322 §3.3: the real offset ("-0000" = zone unknown)
                                   "Arrival-Date": "Wed, 15 Nov 2023 03:43:20 +0530"}
    assert fields(per_rcpt) == {
        "Original-Recipient": "rfc822;Bob+1@b.test",
        "Final-Recipient": "rfc822;bob@b.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.b.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 No such user",
        "Last-Attempt-Date": "Wed, 15 Nov 2023 03:43:50 +0530",  # RFC 3464 §2.3.7
    }
    assert msg["Date"] == "Wed, 15 Nov 2023 03:44:20 +0530"
    assert returned.get_content_type() == "message/rfc822"
    assert ORIGINAL in raw  # byte for byte
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "hello"
    assert scan(raw).root is not None and not scan(raw).defects


def test_ret_hdrs_returns_header_only() -> None:
    raw = dsn([RecipientReport("bob@b.test", "failed", "5.1.1")], ret="HDRS")
    assert raw is not None
    returned = parse(raw).get_payload()[2]  # type: ignore[index]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Hi Bob" not in raw and b"Subject: hello" in raw


def test_large_original_returns_header_only() -> None:
    big = ORIGINAL + b"x" * RETURN_FULL_LIMIT + b"\r\n"
    raw = dsn([RecipientReport("bob@b.test", "failed", "5.1.1")], original=big)
    assert raw is not None and len(raw) < RETURN_FULL_LIMIT
    assert parse(raw).get_payload()[2].get_content_type() == "text/rfc822-headers"  # type: ignore[index]


def test_delay_notice(india_time: None) -> None:
    raw = dsn([RecipientReport("bob@b.test", "delayed", "4.4.1", explanation="connect to 192.0.2.1:25 refused",
                               last_attempt=T0 + 100, will_retry_until=T0 + 86400)])
    assert raw is not None
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text, status, returned = msg.get_payload()  # type: ignore[misc]
    rcpt = fields(status.get_payload()[1])
    assert rcpt["Action"] == "delayed" and rcpt["Status"] == "4.4.1"
    # RFC 3464 §2.3.6 / §2.3.5 (invariant 4): our own explanation is no SMTP reply and no MTA reported it
    assert "Diagnostic-Code" not in rcpt and "Remote-MTA" not in rcpt
    assert "<bob@b.test>: connect to 192.0.2.1:25 refused" in text.get_content()
    assert rcpt["Will-Retry-Until"] == "Thu, 16 Nov 2023 03:43:20 +0530"  # RFC 3464 §2.3.9, real offset
    assert "Original-Envelope-Id" not in fields(status.get_payload()[0])
    assert returned.get_content_type() == "text/rfc822-headers"  # RFC 3461 §4.3: not a failure -> headers


def test_success_only_when_asked() -> None:
    ok = RecipientReport("bob@b.test", "relayed", "2.0.0", notify="SUCCESS", diagnostic="250 2.0.0 OK")
    raw = dsn([ok], ret="FULL")
    assert raw is not None
    msg = parse(raw)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert fields(msg.get_payload()[1].get_payload()[1])["Action"] == "relayed"  # type: ignore[index]
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"  # type: ignore[index]
    assert dsn([RecipientReport("bob@b.test", "delivered", "2.0.0")]) is None  # default NOTIFY: no success


def test_notify_rules() -> None:
    assert wanted("", "failed") and wanted("", "delayed") and not wanted("", "delivered")
    assert not wanted("NEVER", "failed")
    assert wanted("SUCCESS,FAILURE", "failed") and not wanted("SUCCESS,FAILURE", "delayed")
    assert wanted("success", "relayed")
    assert dsn([RecipientReport("bob@b.test", "failed", "5.1.1", notify="NEVER")]) is None
    both = dsn([RecipientReport("bob@b.test", "failed", "5.1.1", notify="NEVER"),
                RecipientReport("carol@b.test", "failed", "5.1.1")])
    assert both is not None and b"carol@b.test" in both and b"Final-Recipient: rfc822;bob" not in both


def test_never_to_the_null_sender() -> None:
    assert dsn([RecipientReport("bob@b.test", "failed", "5.1.1")], mail_from="") is None


def test_utf8_original_and_addresses_use_global_types() -> None:
    original = "From: José <jose@a.test>\r\nSubject: olá\r\n\r\nçà\r\n".encode()
    raw = dsn([RecipientReport("zoë@b.test", "failed", "5.1.1")], original=original)
    assert raw is not None
    msg = parse(raw)
    _, status, returned = msg.get_payload()  # type: ignore[misc]
    assert status.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == "message/global"
    assert "Final-Recipient: utf-8;zoë@b.test".encode() in raw
    assert original in raw


def test_xtext_decode() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_decode("plain") == "plain"
    assert xtext_decode("bad+zz") == "bad+zz" and xtext_decode("end+4") == "end+4"


def test_a_sender_no_to_field_can_carry_gets_no_report() -> None:
    """A quoted local part holding an RFC 2047 word that decodes to CR LF cannot be a To field: no report is made
    (None, as for the null sender), and nothing raises, so the queue still records the attempt's results instead
    of sending the message again at every lease (the review's endless loop)."""
    odd = '"=?utf-8?q?a=0D=0AX-Injected:_1?="@evil.test'
    report = RecipientReport(rcpt="p5@b.test", action="failed", status="5.1.1", explanation="550 no such user")
    assert dsn([report], mail_from=odd) is None
    assert dsn([report]) is not None
