"""run.py's dispatcher against small fake backends and a fake pool (no network).

The fakes implement the Backend protocol and the three pool calls the dispatcher uses
(acquire, wait_for_change, backends), so retries, exclusion, early stop, events, cancel,
resume and output naming are checked exactly and fast. tests/test_dispatch_e2e.py runs the
same dispatcher over loopback against emulated ComfyUI servers and the real pool.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image, PngImagePlugin

from comfy_cluster import rotation, run
from comfy_cluster.batch import BatchResult
from comfy_cluster.backend import OutputRef, PromptRequest, PromptResult
from comfy_cluster.errors import (
    BindingError,
    Cancelled,
    ComfyClusterError,
    ExecutionFailed,
    MissingInputs,
    MissingNodes,
    NoBackendAvailable,
    ServerTimeout,
    ServerUnavailable,
    WorkflowError,
    WorkflowRejected,
)
from comfy_cluster.jobs import JobState, journal_path, read_journal
from tests.helpers import wait_until

WORKFLOW = {
    "10": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "11": {"class_type": "KSampler", "inputs": {"seed": 5, "image": ["10", 0]}},
    "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "comp"}},
}

Behaviour = Callable[["FakeBackend", PromptRequest, threading.Event], None]


class FakeBackend:
    """A backend that 'renders' a JSON file describing the request, after ``seconds``."""

    kind = "fake"

    def __init__(self, name: str, seconds: float = 0.0, *, max_queue: int = 2, images: int = 1,
                 behaviour: Behaviour | None = None) -> None:
        self.name = name
        self.seconds = seconds
        self.enabled = True
        self.priority = 1
        self.max_queue = max_queue
        self.in_flight = 0
        self.seconds_per_job: float | None = seconds or None
        self.online = True
        self.images = images
        self.behaviour = behaviour
        self.requests: list[PromptRequest] = []
        self.fetches = 0
        self.results: list[tuple[float | None, bool]] = []
        self._lock = threading.Lock()

    def is_available(self, classes: frozenset[str] | None = None) -> bool:
        return self.online

    def missing_classes(self, classes: frozenset[str]) -> frozenset[str]:
        return frozenset()

    def predicted_finish(self, extra: int = 0) -> float:
        return (self.in_flight + extra) * (self.seconds or 0.001)

    def record_result(self, seconds: float | None, ok: bool) -> None:
        self.results.append((seconds, ok))

    def run_prompt(self, request: PromptRequest, *, on_event: Any, cancel: threading.Event) -> PromptResult:
        with self._lock:
            self.requests.append(request)
        on_event("submitted", {"backend": self.name, "prompt_id": request.prompt_id})
        on_event("started", {})
        if self.behaviour is not None:
            self.behaviour(self, request, cancel)
        if cancel.wait(self.seconds):
            raise Cancelled(f"server {self.name!r}: cancelled", server=self.name, prompt_id=request.prompt_id)
        on_event("progress", {"value": 1, "max": 1, "node": "11"})
        body = _png({"backend": self.name, "label": request.label, "prompt_id": request.prompt_id,
                     "inputs": {f"{n}.{i}": str(p) for (n, i), p in request.inputs.items()}})

        def fetch(dest: Path, body: bytes = body) -> None:
            with self._lock:
                self.fetches += 1
            dest.write_bytes(body)

        outputs = [OutputRef(filename=f"out_{k:05d}_.png", node_id="12", index=k, fetch=fetch)
                   for k in range(self.images)]
        return PromptResult(prompt_id=request.prompt_id, backend=self.name, outputs=outputs,
                            elapsed=self.seconds)


class FakeLease:
    def __init__(self, pool: FakePool, backend: FakeBackend) -> None:
        self.backend = backend
        self._pool = pool
        self.released = False

    def release(self, *, seconds: float | None = None, ok: bool = True) -> None:
        self._pool.release(self, seconds, ok)


class FakePool:
    """Least-loaded choice among online backends with a free slot, as the real pool does."""

    def __init__(self, *backends: FakeBackend, missing: MissingNodes | None = None) -> None:
        self.backends = list(backends)
        self.missing = missing
        self.acquires: list[tuple[str | None, frozenset[str]]] = []
        self._cond = threading.Condition()

    def acquire(self, classes=frozenset(), *, strategy="least_loaded", target=None, exclude=(), wait_for_faster=False):
        if self.missing is not None:
            raise self.missing
        with self._cond:
            free = [b for b in self.backends if b.online and b.name not in exclude and b.in_flight < b.max_queue
                    and (target is None or b.name == target)]
            if not free:
                return None
            best = min(free, key=lambda b: b.predicted_finish(1))
            best.in_flight += 1
            self.acquires.append((best.name, frozenset(exclude)))
            return FakeLease(self, best)

    def release(self, lease: FakeLease, seconds: float | None, ok: bool) -> None:
        with self._cond:
            if lease.released:
                return
            lease.released = True
            lease.backend.in_flight -= 1
            lease.backend.record_result(seconds, ok)
            self._cond.notify_all()

    def wait_for_change(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait(timeout)


def _frame_of(request: PromptRequest) -> int:
    return int(request.label.split()[-1])


def _png(request: dict[str, Any]) -> bytes:
    """A real 2x2 PNG (outputs are checked to decode) carrying the request it answers as text."""
    info = PngImagePlugin.PngInfo()
    info.add_text("request", json.dumps(request))
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (10, 20, 30)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _plates(pattern: Path, frames: Any) -> None:
    """Input files for ``frames`` (inputs are checked before anything is sent)."""
    pattern.parent.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        Path(str(pattern) % frame).write_bytes(_png({}))


def _content(path: Path) -> dict[str, Any]:
    with Image.open(path) as image:
        return json.loads(image.text["request"])


def _events(batch_kwargs: dict[str, Any]) -> list:
    events: list = []
    lock = threading.Lock()

    def on_event(ev):
        with lock:
            events.append(ev)
    batch_kwargs["on_event"] = on_event
    return events


# --------------------------------------------------------------------------- the happy path


def test_sequence_is_spread_over_backends_and_written_by_frame(tmp_path):
    fast, slow = FakeBackend("fast", 0.005), FakeBackend("slow", 0.05)
    pool = FakePool(fast, slow)
    kwargs: dict[str, Any] = {}
    events = _events(kwargs)
    out = tmp_path / "renders" / "sh010_comfy.####.png"
    _plates(tmp_path / "plates" / "sh010.%04d.png", range(1001, 1021))
    batch = run.animation_submit(WORKFLOW, pool=pool, frames="1001-1020", output=str(out),
                                 inputs={"Plate.image": str(tmp_path / "plates" / "sh010.%04d.png")}, **kwargs)
    res = batch.result(timeout=30)
    assert res.ok and not res.failed
    assert sorted(res.frames) == list(range(1001, 1021))
    assert sum(res.by_server.values()) == 20
    assert res.by_server["fast"] > res.by_server["slow"]
    for frame, files in res.frames.items():
        assert files == [tmp_path / "renders" / f"sh010_comfy.{frame}.png"]
        body = _content(files[0])
        assert body["label"] == f"frame {frame}"
        assert body["inputs"] == {"10.image": str(tmp_path / "plates" / f"sh010.{frame:04d}.png")}
    # every prompt has its own output prefix, so the server's cache never returns an old file
    prefixes = [r.workflow["12"]["inputs"]["filename_prefix"] for b in (fast, slow) for r in b.requests]
    assert len(set(prefixes)) == 20 and all(p.startswith(f"comfy_cluster/{batch.run_id}/") for p in prefixes)
    assert batch.progress == (20, 0, 20)
    kinds = [e.kind for e in events]
    assert kinds.count("queued") == 20 and kinds.count("completed") == 20 and kinds.count("submitted") == 20
    assert {e.data["server"] for e in events if e.kind == "progress"} == {"fast", "slow"}
    done = read_journal(journal_path(str(out))).done_frames()
    assert set(done) == set(range(1001, 1021))
    # the backend's measured time is reported back through the lease
    assert all(ok for _, ok in fast.results) and fast.results[0][0] == pytest.approx(0.005)


def test_no_backend_ever_holds_more_than_its_slots(tmp_path):
    peak = {"n": 0}
    lock = threading.Lock()

    def watch(backend, request, cancel):
        with lock:
            peak["n"] = max(peak["n"], backend.in_flight)

    a = FakeBackend("a", 0.01, max_queue=1, behaviour=watch)
    b = FakeBackend("b", 0.01, max_queue=2, behaviour=watch)
    res = run.animation_submit(WORKFLOW, pool=FakePool(a, b), frames="1-12", output=str(tmp_path / "o.#.png")).result(30)
    assert res.ok and peak["n"] <= 2
    assert all(n <= 2 for n in (a.max_queue, b.max_queue))


def test_several_images_per_frame_follow_with_index(tmp_path):
    res = run.animation_submit(WORKFLOW, pool=FakePool(FakeBackend("a", images=3)), frames="1-2",
                               output=str(tmp_path / "sh.####.png")).result(30)
    assert res.frames[1] == [tmp_path / "sh.0001.png", tmp_path / "sh_1.0001.png", tmp_path / "sh_2.0001.png"]
    assert all(p.is_file() for files in res.frames.values() for p in files)


def test_chunks_give_each_frame_one_image(tmp_path):
    backend = FakeBackend("a", images=3)
    res = run.animation_submit(WORKFLOW, pool=FakePool(backend), frames="1-6", chunk=3,
                               output=str(tmp_path / "sh.####.png")).result(30)
    assert res.ok and len(backend.requests) == 2
    assert [r.label for r in backend.requests] == ["frames 1-3", "frames 4-6"] or \
        sorted(r.label for r in backend.requests) == ["frames 1-3", "frames 4-6"]
    assert all(res.frames[f] == [tmp_path / f"sh.{f:04d}.png"] for f in range(1, 7))


def test_chunk_with_the_wrong_image_count_fails_clearly(tmp_path):
    res = run.animation_submit(WORKFLOW, pool=FakePool(FakeBackend("a", images=2)), frames="1-3", chunk=3,
                               output=str(tmp_path / "sh.####.png")).result(30)
    assert set(res.failed) == {1, 2, 3}
    assert "gave 2 images for 3 frames" in str(res.failed[1])


def test_animated_values_reach_each_frame(tmp_path):
    backend = FakeBackend("a")
    res = run.animation_submit(WORKFLOW, pool=FakePool(backend), frames="1-4", output=str(tmp_path / "o.####.png"),
                               values={"KSampler.seed": 7}, frame_values=lambda f: {"11.seed": 100 + f}).result(30)
    assert res.ok
    seeds = {_frame_of(r): r.workflow["11"]["inputs"]["seed"] for r in backend.requests}
    assert seeds == {1: 101, 2: 102, 3: 103, 4: 104}
    res2 = run.animation_submit(WORKFLOW, pool=FakePool(backend := FakeBackend("b")), frames="1-2",
                                output=str(tmp_path / "p.####.png"), values={"KSampler.seed": 7},
                                frame_values={2: {"11.seed": 9}}).result(30)
    assert res2.ok
    assert {_frame_of(r): r.workflow["11"]["inputs"]["seed"] for r in backend.requests} == {1: 7, 2: 9}


def test_frame_tokens_inside_the_graph_are_filled_per_frame(tmp_path):
    wf = {**WORKFLOW, "10": {"class_type": "LoadImage", "inputs": {"image": "plates/sh010.####.png"}}}
    backend = FakeBackend("a")
    assert run.animation_submit(wf, pool=FakePool(backend), frames="7-8", output=str(tmp_path / "o.#.png")).result(30).ok
    assert sorted(r.workflow["10"]["inputs"]["image"] for r in backend.requests) == \
        ["plates/sh010.0007.png", "plates/sh010.0008.png"]


# --------------------------------------------------------------------------- failures


def _fail_frames(frames: set[int], make: Callable[[str, PromptRequest], Exception], times: int | None = None):
    """A behaviour raising ``make(...)`` for the given frames (``times`` per frame, or always)."""
    count: dict[int, int] = {}
    lock = threading.Lock()

    def behaviour(backend, request, cancel):
        frame = _frame_of(request)
        if frame not in frames:
            return
        with lock:
            count[frame] = count.get(frame, 0) + 1
            if times is not None and count[frame] > times:
                return
        raise make(backend.name, request)
    return behaviour


def _gone(name: str, request: PromptRequest) -> Exception:
    return ServerUnavailable(f"server {name!r}: connection refused", server=name, prompt_id=request.prompt_id)


def test_a_dead_server_frame_moves_elsewhere_and_is_never_sent_back(tmp_path):
    first: list[int] = []

    def die_once(backend, request, cancel):
        if not first:
            first.append(_frame_of(request))
            raise _gone(backend.name, request)
    flaky = FakeBackend("flaky", 0.01, behaviour=die_once)
    good = FakeBackend("good", 0.03)
    pool = FakePool(flaky, good)
    kwargs: dict[str, Any] = {}
    events = _events(kwargs)
    res = run.animation_submit(WORKFLOW, pool=pool, frames="1-6", output=str(tmp_path / "o.####.png"),
                               **kwargs).result(30)
    assert res.ok
    lost = first[0]
    assert _content(res.frames[lost][0])["backend"] == "good"
    assert res.retries == {lost: ["flaky: server 'flaky': connection refused"]}
    assert [_frame_of(r) for r in flaky.requests].count(lost) == 1
    retried = [e for e in events if e.kind == "retried"]
    assert [(e.frame, e.data["from"], e.data["to"]) for e in retried] == [(lost, "flaky", "good")]
    assert "connection refused" in retried[0].data["reason"]
    assert ("good", frozenset({"flaky"})) in pool.acquires
    journal = read_journal(journal_path(str(tmp_path / "o.####.png")))
    assert [r["frame"] for r in journal.records if r["type"] == "retried"] == [lost]
    # every frame's output was fetched exactly once: nothing written twice
    assert flaky.fetches + good.fetches == 6


def test_retries_are_bounded_and_every_reason_is_kept(tmp_path):
    a = FakeBackend("a", behaviour=_fail_frames({1}, _gone))
    b = FakeBackend("b", behaviour=_fail_frames({1}, _gone))
    res = run.animation_submit(WORKFLOW, pool=FakePool(a, b), frames="1-2", retries=2,
                               output=str(tmp_path / "o.####.png")).result(30)
    assert set(res.failed) == {1} and 2 in res.frames
    assert len(a.requests) + len(b.requests) == 3 + 1  # 1 + 2 retries for frame 1, once for frame 2
    message = str(res.failed[1])
    assert "gave up after 3 attempts" in message and message.count("connection refused") == 3
    assert isinstance(res.failed[1], ServerUnavailable)
    assert len(res.retries[1]) == 3


def test_a_workflow_error_fails_the_frame_at_once_with_the_servers_message(tmp_path):
    def bad_input(name, request):
        frame = _frame_of(request)
        return WorkflowRejected(f"server {name!r}: node 10 LoadImage: image: file sh010.{frame}.png not found",
                                server=name, prompt_id=request.prompt_id)
    a = FakeBackend("a", behaviour=_fail_frames({2, 4}, bad_input))
    b = FakeBackend("b", behaviour=_fail_frames({2, 4}, bad_input))
    res = run.animation_submit(WORKFLOW, pool=FakePool(a, b), frames="1-6",
                               output=str(tmp_path / "o.####.png")).result(30)
    assert set(res.failed) == {2, 4}
    assert "sh010.2.png not found" in str(res.failed[2])
    assert sorted(_frame_of(r) for r in a.requests + b.requests) == [1, 2, 3, 4, 5, 6]  # no retry
    assert {1, 3, 5, 6} <= set(res.frames)
    assert not res.ok


def test_out_of_memory_moves_the_frame_to_another_gpu(tmp_path):
    def oom(name, request):
        return ExecutionFailed(f"server {name!r}: node 11 raised torch.OutOfMemoryError", node_id="11",
                               exception_type="torch.OutOfMemoryError", exception_message="CUDA out of memory",
                               server=name, prompt_id=request.prompt_id)
    small = FakeBackend("small", behaviour=_fail_frames({1, 2, 3}, oom))
    big = FakeBackend("big", 0.02)
    res = run.animation_submit(WORKFLOW, pool=FakePool(small, big), frames="1-3",
                               output=str(tmp_path / "o.####.png")).result(30)
    assert res.ok and res.by_server == {"big": 3}


def test_a_broken_workflow_stops_early_instead_of_sending_every_frame(tmp_path):
    def rejected(name, request):
        return WorkflowRejected(f"server {name!r}: node 11 KSampler: steps: value -1 smaller than min 1",
                                server=name, prompt_id=request.prompt_id)
    backends = [FakeBackend(n, 0.005, max_queue=1, behaviour=_fail_frames(set(range(1, 101)), rejected))
                for n in ("a", "b")]
    kwargs: dict[str, Any] = {}
    events = _events(kwargs)
    res = run.animation_submit(WORKFLOW, pool=FakePool(*backends), frames="1-100",
                               output=str(tmp_path / "o.####.png"), **kwargs).result(30)
    sent = sum(len(b.requests) for b in backends)
    assert len(res.failed) == 100 and sent <= 4
    unsent = [f for f in res.failed if "not sent" in str(res.failed[f])]
    assert len(unsent) >= 96
    assert "steps: value -1" in str(res.failed[unsent[0]])
    assert sum(e.kind == "failed" for e in events) == 100
    assert batch_progress_failed(res) == 100


def batch_progress_failed(res: BatchResult) -> int:
    return len(res.failed)


def test_no_early_stop_once_a_frame_has_succeeded(tmp_path):
    first_done = threading.Event()

    def broken(name, request):
        assert first_done.wait(10)
        return ExecutionFailed(f"server {name!r}: node 11 raised ValueError: bad latent", node_id="11",
                               exception_type="ValueError", exception_message="bad latent", server=name,
                               prompt_id=request.prompt_id)
    backend = FakeBackend("a", 0.002, max_queue=1, behaviour=_fail_frames({2, 3, 4}, broken))
    res = run.animation_submit(WORKFLOW, pool=FakePool(backend), frames="1-6", output=str(tmp_path / "o.####.png"),
                               on_event=lambda e: e.kind == "completed" and first_done.set()).result(30)
    assert set(res.failed) == {2, 3, 4} and {1, 5, 6} <= set(res.frames)
    assert not any("not sent" in str(e) for e in res.failed.values())


def test_no_server_can_run_it(tmp_path):
    pool = FakePool(FakeBackend("a"), missing=MissingNodes("no server can run this workflow: 'a' lacks KSampler",
                                                             missing={"KSampler"}))
    res = run.animation_submit(WORKFLOW, pool=pool, frames="1-5", output=str(tmp_path / "o.####.png")).result(10)
    assert len(res.failed) == 5 and all("lacks KSampler" in str(e) for e in res.failed.values())


def test_a_retry_waiting_for_another_server_does_not_block_fresh_frames(tmp_path):
    # frame 1 fails on "a"; "b" is busy for a while: fresh frames must keep flowing to "a".
    a = FakeBackend("a", 0.0, max_queue=1, behaviour=_fail_frames({1}, _gone, times=1))
    b = FakeBackend("b", 0.3, max_queue=1)
    res = run.animation_submit(WORKFLOW, pool=FakePool(a, b), frames="1-8",
                               output=str(tmp_path / "o.####.png")).result(30)
    assert res.ok and res.by_server["a"] >= 5


def test_output_fetch_failure_is_retried(tmp_path):
    class BadFetch(FakeBackend):
        def run_prompt(self, request, *, on_event, cancel):
            result = super().run_prompt(request, on_event=on_event, cancel=cancel)

            def broken(dest: Path) -> None:
                raise ServerUnavailable(f"server {self.name!r}: GET /view refused", server=self.name)
            result.outputs[0].fetch = broken
            return result
    res = run.animation_submit(WORKFLOW, pool=FakePool(BadFetch("bad"), FakeBackend("good", 0.05)), frames="1-2",
                               output=str(tmp_path / "o.####.png")).result(30)
    assert res.ok and res.by_server == {"good": 2}
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*.part"))


# --------------------------------------------------------------------------- cancel, resume


def test_cancel_drops_unsent_frames_and_stops_running_ones(tmp_path):
    started = threading.Event()

    def signal(backend, request, cancel):
        started.set()
    backend = FakeBackend("a", 5.0, max_queue=2, behaviour=signal)
    kwargs: dict[str, Any] = {}
    events = _events(kwargs)
    batch = run.animation_submit(WORKFLOW, pool=FakePool(backend), frames="1-10", output=str(tmp_path / "o.#.png"),
                                 **kwargs)
    assert started.wait(10)
    batch.cancel()
    res = batch.result(timeout=10)
    # the running frames (5 s each) were stopped, not waited for: none of them finished
    assert len(res.cancelled) == 10 and not res.frames and not res.failed
    assert len(backend.requests) <= 2
    assert sum(e.kind == "cancelled" for e in events) == 10
    assert all(t.state is JobState.CANCELLED for t in batch.tasks())


def test_resume_renders_only_what_is_missing(tmp_path):
    out = str(tmp_path / "o.####.png")
    broken = FakeBackend("a", behaviour=_fail_frames({3, 5}, lambda n, r: WorkflowRejected(
        f"frame-specific problem {_frame_of(r)}", server=n)))
    # every frame is the same render here: the result cache would serve them, and resume is under test
    first = run.animation_submit(WORKFLOW, pool=FakePool(broken), frames="1-6", output=out, cache=False).result(30)
    assert set(first.failed) == {3, 5}
    (tmp_path / "o.0006.png").unlink()  # an artist deleted a frame since
    fixed = FakeBackend("b")
    second = run.animation_submit(WORKFLOW, pool=FakePool(fixed), frames="1-6", output=out, resume=True,
                                  cache=False).result(30)
    assert second.ok
    assert sorted(_frame_of(r) for r in fixed.requests) == [3, 5, 6]
    assert second.skipped == [1, 2, 4]
    assert sorted(second.frames) == [1, 2, 3, 4, 5, 6]
    assert second.by_server == {"b": 3}


def test_resume_refuses_a_changed_workflow(tmp_path):
    out = str(tmp_path / "o.####.png")
    run.animation_submit(WORKFLOW, pool=FakePool(FakeBackend("a")), frames="1-2", output=out).result(30)
    with pytest.raises(ComfyClusterError, match="cannot resume"):
        run.animation_submit(WORKFLOW, pool=FakePool(FakeBackend("a")), frames="1-2", output=out,
                             values={"11.seed": 99}, resume=True)


# --------------------------------------------------------------------------- iterations, single jobs


def test_iterations_get_different_seeds_and_names(tmp_path):
    backend = FakeBackend("a")
    batch = run.iteration_submit(WORKFLOW, pool=FakePool(backend), count=4, seed_mode="increment",
                                 output=str(tmp_path / "look_v{iteration:02d}.png"))
    res = batch.result(30)
    assert res.ok
    assert batch.seeds == {1: {"11.seed": 5}, 2: {"11.seed": 6}, 3: {"11.seed": 7}, 4: {"11.seed": 8}}
    assert res.frames[2] == [tmp_path / "look_v02.png"]
    sent = {int(r.label.split()[-1]): r.workflow["11"]["inputs"]["seed"] for r in backend.requests}
    assert sent == {1: 5, 2: 6, 3: 7, 4: 8}
    assert [r.label for r in backend.requests][0].startswith("iteration ")


def test_iteration_names_may_mix_the_iteration_and_a_frame_token(tmp_path):
    res = run.iteration_submit(WORKFLOW, pool=FakePool(FakeBackend("a")), count=2, seed_mode="increment",
                               output=str(tmp_path / "look_{iteration}.####.png")).result(30)
    assert res.ok and res.frames[2] == [tmp_path / "look_2.0002.png"]


def test_random_iterations_differ_and_keep_their_seed_on_retry(tmp_path):
    flaky = FakeBackend("flaky", behaviour=_fail_frames({2}, _gone))
    good = FakeBackend("good", 0.02)
    batch = run.iteration_submit(WORKFLOW, pool=FakePool(flaky, good), count=5, output=str(tmp_path / "v####.png"))
    assert batch.result(30).ok
    seeds = [batch.seeds[i]["11.seed"] for i in range(1, 6)]
    assert len(set(seeds)) == 5
    sent_for_2 = {r.workflow["11"]["inputs"]["seed"] for r in flaky.requests + good.requests
                  if r.label == "iteration 2"}
    assert sent_for_2 == {batch.seeds[2]["11.seed"]}


def test_iterations_without_a_seed_refuse_unless_fixed(tmp_path):
    wf = {k: v for k, v in WORKFLOW.items() if k != "11"}
    wf["12"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "comp"}}
    with pytest.raises(WorkflowError, match="all 3 iterations would be identical"):
        run.iteration_submit(wf, pool=FakePool(FakeBackend("a")), count=3, output=str(tmp_path / "v{iteration}.png"))
    backend = FakeBackend("a")
    res = run.iteration_submit(wf, pool=FakePool(backend), count=3, seed_mode="fixed",
                               output=str(tmp_path / "v{iteration}.png")).result(30)
    assert res.ok and sorted(p.name for files in res.frames.values() for p in files) == ["v1.png", "v2.png", "v3.png"]
    # copies on purpose, yet every prompt is distinct: no server returns a cached old file
    assert len({r.workflow["12"]["inputs"]["filename_prefix"] for r in backend.requests}) == 3


def test_single_job_result_and_failure(tmp_path):
    backend = FakeBackend("a", 0.01)
    (tmp_path / "a#.png").write_bytes(_png({}))
    job = run.submit(WORKFLOW, pool=FakePool(backend), inputs={"LoadImage.image": str(tmp_path / "a#.png")},
                     output_dir=tmp_path / "out")
    result = job.result(timeout=10)
    assert result.server == "a" and result.prompt_id == backend.requests[0].prompt_id
    assert result.outputs == [tmp_path / "out" / "out_00000_.png"]
    assert job.state is JobState.DONE
    # a single job takes its input path literally, '#' included
    assert backend.requests[0].inputs == {("10", "image"): tmp_path / "a#.png"}
    assert backend.requests[0].label == "job"

    failing = FakeBackend("b", behaviour=lambda b, r, c: (_ for _ in ()).throw(
        WorkflowRejected("server 'b': node 11: bad", server="b")))
    with pytest.raises(WorkflowRejected, match="node 11: bad"):
        run.submit(WORKFLOW, pool=FakePool(failing), output_dir=tmp_path).result(timeout=10)


def test_single_job_cancel(tmp_path):
    started = threading.Event()
    backend = FakeBackend("a", 5.0, behaviour=lambda b, r, c: started.set())
    job = run.submit(WORKFLOW, pool=FakePool(backend), output_dir=tmp_path)
    assert started.wait(10)
    job.cancel()
    with pytest.raises(Cancelled):
        job.result(timeout=10)
    assert job.state is JobState.CANCELLED


def test_bad_arguments_fail_before_anything_is_sent(tmp_path):
    pool = FakePool(FakeBackend("a"))
    with pytest.raises(BindingError, match="Plate"):
        run.animation_submit(WORKFLOW, pool=pool, frames="1-2", output=str(tmp_path / "o.#.png"),
                             inputs={"Plates.image": "x.####.png"})
    with pytest.raises(ValueError, match="no frame token"):
        run.animation_submit(WORKFLOW, pool=pool, frames="1-2", output=str(tmp_path / "o.png"))
    with pytest.raises(ValueError, match="frame range"):
        run.animation_submit(WORKFLOW, pool=pool, frames="10-1", output=str(tmp_path / "o.#.png"))
    assert pool.acquires == []


def test_a_failing_event_callback_does_not_break_the_render(tmp_path):
    def explode(event):
        raise RuntimeError("UI bug")
    res = run.animation_submit(WORKFLOW, pool=FakePool(FakeBackend("a")), frames="1-3",
                               output=str(tmp_path / "o.#.png"), on_event=explode).result(30)
    assert res.ok


def test_result_timeout_says_how_far_it_got(tmp_path):
    batch = run.animation_submit(WORKFLOW, pool=FakePool(FakeBackend("a", 2.0, max_queue=1)), frames="1-3",
                                 output=str(tmp_path / "o.#.png"))
    with pytest.raises(TimeoutError, match="0/3 done"):
        batch.result(timeout=0.05)
    batch.cancel()
    assert batch.wait(10)


def test_missing_and_folder_inputs_are_listed_at_once_and_nothing_is_sent(tmp_path):
    """A local problem is reported as one, before any server is asked (item: inputs checked first)."""
    pool = FakePool(FakeBackend("a"))
    pattern = tmp_path / "plates" / "sh010.%04d.png"
    _plates(pattern, [1, 3])
    (tmp_path / "plates" / "sh010.0004.png").mkdir()
    with pytest.raises(MissingInputs) as excinfo:
        run.animation_submit(WORKFLOW, pool=pool, frames="1-5", output=str(tmp_path / "o.####.png"),
                             inputs={"Plate.image": str(pattern)})
    assert pool.acquires == [] and not journal_path(str(tmp_path / "o.####.png")).exists()
    problems = excinfo.value.problems
    assert [p.split(": ", 1)[1] for p in problems] == [
        f"{tmp_path}/plates/sh010.0002.png: not found",
        f"{tmp_path}/plates/sh010.0004.png: is a folder, not a file",
        f"{tmp_path}/plates/sh010.0005.png: not found"]
    assert "3 input file(s) missing or unreadable" in str(excinfo.value)
    with pytest.raises(MissingInputs, match="a.png: not found"):
        run.submit(WORKFLOW, pool=pool, inputs={"LoadImage.image": str(tmp_path / "a.png")}, output_dir=tmp_path)
    assert pool.acquires == []


def test_every_file_output_node_must_deliver(tmp_path):
    """Two SaveImage nodes, a server that reports files of one: a failed attempt, retried, then failed."""
    wf = {**WORKFLOW, "13": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "b"}}}
    backend = FakeBackend("a")
    res = run.animation_submit(wf, pool=FakePool(backend), frames="1-2", output=str(tmp_path / "o.####.png"),
                               retries=1).result(30)
    assert sorted(res.failed) == [1, 2] and len(backend.requests) == 4
    assert "output node(s) 13 SaveImage delivered no file" in str(res.failed[1])
    assert not list(tmp_path.glob("o.*.png"))


def test_completed_events_split_run_time_from_waiting(tmp_path):
    """The server's run time (``result.elapsed``) and the wait around it are reported apart."""
    held = threading.Event()
    backend = FakeBackend("a", 0.0, behaviour=lambda b, r, c: held.wait(0.3))  # 0.3 s queued, 0 s run
    kwargs: dict[str, Any] = {}
    events = _events(kwargs)
    assert run.animation_submit(WORKFLOW, pool=FakePool(backend), frames="1", output=str(tmp_path / "o.#.png"),
                                **kwargs).result(30).ok
    done = [e for e in events if e.kind == "completed"][0].data
    assert done["run_seconds"] == 0.0
    assert done["wait_seconds"] == done["seconds"] >= 0.3


