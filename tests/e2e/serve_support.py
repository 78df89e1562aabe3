"""`postroom serve` as a real process for end-to-end tests that need one (memory of the process, kill -9,
start-up sweeps), started from this checkout's code, its ports read from the start-up banner.

    proc, ports = start_serve(conf)    # {"smtp": 41234, "imap": 41235, ...}: the listeners that are on
    ...
    proc.kill(); proc.wait()           # the caller stops it by its PID
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def start_serve(conf: Path, timeout: float = 60.0, workers: int = 1,
                log: Path | None = None) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """Start `python -m postroom --config conf serve --workers N` (one process by default: the callers measure
    or stop that process) and wait for its banner; returns the process and each listener's port. Its log goes
    nowhere, at level warning, or with `log` appended to that file at the server's own level (info: the lines a
    caller reads, such as "worker started"). Kills the process and raises AssertionError when no banner comes."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's code
    level = [] if log is not None else ["--log-level", "warning"]
    with open(log, "a") if log is not None else open(os.devnull, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "postroom", "--config", str(conf), "serve", *level,
                                 "--workers", str(workers)], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    assert proc.stdout is not None
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "Stop with" not in text:
        line = proc.stdout.readline()
        if not line:
            break
        text += line
    ports = {name: int(port) for name, port in re.findall(r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)", text, re.M)}
    if "Stop with" not in text or not ports:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no banner: {text!r}" + (f"\n{log.read_text()}" if log is not None else ""))
    return proc, ports
