"""The tests' one way to wait for something: poll a condition until it holds or a deadline passes.

``wait_for`` is for async tests (the condition may be sync or async); ``poll`` for synchronous ones
(Ray, subprocesses, Prometheus). Both return the condition's first truthy value and fail with an
``AssertionError`` naming what they waited for and the last value seen.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable


async def wait_for(
    cond: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.05,
    explain: Callable[[], Awaitable[str]] | None = None,
) -> Any:
    """Await ``cond()`` (its result awaited if it is a coroutine) until truthy; fail naming ``what``
    (and ``await explain()``, if given) after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        last = cond()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > end:
            detail = f"\n{await explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r}){detail}")
        await asyncio.sleep(interval)


def poll(
    cond: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.25,
    retry_errors: bool = False,
) -> Any:
    """Call ``cond()`` until truthy; fail naming ``what`` (a string, or a callable that makes one)
    after ``timeout`` seconds. ``retry_errors``: an exception counts as "not yet" (an actor
    restarting) and is shown as the last value if the deadline passes."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = cond()
        except Exception as exc:  # noqa: BLE001 - only with retry_errors
            if not retry_errors:
                raise
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > end:
            name = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {name} (last: {last!r})")
        time.sleep(interval)
