"""The dispatcher behind every submit: a ``Batch`` of frame tasks spread over the pool.

How a batch is dispatched: a scheduler thread holds the frames still to render and hands
the next one to ``pool.acquire(...)``, which reserves a slot on the backend predicted to
finish it first, or answers None when every slot is taken (then the scheduler sleeps on
``pool.wait_for_change``). Each leased frame runs on a bounded worker pool: build the
prompt, ``backend.run_prompt``, write the outputs atomically to the frame's file names
(``outputs``), journal it, release the lease. So no server ever holds more than its
``max_queue`` of our frames, and a fast server simply comes back for more.

Failures follow the error hierarchy: ``ServerUnavailable`` (a dead, hung or garbled
server) and server-specific ``WorkflowError`` (missing node class, out of memory) put the
frame back to be sent elsewhere, up to ``retries`` times, excluding the servers that
already failed it while others are available; any other ``WorkflowError`` fails the frame
at once with the server's message. When two frames fail with the same workflow error
before any frame succeeded, the workflow itself is broken: the remaining frames are
failed with that error instead of being sent.

Events (``BatchEvent``) are delivered on worker threads, never on the caller's thread: a UI
must hand them to its own thread (Nuke: ``executeInMainThread``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from .backend import PromptRequest, PromptResult
from .cache import CACHE_BACKEND, ResultCache, kinds_for
from .errors import ComfyClusterError, Interrupted, MissingNodes, ServerUnavailable, WorkflowError
from .frames import FramePattern
from .jobs import Attempt, BatchEvent, FrameTask, Journal, JobState
from .outputs import OutputNames, assign_outputs, check_delivered, fetch_checked
from .rotation import Rotation, available
from .subscribers import Subscribers
from .transfer import atomic_write
from .workflow import Workflow

log = logging.getLogger(__name__)

#: The shortest default per-prompt timeout: generous, because a hung server is also caught
#: by the pool's monitor (offline -> the prompt's ``lost`` event) long before this.
MIN_JOB_TIMEOUT = 600.0
#: Default per-prompt timeout = this many times the backend's predicted finish time.
JOB_TIMEOUT_FACTOR = 10.0
#: How many frames must fail with the same workflow error, with none done, to stop a batch.
EARLY_STOP_AFTER = 2
#: How often the scheduler re-checks the pool when no slot is free.
WAIT_SLICE = 0.5
#: Default seconds a batch waits while no backend at all can take its work (every server
#: down, RunPod not configured or over budget) before it fails the unsent frames with
#: ``NoBackendAvailable``: long enough for a server restart, short enough to be noticed.
WAIT_FOR_SERVER = 300.0
#: A running frame is shown as waiting once it is past this many times its server's
#: measured seconds per job, and at least FAR_PAST_MIN seconds.
FAR_PAST_FACTOR = 3.0
FAR_PAST_MIN = 10.0

EventHandler = Callable[[BatchEvent], None]


class Lease(Protocol):
    backend: Any

    def release(self, *, seconds: float | None = None, ok: bool = True) -> None: ...


class PoolLike(Protocol):
    """What the dispatcher needs of ``ComfyUIServerPool`` (a fake in tests)."""

    @property
    def backends(self) -> Sequence[Any]: ...

    def acquire(self, classes: frozenset[str] = frozenset(), *, strategy: str = "least_loaded",
                target: str | None = None, exclude: Iterable[str] = (),
                wait_for_faster: bool = False) -> Lease | None: ...

    def wait_for_change(self, timeout: float) -> bool: ...


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BatchResult:
    """A finished (or cancelled) batch.

    ``frames`` holds every frame with its files, including frames done by an earlier run
    (``skipped`` when resuming); ``by_server`` counts the frames rendered now per backend;
    ``failed`` maps frame -> the error that failed it; ``retries`` keeps the reason of every
    attempt that did not count.
    """

    frames: dict[int, list[Path]]
    by_server: dict[str, int]
    failed: dict[int, ComfyClusterError]
    cancelled: list[int]
    skipped: list[int]
    seconds: dict[int, float]
    retries: dict[int, list[str]]
    elapsed: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cancelled

    @property
    def cached(self) -> int:
        """Frames not rendered because the result cache held an identical render."""
        return self.by_server.get(CACHE_BACKEND, 0)


# --------------------------------------------------------------------------- the batch


@dataclass
class Plan:
    """Everything that is the same for every frame, prepared once."""

    workflow: Workflow
    inputs: dict[tuple[str, str], FramePattern | Path]   # a Path is the same file for every frame
    frame_values: Callable[[int], Mapping[str, Any]] | None
    names: OutputNames
    classes: frozenset[str]
    digest: str
    noun: str = "frame"   # how messages name a task: "frame 1001", "iteration 3", "job"
    per_frame_workflows: dict[int, Workflow] = field(default_factory=dict)
    #: the graph holds frame tokens (``####`` in a path input): with_frame per frame is needed
    frame_tokens: bool = field(init=False, default=True)
    #: output nodes that must each deliver a file (``Workflow.file_output_nodes``)
    file_outputs: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.frame_tokens = self.frame_values is not None or self.workflow.with_frame(0) != self.workflow
        self.file_outputs = tuple(self.workflow.file_output_nodes())


class Batch:
    """A running set of frame tasks; the handle ``animation_submit`` returns.

    Thread model: one scheduler thread, a bounded worker pool for the prompts, and the
    backends' own threads for progress. All task state is guarded by one condition.
    """

    def __init__(self, pool: PoolLike, plan: Plan, tasks: list[FrameTask], *, journal: Journal | None,
                 retries: int = 3, target: str | None = None, strategy: str = "least_loaded",
                 job_timeout: float | None = None, on_event: EventHandler | None = None,
                 skipped: Mapping[int, list[Path]] | None = None, clock: Callable[[], float] = time.monotonic,
                 max_workers: int | None = None, wait_for_server: float = WAIT_FOR_SERVER,
                 cache: ResultCache | None = None) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.batch_id = journal.header.batch_id if journal else uuid.uuid4().hex[:12]
        #: Unique per run (a resumed batch gets a new one): keeps server-side names and the
        #: prompt cache from ever handing back a previous run's file.
        self.run_id = uuid.uuid4().hex[:12]
        self._pool = pool
        self._plan = plan
        self._tasks = tasks
        self._journal = journal
        self._retries = retries
        self._target = target if target not in (None, "", "auto") else None
        self._strategy = strategy
        self._job_timeout = job_timeout
        self._clock = clock
        self._rotation = Rotation(target=self._target, wait_for_server=wait_for_server, clock=clock)
        self._skipped = dict(skipped or {})
        self._cache = cache
        self._cache_checked: set[int] = set()
        #: iteration_submit: the seeds of each iteration, {iteration: {"node.input": value}}
        self.seeds: dict[int, dict[str, Any]] = {}
        self._subscribers: Subscribers[BatchEvent] = Subscribers(f"batch {self.batch_id}")
        if on_event:
            self._subscribers.subscribe(on_event)
        self._cond = threading.Condition()
        self._pending: deque[FrameTask] = deque(tasks)
        self._active = 0
        self._done_frames = 0
        self._fatal: dict[str, list[int]] = {}
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._started_at = clock()
        self._ended_at: float | None = None
        self._total = len(self._skipped) + sum(len(t.frames) for t in tasks)
        workers = max_workers or max(2, min(64, sum(_max_queue(b) for b in pool.backends) + 2))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"comfy-batch-{self.run_id[:6]}")
        self._thread = threading.Thread(target=self._schedule, name=f"comfy-scheduler-{self.run_id[:6]}", daemon=True)

    # -- public ---------------------------------------------------------------------------

    def start(self) -> Batch:
        getattr(self._pool, "watch_batch", lambda batch: None)(self)   # the pod autoscaler plans for it
        for task in self._tasks:
            self._emit("queued", task.key, {"frames": list(task.frames)})
        self._thread.start()
        return self

    @property
    def frames(self) -> list[int]:
        return sorted(set(self._skipped) | {f for t in self._tasks for f in t.frames})

    @property
    def progress(self) -> tuple[int, int, int]:
        """(done, failed, total) frames; done includes frames done by an earlier run."""
        with self._cond:
            failed = sum(len(t.frames) for t in self._tasks if t.state is JobState.FAILED)
            return self._done_frames + len(self._skipped), failed, self._total

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def journal_path(self) -> Path | None:
        return self._journal.path if self._journal else None

    @property
    def blocked(self) -> list[str]:
        """Why no backend can take this batch's work right now, one line each; empty when one can."""
        return self._rotation.blocked

    @property
    def benched(self) -> dict[str, str]:
        """Backends out of rotation for this batch (their attempts kept timing out), with the reason."""
        return self._rotation.benched

    def overdue(self) -> list[tuple[str, str, float, float]]:
        """(task label, backend, seconds since sent, backend's s/job) for every frame in flight
        far past its server's measured seconds per job, longest first."""
        speed = {b.name: getattr(b, "seconds_per_job", None) for b in self._pool.backends}
        now = self._clock()
        out = []
        with self._cond:
            for task in self._tasks:
                if task.state not in (JobState.SUBMITTED, JobState.RUNNING) or not task.attempts:
                    continue
                attempt = task.attempts[-1]
                per_job, waited = speed.get(attempt.backend), now - attempt.started
                if isinstance(per_job, (int, float)) and waited >= max(FAR_PAST_MIN, FAR_PAST_FACTOR * per_job):
                    out.append((self._label(task), attempt.backend, waited, float(per_job)))
        return sorted(out, key=lambda item: -item[2])

    def tasks(self) -> list[FrameTask]:
        """The frame tasks (live objects: read, do not change)."""
        return list(self._tasks)

    def subscribe(self, callback: EventHandler) -> Callable[[], None]:
        """Add an event callback (called on worker threads); returns a function that removes it."""
        return self._subscribers.subscribe(callback)

    @property
    def by_server(self) -> dict[str, int]:
        """Frames rendered so far per backend (the result cache counts as ``CACHE_BACKEND``)."""
        counts: dict[str, int] = {}
        with self._cond:
            for task in self._tasks:
                if task.state is JobState.DONE:
                    backend = task.attempts[-1].backend
                    counts[backend] = counts.get(backend, 0) + len(task.frames)
        return counts

    def cancel(self) -> None:
        """Stop the batch: unsent frames are dropped, our prompts are removed from the
        servers' queues, and only our own running prompts are interrupted (by prompt_id)."""
        self._cancel.set()
        with self._cond:
            dropped = list(self._pending)
            self._pending.clear()
            for task in dropped:
                task.set_state(JobState.CANCELLED)
            self._cond.notify_all()
        for task in dropped:
            self._emit("cancelled", task.key, {})

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None) -> BatchResult:
        """Wait for the batch to end and return what it did; TimeoutError if it has not ended."""
        if not self._finished.wait(timeout):
            done, failed, total = self.progress
            raise TimeoutError(f"batch {self.batch_id}: not finished after {timeout} s ({done}/{total} done, "
                               f"{failed} failed)")
        return self._build_result()

    # -- scheduler --------------------------------------------------------------------------

    def _schedule(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and self._active and not self._cancel.is_set():
                        self._cond.wait(WAIT_SLICE)
                    if not self._pending and (not self._active or self._cancel.is_set()):
                        break
                    candidates = self._candidates()
                if self._from_cache(candidates[0]):
                    continue
                try:
                    leased = self._lease(candidates)
                except MissingNodes as err:
                    self._fail_pending(err)
                    continue
                if leased is None:
                    if self._give_up_if_nothing_runs():
                        continue
                    self._pool.wait_for_change(WAIT_SLICE)
                    continue
                self._rotation.leased()
                task, lease = leased
                with self._cond:
                    if task.state is not JobState.QUEUED or task not in self._pending:
                        lease.release(ok=True)  # cancelled or failed meanwhile
                        continue
                    self._pending.remove(task)
                    self._active += 1
                self._executor.submit(self._run_task, task, lease)
        except Exception:  # a bug here must not leave result() waiting forever
            log.exception("batch %s: scheduler stopped", self.batch_id)
            self._fail_pending(ComfyClusterError(f"batch {self.batch_id}: internal scheduler error"))
        finally:
            self._wait_idle()
            self._executor.shutdown(wait=True)
            if self._journal:
                self._journal.close()
            self._ended_at = self._clock()
            self._finished.set()
            done, failed, total = self.progress
            log.info("batch %s: finished, %d/%d frames done, %d failed", self.batch_id, done, total, failed)

    def _wait_idle(self) -> None:
        with self._cond:
            while self._active:
                self._cond.wait(WAIT_SLICE)

    def _candidates(self) -> list[FrameTask]:
        """The head task, plus the first task that no server has failed yet (so a retry
        waiting for 'any other server' never blocks fresh frames from a free slot)."""
        head = self._pending[0]
        out = [head]
        if head.failed_backends():
            fresh = next((t for t in self._pending if not t.attempts), None)
            if fresh is not None:
                out.append(fresh)
        return out

    def _lease(self, candidates: list[FrameTask]) -> tuple[FrameTask, Lease] | None:
        # The last frames wait for a faster busy server rather than start late on a slow one.
        tail = len(self._pending) < len(self._pool.backends)
        for task in candidates:
            lease = self._pool.acquire(self._plan.classes, strategy=self._strategy, target=self._target,
                                       exclude=self._exclude(task), wait_for_faster=tail)
            if lease is not None:
                return task, lease
        return None

    def _exclude(self, task: FrameTask) -> frozenset[str]:
        """Backends out of rotation, and those that failed this task as long as another one could take it."""
        benched = frozenset(self._rotation.benched)
        failed = task.failed_backends() - benched
        if not failed or self._target:
            return benched
        classes = self._plan.classes
        others = [b for b in self._pool.backends if b.name not in failed | benched and available(b, classes)]
        return failed | benched if others else benched

    def _give_up_if_nothing_runs(self) -> bool:
        """No slot was free: ``Rotation.nothing_runs`` notes why; once it says the wait is over,
        fail the unsent frames with its ``NoBackendAvailable``. True when it did."""
        err = self._rotation.nothing_runs(self._pool.backends, self._plan.classes, f"batch {self.batch_id}")
        if err is None:
            return False
        with self._cond:
            doomed = self._drain_pending(err)
        log.error("batch %s: %s", self.batch_id, err)
        for task in doomed:
            self._emit("failed", task.key, {"error": str(err)})
        return True

    def _fail_pending(self, err: ComfyClusterError) -> None:
        with self._cond:
            doomed = self._drain_pending(err)
        for task in doomed:
            self._emit("failed", task.key, {"error": str(err)})

    def _drain_pending(self, err: ComfyClusterError) -> list[FrameTask]:
        """Fail every unsent task with ``err`` (lock held); returns them for their events."""
        doomed = list(self._pending)
        self._pending.clear()
        for task in doomed:
            self._mark_failed(task, err)
        self._cond.notify_all()
        return doomed

    # -- one attempt --------------------------------------------------------------------------

    def _run_task(self, task: FrameTask, lease: Lease) -> None:
        backend = lease.backend
        try:
            self._attempt(task, lease, backend)
        except Exception as err:  # a bug in an attempt fails the frame, never the batch
            log.exception("%s on %s: unexpected error", task.label, backend.name)
            lease.release(ok=False)
            self._finish_failed(task, ComfyClusterError(f"{task.label}: unexpected error: {err!r}",
                                                        server=backend.name))
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _attempt(self, task: FrameTask, lease: Lease, backend: Any) -> None:
        prompt_id = uuid.uuid4().hex
        number = len(task.attempts) + 1
        try:
            request = self._build_request(task, number, prompt_id, backend)
        except ComfyClusterError as err:
            lease.release(ok=True)
            self._finish_failed(task, err)
            return
        with self._cond:
            if task.state is not JobState.QUEUED:
                lease.release(ok=True)
                return
            retried_from, reason = task.last_backend, task.pending_reason
            attempt = task.start_attempt(backend.name, prompt_id, self._clock())
            task.pending_reason = None
        if reason:
            self._emit("retried", task.key, {"from": retried_from, "to": backend.name, "reason": reason})
        if self._journal:
            for frame in task.frames:
                self._journal.submitted(frame, number, backend.name, prompt_id)
        log.debug("%s -> %s (attempt %d, prompt %s)", task.label, backend.name, number, prompt_id)
        try:
            result = backend.run_prompt(request, on_event=self._backend_events(task, backend.name),
                                        cancel=self._cancel)
        except Exception as err:
            # decide retry / fail / stop before the slot is freed, so the scheduler never
            # sends another doomed frame in between
            self._attempt_failed(task, attempt, err)
            lease.release(ok=False)
            return
        lease.release(seconds=result.elapsed, ok=True)
        try:
            files = self._write_outputs(task, result)
        except ComfyClusterError as err:
            self._attempt_failed(task, attempt, err)
            return
        attempt.ended = self._clock()
        if self._cache is not None:
            self._cache.store(request, files, kind=backend.kind, run=self.run_id)
        self._finish_done(task, attempt, files, result)

    def _from_cache(self, task: FrameTask) -> bool:
        """Serve a fresh task from the result cache (no slot needed); True when it was."""
        if self._cache is None or task.attempts or task.key in self._cache_checked:
            return False
        self._cache_checked.add(task.key)
        request = self._build_request(task, 1, uuid.uuid4().hex, None)
        files = self._cache.restore(request, task.frames, self._plan.names,
                                    kinds_for(self._pool.backends, self._target), run=self.run_id)
        with self._cond:
            if files is None or task.state is not JobState.QUEUED or task not in self._pending:
                return False
            self._pending.remove(task)
            attempt = task.start_attempt(CACHE_BACKEND, request.prompt_id, self._clock())
        attempt.ended = attempt.started
        self._finish_done(task, attempt, files, PromptResult(request.prompt_id, CACHE_BACKEND, [], 0.0))
        return True

    def _build_request(self, task: FrameTask, number: int, prompt_id: str, backend: Any) -> PromptRequest:
        plan = self._plan
        frame = task.key
        wf = plan.per_frame_workflows.get(frame, plan.workflow)
        if plan.frame_values is not None:
            values = plan.frame_values(frame)
            if values:
                wf = wf.with_values(values)
        if plan.frame_tokens:
            wf = wf.with_frame(frame)
        wf = wf.with_output_prefix(f"comfy_cluster/{self.run_id}/{frame}_{number}")
        inputs = {key: Path(src.format(frame)) if isinstance(src, FramePattern) else src
                  for key, src in plan.inputs.items()}
        return PromptRequest(prompt_id=prompt_id, workflow=wf.to_dict(), inputs=inputs,
                             timeout=self._timeout_for(backend), label=self._label(task), batch_id=self.batch_id)

    def _label(self, task: FrameTask) -> str:
        noun = self._plan.noun
        if noun == "frame":
            return task.label
        return noun if noun == "job" else f"{noun} {task.key}"

    def _timeout_for(self, backend: Any) -> float:
        if self._job_timeout is not None:
            return self._job_timeout
        try:
            predicted = float(backend.predicted_finish(0))
        except (TypeError, ValueError, AttributeError):
            predicted = 0.0
        return max(MIN_JOB_TIMEOUT, JOB_TIMEOUT_FACTOR * predicted)

    def _backend_events(self, task: FrameTask, server: str) -> Callable[[str, dict[str, Any]], None]:
        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "submitted":
                self._emit("submitted", task.key, {"server": server, "prompt_id": data.get("prompt_id"),
                                                   "attempt": len(task.attempts)})
            elif kind == "started":
                with self._cond:
                    if task.state is JobState.SUBMITTED:
                        task.set_state(JobState.RUNNING)
                self._emit("started", task.key, {"server": server})
            elif kind in ("progress", "executing"):
                self._emit(kind, task.key, {**data, "server": server})
        return on_event

    def _write_outputs(self, task: FrameTask, result: PromptResult) -> dict[int, list[Path]]:
        """Fetch every output to its frame's file name, atomically, each checked to be what its
        name says before it takes that name. Raises on the first failure."""
        with self._cond:
            if task.state.is_final:  # a late duplicate: the first finisher already won
                log.info("%s: discarding a late result from %s", task.label, result.backend)
                return {}
        plan = self._plan
        check_delivered(task.label, result, plan.file_outputs, plan.workflow, files_required=plan.noun != "job")
        files: dict[int, list[Path]] = {f: [] for f in task.frames}
        for frame, index, ref in assign_outputs(task, result):
            dest = self._plan.names.path(frame, index, ref)
            atomic_write(dest, functools.partial(fetch_checked, task.label, result, ref))
            files[frame].append(dest)
        return files

    # -- outcomes -------------------------------------------------------------------------------

    def _attempt_failed(self, task: FrameTask, attempt: Attempt, err: Exception) -> None:
        reason = _reason(err)
        benched = self._rotation.strike(attempt.backend, err, reason)
        if benched:
            self._emit("benched", None, {"server": attempt.backend, "reason": benched})
        with self._cond:
            attempt.ended = self._clock()
            attempt.reason = reason
            if task.state.is_final:
                return
            if self._cancel.is_set():
                task.set_state(JobState.CANCELLED)
                cancelled = True
            else:
                cancelled = False
                retry = _retryable(err) and len(task.attempts) <= self._retries
                if retry:
                    task.set_state(JobState.QUEUED)
                    task.pending_reason = reason
                    self._pending.appendleft(task)  # retries first: keeps the sequence filling in order
                    self._cond.notify_all()
        if cancelled:
            self._emit("cancelled", task.key, {})
            return
        if retry:
            log.warning("%s: attempt %d on %s failed, retrying elsewhere: %s", task.label, attempt.number,
                        attempt.backend, reason)
            if self._journal:
                for frame in task.frames:
                    self._journal.retried(frame, attempt.backend, reason)
            return
        if not isinstance(err, ComfyClusterError):
            err = ComfyClusterError(f"{task.label}: {reason}", server=attempt.backend)
        elif _retryable(err):
            err = _exhausted(task, err)
        self._finish_failed(task, err)

    def _finish_failed(self, task: FrameTask, err: ComfyClusterError) -> None:
        with self._cond:
            if task.state.is_final:
                return
            self._mark_failed(task, err)
            stop = self._note_fatal(task, err)
            doomed = self._drain_pending(stop) if stop is not None else []
        log.error("%s failed: %s", task.label, err)
        self._emit("failed", task.key, {"error": str(err)})
        for other in doomed:
            self._emit("failed", other.key, {"error": str(stop)})

    def _mark_failed(self, task: FrameTask, err: ComfyClusterError) -> None:
        task.set_state(JobState.FAILED)
        task.error = err
        if self._journal:
            for frame in task.frames:
                self._journal.failed(frame, str(err))

    def _note_fatal(self, task: FrameTask, err: ComfyClusterError) -> WorkflowError | None:
        """Early stop: the same workflow error on EARLY_STOP_AFTER frames, and none done yet."""
        if not isinstance(err, WorkflowError) or self._done_frames or not self._pending:
            return None
        frames = self._fatal.setdefault(_signature(err, self._label(task)), [])
        frames.append(task.key)
        if len(frames) < EARLY_STOP_AFTER:
            return None
        listed = ", ".join(str(f) for f in frames)
        log.error("batch %s: frames %s failed with the same workflow error and none succeeded; "
                  "not sending the other %d", self.batch_id, listed, len(self._pending))
        return WorkflowError(f"not sent: frames {listed} failed with the same error and no frame succeeded, "
                             f"so the workflow itself is at fault: {err}", server=err.server)

    def _finish_done(self, task: FrameTask, attempt: Attempt, files: dict[int, list[Path]],
                     result: PromptResult) -> None:
        seconds = (attempt.ended or self._clock()) - attempt.started
        self._rotation.succeeded(attempt.backend)
        with self._cond:
            if task.state.is_final:
                return
            task.set_state(JobState.DONE)
            task.outputs = files
            self._done_frames += len(task.frames)
        if self._journal:
            for frame, paths in files.items():
                self._journal.done(frame, paths, result.backend, seconds)
        # ``seconds`` is wall time from our submit to the files on disk; the server's own run
        # time is ``result.elapsed``, and the rest was waiting (queue, transfer).
        run_seconds = min(max(0.0, float(result.elapsed)), seconds)
        for frame, paths in files.items():
            self._emit("completed", frame, {"outputs": [str(p) for p in paths], "server": result.backend,
                                            "seconds": seconds, "run_seconds": run_seconds,
                                            "wait_seconds": seconds - run_seconds, "prompt_id": result.prompt_id})

    # -- events and results -----------------------------------------------------------------

    def _emit(self, kind: str, frame: int | None, data: dict[str, Any]) -> None:
        self._subscribers.deliver(BatchEvent(kind=kind, frame=frame, data=data, time=time.time()))

    def _build_result(self) -> BatchResult:
        by_server = self.by_server
        with self._cond:
            frames: dict[int, list[Path]] = dict(self._skipped)
            failed: dict[int, ComfyClusterError] = {}
            cancelled: list[int] = []
            seconds: dict[int, float] = {}
            retries: dict[int, list[str]] = {}
            for task in self._tasks:
                if task.reasons:
                    for frame in task.frames:
                        retries[frame] = task.reasons
                if task.state is JobState.DONE:
                    last = task.attempts[-1]
                    for frame in task.frames:
                        frames[frame] = task.outputs.get(frame, [])
                        seconds[frame] = (last.ended or last.started) - last.started
                elif task.state is JobState.FAILED:
                    for frame in task.frames:
                        failed[frame] = task.error or ComfyClusterError(f"frame {frame} failed")
                else:
                    cancelled.extend(task.frames)
            elapsed = (self._ended_at or self._clock()) - self._started_at
        return BatchResult(frames=dict(sorted(frames.items())), by_server=by_server, failed=failed,
                           cancelled=sorted(cancelled), skipped=sorted(self._skipped), seconds=seconds,
                           retries=retries, elapsed=elapsed)


# --------------------------------------------------------------------------- helpers


def _retryable(err: BaseException) -> bool:
    if isinstance(err, (ServerUnavailable, Interrupted)):
        return True
    return isinstance(err, WorkflowError) and bool(err.server_specific)


def _reason(err: BaseException) -> str:
    if isinstance(err, ComfyClusterError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _exhausted(task: FrameTask, err: ComfyClusterError) -> ComfyClusterError:
    reasons = "; ".join(task.reasons)
    message = f"{task.label}: gave up after {len(task.attempts)} attempts ({reasons})"
    if isinstance(err, WorkflowError):
        return WorkflowError(message, server=err.server, prompt_id=err.prompt_id)
    return ServerUnavailable(message, server=err.server, prompt_id=err.prompt_id)


def _signature(err: ComfyClusterError, label: str) -> str:
    """The error without what differs between servers, prompts and frames, to spot a repeated cause."""
    text = f"{type(err).__name__}:{err}"
    for noise in (err.server, err.prompt_id, label):
        if noise:
            text = text.replace(noise, "")
    return text


def _max_queue(backend: Any) -> int:
    try:
        return max(1, int(backend.max_queue))
    except (TypeError, ValueError, AttributeError):
        return 1


__all__ = ["WAIT_FOR_SERVER", "Batch", "BatchResult", "EventHandler", "Lease", "Plan", "PoolLike"]
