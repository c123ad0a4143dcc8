"""The benchmark scenarios of issue 7, each returning ``Metric`` rows.

Emulated servers always run in child processes (``EmulatorProcess``), so the client's CPU
(``time.process_time()`` of this process) is the library's alone. Baselines are written
here with plain ``ComfyClient`` / ``PromptTracker`` calls, not with the library's dispatcher.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
import requests

from bench.cpu import thread_cpu
from comfy_cluster import run
from comfy_cluster.backend import ServerState
from comfy_cluster.batch import BatchResult
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import RunPodConfig, ServerConfig
from comfy_cluster.emulator.process import EmulatorProcess
from comfy_cluster.jobs import BatchEvent, journal_path, read_journal
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.runpod import RunPodEndpoint
from comfy_cluster.server import PUSHED_POLL_S
from comfy_cluster.tracker import PromptTracker

#: One cheap frame: an 8x8 image, saved. The simulated GPU time is the emulator's seconds_per_job.
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x204060}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}

#: A frame with a real input: the frame's own PNG is uploaded, loaded, inverted and saved.
UPLOAD_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
}


def write_plates(folder: Path, frames: int) -> str:
    """One distinct 16x16 PNG per frame (so every frame uploads its own file); the frame pattern."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for frame in range(1, frames + 1):
        Image.new("RGB", (16, 16), (frame % 256, frame // 256 % 256, 7)).save(folder / f"plate.{frame:04d}.png")
    return str(folder / "plate.####.png")


@dataclass
class Metric:
    """One row of RESULTS.md: the median of ``runs``, its goal and the baselines of the same run."""

    scenario: str
    metric: str
    unit: str
    runs: list[float]
    goal: str = ""
    ok: bool | None = None
    baselines: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def value(self) -> float:
        return statistics.median(self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "metric": self.metric, "value": round(self.value, 4), "unit": self.unit,
                "runs": [round(v, 4) for v in self.runs], "goal": self.goal, "ok": self.ok,
                "baselines": {k: round(v, 4) for k, v in self.baselines.items()}, "note": self.note}


# --------------------------------------------------------------------------- plumbing


def start_servers(speeds: Sequence[float], base: Path, prefix: str = "gpu") -> list[EmulatorProcess]:
    procs = [EmulatorProcess(seconds_per_job=s, name=f"{prefix}-{i + 1:02d}", base_dir=base / f"{prefix}-{i + 1:02d}")
             for i, s in enumerate(speeds)]
    with ThreadPoolExecutor(len(procs)) as ex:
        list(ex.map(lambda p: p.start(timeout=60), procs))
    return procs


def stop_servers(procs: Sequence[EmulatorProcess]) -> None:
    for proc in procs:
        proc.stop()


def make_pool(procs: Sequence[EmulatorProcess], poll: float = 1.0, runpod: Any = None,
              **kw: Any) -> ComfyUIServerPool:
    """A started pool over ``procs`` (and a RunPod backend), returned once every server is online."""
    configs = [ServerConfig(name=p.name, ip="127.0.0.1", port=port, **kw)
               for p in procs for port in (p.ports or [p.port])]
    pool = ComfyUIServerPool(configs, poll_interval=poll, environ={}, runpod=runpod).start()
    deadline = time.monotonic() + 60
    while not all(s.state in (ServerState.ONLINE, ServerState.BUSY) for s in pool.servers):
        if time.monotonic() > deadline:
            pool.close()
            raise RuntimeError("bench: not every emulated server came online within 60 s")
        pool.wait_for_change(0.5)
    return pool


def render(pool: ComfyUIServerPool, frames: int, out: Path, workflow: dict = WORKFLOW,
           **kw: Any) -> tuple[float, float, BatchResult]:
    """(wall seconds, client CPU seconds, result) of one animation_submit of ``frames`` frames."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    kw.setdefault("cache", False)  # every run renders: the result cache would time file copies
    batch = run.animation_submit(workflow, pool=pool, frames=f"1-{frames}", output=out / "f.####.png", **kw)
    result = batch.result(timeout=3600)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if result.failed or len(result.frames) != frames:
        raise RuntimeError(f"bench: batch did not render every frame: {len(result.frames)}/{frames}, "
                           f"failed {sorted(result.failed)[:10]}")
    return wall, cpu, result


def render_on(procs: Sequence[EmulatorProcess], frames: int, out: Path, *,
              runpod: Any = None, **kw: Any) -> tuple[float, float, BatchResult]:
    """``render`` on a fresh pool over ``procs`` (a new pool per run: no warm caches carry over)."""
    pool = make_pool(procs, poll=1.0, runpod=runpod)
    try:
        return render(pool, frames, out, **kw)
    finally:
        pool.close()


# --------------------------------------------------------------------------- baselines


class _Direct:
    """One server driven with plain client calls: submit, follow over the websocket, download."""

    def __init__(self, url: str, name: str, out: Path) -> None:
        self.client = ComfyClient(url, name=name)
        self.tracker = PromptTracker(self.client, uuid.uuid4().hex).start()
        self.tracker.wait_connected(5)
        self.out = out

    def submit(self, frame: int) -> Any:
        graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in WORKFLOW.items()}
        graph["2"]["inputs"]["filename_prefix"] = f"base/{uuid.uuid4().hex[:8]}_{frame}"
        pid = uuid.uuid4().hex
        watch = self.tracker.watch(pid)
        self.client.submit(graph, client_id=self.tracker.client_id, prompt_id=pid)
        return frame, watch

    def finish(self, frame: int, watch: Any) -> None:
        entry = watch.wait(600)
        for image in entry.images:
            self.client.download(image, self.out / f"f.{frame:04d}.png")

    def close(self) -> None:
        self.tracker.stop()
        self.client.close()


def _baseline(procs: Sequence[EmulatorProcess], frames: int, out: Path, assign: Callable[[int, list[_Direct]], _Direct],
              sequential: bool = False) -> float:
    directs = [_Direct(p.url, p.name, out) for p in procs]
    try:
        started = time.perf_counter()
        if sequential:
            for frame in range(1, frames + 1):
                directs[0].finish(*directs[0].submit(frame))
        else:
            placed = [(d, d.submit(f)) for f in range(1, frames + 1) for d in (assign(f, directs),)]
            by_server: dict[int, list] = {}
            for d, sub in placed:
                by_server.setdefault(id(d), []).append((d, sub))
            with ThreadPoolExecutor(len(directs)) as ex:   # each server's frames finish in its own order
                list(ex.map(lambda items: [d.finish(*sub) for d, sub in items], by_server.values()))
        return time.perf_counter() - started
    finally:
        for d in directs:
            d.close()


def _round_robin(frame: int, directs: list[_Direct]) -> _Direct:
    return directs[frame % len(directs)]


def _shortest_queue(frame: int, directs: list[_Direct]) -> _Direct:
    return min(directs, key=lambda d: d.client.queue_remaining())


# --------------------------------------------------------------------------- scenarios


def emulator_job_overhead(base: Path, jobs: int = 40) -> float:
    """Seconds one zero-work job costs end to end through the emulator (submit, run, download)."""
    procs = start_servers([0.0], base, prefix="overhead")
    out = base / "overhead-out"
    out.mkdir()
    try:
        seconds = _baseline(procs, jobs, out, _round_robin, sequential=True)
    finally:
        stop_servers(procs)
    return seconds / jobs


def throughput(base: Path, runs: int, frames: int = 240, speeds: Sequence[float] = (0.1, 0.2, 0.2, 0.4)) -> list[Metric]:
    """Scenario 1: efficiency = ideal makespan / measured makespan on servers of different speeds."""
    ideal = frames / sum(1.0 / s for s in speeds)
    overhead = emulator_job_overhead(base)
    procs = start_servers(speeds, base, prefix="tp")
    try:
        measured = []
        shares: list[dict[str, int]] = []
        for i in range(runs):
            wall, _, result = render_on(procs, frames, base / f"tp-{i}")
            measured.append(wall)
            shares.append(result.by_server)
        seq = _baseline(procs, frames, _fresh(base, "seq"), _round_robin, sequential=True)
        rr = _baseline(procs, frames, _fresh(base, "rr"), _round_robin)
        sq = _baseline(procs, frames, _fresh(base, "sq"), _shortest_queue)
    finally:
        stop_servers(procs)
    # the emulator's own fixed cost per job bounds what any client can reach
    with_overhead = frames / sum(1.0 / (s + overhead) for s in speeds)
    note = (f"{frames} frames, seconds per frame {list(speeds)}; ideal makespan {ideal:.2f} s; emulator fixed cost "
            f"{overhead * 1e3:.1f} ms/job (ideal with it: {with_overhead:.2f} s, efficiency ceiling "
            f"{ideal / with_overhead:.3f}); frames per server, last run: {shares[-1]}")
    eff = [ideal / m for m in measured]
    ceiling = [with_overhead / m for m in measured]
    return [
        Metric("1 throughput", "efficiency (ideal / measured makespan)", "ratio", eff, ">= 0.95",
               statistics.median(eff) >= 0.95,
               {"one server, in sequence": ideal / seq, "round-robin": ideal / rr,
                "shortest queue at submit": ideal / sq}, note),
        Metric("1 throughput", "efficiency against the emulator's own per-job cost", "ratio", ceiling, "", None,
               note="ideal makespan with the emulator's measured fixed cost per job added / measured makespan: "
                    "what the dispatcher loses on its own"),
        Metric("1 throughput", "makespan", "s", measured, f"ideal {ideal:.2f} s", None,
               {"one server, in sequence": seq, "round-robin": rr, "shortest queue at submit": sq}),
    ]


def _cpu_of(procs: Sequence[psutil.Process]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy, over all its cores (every user's processes)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def _fresh(base: Path, name: str) -> Path:
    folder = base / f"{name}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    return folder


def dispatch_overhead(base: Path, runs: int, frames: int = 2000, servers: int = 4) -> list[Metric]:
    """Scenario 2: zero-work frames, each uploading its own input PNG: frames per second end to
    end and client CPU per frame."""
    procs = start_servers([0.0] * servers, base, prefix="zero")
    plates = write_plates(base / "plates", frames)
    job = {"workflow": UPLOAD_WORKFLOW, "inputs": {"1.image": plates}}
    fps, cpu_ms, server_ms, busy = [], [], [], []
    servers_cpu = [psutil.Process(p.pid) for p in procs]
    try:
        for i in range(runs):
            server0, machine0 = _cpu_of(servers_cpu), machine_busy()
            wall, cpu, _ = render_on(procs, frames, base / f"zero-{i}", **job)
            fps.append(frames / wall)
            cpu_ms.append(cpu * 1e3 / frames)
            server_ms.append((_cpu_of(servers_cpu) - server0) * 1e3 / frames)
            busy.append((machine_busy() - machine0) / wall)
        pool = make_pool(procs, poll=1.0)
        try:
            split = _thread_split(lambda: render(pool, frames, base / "zero-split", **job), frames)
        finally:
            pool.close()
    finally:
        stop_servers(procs)
    note = (f"{frames} frames over {servers} zero-work servers (separate processes), max_queue 2; each frame "
            f"uploads its own 16x16 PNG (LoadImage -> ImageInvert -> SaveImage) and downloads the result. Client "
            f"CPU per frame by kind of thread (the kernel's per-thread CPU clocks, one extra batch): {split}. "
            f"Meanwhile the {servers} emulated servers used {statistics.median(server_ms):.2f} ms of CPU per frame "
            f"and the whole machine (other users included) kept {statistics.median(busy):.2f} of its "
            f"{os.cpu_count()} cores busy")
    return [Metric("2 dispatch overhead", "frames per second", "frames/s", fps, ">= 200", statistics.median(fps) >= 200,
                   note=note),
            Metric("2 dispatch overhead", "client CPU per frame", "ms", cpu_ms, "<= 4", statistics.median(cpu_ms) <= 4)]


def _thread_split(work: Callable[[], Any], frames: int) -> str:
    """How the client's CPU over ``work`` divides over its kinds of threads, per frame."""
    per_kind = thread_cpu(work)
    return "; ".join(f"{label} {cpu * 1e3 / frames:.2f} ms" for label, cpu in per_kind.items())


def monitoring(runs: int, count: int = 100, window: float = 60.0) -> list[Metric]:
    """Scenario 3: the pool's monitor over ``count`` servers whose queues keep changing
    (bench/bench_pool.py): status pushed over one socket per server, /queue polled slowly."""
    from bench import bench_pool

    results = [bench_pool.run(count, 1.0, window, 10_000) for _ in range(runs)]
    shares = [r["monitor_cpu_share_of_one_core"] * 100 for r in results]
    push_median = [r["push_median_ms"] for r in results]
    push_max = [r["push_max_ms"] for r in results]
    median = [r["selection_median_ms"] for r in results]
    p99 = [r["selection_p99_ms"] for r in results]
    note = (f"bench/bench_pool.py: {count} emulated servers in one child process, a prompt to a random one every "
            f"0.1 s from another; poll interval 1 s, {PUSHED_POLL_S:g} s while a server's status socket is up. "
            f"Push latency: from before the POST /prompt (or /interrupt) to the cached count changing, "
            f"{results[-1]['push_samples']} samples per run; selection = acquire + release of a slot, "
            f"10,000 times, with the monitor running. Client CPU by kind of thread, last run (the kernel's per-thread CPU clocks, % of "
            f"one core, sampled every 1 s, the sampler's own CPU left out of the share; other = the bench's main "
            f"thread): "
            + "; ".join(f"{k} {v:.2f}" for k, v in results[-1]["monitor_cpu_pct_by_thread"].items()))
    return [Metric("3 monitoring", f"client CPU, {count} servers, queues changing, for {window:g} s", "% of one core",
                   shares, "< 2", statistics.median(shares) < 2, note=note),
            Metric("3 monitoring", "pushed queue change seen by the scheduler, median", "ms", push_median, "< 100",
                   statistics.median(push_median) < 100),
            Metric("3 monitoring", "pushed queue change seen by the scheduler, max", "ms", push_max, "< 100",
                   max(push_max) < 100),
            Metric("3 monitoring", f"selection latency, median, {count} servers", "ms", median, "< 1",
                   statistics.median(median) < 1),
            Metric("3 monitoring", f"selection latency, p99, {count} servers", "ms", p99, "< 1",
                   statistics.median(p99) < 1)]


def memory(base: Path, frames: int = 10_000, servers: int = 4) -> list[Metric]:
    """Scenario 4: peak RSS growth of the client over a big zero-work batch."""
    procs = start_servers([0.0] * servers, base, prefix="mem")
    me = psutil.Process()
    try:
        pool = make_pool(procs, poll=1.0)
        try:
            baseline = me.memory_info().rss
            peak = [baseline]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], me.memory_info().rss)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                wall, _, _ = render(pool, frames, base / "mem-out")
            finally:
                stop.set()
                sampler.join()
            peak[0] = max(peak[0], me.memory_info().rss)
        finally:
            pool.close()
    finally:
        stop_servers(procs)
    growth = (peak[0] - baseline) / 2**20
    return [Metric("4 memory", f"peak RSS growth, {frames} frames", "MB", [growth], "< 100", growth < 100,
                   note=f"sampled every 50 ms with psutil; batch took {wall:.1f} s")]


