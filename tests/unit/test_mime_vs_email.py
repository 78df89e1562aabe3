"""Differential test: Postroom's own header/parameter reading against the stdlib `email` package.

Postroom cannot use `email` for offsets (it re-serialises), but where both read the same thing - media types,
boundaries, charsets, RFC 2231 file names, the decoded Subject - they must agree on well-formed messages.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
from pathlib import Path

import pytest

from postroom.mime import headers as H
from postroom.mime.meta import compute_meta
from postroom.mime.structure import Part, scan

MSGS = Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs"
# Messages where the two are expected to differ, and why.
DIFFER = {
    "26_multipart_no_boundary_param": "email reads a boundary-less multipart as text/plain",
    "27_boundary_never_appears": "email keeps a multipart with no parts; IMAP needs one (empty) part",
    "45_message_global": "email does not descend into message/global",
    "46_rfc822_base64_illegal": "email parses an encoded message/rfc822; RFC 2046 §5.2.1 forbids it",
    "47_deep_nesting_60": "Postroom stops at the depth limit",
    "74_content_type_invalid": "email keeps 'text' with no subtype as text/plain but 'image/' differently",
    "53_params_comments_escapes": "email returns the type 'text/plain (a comment)': RFC 2045 §5.1 allows comments",
    "64_multiple_headers": "two Subject fields: the search text keeps both, email's msg['subject'] the first",
}
NAMES = sorted(p.stem for p in MSGS.glob("*.eml") if p.stem not in DIFFER)


def pairs(ours: Part, theirs: email.message.EmailMessage) -> list[tuple[Part, email.message.EmailMessage]]:
    out = [(ours, theirs)]
    if ours.children and theirs.is_multipart():
        kids = theirs.get_payload()
        assert isinstance(kids, list)
        assert len(ours.children) == len(kids)
        for a, b in zip(ours.children, kids, strict=True):
            out += pairs(a, b)  # type: ignore[arg-type]
    elif ours.message is not None and theirs.get_content_type() == "message/rfc822":
        inner = theirs.get_payload()
        assert isinstance(inner, list) and len(inner) == 1
        out += pairs(ours.message, inner[0])  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_agrees_with_email(name: str) -> None:
    raw = (MSGS / f"{name}.eml").read_bytes()
    theirs = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(theirs, email.message.EmailMessage)
    for a, b in pairs(scan(raw).root, theirs):
        assert a.mime_type == b.get_content_type()
        for pname in ("boundary", "charset", "name", "format"):
            mine = H.param_value(a.params, pname)
            other = b.get_param(pname)
            if isinstance(other, tuple):
                other = email.utils.collapse_rfc2231_value(other)
            if other is None or mine is None:
                assert (mine is None) == (other is None) or pname == "charset", pname
            else:
                assert mine == str(other), pname
        if a.disposition is not None:
            assert b.get_content_disposition() == a.disposition[0].lower()
            fname = H.param_value(a.disposition[1], "filename")
            if fname is not None:
                assert fname == b.get_filename()
    subject = theirs["subject"]
    if subject is not None and b"\x00" not in raw:
        meta_subject = compute_meta(raw).search.header("subject")
        assert meta_subject.split() == str(subject).split() or "\ufffd" in str(subject)
