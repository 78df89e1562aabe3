"""Benchmark: computing all message metadata (postroom.mime.meta.compute_meta) beside plain stdlib parsing.

    .venv/bin/python bench/mime.py            # default corpus
    .venv/bin/python bench/mime.py --scale 4  # four times as many messages

For each kind of message in a generated corpus (small text, typical multipart with HTML and a small
attachment, large attachments, deep nesting), it times:

* postroom   `compute_meta(raw)`: structure scan, ENVELOPE, BODY, BODYSTRUCTURE, part table, search text
             (headers and text bodies decoded), and the serialised meta blob (`to_bytes`);
* scan only  `structure.scan(raw)`: the byte-offset scan alone;
* email      `email.message_from_bytes(raw, policy=email.policy.default)`: the stdlib parse, which builds the
             tree but decodes nothing and computes none of the above.

and prints one table: messages/s and MB/s for each, and the ratio postroom/email (above 1: Postroom faster).
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from postroom.mime.compose import Attachment, compose
from postroom.mime.meta import compute_meta
from postroom.mime.structure import scan


def _compose(**kw: Any) -> bytes:
    """compose() with a fixed Date and Message-ID, so every run builds the same bytes."""
    return compose(date=1_700_000_000.0, message_id="<bench@example.org>", **kw)


def small_text(i: int) -> bytes:
    body = "".join(
        f"Line {n} of message {i}: the quick brown fox jumps over the lazy dog.\n" for n in range(25)
    )
    return _compose(
        from_=f"Sender {i} <s{i}@example.org>",
        to=["Bob <bob@example.net>"],
        subject=f"Small message {i}",
        text=body,
    )


def typical(i: int) -> bytes:
    text = "Hello,\n\n" + "Some words about the quarterly report. " * 40 + "\n\nRegards\n"
    html = "<html><body><p>" + text.replace("\n", "<br>") + '</p><img src="cid:logo@x"></body></html>'
    return _compose(
        from_="Jörg Müller <jorg@example.de>",
        to=["Zoë <z@example.org>", "team@example.org"],
        subject=f"Grüße – report {i}",
        text=text,
        html=html,
        attachments=[
            Attachment("logo.png", os.urandom(4_000), "image/png", inline=True, content_id="logo@x"),
            Attachment("report.pdf", os.urandom(60_000), "application/pdf"),
        ],
    )


def large_attachment(i: int, mb: int) -> bytes:
    return _compose(
        from_="a@example.org",
        to=["b@example.net"],
        subject=f"big {i}",
        text="see attached\n",
        attachments=[Attachment("big.bin", os.urandom(mb * 1024 * 1024))],
    )


def deep(i: int, depth: int = 40) -> bytes:
    inner = f"Content-Type: text/plain\r\n\r\nbottom {i}\r\n"
    for lvl in range(depth, 0, -1):
        if lvl % 3 == 0:
            inner = f"Content-Type: message/rfc822\r\n\r\nSubject: level {lvl}\r\nFrom: l{lvl}@x.example\r\n{inner}"
        else:
            inner = (
                f'Content-Type: multipart/mixed; boundary="d{lvl}"\r\n\r\n--d{lvl}\r\n'
                f"Content-Type: text/plain\r\n\r\nside {lvl}\r\n--d{lvl}\r\n{inner}--d{lvl}--\r\n"
            )
    return (f"From: a@example.org\r\nSubject: deep {i}\r\nMIME-Version: 1.0\r\n" + inner).encode()


def corpus(scale: int) -> list[tuple[str, list[bytes]]]:
    return [
        ("small text", [small_text(i) for i in range(400 * scale)]),
        ("multipart, html, attachment", [typical(i) for i in range(40 * scale)]),
        ("large attachment", [large_attachment(i, 20) for i in range(2 * scale)]),
        ("deep nesting, 40 levels", [deep(i) for i in range(100 * scale)]),
    ]


def run(fn: Callable[[bytes], object], msgs: list[bytes], min_time: float) -> float:
    """Seconds per pass over msgs (best of repeated passes lasting at least min_time in total)."""
    best = float("inf")
    spent = 0.0
    passes = 0
    while spent < min_time or passes < 2:
        t = time.perf_counter()
        for raw in msgs:
            fn(raw)
        dt = time.perf_counter() - t
        best = min(best, dt)
        spent += dt
        passes += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=1, help="multiply the number of messages")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds to spend per cell at least")
    args = ap.parse_args()

    print("building corpus...", file=sys.stderr)
    kinds = corpus(args.scale)
    contenders: list[tuple[str, Callable[[bytes], object]]] = [
        ("postroom", lambda raw: compute_meta(raw).to_bytes()),
        ("scan only", scan),
        ("email", lambda raw: email.message_from_bytes(raw, policy=email.policy.default)),
    ]
    rows = []
    for kind, msgs in kinds:
        mb = sum(len(m) for m in msgs) / 1e6
        cells = {}
        for name, fn in contenders:
            print(f"  {kind}: {name}...", file=sys.stderr, flush=True)
            secs = run(fn, msgs, args.min_time)
            cells[name] = (len(msgs) / secs, mb / secs)
        avg = sum(len(m) for m in msgs) / len(msgs)
        size = f"{avg / 1e6:.1f} MB" if avg >= 1e6 else f"{avg / 1e3:.1f} KB"
        rows.append((kind, len(msgs), size, cells))

    head = f"{'corpus':<29}{'msgs':>5}{'avg size':>10}  " + "".join(
        f"{n + ' msg/s':>17}{'MB/s':>9}" for n, _ in contenders
    )
    head += f"{'postroom/email':>16}"
    print(head)
    print("-" * len(head))
    for kind, n, size, cells in rows:
        line = f"{kind:<29}{n:>5}{size:>10}  "
        for name, _ in contenders:
            rate, mbs = cells[name]
            line += f"{rate:>17,.0f}{mbs:>9,.1f}"
        line += f"{cells['postroom'][0] / cells['email'][0]:>15.2f}x"
        print(line)


if __name__ == "__main__":
    main()
