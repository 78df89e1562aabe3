"""CPU of `compute_meta(raw)` + `MessageMeta.to_bytes()` per message, for three ordinary shapes of mail.

    PYTHONPATH=<checkout> .venv/bin/python bench/meta_cpu.py [--repeats 7] [--loops 400]
    PYTHONPATH=<checkout> .venv/bin/python bench/meta_cpu.py --instructions 50

What local delivery runs on the event loop for every small message (issue 17). The three messages are fixed
bytes, the same for every checkout, so running this with PYTHONPATH pointing at two checkouts, alternately,
compares their code on identical input:

* smtp     bench/store_ingest.py `message()` (smtp-source's shape, ~5 KB of text/plain) with the Return-Path and
           Received fields local delivery puts in front;
* alt      multipart/alternative: a quoted-printable text/plain part and an HTML part, ~6 KB, with the fields
           a mail client writes (Reply-To, Cc, MIME-Version, References, an encoded-word Subject);
* attach   multipart/mixed: a text part and a 20 KB base64 PDF attachment with RFC 2231 file name.

Printed: for each shape, the minimum over `--repeats` of the mean time of `--loops` runs, in microseconds (the
minimum is the least disturbed by other work on a loaded machine), and which checkout the code came from.

Wall time on a shared VM swings by a factor of two from one second to the next, so `--instructions N` counts
instead: the process runs under valgrind's callgrind (which has to be installed) once with N messages and once
with none, and the difference of the instructions executed, divided by N, is printed per message (startup and
imports cancel; the count is the same from run to run to a fraction of a percent).
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import store_ingest  # bench/store_ingest.py

import postroom
from postroom.mime.meta import compute_meta

_HEAD = (
    b"Return-Path: <alice@example.net>\r\n"
    b"Received: from mail.example.net (mail.example.net [192.0.2.7])\r\n"
    b"\tby mx.example.org with ESMTPS id 4f1a; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.net>\r\n"
    b"To: Bob <bob@example.org>, \"Carol C.\" <carol@example.org>\r\n"
    b"Cc: dave@example.org\r\n"
    b"Reply-To: <alice+list@example.net>\r\n"
    b"Subject: =?utf-8?q?Re=3A_Caf=C3=A9_plans?= for Friday\r\n"
    b"Date: Tue, 1 Dec 2026 10:59:58 +0100\r\n"
    b"Message-ID: <1b2c3d4e.5f60@mail.example.net>\r\n"
    b"In-Reply-To: <a0.b1@example.org>\r\n"
    b"References: <z9.y8@example.org>\r\n\t<a0.b1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"User-Agent: Example Mail 1.2\r\n"
)


def smtp_message() -> bytes:
    """bench/store_ingest.py `message(1, 5000)` with a fixed Message-Id, and its delivery prefix."""
    prefix, raw = store_ingest.message(1, 5000, stamp=1764583200000000000)
    return prefix + raw


def _qp_text() -> bytes:
    line = "Vielen Dank für die Nachricht, wir treffen uns im Café um halb acht. "
    text = "".join(f"{line}Punkt {i}.\n" for i in range(30)).encode("utf-8")
    import binascii

    return binascii.b2a_qp(text).replace(b"\n", b"\r\n")


def alternative_message() -> bytes:
    """multipart/alternative: quoted-printable text/plain, then text/html."""
    html = b"<html><head><title>x</title></head><body>" + b"".join(
        b'<p>Vielen Dank f&uuml;r die <b>Nachricht</b>, <a href="https://example.net/%d">hier</a>.</p>\r\n' % i
        for i in range(30)) + b"</body></html>\r\n"
    return (_HEAD + b'Content-Type: multipart/alternative; boundary="----=_Part_1_2.3"\r\n\r\n'
            b"------=_Part_1_2.3\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _qp_text() +
            b"\r\n------=_Part_1_2.3\r\nContent-Type: text/html; charset=UTF-8\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\n" + html +
            b"\r\n------=_Part_1_2.3--\r\n")


def attachment_message() -> bytes:
    """multipart/mixed: a text/plain part and a base64 application/pdf attachment (RFC 2231 file name)."""
    pdf = bytes((i * 7919) % 251 for i in range(20000))
    b64 = base64.encodebytes(pdf).replace(b"\n", b"\r\n")
    return (_HEAD + b'Content-Type: multipart/mixed; boundary="b1_5f3e"\r\n\r\n'
            b"This is a multi-part message in MIME format.\r\n\r\n"
            b"--b1_5f3e\r\nContent-Type: text/plain; charset=us-ascii; format=flowed\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\n" + b"Here is the report, see attached.\r\n" * 12 +
            b"\r\n--b1_5f3e\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment;\r\n filename*=utf-8''Bericht%20f%C3%BCr%20M%C3%A4rz.pdf\r\n\r\n"
            + b64 + b"\r\n--b1_5f3e--\r\n")


SHAPES = {"smtp": smtp_message, "alt": alternative_message, "attach": attachment_message}


def best_us(raw: bytes, repeats: int, loops: int) -> float:
    """Min over `repeats` of the mean microseconds of compute_meta(raw).to_bytes() over `loops` runs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            compute_meta(raw).to_bytes()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best * 1e6


def instructions(shape: str, count: int) -> int:
    """Instructions executed by this script run with `--run SHAPE count` under callgrind."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                          "--run", shape, str(count)], capture_output=True, text=True, check=True).stderr
    m = re.search(r"Collected : (\d+)", out)
    if m is None:
        raise RuntimeError(f"no instruction count from callgrind: {out[-500:]}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--loops", type=int, default=400)
    ap.add_argument("--instructions", type=int, metavar="N", help="count instructions per message over N runs")
    ap.add_argument("--run", nargs=2, metavar=("SHAPE", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        raw = SHAPES[args.run[0]]()
        compute_meta(raw).to_bytes()  # every import and cache warm, in both runs alike
        for _ in range(int(args.run[1])):
            compute_meta(raw).to_bytes()
        return
    where = Path(postroom.__file__).resolve().parents[1]
    cells = []
    for name, make in SHAPES.items():
        raw = make()
        if args.instructions:
            n = args.instructions
            per = (instructions(name, n) - instructions(name, 0)) / n
            cells.append(f"{name} {len(raw)} B {per / 1e3:7.1f} k instructions")
        else:
            cells.append(f"{name} {len(raw)} B {best_us(raw, args.repeats, args.loops):6.1f} us")
    print(f"{where}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
