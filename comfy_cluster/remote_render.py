"""Run one workflow remotely for an in-app front (the ComfyUI Remote Render node) and wait
for it on the caller's thread.

The caller owns a UI that must be fed from its own thread (ComfyUI's progress hook raises
its interrupt exception in whichever thread calls it), so events of the job are queued and
handed to ``on_progress``/``on_status`` inside ``wait_for``'s loop, which also polls
``interrupted`` and, when it turns true, cancels our job through the core's cancel path
(only our prompt, by prompt id).
"""

from __future__ import annotations

import logging
import os
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import run
from .errors import ConfigError, Interrupted
from .estimate import check_budget, estimate_render
from .jobs import BatchEvent

log = logging.getLogger(__name__)

MODES = ("local", "cluster", "runpod")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".exr"})
RUNPOD_SETUP = ("RunPod mode needs RUNPOD_ENDPOINT_ID (the endpoint) and RUNPOD_API_KEY (its key) "
                "in the environment ComfyUI was started with")
#: How long a cancelled job may take to confirm before ``wait_for`` gives up on it.
CANCEL_GRACE_S = 30.0


@dataclass(frozen=True)
class RenderOutcome:
    """The images a remote run saved (owner-only files), where it ran and what it cost."""

    images: list[Path]
    server: str
    prompt_id: str
    elapsed: float
    cost: float | None        # dollars, for RunPod runs; None elsewhere

    @property
    def cost_text(self) -> str:
        return format_cost(self.cost, self.elapsed, self.server)


def format_cost(cost: float | None, seconds: float, server: str) -> str:
    """``"runpod: $0.0012 (2.7 s)"``; ``"gpu-01: 2.7 s"`` where nothing is billed."""
    if cost is None:
        return f"{server}: {seconds:.1f} s"
    return f"{server}: ${cost:.4f} ({seconds:.1f} s)"


def target_for(mode: str, pool: Any) -> str | None:
    """The pool target of a node mode: ``runpod`` pins RunPod, ``cluster`` lets the pool pick."""
    if mode not in MODES or mode == "local":
        raise ConfigError(f"mode: must be 'cluster' or 'runpod' to render remotely, got {mode!r}")
    if mode == "runpod":
        if getattr(pool, "runpod", None) is None:
            raise ConfigError(RUNPOD_SETUP, server="runpod")
        return "runpod"
    return None


def preflight(pool: Any, mode: str) -> str:
    """Before anything is sent: where the prompt is expected to run and what RunPod would
    charge, against today's budget (one status line for the node); ``BudgetExceeded`` with
    the numbers when the run would pass the budget."""
    est = estimate_render(pool, 1, target=target_for(mode, pool))
    check_budget(est, hint="switch the node to cluster mode, or raise the RunPod daily_budget")
    if not est.tiers:
        return "estimate: no backend can take it now; it waits for one"
    where = ", ".join(f"{t.name} ~${t.cost:.4f}" if t.price_per_second else
                      f"{t.name}" + (f" ~{t.seconds_per_frame:.1f} s" if t.seconds_per_frame else "")
                      for t in est.tiers)
    budget = f" of ${est.daily_budget:.2f}" if est.daily_budget is not None else ""
    spent = f"; RunPod today ${est.spend_today:.4f}{budget}" if est.cost or est.daily_budget is not None else ""
    return f"estimate: {where}{spent}"


def start(workflow: Any, *, pool: Any, mode: str, inputs: Mapping[str, Path], output_dir: Path,
          events: queue.Queue[BatchEvent], timeout: float | None = None) -> run.Job:
    """Submit ``workflow`` for ``mode``; its events go to ``events``. Returns at once."""
    output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return run.submit(workflow, pool=pool, inputs=dict(inputs), output_dir=output_dir,
                      target=target_for(mode, pool), timeout=timeout, on_event=events.put)


def wait_for(job: run.Job, events: queue.Queue[BatchEvent], *, pool: Any, node_count: int,
             on_progress: Callable[[int, int], None], on_status: Callable[[str], None],
             interrupted: Callable[[], bool], poll: float = 0.1) -> RenderOutcome:
    """Wait for ``job``, feeding the callbacks on this thread; ``Interrupted`` after a cancel.

    ``on_progress(value, 100)`` follows the remote graph of ``node_count`` nodes.
    """
    bar = NodeProgress(node_count)
    try:
        while not job.wait(poll):
            _drain(events, bar, on_progress, on_status)
            if interrupted():
                raise Interrupted(f"remote prompt {job.prompt_id} cancelled by the interrupt",
                                  prompt_id=job.prompt_id)
    except BaseException:
        # ours, or the host's own interrupt raised from a callback (ComfyUI's progress hook)
        _cancel(job)
        raise
    _drain(events, bar, on_progress, on_status)
    on_progress(100, 100)
    result = job.result(timeout=0)
    images = [p for p in result.outputs if p.suffix.lower() in IMAGE_SUFFIXES]
    for path in result.outputs:
        os.chmod(path, 0o600)
    return RenderOutcome(images=images, server=result.server, prompt_id=result.prompt_id,
                         elapsed=result.elapsed, cost=_cost_of(pool, result.server, result.prompt_id))


class NodeProgress:
    """The remote graph's progress as 0..100: nodes finished, plus the running node's own bar.

    ComfyUI reports ``executing`` per node and ``progress`` only from nodes with a bar
    (samplers), so a graph of plain nodes still moves the bar one node at a time.
    """

    def __init__(self, node_count: int) -> None:
        self.node_count = max(1, node_count)
        self.seen: list[str] = []
        self.fraction = 0.0

    def executing(self, node: str) -> int:
        if node not in self.seen:
            self.seen.append(node)
        self.fraction = 0.0
        return self.value()

    def progress(self, value: float, maximum: float) -> int:
        self.fraction = min(1.0, max(0.0, value / maximum)) if maximum > 0 else 0.0
        return self.value()

    def value(self) -> int:
        done = max(0, len(self.seen) - 1) + self.fraction
        return min(100, int(100 * done / self.node_count))


def _drain(events: queue.Queue[BatchEvent], bar: NodeProgress, on_progress: Callable[[int, int], None],
           on_status: Callable[[str], None]) -> None:
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        data = event.data
        if event.kind == "executing":
            on_progress(bar.executing(str(data.get("node"))), 100)
        elif event.kind == "progress":
            try:
                on_progress(bar.progress(float(data.get("value") or 0), float(data.get("max") or 0)), 100)
            except (TypeError, ValueError):
                log.debug("ignoring a progress event without numbers: %r", data)
        elif event.kind in ("submitted", "started", "retried"):
            where = data.get("server") or data.get("to") or ""
            on_status(f"{event.kind} on {where}" if where else event.kind)


def _cancel(job: run.Job) -> None:
    """Cancel our prompt (only ours, by prompt id) and give it a moment to confirm."""
    log.info("interrupt: cancelling our remote prompt %s", job.prompt_id)
    job.cancel()
    if not job.wait(CANCEL_GRACE_S):
        log.warning("remote prompt %s did not confirm the cancel within %.0f s", job.prompt_id, CANCEL_GRACE_S)


def _cost_of(pool: Any, server: str, prompt_id: str) -> float | None:
    """What the RunPod ledger billed for this prompt; None when it ran on a studio server."""
    endpoint = getattr(pool, "runpod", None)
    if endpoint is None or server != endpoint.name:
        return None
    return sum(e.cost for e in endpoint.ledger.entries() if e.prompt_id == prompt_id)
