"""Submit ComfyUI Render nodes: check everything, render the inputs, run, bring results back.

The steps and the thread each runs on:

1. main thread: read the knobs, collect *every* problem (workflow, bindings, output
   folder, backends) and show them in one message;
2. main thread: render each bound Nuke input to temporary PNG frames with a temporary
   Write node (``nuke.execute`` must run there);
3. worker thread: start the batch (network), follow it with a ``nuke.ProgressTask``
   whose Cancel cancels the batch;
4. main thread, through ``nuke.executeInMainThread``: create or update the Read nodes,
   list failed frames in one message and mark the node.

Headless (``nuke -t``, ``nuke.GUI`` False) runs the same steps on the calling thread, with
progress going to the log and no dialogs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Protocol

import nuke

from comfy_cluster.errors import ComfyClusterError, TransferError
from comfy_cluster.frames import FramePattern

from . import core, reads, render_node
from . import settings as s

log = logging.getLogger(__name__)

#: Most failed frames listed in the message; the rest are counted.
MAX_LISTED_FAILURES = 20


class Progress(Protocol):
    """Where a running submission reports (a Nuke progress bar, or the log)."""

    def update(self, done: int, failed: int, total: int, by_server: dict[str, int], why: str = "") -> None: ...

    def cancelled(self) -> bool: ...

    def close(self) -> None: ...


def progress_text(done: int, failed: int, total: int, by_server: dict[str, int], why: str = "") -> str:
    """``"4 of 6 frames done, 1 failed (gpu-01: 2, gpu-02: 2)"``, then why nothing runs, if so."""
    text = f"{done} of {total} frames done"
    if failed:
        text += f", {failed} failed"
    if by_server:
        text += " (" + ", ".join(f"{name}: {count}" for name, count in sorted(by_server.items())) + ")"
    if why:
        text += f"; {why}"
    return text


def why_waiting(work: Any) -> str:
    """What a batch is stuck on (``Batch.blocked``, ``Batch.benched``), from its cache."""
    parts = []
    blocked = list(getattr(work, "blocked", None) or [])
    if blocked:
        parts.append("nothing can run: " + "; ".join(blocked))
    benched = dict(getattr(work, "benched", None) or {})
    if benched:
        parts.append("out of rotation: " + ", ".join(sorted(benched)))
    return "; ".join(parts)


class TaskProgress:
    """A ``nuke.ProgressTask``; made on the worker thread, closed by releasing it."""

    def __init__(self, title: str) -> None:
        self._task: Any = nuke.ProgressTask(title)

    def update(self, done: int, failed: int, total: int, by_server: dict[str, int], why: str = "") -> None:
        if self._task is not None:
            self._task.setProgress(int(100 * (done + failed) / max(total, 1)))
            self._task.setMessage(progress_text(done, failed, total, by_server, why))

    def cancelled(self) -> bool:
        return self._task is not None and bool(self._task.isCancelled())

    def close(self) -> None:
        self._task = None  # Nuke removes the bar when the object is released


class LogProgress:
    """Progress lines in the log (``nuke -t``), one per change."""

    def __init__(self, title: str) -> None:
        self._title = title
        self._last: tuple[int, int, str] | None = None

    def update(self, done: int, failed: int, total: int, by_server: dict[str, int], why: str = "") -> None:
        if (done, failed, why) != self._last:
            self._last = (done, failed, why)
            log.info("%s: %s", self._title, progress_text(done, failed, total, by_server, why))

    def cancelled(self) -> bool:
        return False

    def close(self) -> None:
        self._last = None


class Submission:
    """One submit of one Render node."""

    def __init__(self, node: nuke.Node, *, pool: Any = None) -> None:
        self.node = node
        self.pool = pool
        self.settings = render_node.read_settings(node)
        self.inputs: dict[str, str] = {}
        self.outcome: core.Outcome | None = None
        self.finished = threading.Event()
        self._temp_dir: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return f"{self.settings.node} ({self.settings.mode.value}, {len(self.settings.frames)} frames)"

    # -- 1. checks (main thread) -------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every reason this submit cannot run, all at once."""
        problems = s.check(self.settings) + render_node.binding_problems(self.node)
        problems += self._workflow_problems()
        problems += self._output_problems()
        problems += self._backend_problems()
        return problems

    def _workflow_problems(self) -> list[str]:
        path = self.settings.workflow
        if not path:
            return []
        if not os.path.isfile(path):
            return [f"workflow: file not found: {path}"]
        try:
            workflow = core.load_workflow(path)
        except (ComfyClusterError, OSError, ValueError) as err:
            return [f"workflow: {path}: {err}"]
        found = [f"input binding {b.spec}: {p}" for b in self.settings.bindings
                 if (p := core.binding_problem(workflow, b.spec))]
        return found + [f"value {v!r}: {p}" for v in self.settings.values if (p := core.value_problem(workflow, v))]

    def _output_problems(self) -> list[str]:
        try:
            pattern = FramePattern.parse(self.settings.output)
        except ValueError:
            return []  # already reported by settings.check
        folder = Path(pattern.format(self.settings.frames.first)).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            return [f"output: folder {folder} is not writable: {err.strerror or err}"]
        return []

    def _backend_problems(self) -> list[str]:
        try:
            if self.pool is None:
                self.pool = core.shared_pool()
            problem = core.reachability_problem(self.pool, self.settings.target_arg)
        except ComfyClusterError as err:
            return [f"configuration: {err}"]
        return [problem] if problem else []

    def budget_ok(self) -> bool:
        """Ask first when the render would pass today's RunPod budget (reads caches and the ledger only)."""
        from comfy_cluster.estimate import estimate_render

        st = self.settings
        prompts = st.iterations if st.mode is s.Mode.ITERATIONS else len(list(st.frames.chunks(max(1, st.chunk))))
        try:
            est = estimate_render(self.pool, prompts, target=st.target_arg)
        except ValueError as err:  # a GPU class no endpoint has
            _tell(f"{st.node}: {err}")
            return False
        return not est.over_budget or bool(nuke.ask(f"{st.node}: {est}\n\nRender anyway?"))

    # -- 2. inputs (main thread) -------------------------------------------------------------

    def render_inputs(self) -> None:
        """Render every bound Nuke input to temporary PNG frames; TransferError names the input."""
        self._temp_dir = tempfile.mkdtemp(prefix=f"comfy_cluster_{self.settings.node}_")
        try:
            self._render_inputs(self._temp_dir)
        except BaseException:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            raise

    def _render_inputs(self, temp_dir: str) -> None:
        frames = self.settings.frames
        first, last = frames.first, frames.last
        step = self.settings.step if self.settings.mode is s.Mode.RANGE else 1
        for binding in self.settings.bindings:
            upstream = self.node.input(binding.index)
            pattern = Path(temp_dir, f"input{binding.index}.####.png").as_posix()
            with nuke.root():
                write = nuke.nodes.Write(file=pattern, file_type="png", channels="rgb", create_directories=True,
                                         inputs=[upstream])
            try:
                nuke.execute(write, first, last, step)
            except (RuntimeError, nuke.CancelledError) as err:
                name = upstream.name() if upstream is not None else "nothing"
                raise TransferError(f"{self.settings.node}: rendering input {binding.index} ({name}) for "
                                    f"frames {first}-{last} failed: {err}") from err
            finally:
                nuke.delete(write)
            single = self.settings.mode is not s.Mode.RANGE
            self.inputs[binding.spec] = FramePattern.parse(pattern).format(first) if single else pattern

    # -- 3. run (worker thread, or the caller in nuke -t) -----------------------------------

    def run(self, progress: Progress) -> core.Outcome:
        """Start the work, report progress until it ends, return what it made (never raises)."""
        changed = threading.Event()
        entry = None
        try:
            work = core.start(self.settings, pool=self.pool, inputs=self.inputs, on_event=lambda event: changed.set())
            entry = core.register(self.label, work)
            entry.servers = work.by_server
            cancelled = False
            while True:
                done, failed, total = work.progress
                entry.servers = work.by_server
                progress.update(done, failed, total, entry.servers, why_waiting(work))
                if progress.cancelled() and not cancelled:
                    log.info("%s: cancelled by the user", self.settings.node)
                    work.cancel()
                    cancelled = True
                if done + failed >= total or cancelled:
                    break
                changed.wait(0.25)
                changed.clear()
            return core.outcome(work)
        except ComfyClusterError as err:
            return core.Outcome({}, {}, {}, error=str(err))
        except Exception as err:  # a worker thread has no caller to raise to: report it on the node
            log.exception("%s: submit failed", self.settings.node)
            return core.Outcome({}, {}, {}, error=f"{type(err).__name__}: {err}")
        finally:
            progress.close()
            if entry is not None:
                core.finish(entry)
            if self._temp_dir:
                shutil.rmtree(self._temp_dir, ignore_errors=True)

    def start(self) -> None:
        """Run on a worker thread and finish on the main thread (GUI sessions)."""
        def work() -> None:
            outcome = self.run(TaskProgress(f"ComfyUI: {self.settings.node}"))
            nuke.executeInMainThread(self.finish, (outcome,))

        self._thread = threading.Thread(target=work, name=f"comfy-cluster {self.settings.node}", daemon=True)
        self._thread.start()

    # -- 4. results (main thread) ------------------------------------------------------------

    def finish(self, outcome: core.Outcome) -> None:
        """Read nodes, the failure message and the node's mark, on the main thread."""
        self.outcome = outcome
        try:
            self._finish(outcome)
        finally:
            self.finished.set()

    def _finish(self, outcome: core.Outcome) -> None:
        name = self.settings.node
        if outcome.error:
            reads.mark(self.node, True, f"error: {outcome.error}")
            _tell(f"ComfyUI Render {name} failed:\n{outcome.error}")
            return
        self._make_reads(outcome)
        done = len(outcome.frames)
        servers = ", ".join(f"{k}: {v}" for k, v in sorted(outcome.by_server.items()))
        if outcome.failed:
            listed = [f"  {_what(self.settings, f)}: {outcome.failed[f]}" for f in sorted(outcome.failed)]
            extra = len(listed) - MAX_LISTED_FAILURES
            listed = listed[:MAX_LISTED_FAILURES] + ([f"  ... and {extra} more"] if extra > 0 else [])
            reads.mark(self.node, True, f"{len(outcome.failed)} failed, {done} done")
            _tell(f"ComfyUI Render {name}: {len(outcome.failed)} of {done + len(outcome.failed)} failed:\n"
                  + "\n".join(listed))
        elif outcome.cancelled:
            reads.mark(self.node, False, f"cancelled after {done} done")
        else:
            reads.mark(self.node, False, f"done: {done} ({servers})" if servers else f"done: {done}")
            log.info("%s: done, %d rendered (%s)", name, done, servers)

    def _make_reads(self, outcome: core.Outcome) -> None:
        settings = self.settings
        if settings.mode is s.Mode.RANGE:
            if outcome.frames:
                pattern = FramePattern.parse(settings.output).to_nuke()
                reads.place_read(self.node, f"{pattern} {settings.first}-{settings.last}")
        elif settings.mode is s.Mode.SINGLE:
            files = outcome.frames.get(settings.frame) or []
            if files:
                reads.place_read(self.node, files[0].as_posix(), label=f"frame {settings.frame}")
        else:
            for column, (iteration, files) in enumerate(sorted(outcome.frames.items())):
                if files:
                    label = _seed_label(outcome.seeds.get(iteration))
                    reads.place_read(self.node, files[0].as_posix(), variation=iteration, column=column, label=label)


