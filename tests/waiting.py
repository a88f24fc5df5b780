"""Wait on a condition instead of sleeping a guessed delay before an assertion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that value.

    Fails the test (AssertionError) after ``timeout`` seconds, naming ``what`` was awaited (the predicate's
    name or source line when not given) and the last value it returned. An exception raised by the predicate
    propagates at once: a broken condition is a failure, not something to wait out.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or _describe(predicate)} "
                                 f"(last value: {value!r})")
        time.sleep(interval)


def _describe(predicate: Callable) -> str:
    import inspect

    name = getattr(predicate, "__name__", "")
    if name and name != "<lambda>":
        return name
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
