"""Send work to the cluster: ``submit`` one prompt, ``animation_submit`` a frame sequence,
``iteration_submit`` N variations. Each checks its inputs, prepares one ``Plan`` and returns
a handle (``Job`` or ``Batch``) at once; the work runs on the batch's background threads
(``batch``), and each output's file name comes from ``outputs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from .batch import WAIT_FOR_SERVER, Batch, EventHandler, Plan, PoolLike
from .cache import ResultCache
from .errors import Cancelled, ComfyClusterError, MissingInputs, WorkflowError, capped
from .frames import FramePattern, FrameSpec
from .jobs import Attempt, FrameTask, Journal, JournalHeader, JobState, journal_path
from .outputs import FolderNames, PatternNames, iteration_names
from .workflow import Workflow

log = logging.getLogger(__name__)

WorkflowLike = Union[Workflow, Mapping[str, Any], str, "os.PathLike[str]"]
PathLike = Union[str, "os.PathLike[str]"]
FrameValues = Union[Mapping[int, Mapping[str, Any]], Callable[[int], Mapping[str, Any]]]


@dataclass(frozen=True)
class JobResult:
    """A finished single prompt: its files, where it ran, and how long it took."""

    outputs: list[Path]
    server: str
    prompt_id: str
    elapsed: float
    attempts: tuple[Attempt, ...] = ()


class Job:
    """One prompt to the best backend; the handle ``submit`` returns."""

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self._task = batch.tasks()[0]

    @property
    def state(self) -> JobState:
        return self._task.state

    @property
    def prompt_id(self) -> str | None:
        attempts = self._task.attempts
        return attempts[-1].prompt_id if attempts else None

    def subscribe(self, callback: EventHandler) -> Callable[[], None]:
        return self._batch.subscribe(callback)

    def cancel(self) -> None:
        self._batch.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        return self._batch.wait(timeout)

    def result(self, timeout: float | None = None) -> JobResult:
        """The outputs; raises the job's error if it failed, ``Cancelled`` if it was cancelled."""
        res = self._batch.result(timeout)
        task = self._task
        if task.state is JobState.FAILED:
            raise task.error or ComfyClusterError("job failed")
        if task.state is not JobState.DONE:
            raise Cancelled("job was cancelled", prompt_id=self.prompt_id)
        last = task.attempts[-1]
        return JobResult(outputs=res.frames.get(task.key, []), server=last.backend, prompt_id=last.prompt_id,
                         elapsed=res.seconds.get(task.key, 0.0), attempts=tuple(task.attempts))


# --------------------------------------------------------------------------- entry points


def submit(workflow: WorkflowLike, *, pool: PoolLike, inputs: Mapping[str, PathLike] | None = None,
           values: Mapping[str, Any] | None = None, output_dir: PathLike | None = None,
           target: str | None = None, timeout: float | None = None, retries: int = 3,
           strategy: str = "least_loaded", on_event: EventHandler | None = None,
           wait_for_server: float = WAIT_FOR_SERVER) -> Job:
    """Run one prompt on the best backend; outputs land in ``output_dir`` (default: the
    current folder) under the server's file names, made safe.

    ``inputs`` maps a binding (``"LoadImage.image"``) to a local file; ``values`` are literal
    overrides (``{"3.seed": 42}``); ``timeout`` is per attempt (default: generous, from the
    backend's speed). While no backend can take the job at all, it waits ``wait_for_server``
    seconds, then fails with ``NoBackendAvailable`` naming each backend's reason.
    """
    wf = Workflow.load(workflow)
    if values:
        wf = wf.with_values(values)
    bound = _bind_inputs(wf, inputs, patterns=False)
    folder = Path(output_dir) if output_dir is not None else Path.cwd()
    plan = Plan(workflow=wf, inputs=bound, frame_values=None, names=FolderNames(folder),
                 classes=wf.class_types(), digest="", noun="job")
    _check_inputs(plan, [0])
    task = FrameTask(frames=(0,))
    batch = Batch(pool, plan, [task], journal=None, retries=retries, target=target, strategy=strategy,
                  job_timeout=timeout, on_event=on_event, max_workers=1, wait_for_server=wait_for_server)
    return Job(batch.start())


