"""Scenario 8 (issue 12): several artists share one cluster at once.

``clients`` client processes (each its own ``ComfyUIServerPool`` and client id, as on
``clients`` workstations) each render ``frames`` frames, all started together, over
emulated servers of mixed speed (their own child processes). Two modes, same servers:

- ``cluster``: each client runs ``comfy_cluster.animation_submit`` (free slots, at most
  ``max_queue`` of its prompts per server, the next frame to the predicted-first finish);
- ``submit-all`` (the baseline): each client queues all its prompts at submit time,
  round-robin over the servers, with plain ``ComfyClient`` calls, then waits and downloads.

Fair-share makespan: with ``C`` clients of ``F`` frames each and servers taking ``s_i``
seconds per frame, the cluster's throughput is ``T = sum(1 / s_i)`` frames per second, so
the whole work ``C * F`` needs at least ``C * F / T`` seconds. Shared equally, each client
gets ``T / C`` and its ``F`` frames take ``F / (T / C) = C * F / T``: that is every client's
fair-share makespan (emulator overhead per job not included). A client's makespan runs from
the common start signal to its last frame on disk. Goal: every client's makespan <= 1.15 x
fair share; none starves: no client waits longer than 10 % of the fair share for its next
finished frame (the first one included).

Run alone: ``python -m bench.bench_sharing [--frames 120 --runs 1]`` prints the metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import comfy_cluster as cc
from bench.scenarios import WORKFLOW, Metric, _Direct, start_servers, stop_servers

SPEEDS = (0.1, 0.2, 0.2, 0.4)
MODES = ("cluster", "submit-all")
READY_TIMEOUT = 120.0
MAKESPAN_GOAL = 1.15
STARVE_SHARE = 0.10


# --------------------------------------------------------------------------- the client process


def _cluster_client(servers: list[dict], frames: int, out: Path, client_id: str, go: threading.Event,
                    done: list[float]) -> dict:
    """One artist with the library: its own pool, the whole sequence through animation_submit."""
    environ = {"NUKE_COMFYUI_SERVERS": json.dumps(servers), "NUKE_COMFYUI_POLL_INTERVAL": "1"}
    with cc.ComfyUIServerPool.from_env(environ, client_id=client_id) as pool:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(s.state.name in ("ONLINE", "BUSY") for s in pool.servers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{client_id}: not every server came online within {READY_TIMEOUT:g} s")
            pool.wait_for_change(0.5)
        _ready_then_wait(go)

        def on_event(event: Any) -> None:
            if event.kind == "completed":
                done.append(time.time())

        batch = cc.animation_submit(WORKFLOW, pool=pool, frames=f"1-{frames}", output=out / "f.####.png",
                                    cache=False, on_event=on_event)
        result = batch.result(timeout=3600)
        if result.failed or len(result.frames) != frames:
            raise RuntimeError(f"{client_id}: {len(result.frames)}/{frames} frames, failed {sorted(result.failed)[:10]}")
        return dict(result.by_server)


def _submit_all_client(servers: list[dict], frames: int, out: Path, client_id: str, go: threading.Event,
                       done: list[float]) -> dict:
    """The baseline artist: every prompt queued at submit time, round-robin, then waited for."""
    directs = [_Direct(f"http://{s['ip']}:{s['port']}", s["name"], out) for s in servers]
    try:
        _ready_then_wait(go)
        placed: dict[int, list[tuple[int, Any]]] = {}
        for frame in range(1, frames + 1):
            i = frame % len(directs)
            placed.setdefault(i, []).append(directs[i].submit(frame))
        lock = threading.Lock()

        def finish(i: int) -> None:
            for frame, watch in placed[i]:
                directs[i].finish(frame, watch)
                with lock:
                    done.append(time.time())

        with ThreadPoolExecutor(len(placed)) as ex:   # each server's prompts finish in its own order
            list(ex.map(finish, placed))
        return {directs[i].client.name: len(items) for i, items in placed.items()}
    finally:
        for d in directs:
            d.close()


def _ready_then_wait(go: threading.Event) -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        raise RuntimeError("the bench parent went away before the start signal")
    go.set()


def client_main(mode: str, servers: list[dict], frames: int, out: Path, client_id: str) -> int:
    """Child process: get ready, say so, start on ``go``, print one JSON line of finish times."""
    go = threading.Event()
    done: list[float] = []
    work = _cluster_client if mode == "cluster" else _submit_all_client
    by_server = work(servers, frames, out, client_id, go, done)
    sys.stdout.write(json.dumps({"done": sorted(done), "by_server": by_server,
                                 "cpu_s": time.process_time()}) + "\n")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- the parent


def _lines(proc: subprocess.Popen) -> queue.Queue:
    """A queue fed with ``proc``'s stdout lines by a reader thread (None at EOF)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, name="bench-sharing-reader", daemon=True).start()
    return lines


def _expect(lines: queue.Queue, what: str, timeout: float, log: Path) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        line = None
    if line is None:
        raise RuntimeError(f"bench sharing: a client process gave no {what} within {timeout:g} s (see {log})")
    return line