def _what(settings: s.RenderSettings, key: int) -> str:
    return f"iteration {key}" if settings.mode is s.Mode.ITERATIONS else f"frame {key}"


def _seed_label(seeds: Any) -> str:
    """``"seed 1234"`` for one seed input, ``"3.seed 1234, 7.noise_seed 99"`` for several."""
    if not seeds:
        return ""
    if len(seeds) == 1:
        return f"seed {next(iter(seeds.values()))}"
    return ", ".join(f"{k} {v}" for k, v in sorted(seeds.items()))


def _tell(text: str) -> None:
    """A dialog in the GUI (main thread only); the log in ``nuke -t``."""
    if nuke.GUI:
        nuke.message(text)
    else:
        log.warning("%s", text)


def submit_nodes(nodes: Iterable[nuke.Node], *, pool: Any = None, wait: bool | None = None) -> list[Submission]:
    """Check, render inputs and start every Render node given; call on the main thread.

    Problems of all nodes are shown together, and a node with problems is not sent. In the
    GUI the work runs in the background; headless (or ``wait=True``) it runs to the end here.
    """
    wait = (not nuke.GUI) if wait is None else wait
    candidates = [n for n in nodes if render_node.is_render_node(n)]
    if not candidates:
        _tell("Select one or more ComfyUI Render nodes to submit.")
        return []
    ready: list[Submission] = []
    report: list[str] = []
    for node in candidates:
        submission = Submission(node, pool=pool)
        problems = submission.problems()
        if problems:
            report.append(f"{node.name()}:\n" + "\n".join(f"  - {p}" for p in problems))
            reads.mark(node, True, f"not submitted: {len(problems)} problem(s)")
            continue
        pool = submission.pool
        if not submission.budget_ok():
            reads.mark(node, True, "not submitted: over today's RunPod budget")
            continue
        try:
            submission.render_inputs()
        except ComfyClusterError as err:
            report.append(f"{node.name()}:\n  - {err}")
            reads.mark(node, True, "not submitted: input render failed")
            continue
        ready.append(submission)
    if report:
        _tell("Cannot submit:\n\n" + "\n\n".join(report))
    for submission in ready:
        if wait:
            submission.finish(submission.run(LogProgress(submission.settings.node)))
        else:
            submission.start()
    return ready
