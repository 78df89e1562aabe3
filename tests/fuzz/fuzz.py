"""`./run fuzz`: run the fuzz targets (tests/fuzz/fuzz_targets.py) for a chosen time and report what they found.

Usage: ./run fuzz [--seconds N] [--seed N] [--out DIR] [TARGET ...]
       ./run fuzz --replay FILE ...

Each target gets N seconds (default 60). Inputs are mutated seeds (`fuzz_targets.mutate`, three in four) and
random bytes (one in four), each fed whole, byte by byte or at random cuts. A failing input is saved as
`DIR/<target>-<sha256 prefix>.bin` (default DIR: ./fuzz-findings) with the traceback beside it (`.txt`), and
kept as a seed for the rest of the run; `--replay FILE` runs saved inputs again (the target is the file name's
prefix). The report is one line per target: inputs tried, inputs per second, failures, distinct failures.
Exit status: 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from pathlib import Path

from fuzz_targets import SEEDS, TARGETS, mutate, split


def _signature(exc: BaseException) -> str:
    """Where a failure happened (innermost frame in postroom/ or the targets) and its type: one per bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "postroom" in f.filename or "fuzz_targets" in f.filename] or frames
    last = ours[-1] if ours else None
    where = f"{Path(last.filename).name}:{last.lineno}" if last else "?"
    return f"{type(exc).__name__} at {where}"


def run_target(name: str, seconds: float, rng: random.Random, out: Path) -> tuple[int, int, set[str]]:
    """Fuzz one target for `seconds`. Returns (inputs tried, failures, distinct failure signatures)."""
    target = TARGETS[name]
    seeds = list(SEEDS[name])
    tried = failures = 0
    signatures: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rng.random() < 0.25:
            data = rng.randbytes(rng.randint(0, 2048))
        else:
            data = mutate(rng, rng.choice(seeds), seeds)
        tried += 1
        try:
            target(split(rng, data))
        except Exception as exc:  # every exception is a finding; the run goes on
            failures += 1
            sig = _signature(exc)
            if sig not in signatures:
                signatures.add(sig)
                out.mkdir(parents=True, exist_ok=True)
                stem = out / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}"
                stem.with_suffix(".bin").write_bytes(data)
                stem.with_suffix(".txt").write_text("".join(traceback.format_exception(exc)))
                print(f"  {name}: new failure {sig} -> {stem}.bin", file=sys.stderr, flush=True)
                seeds.append(data)
    return tried, failures, signatures


def replay(paths: list[str]) -> int:
    bad = 0
    for p in paths:
        path = Path(p)
        name = path.name.split("-", 1)[0]
        data = path.read_bytes()
        try:
            TARGETS[name]([data])
            TARGETS[name]([data[i:i + 1] for i in range(len(data))])
            print(f"{path}: passes now")
        except Exception:
            bad += 1
            print(f"{path}: still fails")
            traceback.print_exc()
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run fuzz", description=__doc__.split("\n\n")[0],
                                 epilog=f"targets: {', '.join(sorted(TARGETS))}")
    ap.add_argument("targets", nargs="*", help="targets to run (default: all)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time per target (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run (default: clock)")
    ap.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="where failing inputs are saved")
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="run saved inputs again and say if they pass")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    names = args.targets or sorted(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(sorted(TARGETS))}")
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    print(f"fuzzing {', '.join(names)} for {args.seconds:g} s each, seed {seed}", flush=True)
    print(f"{'target':<8} {'inputs':>10} {'inputs/s':>10} {'failures':>9} {'distinct':>9}")
    total_failures = 0
    for name in names:
        start = time.monotonic()
        tried, failures, sigs = run_target(name, args.seconds, random.Random(f"{seed}-{name}"), args.out)
        rate = tried / max(time.monotonic() - start, 1e-9)
        print(f"{name:<8} {tried:>10,} {rate:>10,.0f} {failures:>9,} {len(sigs):>9}", flush=True)
        for sig in sorted(sigs):
            print(f"         {sig}")
        total_failures += failures
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
