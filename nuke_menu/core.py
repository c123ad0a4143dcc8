"""The one place where the Nuke layer calls ``comfy_cluster``.

Everything the plug-in needs from the core goes through here: the shared pool (one per
Nuke session, found by the status panel through this module because Nuke builds panels
with no arguments), workflow checks, starting work, the live list of batches, and the
RunPod always-on switch. If a core signature changes, this is the file to adapt.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from comfy_cluster.errors import ComfyClusterError, WorkflowError

from .settings import Mode, RenderSettings

if TYPE_CHECKING:   # the seam is typed against the real core classes; imported lazily at run time
    from comfy_cluster.jobs import BatchEvent
    from comfy_cluster.pool import ComfyUIServerPool, PoolSnapshot
    from comfy_cluster.batch import Batch
    from comfy_cluster.runpod_admin import RunPodAdmin
    from comfy_cluster.server import ServerStatus
    from comfy_cluster.workflow import Workflow

log = logging.getLogger(__name__)

#: Server states that can take work.
READY_STATES = frozenset({"online", "busy"})

_lock = threading.Lock()
_pool: ComfyUIServerPool | None = None
_admin: RunPodAdmin | None = None
_batches: list[ActiveWork] = []


def shared_pool() -> ComfyUIServerPool:
    """The session's ``ComfyUIServerPool``, built from the environment and started once.

    Raises ``ConfigError`` (readable, names the variable and field) on a bad configuration.
    """
    global _pool
    with _lock:
        if _pool is None:
            _pool = _pool_from_env(os.environ)
            _pool.start()
        return _pool


def _pool_from_env(environ: Mapping[str, str]) -> ComfyUIServerPool:
    """``ComfyUIServerPool.from_env`` with the configured RunPod endpoint and its admin."""
    global _admin
    from comfy_cluster.config_load import load_config
    from comfy_cluster.pool import ComfyUIServerPool

    cfg = load_config(environ)
    if cfg.runpod is not None and cfg.runpod.enabled:
        from comfy_cluster.runpod_admin import RunPodAdmin

        _admin = RunPodAdmin(cfg.runpod, environ=environ)
    return ComfyUIServerPool.from_config(cfg, environ=environ, reload=lambda: load_config(environ))


def set_shared_pool(pool: ComfyUIServerPool | None, admin: RunPodAdmin | None = None) -> None:
    """Use this pool (and RunPod admin) for the session: a studio tool's own, or a test's.

    ``set_shared_pool(None)`` forgets both.
    """
    global _pool, _admin
    with _lock:
        _pool, _admin = pool, admin


def current_pool() -> ComfyUIServerPool | None:
    """The shared pool if one was made, without making one."""
    return _pool


# --------------------------------------------------------------------------- workflows

def load_workflow(path: str) -> Workflow:
    """The workflow at ``path``; ``WorkflowError``/``OSError`` say why it is unusable."""
    from comfy_cluster.workflow import Workflow

    return Workflow.load(Path(path))


def binding_problem(workflow: Workflow, spec: str) -> str | None:
    """None if ``NODE.INPUT`` names exactly one input of the workflow, else the reason."""
    try:
        workflow.binding(spec)
    except (WorkflowError, ValueError) as err:
        return str(err)
    return None


def value_problem(workflow: Workflow, assignment: str) -> str | None:
    """None if ``NODE.INPUT=value`` parses and names an input of the workflow."""
    from comfy_cluster.workflow import parse_assignment

    try:
        spec, value = parse_assignment(assignment)
        workflow.with_values({spec: value})
    except (WorkflowError, ValueError) as err:
        return str(err)
    return None


def parse_values(lines: tuple[str, ...]) -> dict[str, Any]:
    """``("3.steps=20", ...)`` as the ``values`` mapping the core takes."""
    from comfy_cluster.workflow import parse_assignment

    return dict(parse_assignment(line) for line in lines)


# --------------------------------------------------------------------------- backends

def reachability_problem(pool: ComfyUIServerPool, target: str | None) -> str | None:
    """None if the target (or, for auto, at least one backend) can take work now.

    Reads only the status cache (this runs on Nuke's main thread: no network). A server the
    monitor has not probed yet counts as reachable: the batch waits for a free slot anyway,
    and refusing a submit because the pool started a second ago would be wrong.
    """
    return _reachability(pool.snapshot(), target)


def _reachability(snapshot: PoolSnapshot, target: str | None) -> str | None:
    servers = {s.name: s for s in snapshot.servers}
    runpod = snapshot.runpod
    runpod_ok = runpod is not None and not runpod.get("blocked_reason")
    if target == "runpod":
        if runpod is None:
            return "target: RunPod is not configured (set RUNPOD_ENDPOINT_ID and RUNPOD_API_KEY)"
        return None if runpod_ok else f"target: RunPod cannot take work: {runpod.get('blocked_reason')}"
    if target:
        server = servers.get(target)
        if server is None:
            return f"target: no server named {target!r} (known: {', '.join(sorted(servers)) or 'none'})"
        if not server.enabled:
            return f"target: server {target!r} is disabled"
        if _state(server) not in READY_STATES and server.last_status_check is not None:
            return f"target: server {target!r} is {_state(server)} ({server.last_error or 'no answer'})"
        return None
    if runpod_ok or any(s.enabled and (_state(s) in READY_STATES or s.last_status_check is None)
                        for s in servers.values()):
        return None
    lines = [f"{s.name} ({s.address}): {_state(s)}" for s in servers.values()]
    return "no backend is reachable: " + ("; ".join(lines) or "no servers configured")


def _state(server: ServerStatus) -> str:
    state = server.state
    return str(getattr(state, "value", state))


def target_names(pool: ComfyUIServerPool) -> list[str]:
    """Values for the Render node's target knob: auto, every server, and runpod if set up."""
    snapshot = pool.snapshot()
    names = ["auto"] + [s.name for s in snapshot.servers]
    if snapshot.runpod is not None:
        names.append("runpod")
    return names


def set_enabled(pool: ComfyUIServerPool, name: str, enabled: bool) -> None:
    """Enable or disable one server (called off the UI thread)."""
    (pool.enable if enabled else pool.disable)(name)


def runpod_admin(pool: ComfyUIServerPool) -> RunPodAdmin | None:
    """The ``RunPodAdmin`` of the session's endpoint, or None without RunPod."""
    return _admin if getattr(pool, "runpod", None) is not None else None


def set_always_on(pool: ComfyUIServerPool, on: bool) -> str:
    """Keep one RunPod worker warm (workersMin 1) or let it scale to zero; network: not on the UI thread.

    Returns the admin's account of what it did; the pool's status shows the new setting.
    """
    admin = runpod_admin(pool)
    if admin is None:
        raise ComfyClusterError("RunPod is not configured, so there is no always-on worker to switch")
    result = admin.warm() if on else admin.cold()
    pool.runpod.set_endpoint_settings(result.after)
    return str(result)


def read_runpod_settings(pool: ComfyUIServerPool) -> None:
    """Read workersMin/Max once so the status shows the always-on state (network)."""
    admin = runpod_admin(pool)
    if admin is not None:
        pool.runpod.set_endpoint_settings(admin.status())


# --------------------------------------------------------------------------- work

@dataclass
class Outcome:
    """What came back: output files per frame (or iteration), failures, who rendered."""

    frames: dict[int, list[Path]]
    failed: dict[int, str]
    by_server: dict[str, int]
    seeds: dict[int, Any] = field(default_factory=dict)
    cancelled: bool = False
    error: str | None = None


@dataclass
class ActiveWork:
    """One running submission, as the status panel lists it."""

    label: str
    work: Batch
    servers: dict[str, int] = field(default_factory=dict)
    finished: bool = False


def start(settings: RenderSettings, *, pool: ComfyUIServerPool, inputs: dict[str, str],
          on_event: Callable[[BatchEvent], None] | None = None) -> Batch:
    """Start the work the settings describe; returns a ``Batch``.

    ``inputs`` maps ``NODE.INPUT`` to a rendered frame pattern (range) or file (single frame,
    iterations). A single frame is a one-frame sequence, so its file follows the output
    pattern like any other frame. Network calls happen here, so call it off the main thread.
    """
    from comfy_cluster import run

    workflow = load_workflow(settings.workflow)
    values = parse_values(settings.values) or None
    target = settings.target_arg
    if settings.mode is Mode.ITERATIONS:
        return run.iteration_submit(workflow, pool=pool, count=settings.iterations, output=settings.output,
                                    seed_mode=settings.seed_mode, inputs=inputs, values=values, target=target,
                                    on_event=on_event, wait_for_server=settings.wait_for_server)
    frames = str(settings.frame) if settings.mode is Mode.SINGLE else settings.frames
    return run.animation_submit(workflow, pool=pool, frames=frames, inputs=inputs, output=settings.output,
                                values=values, chunk=settings.chunk, target=target, on_event=on_event,
                                wait_for_server=settings.wait_for_server)


def outcome(work: Batch, timeout: float | None = None) -> Outcome:
    """Wait for the work and return what it produced; a cancel gives a partial outcome."""
    result = work.result(timeout=timeout)
    seeds = dict(getattr(work, "seeds", None) or {})
    return Outcome({int(k): [Path(p) for p in v] for k, v in result.frames.items()},
                   {int(k): str(v) for k, v in result.failed.items()}, dict(result.by_server), seeds=seeds,
                   cancelled=bool(result.cancelled))


def register(label: str, work: Batch) -> ActiveWork:
    """List the work in the status panel until ``finish`` is called."""
    entry = ActiveWork(label, work)
    with _lock:
        _batches.append(entry)
    return entry


def finish(entry: ActiveWork) -> None:
    entry.finished = True
    with _lock:
        if entry in _batches:
            _batches.remove(entry)


def active() -> list[ActiveWork]:
    """The running submissions, oldest first."""
    with _lock:
        return list(_batches)
