"""process.py "Memory": `tune_malloc` caps glibc's malloc arenas at two (mallopt(3), M_ARENA_MAX), so the threads of
a server process share one arena instead of keeping one each (up to 8 per CPU), each with its own free memory.
Observed in a fresh interpreter: eight threads alive at once each take a block from libc's malloc, and the
blocks' addresses name their arenas (the main arena is the [heap] mapping; every other arena lives in heaps of
its own, aligned to glibc's HEAP_MAX_SIZE, 64 MiB on 64-bit Linux)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import ctypes, sys, threading
from postroom.process import tune_malloc
done = tune_malloc() if sys.argv[1] == "tuned" else {}
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
blocks, barrier = [], threading.Barrier(8)

def take():
    blocks.append(libc.malloc(200))
    barrier.wait()  # every thread alive until all have allocated: none hands its arena on

threads = [threading.Thread(target=take) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
heap = [l for l in open("/proc/self/maps") if l.rstrip().endswith("[heap]")]
lo, hi = (int(x, 16) for x in heap[0].split()[0].split("-")) if heap else (0, 0)
arenas = {"main" if lo <= b < hi else b >> 26 for b in blocks}
print(sorted(done), len(arenas))
"""
GLIBC = pytest.mark.skipif(not os.path.exists("/proc/self/maps") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc on Linux only")


def probe(mode: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={**clean, "PYTHONPATH": str(ROOT), **env}).stdout.strip()


@GLIBC
def test_the_threads_share_at_most_two_arenas() -> None:
    assert probe("tuned") in ("['MALLOC_ARENA_MAX'] 1", "['MALLOC_ARENA_MAX'] 2")
    _, untuned = probe("default").split()
    assert int(untuned) > 2  # glibc's default: an arena per thread (the probe can tell the difference)


@GLIBC
def test_the_environment_wins() -> None:
    assert probe("tuned", MALLOC_ARENA_MAX="4").split()[0] == "[]"
