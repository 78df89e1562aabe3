"""Is `compute_meta(raw).to_bytes()` byte for byte what another checkout computes? Over many messages.

    .venv/bin/python bench/meta_equivalence.py [--before /work/main] [--variants 4000] [--seed 1]

A change that only makes the metadata cheaper must not change one byte of what the store keeps (a changed
blob would be a second truth beside the stored ones, and FORMAT_VERSION says they are the same). This collects
messages from:

* the MIME corpus (tests/data/mime/msgs) and the fuzz seeds (tests/fuzz/fuzz_targets.py, every target's seeds);
* every message the MIME unit tests scan: tests/unit/test_mime_*.py and test_*meta*.py are run under pytest with
  this file as a plugin (`-p meta_equivalence`, META_EQUIVALENCE_RECORD set), which records every `raw` given
  to `structure.scan` (all of compute_meta, minimal_meta aside, goes through it);
* `--variants` generated messages (`variants`): random header folding and blank runs, RFC 2047 encoded words in
  every charset Python has a codec for (and names that are no charset), odd Content-Type and
  Content-Disposition parameters (RFC 2231 sections, quoting, comments, 8-bit), nested multiparts, digests,
  message/rfc822 and message/global parts, bare-LF line ends, and random damage (`fuzz_targets.mutate`);

then computes `to_bytes()` for all of them once with `--before` on PYTHONPATH and once with this checkout, each
in a subprocess (`--compute`), and compares. Prints the number of messages per source and the mismatches (the
first few shown); exit status 1 if any differ.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import encodings.aliases
import hashlib
import os
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------
# The pytest plugin: record every message the tests scan.


def pytest_configure(config: object) -> None:
    """Under pytest with META_EQUIVALENCE_RECORD=<file>: append every bytes `raw` scanned to that file."""
    out = os.environ.get("META_EQUIVALENCE_RECORD")
    if not out:
        return
    from postroom.mime import structure

    original = structure._Scanner.__init__
    seen: set[bytes] = set()

    def recording_init(self: structure._Scanner, raw: bytes, limits: object) -> None:
        if isinstance(raw, (bytes, bytearray)):
            data = bytes(raw)
            digest = hashlib.sha256(data).digest()
            if digest not in seen:
                seen.add(digest)
                with open(out, "ab") as f:
                    f.write(struct.pack(">I", len(data)) + data)
        original(self, raw, limits)  # type: ignore[arg-type]

    structure._Scanner.__init__ = recording_init  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------------------
# Messages


def write_messages(path: Path, messages: list[bytes]) -> None:
    with path.open("wb") as f:
        for m in messages:
            f.write(struct.pack(">I", len(m)) + m)


def read_messages(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.exists() else b""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def corpus() -> list[bytes]:
    return [p.read_bytes() for p in sorted((ROOT / "tests/data/mime/msgs").iterdir()) if p.is_file()]


def fuzz_seeds() -> list[bytes]:
    sys.path.insert(0, str(ROOT / "tests/fuzz"))
    from fuzz_targets import SEEDS  # noqa: PLC0415 - the fuzz targets are not a package

    return [s for seeds in SEEDS.values() for s in seeds]


def test_messages() -> list[bytes]:
    """Every message the MIME and meta unit tests scan (recorded by this file as a pytest plugin)."""
    tests = sorted(str(p) for p in (ROOT / "tests/unit").glob("test_mime_*.py"))
    tests += sorted(str(p) for p in (ROOT / "tests/unit").glob("test_*meta*.py") if str(p) not in tests)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "recorded"
        env = dict(os.environ, META_EQUIVALENCE_RECORD=str(record),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(ROOT)]))
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "meta_equivalence",
                        "-p", "no:xdist", *tests], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
        return read_messages(record)


def charsets() -> list[str]:
    """Every codec name Python knows (each alias target once), plus names that are no charset."""
    names = sorted(set(encodings.aliases.aliases.values()))
    out = []
    for n in names:
        try:
            codecs.lookup(n)
        except LookupError:
            continue
        out.append(n)
    return out + ["unknown-8bit", "x-unknown", "us-ascii", "UTF-8", "utf-8*en", "", "\xe9"]


_WORDS = ["Café", "naïve", "日本語のテキスト", "Ελληνικά", "Привет, мир", "a_b c", "=?", "?=", "x" * 80, "",
          "\u00a0nbsp", "emoji \U0001f600", "tab\there"]


def _encoded_word(rng: random.Random, cs: str) -> str:
    text = rng.choice(_WORDS)
    try:
        data = text.encode(cs) if cs else text.encode()
    except Exception:  # noqa: BLE001 - a codec that cannot encode the text: its raw UTF-8 then
        data = text.encode()
    if rng.random() < 0.5:
        payload = base64.b64encode(data).decode()
        if rng.random() < 0.2:
            payload = payload.rstrip("=")
        kind = rng.choice("Bb")
    else:
        payload = "".join(chr(b) if 33 <= b < 127 and chr(b) not in "=?_ " else f"={b:02X}" for b in data)
        payload = payload.replace(" ", "_")
        kind = rng.choice("Qq")
    return f"=?{cs}?{kind}?{payload}?="


def _fold(rng: random.Random, value: str, eol: str) -> str:
    """Fold `value` at random blanks (RFC 5322 §2.2.3), sometimes with extra blanks or tabs."""
    out = []
    for word in value.split(" "):
        if out and rng.random() < 0.3:
            out.append(eol + rng.choice([" ", "\t", "  ", " \t "]))
        elif out:
            out.append(rng.choice([" ", " ", " ", "  ", "\t"]))
        out.append(word)
    return "".join(out)


_ADDRESSES = ['Alice <alice@example.net>', '"Bob, Jr." <bob@example.org>', "carol@example.com (Carol)",
              "undisclosed-recipients:;", "group: a@b.test, c@d.test;", "<@route.test:x@y.test>",
              "=?utf-8?q?J=C3=B6rg?= <joerg@example.de>", "<>", "no-at-sign", "a@b,,c@d",
              '"quoted \\" string" <q@example.test>', "[1.2.3.4]", "Dr. J. Smith <js@example.test>",
              "x@[192.0.2.1]", "名前 <u@example.jp>", "<a@b.test> <c@d.test>"]

_PARAMS = ['; charset="utf-8"', "; charset=ISO-8859-1", '; name="file name.pdf"',
           "; name*=utf-8''%E2%82%AC%20rates.pdf", "; name*0=\"long\"; name*1=\"name.txt\"",
           "; filename*0*=utf-8''caf%C3%A9; filename*1=\".txt\"", "; format=flowed; delsp=yes", "; x=(comment)y",
           "; charset = \"us-ascii\" (comment)", "; name=\"=?utf-8?b?w6k=?=.txt\"", "; bad", ";;", "; a=\"unterminated",
           "; name=caf\xe9.txt", "; charset=rot13", "; charset=idna", "; charset=utf-7", '; x="a\\"b"',
           "; NAME=Upper.TXT", "; name*=iso-8859-1'en'caf\xe9", "; charset=\"\"", "; boundary=\"ignored\""]


def _header(rng: random.Random, eol: str, cs_list: list[str]) -> str:
    fields = []
    if rng.random() < 0.7:
        fields.append(("Return-Path", "<bounce@example.net>"))
        fields.append(("Received", "from a.example (a.example [192.0.2.1]) by b.example with ESMTP id "
                                   f"{rng.randrange(9999)}; Tue, 1 Dec 2026 10:00:00 +0000"))
    n_addr = rng.randint(0, 3)
    fields.append(("From", ", ".join(rng.choice(_ADDRESSES) for _ in range(max(1, n_addr)))))
    for name in ("To", "Cc", "Bcc", "Reply-To", "Sender"):
        if rng.random() < 0.4:
            fields.append((name, ", ".join(rng.choice(_ADDRESSES) for _ in range(rng.randint(1, 3)))))
    subj = []
    for _ in range(rng.randint(0, 4)):
        subj.append(_encoded_word(rng, rng.choice(cs_list)) if rng.random() < 0.6 else rng.choice(
            ["Re:", "Fwd:", "[list]", "hello", "(fwd)", "[Fwd: x]", "RE: [a] b", "world", "\xc3\xa9"]))
    fields.append(("Subject", " ".join(subj)))
    fields.append(("Date", rng.choice(["Tue, 1 Dec 2026 10:00:00 +0000", "1 Dec 26 10:00 EST", "garbage",
                                       "Mon, 31 Feb 2024 25:61:61 +9999", "Tue,  1 Dec 2026 (comment) 23:59:60 -0800",
                                       "Tue, 1 Dec 2026 10:00:00 XYZ", ""])))
    fields.append(("Message-ID", rng.choice(["<1@x.test>", "<a b@c>", "no-brackets", "<1@x.test> <2@y.test>", ""])))
    if rng.random() < 0.5:
        fields.append(("References", " ".join(f"<{i}@r.test>" for i in range(rng.randint(0, 6)))))
    if rng.random() < 0.5:
        fields.append(("In-Reply-To", "<p@r.test> (comment) <q@r.test>"))
    if rng.random() < 0.3:
        fields.append(("X-Encoded", " ".join(_encoded_word(rng, rng.choice(cs_list)) for _ in range(3))))
    if rng.random() < 0.2:
        fields.append(("Subject", "second subject"))
    rng.shuffle(fields)
    out = []
    for name, value in fields:
        if rng.random() < 0.05:
            name = name.upper()
        sep = rng.choice([": ", ":", ":  ", " : "]) if rng.random() < 0.2 else ": "
        out.append(name + sep + _fold(rng, value, eol) + eol)
    return "".join(out)


def _leaf(rng: random.Random, eol: str, cs_list: list[str]) -> str:
    kind = rng.randrange(7)
    text = eol.join(rng.choice(_WORDS) for _ in range(rng.randint(0, 8)))
    if kind == 0:
        return eol + text
    if kind == 1:
        cs = rng.choice(cs_list)
        return (f"Content-Type: text/plain; charset={cs}{rng.choice(_PARAMS)}{eol}"
                f"Content-Transfer-Encoding: quoted-printable{eol}{eol}caf=C3=A9 =3D soft=  {eol}line=E9{eol}{text}")
    if kind == 2:
        return (f"Content-Type: text/html{rng.choice(_PARAMS)}{eol}{eol}<html><head><title>t</title></head>"
                f"<body><p>{text}</p><script>x</script>&amp;&eacute;<br/>&#x41;</body></html>")
    if kind == 3:
        payload = base64.encodebytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))).decode()
        return (f"Content-Type: application/octet-stream{rng.choice(_PARAMS)}{eol}"
                f"Content-Transfer-Encoding: {rng.choice(['base64', 'BASE64', 'x-uuencode', 'binary'])}{eol}"
                f"Content-Disposition: {rng.choice(['attachment', 'inline', 'ATTACHMENT'])}{rng.choice(_PARAMS)}"
                f"{rng.choice(_PARAMS)}{eol}Content-ID: <cid{rng.randrange(99)}@x>{eol}"
                f"Content-Description: {_encoded_word(rng, rng.choice(cs_list))}{eol}"
                f"Content-Language: en, de-DE{eol}Content-Location: http://x.test/a{eol}Content-MD5: abc{eol}{eol}"
                + payload.replace("\n", eol))
    if kind == 4:
        return (f"Content-Type: TEXT/Plain{rng.choice(_PARAMS)}{eol}Content-Transfer-Encoding: 8bit{eol}{eol}"
                + text)
    if kind == 5:
        return f"Content-Type: text/enriched; charset={rng.choice(cs_list)}{eol}{eol}<bold>{text}</bold>"
    return f"Content-Type: image/png; name=a.png{eol}Content-Transfer-Encoding: base64{eol}{eol}iVBORw0KGgo={eol}"


def _entity(rng: random.Random, depth: int, eol: str, cs_list: list[str]) -> str:
    """A body part (header and body) of random shape, nested up to `depth` more levels."""
    r = rng.random()
    if depth > 0 and r < 0.3:
        boundary = rng.choice(["b1", "----=_Part_0_1.2", "=_x y_=", "simple", "'quoted'", "a" * 70]) + str(depth)
        sub = rng.choice(["mixed", "alternative", "related", "digest", "signed", "report", "MIXED"])
        quoted = f'"{boundary}"' if rng.random() < 0.7 or " " in boundary else boundary
        parts = []
        for _ in range(rng.randint(0, 4)):
            if sub == "digest" and rng.random() < 0.5:
                parts.append(eol + _header(rng, eol, cs_list) + eol + "digest body")
            else:
                parts.append(_entity(rng, depth - 1, eol, cs_list))
        body = (rng.choice(["", "preamble" + eol]) + "".join(f"--{boundary}{rng.choice(['', ' ', chr(9)])}{eol}{p}{eol}"
                                                              for p in parts))
        if rng.random() < 0.85:
            body += f"--{boundary}--{eol}" + rng.choice(["", "epilogue" + eol])
        return f"Content-Type: multipart/{sub}; boundary={quoted}{rng.choice(_PARAMS)}{eol}{eol}{body}"
    if depth > 0 and r < 0.45:
        inner = _header(rng, eol, cs_list) + _entity(rng, depth - 1, eol, cs_list)
        sub = rng.choice(["rfc822", "global", "RFC822"])
        cte = rng.choice(["", f"Content-Transfer-Encoding: 7bit{eol}", f"Content-Transfer-Encoding: base64{eol}"])
        return f"Content-Type: message/{sub}{eol}{cte}{eol}{inner}"
    return _leaf(rng, eol, cs_list)


def variants(count: int, seed: int, seeds: list[bytes]) -> list[bytes]:
    """`count` generated messages (module doc); every fifth is damaged by `fuzz_targets.mutate`."""
    from fuzz_targets import mutate  # noqa: PLC0415 - tests/fuzz is put on sys.path by fuzz_seeds()

    rng = random.Random(seed)
    cs_list = charsets()
    out = []
    for i in range(count):
        eol = "\n" if rng.random() < 0.1 else "\r\n"
        msg = _header(rng, eol, cs_list) + rng.choice(["", f"MIME-Version: 1.0{eol}"]) + _entity(rng, 3, eol, cs_list)
        data = msg.encode("utf-8", "surrogateescape") if rng.random() < 0.8 else msg.encode("latin-1", "replace")
        if i % 5 == 4:
            data = mutate(rng, data, seeds)
        out.append(data)
    return out


# ---------------------------------------------------------------------------------------------------------
# Computing and comparing


def compute(src: Path, dst: Path) -> None:
    """--compute: to_bytes() of every message in `src`, and of every third one given as a bytearray (how the
    metadata worker reads a staged file, metaworker.py), written to `dst` in the same framing."""
    import postroom  # noqa: PLC0415 - from the checkout PYTHONPATH names
    from postroom.mime.meta import compute_meta  # noqa: PLC0415

    print(f"computing with {Path(postroom.__file__).parents[1]}", file=sys.stderr, flush=True)
    out = []
    for i, m in enumerate(read_messages(src)):
        out.append(compute_meta(m).to_bytes())
        if i % 3 == 0:
            out.append(compute_meta(bytearray(m)).to_bytes())  # type: ignore[arg-type]
    write_messages(dst, out)


def run(checkout: Path, src: Path, dst: Path) -> list[bytes]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    subprocess.run([sys.executable, __file__, "--compute", str(src), str(dst)], env=env, check=True)
    return read_messages(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="/work/main", help="checkout whose output is the reference")
    ap.add_argument("--variants", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compute", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compute:
        compute(Path(args.compute[0]), Path(args.compute[1]))
        return
    seeds = fuzz_seeds()
    sources = {"corpus": corpus(), "fuzz seeds": seeds, "unit tests": test_messages(),
               "variants": variants(args.variants, args.seed, seeds)}
    messages = [m for ms in sources.values() for m in ms]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "messages"
        write_messages(src, messages)
        before = run(Path(args.before), src, Path(tmp) / "before")
        after = run(ROOT, src, Path(tmp) / "after")
    # The outputs in `compute` order: message i, then (every third) message i as a bytearray.
    which = [(i, kind) for i in range(len(messages)) for kind in (("bytes", "bytearray") if i % 3 == 0 else ("bytes",))]
    bad = [k for k, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    print(", ".join(f"{k}: {len(v)}" for k, v in sources.items()))
    for k in bad[:5]:
        i, kind = which[k]
        print(f"message {i} ({kind}) differs:\n  message {messages[i][:300]!r}\n  before  {before[k][:600]!r}\n"
              f"  after   {after[k][:600]!r}")
    print(f"{len(messages)} messages ({len(which)} computations, {len(which) - len(messages)} of them from a "
          f"bytearray) compared with {args.before}: {len(which) - len(bad)} identical, {len(bad)} different")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
