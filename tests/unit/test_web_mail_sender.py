"""The "Block sender" button's address (web/mail.py `_sender_address`): the From field's mailbox as sent (RFC 5322
§3.6.2), never text from its decoded display name."""

from __future__ import annotations

from postroom.web.mail import _sender_address


def test_the_address_comes_from_the_field_not_the_decoded_name() -> None:
    raw = (b"From: =?utf-8?q?boss=40example=2Eorg?= <spam@evil.example>\r\nTo: alice@example.org\r\n"
           b"Subject: x\r\n\r\nbody\r\n")
    assert _sender_address(raw) == "spam@evil.example"
    assert _sender_address(b"From: Carol <carol@example.net>, dave@example.net\r\n\r\nx") == "carol@example.net"
    assert _sender_address(b"To: alice@example.org\r\n\r\nno From") == ""
    assert _sender_address(b"From: undisclosed-recipients:;\r\n\r\nx") == ""
    assert _sender_address(b'From: <"boss@example.org"@evil.example>\r\n\r\nx') == '"boss@example.org"@evil.example'
