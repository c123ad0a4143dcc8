"""The client's CPU by kind of thread, from the kernel's per-thread CPU clocks.

Shared by the dispatch scenario (bench/scenarios.py) and the monitoring bench
(bench/bench_pool.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

#: Thread-name prefixes of the client, and what each kind of thread does per frame.
_THREAD_KINDS = (
    ("comfy-batch", "batch workers (build the prompt, POST /prompt, wait, GET /view, atomic write, journal)"),
    ("comfy-ws", "websocket readers (one per server)"),
    ("comfy-scheduler", "scheduler (free-slot choice)"),
    ("comfy-cluster", "status monitor and events"),
)


SAMPLER = "bench sampler"


def thread_cpu(work: Callable[[], Any], kinds: Sequence[tuple[str, str]] = _THREAD_KINDS,
               every: float = 0.05) -> dict[str, float]:
    """Run ``work``; the client's CPU seconds meanwhile by kind of thread (``(name prefix, label)``).

    Read from the kernel's per-thread CPU clocks (``pthread_getcpuclockid``: nanoseconds,
    where /proc's per-thread counters count 10 ms ticks), sampled every ``every`` seconds
    while the threads live: unlike a profiler, this adds nothing to the code it measures
    (the sampler's own CPU is its own kind, ``SAMPLER``). Threads of no listed kind count as
    ``other``; a thread's CPU after its last sample is not counted.
    """
    seen: dict[threading.Thread, tuple[float, float]] = {}   # thread -> (base, last reading)
    present = set(threading.enumerate())   # older threads count from their first reading, newer ones from 0
    done = threading.Event()

    def sample() -> None:
        while True:
            for t in threading.enumerate():
                if t.ident is None:
                    continue
                try:
                    now = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
                except OSError:
                    continue
                if not t.is_alive():   # it ended around the reading: the clock may have been another thread's
                    continue
                base = seen[t][0] if t in seen else (now if t in present else 0.0)
                seen[t] = (base, now)
            if done.is_set():
                return
            done.wait(every)

    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    kinds = (*kinds, ("bench-sampler", SAMPLER))
    per_kind = {label: 0.0 for _, label in kinds} | {"other": 0.0}
    for t, (base, last) in seen.items():
        label = next((lbl for prefix, lbl in kinds if t.name.startswith(prefix)), "other")
        per_kind[label] += last - base
    return per_kind