def failover(base: Path, runs: int, frames: int = 120, speeds: Sequence[float] = (0.1, 0.1, 0.1, 0.1),
             poll: float = 1.0) -> list[Metric]:
    """Scenario 5: one of 4 servers SIGKILLed at 50 %: time until its frames run elsewhere,
    frames lost, frames duplicated."""
    recovery, lost, duplicated = [], [], []
    for i in range(runs):
        procs = start_servers(speeds, base, prefix=f"fo{i}")
        victim = procs[1]
        try:
            pool = make_pool(procs, poll=poll)
            events: list[BatchEvent] = []
            lock = threading.Lock()
            killed_at: list[float] = []
            completed = [0]

            def on_event(event: BatchEvent) -> None:
                with lock:
                    events.append(event)
                    if event.kind == "completed":
                        completed[0] += 1
                        if completed[0] == frames // 2 and not killed_at:
                            victim.kill()
                            killed_at.append(time.time())

            out = base / f"fo-out-{i}"
            try:
                _, _, result = render(pool, frames, out, on_event=on_event, retries=3)
            finally:
                pool.close()
        finally:
            stop_servers(procs)
        kill = killed_at[0]
        # frames that were on the victim when it died: their next "submitted" elsewhere
        on_victim: dict[int, float] = {}
        moved: dict[int, float] = {}
        for ev in events:
            if ev.kind == "submitted" and ev.data.get("server") == victim.name and ev.time <= kill:
                on_victim[ev.frame] = ev.time
            if ev.kind in ("completed", "failed") and ev.frame in on_victim and ev.time <= kill:
                on_victim.pop(ev.frame, None)
            if ev.kind == "submitted" and ev.time > kill and ev.frame in on_victim and ev.frame not in moved:
                moved[ev.frame] = ev.time
        if on_victim and set(moved) != set(on_victim):
            raise RuntimeError(f"bench: frames {sorted(set(on_victim) - set(moved))} never moved off the killed server")
        recovery.append(max(moved.values()) - kill if moved else 0.0)
        files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        done = [r for r in read_journal(journal_path(out / "f.####.png")).records if r["type"] == "done"]
        lost.append(float(frames - len(set(files))))
        extra_done = len(done) - len({int(r["frame"]) for r in done})
        extra_completed = sum(1 for e in events if e.kind == "completed") - frames
        duplicated.append(float(max(extra_done, extra_completed)))
    job = max(speeds)
    goal = 2 * poll + job
    note = (f"{frames} frames over 4 servers ({list(speeds)} s/frame), poll {poll:g} s, victim SIGKILLed when "
            f"{frames // 2} frames were done; goal = 2 x poll + one job = {goal:.1f} s")
    return [Metric("5 failover", "seconds from kill to its frames running elsewhere", "s", recovery,
                   f"<= {goal:.1f}", statistics.median(recovery) <= goal, note=note),
            Metric("5 failover", "frames lost", "frames", lost, "0", max(lost) == 0),
            Metric("5 failover", "frames duplicated", "frames", duplicated, "0", max(duplicated) == 0)]


