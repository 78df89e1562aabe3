"""IMAP modified UTF-7 (RFC 3501 §5.1.3; RFC 9051 §5.1.3 keeps it for clients that did not ENABLE UTF8=ACCEPT):
mailbox names on the wire and Maildir++ folder names. Pure functions, no I/O."""

from __future__ import annotations

import base64


def mutf7_encode(text: str, force: str = "") -> str:
    """`text` in IMAP modified UTF-7; characters in `force` are base64-encoded even if printable."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if "\x20" <= ch <= "\x7e" and ch not in force:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(text: str) -> str:
    """Decode IMAP modified UTF-7; raises ValueError on malformed input."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        j = text.find("-", i)
        if j < 0:
            raise ValueError(f"unterminated modified UTF-7 in {text!r}")
        if j == i + 1:
            out.append("&")
        else:
            b64 = text[i + 1 : j].replace(",", "/")
            out.append(base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True).decode("utf-16-be"))
        i = j + 1
    return "".join(out)


__all__ = ["mutf7_decode", "mutf7_encode"]
