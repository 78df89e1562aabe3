"""Content-Transfer-Encoding decoding (RFC 2045 §6): the one decoder every reader of a part's content uses.

Theory of operation
-------------------
`decode_body(data, encoding)` undoes a part's transfer encoding. BINARY and BINARY.SIZE (`mime/meta.py`,
`mime/imap.py`, RFC 3516) and the search text (`mime/text.py`) all call it, so what a client fetches and what
SEARCH finds are the same bytes. Received mail is often damaged, so decoding is lenient where RFC 2045 allows a
"robust implementation" a choice, and never raises except for an encoding RFC 2045 does not define.

* quoted-printable (RFC 2045 §6.7): trailing SPACE and TAB on every encoded line are deleted (rule 3: they were
  added in transport); a soft line break is `=`, optional transport padding, then the line end (rule 5), and
  is removed with its padding; `=XX` is the octet, lower-case hex accepted, and an `=` not followed by two hex
  digits is kept as it is (§6.7 notes 1 and 2). A line end is CRLF, or a bare LF (messages stored as received,
  e.g. imported from mbox); the decoded text keeps the line end as written.
* base64 (RFC 2045 §6.8): characters outside the base64 alphabet are ignored; the first `=` ends the data
  ("the occurrence of any '=' characters may be taken as evidence that the end of the data has been
  reached"); a final quantum of two or three characters gives one or two octets, a single dangling character
  none.
* 7bit, 8bit, binary and an absent header are identity encodings.

Invariants:
1. `decode_body` never raises for the five RFC 2045 encodings, on any bytes; other encodings raise `UnknownCTE`
   (RFC 3516 §4.3: `NO [UNKNOWN-CTE]`).
2. Work and memory are linear in the input (no regular expression that can backtrack over a run of blanks).
3. Well-formed input decodes to exactly what the encoder was given.
"""

from __future__ import annotations

import binascii
import re

IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")

_B64_DELETE = bytes(c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/=")))
_BLANKS = b" \t"
_EQUALS_RUN = re.compile(rb"=(?==)")  # an "=" followed by another: fixed-width lookahead, linear


class UnknownCTE(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is not known (RFC 3516 §4.3: NO [UNKNOWN-CTE])."""


def decode_base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 §6.8): bytes -> the decoded octets. Never raises.

    Characters outside the alphabet (line ends, junk) are dropped; decoding stops at the first `=`; missing
    padding is supplied and a dangling single character is ignored."""
    clean = data.translate(None, _B64_DELETE)
    end = clean.find(b"=")
    if end >= 0:
        # RFC 2045 §6.8: "=" is used only for padding at the end, so it marks the end of the data.
        clean = clean[:end]
    rem = len(clean) % 4
    if rem == 1:
        clean = clean[:-1]
    elif rem:
        clean += b"=" * (4 - rem)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:  # pragma: no cover - the cleaned input is always valid
        return b""


def _strip_line(line: bytes) -> bytes:
    """One encoded line that was followed by LF, without its trailing blanks; the CR of a CRLF stays."""
    if line.endswith(b"\r"):
        return line[:-1].rstrip(_BLANKS) + b"\r"
    return line.rstrip(_BLANKS)


def decode_qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7): bytes -> the decoded octets. Never raises.

    Rules 3 and 5 are applied first: the blanks at the end of every line are deleted, which also turns a soft
    line break with transport padding (`=  CRLF`) into a plain one (`=CRLF`); then `binascii.a2b_qp` removes
    soft line breaks and decodes `=XX` (keeping an `=` that starts no valid escape)."""
    if (
        b" \n" in data
        or b"\t\n" in data
        or b" \r\n" in data
        or b"\t\r\n" in data
        or data.endswith((b" ", b"\t"))
    ):
        # RFC 2045 §6.7 rule 3: "when decoding a Quoted-Printable body, any trailing white space on a line must
        # be deleted, as it will necessarily have been added by intermediate transport agents". Line by line
        # (invariant 2).
        lines = data.split(b"\n")
        last = lines.pop().rstrip(_BLANKS)  # the last line has no line end (a lone CR there is data)
        data = b"\n".join([*(_strip_line(line) for line in lines), last])
    if b"==" in data:
        # `binascii.a2b_qp` reads "==" as an escaped "=", which no encoder writes: keep the first "=" as it is
        # and go on from the second (§6.7 note 2, as for any "=" that starts no escape): "a==41" -> "a=A".
        data = _EQUALS_RUN.sub(b"=3D", data)
    return binascii.a2b_qp(data)


def decode_body(data: bytes, encoding: str) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 §6): the encoded body bytes and the encoding's name (any case)
    -> the decoded octets. Raises UnknownCTE for an encoding not in RFC 2045 (invariant 1)."""
    enc = encoding.lower()
    if enc in IDENTITY_ENCODINGS:
        return data
    if enc == "base64":
        return decode_base64(data)
    if enc == "quoted-printable":
        return decode_qp(data)
    raise UnknownCTE(encoding)


__all__ = ["IDENTITY_ENCODINGS", "UnknownCTE", "decode_base64", "decode_body", "decode_qp"]
