"""text/plain; format=flowed (RFC 3676): writing the webmail's text and reading it back into an editable form.

Theory of operation
-------------------
A flowed text is lines of at most 78 characters (RFC 3676 §4.2, "SHOULD"); a line that ends in a space is a
soft break: the reader joins it with the next one into one paragraph and rewraps it to its window. A line that
ends in anything else is a hard break. Quoted text is a run of `>` at the start of the line, the quote depth
(§4.5); a space after the run is space-stuffing and not part of the text. A line starting with a space, `>` (when
not quoted) or `From ` is space-stuffed (§4.4): one space is put in front, and the reader takes it away.

`encode(text)` takes what a user typed (lines; `>` runs are quotes, as in a reply's template), and writes every
line of it as a paragraph: wrapped at spaces to at most `WIDTH` characters with a trailing space on each piece
but the last, trailing spaces of the paragraph removed (they would make a soft break of a hard one, §4.2), the
quote prefix on every piece, and stuffed where §4.4 asks. A word longer than the width is left whole (the line
is then longer; RFC 5322 §2.1.1 allows up to 998). The signature separator `-- ` is written as it is (§4.3).

`decode(text)` undoes it (§4.1, DelSp=No): joins soft-broken lines of the same quote depth, removes the
stuffing, and writes quoted paragraphs back as `>` runs and a space, the form `encode` takes.

Invariants
1. `decode(encode(t)) == t` for any text whose lines have no trailing spaces and whose quoted lines are written
   `>... text` (a `>` run and one space): what a user types survives a round trip, as the unit tests check.
2. Every line `encode` writes, stuffing and quote prefix included, is at most `WIDTH` characters unless it holds a
   single word longer than that.
3. Both work in one pass over the text (linear), with no regular expression that can backtrack.
"""

from __future__ import annotations

WIDTH = 78  # RFC 3676 §4.2: "SHOULD be no more than 78 characters" (the space of a soft break included)
SIGNATURE = "-- "  # RFC 3676 §4.3: the usenet signature separator, never a soft break


def _split_quote(line: str) -> tuple[int, str]:
    """(quote depth, the text after the `>` run and its one stuffing space)."""
    depth = 0
    while depth < len(line) and line[depth] == ">":
        depth += 1
    rest = line[depth:]
    return depth, rest[1:] if depth and rest.startswith(" ") else rest


def _needs_stuffing(text: str) -> bool:
    # RFC 3676 §4.4: a line starting with a space, "From " or ">" (the last only where it is not a quote).
    return text.startswith((" ", "From ", ">"))


def _wrap(text: str, width: int) -> list[str]:
    """`text` in pieces of at most `width` characters, broken after spaces; each piece but the last keeps the
    space it was broken at (the soft break). A word longer than `width` is one piece."""
    if len(text) <= width:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(text) - start > width:
        # the last space at or before width - 1 (the space ends the piece, so the piece is at most `width`)
        cut = text.rfind(" ", start, start + width)
        if cut <= start:  # no space to break at: the word goes whole, to its end
            cut = text.find(" ", start + width)
            if cut < 0:
                break
        pieces.append(text[start:cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def encode(text: str, width: int = WIDTH) -> str:
    """The user's `text` (any line ends) as format=flowed lines joined by CRLF, ending in CRLF (module essay)."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == SIGNATURE:
            out.append(line)
            continue
        depth, body = _split_quote(line)
        body = body.rstrip(" ")
        if depth:
            # the space after the quote marks is stuffing (§4.5: readers take it away); an empty quoted line
            # gets none, or it would end in a space: a soft break
            prefix = ">" * depth + (" " if body else "")
            out.extend(prefix + p for p in _wrap(body, max(width - len(prefix), 20)))
        else:  # each piece is stuffed on its own: a piece after a break may start with a space too
            out.extend((" " + p) if _needs_stuffing(p) else p for p in _wrap(body, width - 1))
    while out and out[-1] == "":
        out.pop()
    return "\r\n".join(out) + "\r\n"


def decode(text: str) -> str:
    """Flowed `text` (DelSp=No) as paragraphs, one per line, quotes written `>... ` (module essay)."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    para: list[str] = []
    para_depth = -1
    for raw in lines:
        depth, body = _split_quote(raw)
        if depth == 0 and raw.startswith(" "):
            body = raw[1:]  # unstuffed (§4.4)
        elif depth == 0:
            body = raw
        if para and depth != para_depth:  # a soft break into another depth ends the paragraph (§4.5)
            out.append(_quoted(para_depth, "".join(para)))
            para = []
        para_depth = depth
        para.append(body)
        if not body.endswith(" ") or raw == SIGNATURE:
            out.append(_quoted(depth, "".join(para)))
            para = []
    if para:
        out.append(_quoted(para_depth, "".join(para)))
    return "\n".join(out)


def _quoted(depth: int, text: str) -> str:
    if not depth:
        return text
    return ">" * depth + (" " + text if text else "")


def quote(text: str) -> str:
    """Every line of `text` one level deeper: `>` before a line that is quoted already, `> ` before the others
    (RFC 3676 §4.5: quote marks run together, `>>`, not `> >`)."""
    return "\n".join((">" + line) if line.startswith(">") else ("> " + line if line else ">")
                     for line in text.split("\n"))
