"""process.py "Memory": `tune_malloc` fixes glibc's mmap threshold, so a freed large block does not make later
blocks of its size come from the heap (mallopt(3), M_MMAP_THRESHOLD: "dynamic adjustment of the mmap
threshold ... is disabled" once it is set). Observed in a fresh interpreter through libc's own malloc and
/proc/self/maps: where does a 1 MiB block live after a 4 MiB block was freed?"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import ctypes, sys
from postroom.process import tune_malloc
done = tune_malloc() if sys.argv[1] == "tuned" else {}
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))  # a 4 MiB block, mapped on its own, freed: glibc's default raises its threshold
block = libc.malloc(1 << 20)
heap = [l for l in open("/proc/self/maps") if l.rstrip().endswith("[heap]")]
lo, hi = (int(x, 16) for x in heap[0].split()[0].split("-")) if heap else (0, 0)
print(sorted(done), "heap" if lo <= block < hi else "mapped")
"""


def probe(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


GLIBC = pytest.mark.skipif(not os.path.exists("/proc/self/maps") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc on Linux only")


@GLIBC
def test_a_freed_large_block_does_not_move_later_ones_into_the_heap() -> None:
    assert probe("default") == "[] heap"  # glibc's dynamic threshold: the 1 MiB block came from the heap
    assert probe("tuned") == "['MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD'] mapped"


@GLIBC
def test_the_environment_wins() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "4"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", "from postroom.process import tune_malloc; print(tune_malloc())"],
                         capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert out == "{'MALLOC_MMAP_THRESHOLD': 262144}"  # the arena count is the environment's