RUNPOD_KEY = "bench-runpod-key"
RUNPOD_ENDPOINT = "bench-overflow"


def start_runpod(base: Path, workers: int, seconds_per_job: float, cold_start: float) -> tuple[subprocess.Popen, str]:
    """The RunPod emulator in its own process; returns it and its URL once /health answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(base / "runpod-emulator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfy_cluster.emulator.runpod", "--port", str(port), "--workers", str(workers),
         "--endpoint-id", RUNPOD_ENDPOINT, "--seconds-per-job", str(seconds_per_job), "--cold-start", str(cold_start)],
        env={**os.environ, "RUNPOD_API_KEY": RUNPOD_KEY}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/v2/{RUNPOD_ENDPOINT}/health", timeout=2,
                            headers={"Authorization": f"Bearer {RUNPOD_KEY}"}).ok:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"bench: the RunPod emulator did not come up (see {base / 'runpod-emulator.log'})")


def overflow(base: Path, runs: int, frames: int = 60, local: Sequence[float] = (0.4, 0.4), workers: int = 4,
             cloud_seconds: float = 0.4, cold_start: float = 1.0) -> list[Metric]:
    """Scenario 6: local servers saturated, the overflow bursts to an emulated RunPod endpoint,
    against the same local servers alone, measured in the same run."""
    procs = start_servers(local, base, prefix="ov")
    cloud, url = start_runpod(base, workers, cloud_seconds, cold_start)
    alone, burst, cost, on_runpod = [], [], [], []
    try:
        for i in range(runs):
            wall, _, _ = render_on(procs, frames, base / f"ov-local-{i}")
            alone.append(wall)
            ledger = CostLedger(base / f"ov-ledger-{i}", environ={})
            cfg = RunPodConfig(endpoint_id=RUNPOD_ENDPOINT, base_url=f"{url}/v2/{RUNPOD_ENDPOINT}",
                               max_concurrent=workers, overflow_after_s=0.5, status_poll_min=0.1,
                               status_poll_max=1.0)
            endpoint = RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": RUNPOD_KEY}, ledger=ledger, poll_interval=1.0)
            wall, _, result = render_on(procs, frames, base / f"ov-burst-{i}", runpod=endpoint)
            burst.append(wall)
            cost.append(ledger.spend_today())
            on_runpod.append(result.by_server.get(endpoint.name, 0))
    finally:
        cloud.kill()
        cloud.wait(timeout=10)
        stop_servers(procs)
    note = (f"{frames} frames; local: {len(local)} servers at {list(local)} s per frame (max_queue 2); RunPod: "
            f"{workers} workers at {cloud_seconds} s per job plus a {cold_start} s cold start, overflow_after_s 0.5, "
            f"price ${cfg.price_per_second}/s of executionTime; frames sent to RunPod per run: {on_runpod}")
    speedup = [a / b for a, b in zip(alone, burst)]
    return [
        Metric("6 overflow", "makespan, local saturated + RunPod overflow", "s", burst,
               f"< local alone ({statistics.median(alone):.1f} s)", statistics.median(burst) < statistics.median(alone),
               {"local alone": statistics.median(alone)}, note),
        Metric("6 overflow", "speed-up against local alone", "x", speedup, "> 1", statistics.median(speedup) > 1),
        Metric("6 overflow", "RunPod cost of the overflow", "USD", cost, "", None),
    ]


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="comfy-bench-")
