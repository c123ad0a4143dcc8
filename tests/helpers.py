"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Tests wait on a condition with a deadline; they never sleep and hope. After ``timeout``
    seconds an AssertionError names ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def named_child(widget: Any, kind: Any, name: str) -> Any:
    """The child widget of class ``kind`` whose objectName is ``name`` (``enable:gpu-02``)."""
    child = widget.findChild(kind, name)
    assert child is not None, f"no {kind.__name__} named {name!r}"
    return child