def _times_out(backend: FakeBackend, request: PromptRequest, cancel: threading.Event) -> None:
    raise ServerTimeout(f"server {backend.name!r}: POST /prompt timed out after 30 s", server=backend.name)


def test_a_backend_whose_attempts_keep_timing_out_is_out_of_rotation_for_the_batch(tmp_path):
    half = FakeBackend("half", max_queue=1, behaviour=_times_out)
    good = FakeBackend("good", 0.01, max_queue=1)
    kwargs: dict[str, Any] = {}
    events = _events(kwargs)
    batch = run.animation_submit(WORKFLOW, pool=FakePool(half, good), frames="1-8", output=str(tmp_path / "o.#.png"),
                                 retries=3, **kwargs)
    res = batch.result(30)
    assert res.ok and res.by_server == {"good": 8}
    assert len(half.requests) == rotation.STRIKES
    assert list(batch.benched) == ["half"] and "timed out" in batch.benched["half"]
    assert [e.data["server"] for e in events if e.kind == "benched"] == ["half"]


def test_when_every_backend_is_out_of_rotation_the_batch_ends_at_once(tmp_path):
    half = FakeBackend("half", max_queue=1, behaviour=_times_out)
    batch = run.animation_submit(WORKFLOW, pool=FakePool(half), frames="1-5", output=str(tmp_path / "o.#.png"),
                                 retries=5)   # the default wait_for_server (300 s) does not apply: nothing can change
    res = batch.result(30)
    assert sorted(res.failed) == [1, 2, 3, 4, 5] and len(half.requests) == rotation.STRIKES
    assert isinstance(res.failed[5], NoBackendAvailable)
    assert "half: out of rotation for this batch: 2 attempts in a row timed out" in str(res.failed[5])