def animation_submit(workflow: WorkflowLike, *, pool: PoolLike, frames: str | FrameSpec | Iterable[int],
                     output: PathLike, inputs: Mapping[str, PathLike] | None = None,
                     values: Mapping[str, Any] | None = None, frame_values: FrameValues | None = None,
                     chunk: int = 1, resume: bool = False, retries: int = 3, target: str | None = None,
                     job_timeout: float | None = None, strategy: str = "least_loaded",
                     on_event: EventHandler | None = None, journal: bool = True,
                     wait_for_server: float = WAIT_FOR_SERVER, cache: bool | ResultCache = True) -> Batch:
    """Render a frame sequence over the whole cluster, one prompt per frame (or per
    ``chunk`` frames when the workflow renders a batch), written to ``output``'s frame names.

    ``inputs`` maps bindings to frame patterns (``{"10.image": "/plates/sh010.####.png"}``);
    ``values`` are the same for every frame; ``frame_values`` are animated values, as
    ``{frame: {binding: value}}`` or a callable ``frame -> {binding: value}``. The k-th image
    of a frame goes to ``FramePattern.with_index(k)`` (``sh010_comfy_1.####.png``, or an
    ``{index}`` placeholder). ``resume=True`` renders only frames that the journal records
    as done and whose files are still on disk. While no backend can take work at all (every
    server down, RunPod not configured or over budget) the batch waits ``wait_for_server``
    seconds (``Batch.blocked`` says why), then fails the unsent frames with ``NoBackendAvailable``.
    ``cache=False`` renders every frame even when the result cache holds an identical render
    (``--no-cache``).
    """
    spec = _frame_spec(frames)
    pattern = FramePattern.parse(os.fspath(output))
    if not pattern.has_token and len(spec) > 1:
        raise ValueError(f"output {os.fspath(output)!r} has no frame token (####, %04d or $F4), so every frame "
                         "would write the same file")
    wf = Workflow.load(workflow)
    if values:
        wf = wf.with_values(values)
    bound = _bind_inputs(wf, inputs, patterns=True)
    fv = _frame_values(frame_values)
    digest = _digest(wf, bound, frame_values, chunk)
    plan = Plan(workflow=wf, inputs=bound, frame_values=fv, names=PatternNames(pattern),
                 classes=wf.class_types(), digest=digest)
    return _start_batch(pool, plan, spec, output=str(pattern), chunk=chunk, resume=resume, retries=retries,
                        target=target, job_timeout=job_timeout, strategy=strategy, on_event=on_event,
                        use_journal=journal, wait_for_server=wait_for_server, cache=cache)


