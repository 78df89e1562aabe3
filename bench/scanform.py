"""The scan form's codec, measured: size and scan time of the case-folded search text stored uncompressed, with
zlib, with Zstandard (and lz4 when installed), on the mail of bench/imap_search.py.

    .venv/bin/python bench/scanform.py [--count 2000] [--rounds 7]

For --count messages of that bench (about 20 KiB of English-like text each, a quarter with an attachment) the
text the exact SEARCH check compares (`scanform.text_haystack`, case-folded, UTF-8) is compressed with each codec;
then, best of --rounds, every message is decompressed and searched for a string in none of them (`bytes.find`
over the whole text: the cost of a SEARCH that narrows nothing). Printed per codec: stored size against the text
and against the raw messages, compression time per message (the writer's extra work per delivery), and the scan
time per message and its throughput. The chosen codec is the one `store/scanform.py` uses (Zstandard level 1).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zstandard
from imap_search import make_messages  # the same mail as the SEARCH bench

from postroom.mime.meta import compute_meta
from postroom.store.scanform import text_haystack

Codec = tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]


def codecs() -> list[Codec]:
    zd = zstandard.ZstdDecompressor()
    out: list[Codec] = [
        ("uncompressed", bytes, bytes),
        ("zlib level 1", lambda b: zlib.compress(b, 1), zlib.decompress),
        ("zlib level 6", lambda b: zlib.compress(b, 6), zlib.decompress),
        ("zstd level 1 (chosen)", zstandard.ZstdCompressor(level=1).compress, zd.decompress),
        ("zstd level 3", zstandard.ZstdCompressor(level=3).compress, zd.decompress),
    ]
    try:
        import lz4.block  # type: ignore[import-not-found]  # optional: not a Postroom dependency
    except ImportError:
        return out
    return out + [("lz4 block", lz4.block.compress, lz4.block.decompress)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    raws = make_messages(args.count)
    texts = [text_haystack(compute_meta(r)).casefold().encode("utf-8", "surrogatepass") for r in raws]
    text_bytes, raw_bytes = sum(map(len, texts)), sum(map(len, raws))
    needle = b"zz-in-no-message"
    print(f"{args.count} messages, {raw_bytes / 1e6:.1f} MB raw, {text_bytes / 1e6:.1f} MB of case-folded text; "
          f"best of {args.rounds}")
    print("| codec | stored / text | stored / messages | compress, ms per message | scan, us per message | scan MB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for name, comp, dec in codecs():
        t = time.perf_counter()
        stored = [comp(b) for b in texts]
        rows.append((name, dec, stored, (time.perf_counter() - t) / len(texts)))
    best = [float("inf")] * len(rows)
    for _ in range(args.rounds):  # codecs in turn within each round: a loaded machine slows them alike
        for i, (_, dec, stored, _) in enumerate(rows):
            t = time.perf_counter()
            for s in stored:
                dec(s).find(needle)
            best[i] = min(best[i], time.perf_counter() - t)
    for (name, _, stored, build), took in zip(rows, best):
        size = sum(map(len, stored))
        print(f"| {name} | {size / text_bytes:.3f} | {size / raw_bytes:.3f} | {build * 1000:.3f} | "
              f"{took / len(texts) * 1e6:.1f} | {text_bytes / took / 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
