"""A seeded fault injector for emulated ComfyUI servers in their own processes.

It plays the failures a render farm sees, on a thread of its own, while a batch runs:
SIGKILL and restart a server, make it die when its next job starts, hang its jobs, slow
it down, and drop its websockets. Each fault is healed after a while, and at most
``max_faulted`` servers are faulted at once, so the cluster as a whole can always finish.

The schedule (which server, which fault, how long) comes from one ``random.Random(seed)``,
so a failing run can be replayed with the same seed; what it hits depends on timing.

>>> FaultInjector([], seed=1).actions
('kill', 'die', 'hang', 'slow', 'drop_ws')
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import requests

from .process import EmulatorProcess

log = logging.getLogger(__name__)

ACTIONS = ("kill", "die", "hang", "slow", "drop_ws")


@dataclass(frozen=True)
class FaultRecord:
    """One thing the injector did: ``phase`` is "inject" or "heal"."""

    at: float
    server: str
    action: str
    phase: str


class FaultInjector:
    """Injects and heals faults on ``servers`` until ``stop()``; a context manager.

    Args:
        servers: emulator processes (one server each) to torment.
        interval: (min, max) seconds between two injections.
        heal_after: (min, max) seconds a fault lasts.
        slow_seconds: seconds per job while a server is slowed.
        base_seconds: seconds per job to restore after a slowdown.
    """

    def __init__(self, servers: Sequence[EmulatorProcess], *, seed: int, actions: Sequence[str] = ACTIONS,
                 interval: tuple[float, float] = (0.3, 0.8), heal_after: tuple[float, float] = (0.5, 1.5),
                 max_faulted: int = 2, slow_seconds: float = 0.4, base_seconds: float = 0.0,
                 restart_timeout: float = 20.0) -> None:
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown fault actions {unknown}; known: {', '.join(ACTIONS)}")
        self.servers = list(servers)
        self.seed = seed
        self.actions = tuple(actions)
        self.interval = interval
        self.heal_after = heal_after
        self.max_faulted = max_faulted
        self.slow_seconds = slow_seconds
        self.base_seconds = base_seconds
        self.restart_timeout = restart_timeout
        self.records: list[FaultRecord] = []
        self.errors: list[str] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._faulted: dict[int, str] = {}          # server index -> action in force
        self._heals: list[tuple[float, int]] = []   # (due, server index)
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self) -> FaultInjector:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"fault-injector-{self.seed}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop injecting and heal every fault still in force (restarting dead servers)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.restart_timeout * (len(self.servers) + 1))
        for index in list(self._faulted):
            self._heal(index)

    def __enter__(self) -> FaultInjector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, action: str) -> int:
        """How many faults of ``action`` were injected."""
        return sum(1 for r in self.records if r.action == action and r.phase == "inject")

    def _run(self) -> None:
        next_fault = time.monotonic() + self._rng.uniform(*self.interval)
        while not self._stop.is_set():
            now = time.monotonic()
            while self._heals and self._heals[0][0] <= now and not self._stop.is_set():
                _, index = heapq.heappop(self._heals)
                self._heal(index)
            if now >= next_fault:
                self._inject_one()
                next_fault = time.monotonic() + self._rng.uniform(*self.interval)
            due = min([next_fault] + [h[0] for h in self._heals[:1]])
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _inject_one(self) -> None:
        # draw from the rng even when nothing can be faulted, so the schedule stays the same
        action = self._rng.choice(self.actions)
        pick = self._rng.random()
        lasting = self._rng.uniform(*self.heal_after)
        free = [i for i in range(len(self.servers)) if i not in self._faulted]
        if not free or (action != "drop_ws" and len(self._faulted) >= self.max_faulted):
            return
        index = free[int(pick * len(free))]
        proc = self.servers[index]
        try:
            if action == "kill":
                proc.kill()
            elif action == "die":
                proc.set_faults(die_mid_job=True)
            elif action == "hang":
                proc.set_faults(hang=True)
            elif action == "slow":
                proc.set_faults(seconds_per_job=self.slow_seconds)
            else:
                proc.drop_websockets()
        except (requests.RequestException, ValueError) as err:
            self._note_error(f"{proc.name}: {action} failed: {err}")
            return
        self._record(proc.name, action, "inject")
        if action != "drop_ws":
            self._faulted[index] = action
            heapq.heappush(self._heals, (time.monotonic() + lasting, index))

    def _heal(self, index: int) -> None:
        action = self._faulted.pop(index, None)
        if action is None:
            return
        proc = self.servers[index]
        try:
            if action == "kill" or not proc.alive:
                proc.restart(timeout=self.restart_timeout)
            elif action == "die":
                proc.set_faults(die_mid_job=False)
            elif action == "hang":
                proc.set_faults(hang=False)
            elif action == "slow":
                proc.set_faults(seconds_per_job=self.base_seconds)
        except (requests.RequestException, ValueError):
            # it died between the check and the call (die_mid_job firing): bring it back
            try:
                proc.restart(timeout=self.restart_timeout)
            except (OSError, RuntimeError, TimeoutError) as err:
                self._note_error(f"{proc.name}: restart failed: {err}")
                return
        except (OSError, RuntimeError, TimeoutError) as err:
            self._note_error(f"{proc.name}: heal of {action} failed: {err}")
            return
        self._record(proc.name, action, "heal")

    def _record(self, server: str, action: str, phase: str) -> None:
        record = FaultRecord(at=round(time.monotonic() - self._t0, 3), server=server, action=action, phase=phase)
        self.records.append(record)
        log.info("fault injector: %s %s on %s at %.2f s", phase, action, server, record.at)

    def _note_error(self, message: str) -> None:
        self.errors.append(message)
        log.warning("fault injector: %s", message)