class FakeRunPod(FakeBackend):
    kind = "runpod"

    def __init__(self, blocked_reason: str | None) -> None:
        super().__init__("runpod")
        self.blocked_reason = blocked_reason

    @property
    def state(self) -> Any:
        from comfy_cluster.backend import ServerState

        return ServerState.ONLINE


def test_nothing_able_to_take_work_says_why_then_ends_after_wait_for_server(tmp_path):
    down = FakeBackend("gpu-01")
    down.online = False
    broke = FakeRunPod("daily budget $5.00 reached: $5.01 spent today, next job est. $0.02")
    pool = FakePool(down, broke)
    broke.online = False   # the fake pool hands out nothing; the reasons come from the batch
    batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-3", output=str(tmp_path / "o.#.png"),
                                 wait_for_server=1.0)
    assert wait_until(lambda: batch.blocked or batch.done, what="the batch says why nothing runs")
    res = batch.result(30)
    assert sorted(res.failed) == [1, 2, 3] and pool.acquires == []
    message = str(res.failed[1])
    assert message.splitlines() == [
        "no backend could take the work (waited 1 s):",
        "  gpu-01: unavailable",
        "  runpod: online (daily budget $5.00 reached: $5.01 spent today, next job est. $0.02)"]
    with pytest.raises(ValueError, match="wait_for_server"):
        run.animation_submit(WORKFLOW, pool=pool, frames="1", output=str(tmp_path / "x.#.png"), wait_for_server=-1)