def iteration_submit(workflow: WorkflowLike, *, pool: PoolLike, count: int, output: PathLike,
                     seed_mode: str = "random", inputs: Mapping[str, PathLike] | None = None,
                     values: Mapping[str, Any] | None = None, retries: int = 3, target: str | None = None,
                     job_timeout: float | None = None, strategy: str = "least_loaded",
                     on_event: EventHandler | None = None, wait_for_server: float = WAIT_FOR_SERVER,
                     cache: bool | ResultCache = True) -> Batch:
    """Render ``count`` variations of one workflow in parallel, iterations numbered 1..count.

    Every seed-like input differs per iteration (``seed_mode`` "random" or "increment");
    "fixed" renders N copies on purpose. ``output`` holds ``{iteration}`` (a format spec is
    allowed: ``look_v{iteration:02d}.png``) or a frame token. The seeds used are in
    ``batch.seeds`` ({iteration: {"node.input": value}}).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a whole number >= 1, got {count!r}")
    if seed_mode not in ("random", "increment", "fixed"):
        raise ValueError(f"seed_mode must be random, increment or fixed, got {seed_mode!r}")
    text = os.fspath(output)
    names = iteration_names(text, count)
    wf = Workflow.load(workflow)
    if values:
        wf = wf.with_values(values)
    if not wf.seed_inputs() and seed_mode != "fixed":
        raise WorkflowError(f"the workflow has no seed input (seed, noise_seed), so all {count} iterations would be "
                            "identical; pass seed_mode='fixed' to render copies on purpose")
    per_iteration: dict[int, Workflow] = {}
    seeds: dict[int, dict[str, Any]] = {}
    for iteration in range(1, count + 1):
        variant = wf.with_seeds(iteration - 1, seed_mode)
        per_iteration[iteration] = variant
        seeds[iteration] = variant.seed_values()
    bound = _bind_inputs(wf, inputs, patterns=True)
    plan = Plan(workflow=wf, inputs=bound, frame_values=None, names=names, classes=wf.class_types(),
                 digest=_digest(wf, bound, seeds, 1), noun="iteration", per_frame_workflows=per_iteration)
    batch = _start_batch(pool, plan, FrameSpec.from_range(1, count), output=text, chunk=1, resume=False,
                         retries=retries, target=target, job_timeout=job_timeout, strategy=strategy,
                         on_event=on_event, use_journal=True, wait_for_server=wait_for_server, cache=cache)
    batch.seeds = seeds
    return batch


def _start_batch(pool: PoolLike, plan: Plan, spec: FrameSpec, *, output: str, chunk: int, resume: bool,
                 retries: int, target: str | None, job_timeout: float | None, strategy: str,
                 on_event: EventHandler | None, use_journal: bool, wait_for_server: float,
                 cache: bool | ResultCache = False) -> Batch:
    groups = [tuple(c.frames) for c in spec.chunks(chunk)]
    journal = None
    skipped: dict[int, list[Path]] = {}
    if not resume:
        _check_inputs(plan, list(spec))   # before the journal: a refused start rotates nothing
    if use_journal:
        header = JournalHeader(batch_id=uuid.uuid4().hex[:12], workflow_digest=plan.digest, frames=str(spec),
                               output=output, created=time.time())
        journal = Journal.open(journal_path(output), header, resume=resume)
        skipped = {f: files for f, files in journal.resumed.items() if f in spec}
    tasks = [FrameTask(frames=g) for g in groups if not all(f in skipped for f in g)]
    skipped = {f: files for f, files in skipped.items() if not any(f in t.frames for t in tasks)}
    if resume:
        try:
            _check_inputs(plan, [t.key for t in tasks])
        except MissingInputs:
            if journal is not None:
                journal.close()
            raise
    if skipped:
        log.info("resuming: %d of %d frames already done, rendering %d", len(skipped), len(spec),
                 sum(len(t.frames) for t in tasks))
    batch = Batch(pool, plan, tasks, journal=journal, retries=retries, target=target, strategy=strategy,
                  job_timeout=job_timeout, on_event=on_event, skipped=skipped, wait_for_server=wait_for_server,
                  cache=ResultCache() if cache is True else (cache or None))
    return batch.start()


# --------------------------------------------------------------------------- helpers


def _frame_spec(frames: str | FrameSpec | Iterable[int]) -> FrameSpec:
    if isinstance(frames, FrameSpec):
        return frames
    if isinstance(frames, str):
        return FrameSpec.parse(frames)
    return FrameSpec.from_frames(frames)


def _bind_inputs(wf: Workflow, inputs: Mapping[str, PathLike] | None, *,
                 patterns: bool) -> dict[tuple[str, str], FramePattern | Path]:
    """Resolve every ``NODE.INPUT`` once; a single job takes its paths literally."""
    bound: dict[tuple[str, str], FramePattern | Path] = {}
    for spec, path in (inputs or {}).items():
        text = os.fspath(path)
        bound[wf.binding(spec)] = FramePattern.parse(text) if patterns else Path(text)
    return bound


def _check_inputs(plan: Plan, keys: Sequence[int]) -> None:
    """Every local input of every task to send, checked before anything is sent.

    A missing input is the artist's problem, not a server's: one ``MissingInputs`` lists
    every missing or unreadable file (and a folder given as a file), instead of each frame
    failing on a server later.
    """
    problems: list[str] = []
    for (node_id, name), source in plan.inputs.items():
        paths = [Path(source.format(k)) for k in keys] if isinstance(source, FramePattern) else [source]
        for path in dict.fromkeys(paths):
            problem = _unreadable(path)
            if problem:
                problems.append(f"node {node_id} input {name!r}: {path}: {problem}")
    if problems:
        raise MissingInputs(f"{len(problems)} input file(s) missing or unreadable, nothing was sent: "
                            + "; ".join(capped(problems)), problems=problems)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or None."""
    try:
        if path.is_dir():
            return "is a folder, not a file"
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return "not found"
    except OSError as err:
        return err.strerror or type(err).__name__


def _frame_values(frame_values: FrameValues | None) -> Callable[[int], Mapping[str, Any]] | None:
    if frame_values is None:
        return None
    if callable(frame_values):
        return frame_values
    table = {int(k): dict(v) for k, v in frame_values.items()}
    return lambda frame: table.get(frame, {})


def _digest(wf: Workflow, inputs: Mapping[tuple[str, str], FramePattern | Path], frame_values: Any, chunk: int) -> str:
    """What must match for a journal to be resumed: graph, input patterns, animated values."""
    animated = frame_values if isinstance(frame_values, Mapping) else (
        "callable" if frame_values is not None else None)
    payload = {
        "workflow": wf.digest(),
        "inputs": sorted(f"{n}.{i}={p}" for (n, i), p in inputs.items()),
        "values": json.loads(json.dumps(animated, sort_keys=True, default=str)),
        "chunk": chunk,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


__all__ = ["Job", "JobResult", "animation_submit", "iteration_submit", "submit"]
