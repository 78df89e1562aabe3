"""Plumbing for the whole suite: plain `async def` tests run in a fresh event loop each (no plugin needed).

tests/store/conftest.py has its own, earlier hook that also opens and closes the stores its fixtures made.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Iterator

import pytest

ASYNC_TEST_TIMEOUT = 60.0


@pytest.hookimpl
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(fn(**kwargs), ASYNC_TEST_TIMEOUT))
    return True


def require_command(command: str) -> str:
    """The path of `command`, or skip the test naming the Debian package to install (tests/debian-packages.txt)."""
    import shutil
    from pathlib import Path

    path = shutil.which(command)
    if path is None:
        listing = Path(__file__).with_name("debian-packages.txt").read_text().splitlines()
        packages = [line.split()[0] for line in listing if line.strip() and not line.startswith("#")
                    and line.split()[-1] == command]
        pytest.skip(f"{command} is not installed (apt-get install {packages[0] if packages else command})")
    return path


@pytest.fixture
def india_time() -> Iterator[None]:
    """The process's local zone is Asia/Kolkata (+05:30) during the test: a date written "in the server's zone
    with its real offset" (RFC 5322 §3.3) must then say +0530, which neither UTC nor "-0000" can fake."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """One real PostgreSQL server for the whole session (tests/pgcluster.py), stopped by PID at the end; the
    tests that use it are skipped, naming the Debian package, where PostgreSQL is not installed."""
    from tests.pgcluster import Cluster, available

    reason = available()
    if reason is not None:
        pytest.skip(reason)
    cluster = Cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
