"""Callbacks that subscribe to a stream of events and can unsubscribe again.

One piece for every event source (the pool's server events, a batch's frame events): a
subscriber's bug is logged and never stops the others being told, and delivery copies the
list so a callback may unsubscribe itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")


class Subscribers(Generic[E]):
    """A thread-safe list of callbacks for events of type ``E``."""

    def __init__(self, name: str) -> None:
        self._name = name   # for the log line when a subscriber fails
        self._callbacks: list[Callable[[E], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[E], None]) -> Callable[[], None]:
        """Add ``callback``; returns a function that removes it (harmless to call twice)."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return unsubscribe

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._callbacks)

    def deliver(self, event: E) -> None:
        """Call every subscriber with ``event`` on this thread."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not stop the others being told
                log.exception("%s: event subscriber %r failed on %s", self._name, callback, event)


__all__ = ["Subscribers"]