def one_round(mode: str, servers: list[dict], clients: int, frames: int, base: Path) -> list[dict]:
    """Start ``clients`` processes in ``mode``, release them together; per client: makespan and gaps."""
    procs, feeds, logs = [], [], []
    try:
        for c in range(clients):
            out = base / f"{mode}-c{c}"
            out.mkdir(parents=True)
            log = base / f"{mode}-c{c}.log"
            logs.append(log)
            with open(log, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.bench_sharing", "--client", mode, "--servers", json.dumps(servers),
                     "--frames", str(frames), "--out", str(out), "--client-id", f"artist-{c + 1}-{os.getpid()}"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
            procs.append(proc)
            feeds.append(_lines(proc))
        for feed, log in zip(feeds, logs):
            if _expect(feed, "ready line", READY_TIMEOUT, log) != "ready":
                raise RuntimeError(f"bench sharing: unexpected output from a client (see {log})")
        start = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(_expect(feed, "result", 3600, log)) for feed, log in zip(feeds, logs)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                if proc.stdin is not None:
                    proc.stdin.close()   # a client still waiting for "go" reads EOF and exits
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    rows = []
    for r in results:
        times = [start] + r["done"]
        rows.append({"makespan": r["done"][-1] - start, "longest_gap": max(b - a for a, b in zip(times, times[1:])),
                     "frames": len(r["done"]), "by_server": r["by_server"], "cpu_s": r["cpu_s"]})
    return rows


def sharing(base: Path, runs: int, frames: int = 120, clients: int = 3,
            speeds: Sequence[float] = SPEEDS) -> list[Metric]:
    """Scenario 8: worst and best client makespan against the fair share, spread, starvation."""
    fair = clients * frames / sum(1.0 / s for s in speeds)
    procs = start_servers(speeds, base, prefix="share")
    servers = [{"name": p.name, "ip": "127.0.0.1", "port": p.port} for p in procs]
    rounds: dict[str, list[list[dict]]] = {mode: [] for mode in MODES}
    try:
        for i in range(runs):
            for mode in MODES:
                rounds[mode].append(one_round(mode, servers, clients, frames, base / f"share-{mode}-{i}"))
    finally:
        stop_servers(procs)

    def per_run(mode: str, fn: Any) -> list[float]:
        return [fn(rows) for rows in rounds[mode]]

    worst = {m: per_run(m, lambda rows: max(r["makespan"] for r in rows) / fair) for m in MODES}
    best = {m: per_run(m, lambda rows: min(r["makespan"] for r in rows) / fair) for m in MODES}
    spread = {m: [w - b for w, b in zip(worst[m], best[m])] for m in MODES}
    gap = {m: per_run(m, lambda rows: max(r["longest_gap"] for r in rows) / fair) for m in MODES}
    med = statistics.median
    last = rounds["cluster"][-1]
    note = (f"{clients} client processes x {frames} frames, started together, over {len(speeds)} emulated servers at "
            f"{list(speeds)} s/frame; fair-share makespan = {clients} x {frames} / sum(1/s) = {fair:.2f} s (each "
            f"client's makespan if the cluster were shared equally; see bench/bench_sharing.py). Cluster, last run, "
            f"per client: makespans {[round(r['makespan'], 2) for r in last]} s, frames per server "
            f"{[r['by_server'] for r in last]}, client CPU {[round(r['cpu_s'], 2) for r in last]} s. Baseline "
            f"(submit-all: each client queues all {frames} prompts round-robin at submit time), last run: makespans "
            f"{[round(r['makespan'], 2) for r in rounds['submit-all'][-1]]} s")
    base_of = lambda values: {"submit-all round-robin": med(values)}  # noqa: E731
    return [
        Metric("8 sharing", "worst client makespan / fair share", "ratio", worst["cluster"], f"<= {MAKESPAN_GOAL}",
               med(worst["cluster"]) <= MAKESPAN_GOAL, base_of(worst["submit-all"]), note),
        Metric("8 sharing", "best client makespan / fair share", "ratio", best["cluster"], "", None,
               base_of(best["submit-all"])),
        Metric("8 sharing", "spread (worst - best) / fair share", "ratio", spread["cluster"], "", None,
               base_of(spread["submit-all"])),
        Metric("8 sharing", "longest wait for a client's next frame / fair share", "ratio", gap["cluster"],
               f"<= {STARVE_SHARE} (none starves)", med(gap["cluster"]) <= STARVE_SHARE, base_of(gap["submit-all"])),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--client", choices=MODES, help="internal: run as one client process in this mode")
    parser.add_argument("--servers", help="internal: the servers as JSON")
    parser.add_argument("--out", type=Path, help="internal: the client's output folder")
    parser.add_argument("--client-id", help="internal: the client's id")
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client, json.loads(args.servers), args.frames, args.out, args.client_id)
    with tempfile.TemporaryDirectory(prefix="bench-sharing-") as tmp:
        metrics = sharing(Path(tmp), args.runs, frames=args.frames, clients=args.clients)
    for m in metrics:
        print(json.dumps(m.to_dict()))
    return 0 if all(m.ok is not False for m in metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
