"""Which backends a batch can still count on, and why nothing runs when none can.

A batch keeps one ``Rotation``. Attempts that time out count as strikes against their
backend; ``STRIKES`` in a row (a success resets them) take it out of rotation for the rest of
the batch: a half-alive server (its status answers, its prompts never finish) looks online
to the pool forever, so only the batch can notice. When the pool has no free slot, the batch
asks ``nothing_runs``: a backend that could take the work once a slot frees means "wait";
otherwise ``blocked`` names each backend's reason, and after ``wait_for_server`` seconds (at
once when every backend in scope is out of rotation) it answers the ``NoBackendAvailable``
that fails the unsent frames. Reads status caches only, never the network.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from .errors import JobTimeout, NoBackendAvailable, ServerTimeout, capped

log = logging.getLogger(__name__)

#: Timed-out attempts in a row that take a backend out of rotation for the batch.
STRIKES = 2
_RUNPOD_NOT_CONFIGURED = "runpod: not configured (set RUNPOD_ENDPOINT_ID and RUNPOD_API_KEY to burst there)"


class Rotation:
    """Strikes, benched backends and the blocked reasons of one batch; thread-safe."""

    def __init__(self, *, target: str | None, wait_for_server: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not wait_for_server >= 0:
            raise ValueError(f"wait_for_server must be >= 0 seconds, got {wait_for_server!r}")
        self.target = target
        self.wait_for_server = float(wait_for_server)
        self._clock = clock
        self._lock = threading.Lock()
        self._strikes: dict[str, int] = {}
        self._benched: dict[str, str] = {}
        self._blocked: list[str] = []
        self._blocked_since: float | None = None

    @property
    def benched(self) -> dict[str, str]:
        """Backends out of rotation, with the reason."""
        with self._lock:
            return dict(self._benched)

    @property
    def blocked(self) -> list[str]:
        """Why no backend can take the work, one line each; empty when one can."""
        with self._lock:
            return list(self._blocked)

    def strike(self, backend: str, err: BaseException, reason: str) -> str | None:
        """Count a failed attempt; returns the reason ``backend`` is benched if this one did it.

        Only timeouts count (a dead server goes offline by itself), and never with an explicit
        target: the artist asked for that server.
        """
        if not isinstance(err, (JobTimeout, ServerTimeout)) or self.target:
            return None
        with self._lock:
            self._strikes[backend] = strikes = self._strikes.get(backend, 0) + 1
            if strikes < STRIKES or backend in self._benched:
                return None
            self._benched[backend] = why = f"{strikes} attempts in a row timed out, last: {reason}"
        log.warning("%s is out of rotation for this batch: %s", backend, why)
        return why

    def succeeded(self, backend: str) -> None:
        with self._lock:
            self._strikes[backend] = 0

    def leased(self) -> None:
        """Work went out: nothing is blocked."""
        with self._lock:
            self._blocked, self._blocked_since = [], None

    def nothing_runs(self, backends: Iterable[Any], classes: frozenset[str], label: str) -> NoBackendAvailable | None:
        """No slot was free: note why, and return the error to fail the unsent work with once
        the wait is over (None: keep waiting, or a backend can take it once a slot frees)."""
        reasons, hopeless = self._reasons(list(backends), classes)
        now = self._clock()
        with self._lock:
            if not reasons:
                self._blocked, self._blocked_since = [], None
                return None
            if self._blocked_since is None:
                self._blocked_since = now
                log.warning("%s: no backend can take work: %s", label, "; ".join(reasons))
            self._blocked = reasons
            if not hopeless and now - self._blocked_since < self.wait_for_server:
                return None
        why = "every backend is out of rotation" if hopeless else f"waited {self.wait_for_server:g} s"
        return NoBackendAvailable(f"no backend could take the work ({why}):\n  " + "\n  ".join(capped(reasons)))

    def _reasons(self, backends: list[Any], classes: frozenset[str]) -> tuple[list[str], bool]:
        """([], False) when a backend in scope can take work, busy or not; else one line per
        backend, and whether none of them ever can again in this batch (all benched)."""
        target = self.target
        scope = [b for b in backends if target in (None, b.name)
                 or (target == "runpod" and getattr(b, "kind", "") == "runpod")]
        benched = self.benched
        lines = []
        for backend in scope:
            if backend.name in benched:
                lines.append(f"{backend.name}: out of rotation for this batch: {benched[backend.name]}")
            elif can_take_work(backend, classes):
                return [], False
            else:
                lines.append(why_not(backend, classes))
        hopeless = bool(scope) and all(b.name in benched for b in scope)
        if target in (None, "runpod") and not any(getattr(b, "kind", "") == "runpod" for b in scope):
            lines.append(_RUNPOD_NOT_CONFIGURED)
        return lines, hopeless


def available(backend: Any, classes: frozenset[str]) -> bool:
    """The backend's own ``is_available``; one whose cache cannot answer is not a candidate."""
    try:
        return bool(backend.is_available(classes))
    except Exception:
        return False


def can_take_work(backend: Any, classes: frozenset[str]) -> bool:
    """Able to take this work once a slot frees, busy or not: a ComfyUI server that is ready and
    has the node classes; a RunPod endpoint that answers, is enabled and within its budget."""
    if getattr(backend, "kind", "") != "runpod":
        return available(backend, classes)
    state = getattr(getattr(backend, "state", None), "value", None)
    return state in ("online", "busy", "booting") and getattr(backend, "blocked_reason", None) is None


def why_not(backend: Any, classes: frozenset[str]) -> str:
    """``name: state (reason)``: why a backend cannot take work, from its status cache."""
    try:
        status = backend.get_status()
    except Exception:  # a backend whose cache cannot answer: say what we know
        status = backend
    state = getattr(getattr(status, "state", None), "value", getattr(status, "state", None)) or "unavailable"
    detail = getattr(status, "blocked_reason", None) or getattr(status, "last_error", None)
    if state in ("online", "busy"):
        missing = sorted(getattr(backend, "missing_classes", lambda c: frozenset())(classes))
        detail = f"lacks node classes {', '.join(capped(missing, 5))}" if missing else detail
    elif state == "disabled":
        detail = "switched off"
    return f"{backend.name}: {state}" + (f" ({' '.join(str(detail).split())})" if detail else "")


__all__ = ["STRIKES", "Rotation", "available", "can_take_work", "why_not"]
