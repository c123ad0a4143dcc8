"""The hand-written fake ``nuke``/``nukescripts`` packages; ``install()`` puts them on sys.path."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def install() -> None:
    """Make ``import nuke`` find the fake (idempotent)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until true; AssertionError after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
