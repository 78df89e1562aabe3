"""Plumbing for the whole suite: plain `async def` tests run in a fresh event loop each (no plugin needed).

tests/store/conftest.py has its own, earlier hook that also opens and closes the stores its fixtures made.
"""

from __future__ import annotations

import asyncio
import inspect

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
