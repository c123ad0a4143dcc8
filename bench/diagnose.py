"""Diagnostics behind the causes in bench/RESULTS.md (not part of ``python -m bench``).

``python -m bench.diagnose calls [N]``: client CPU per library call of one frame of the
dispatch scenario (hash the input, upload it, POST /prompt, wait, GET /view + atomic
write, output check, and the websocket reader's share), one frame at a time against one
zero-work emulator: what a frame costs without other frames' threads contending.
``python -m bench.diagnose throughput``: one throughput batch; per server, its frames, its
own work (frames x seconds per frame) and when its last frame finished, to see which
server set the makespan.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scenarios as sc
from comfy_cluster import transfer
from comfy_cluster.client import ComfyClient
from comfy_cluster.tracker import PromptTracker


def calls(base: Path, frames: int) -> None:
    procs = sc.start_servers([0.0], base, prefix="calls")
    plates = Path(sc.write_plates(base / "plates", frames)).parent
    client = ComfyClient(procs[0].url, name=procs[0].name)
    tracker = PromptTracker(client, uuid.uuid4().hex).start()
    tracker.wait_connected(5)
    spent: collections.Counter[str] = collections.Counter()

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.thread_time()
        try:
            return fn()
        finally:
            spent[label] += time.thread_time() - t0

    out = base / "calls-out"
    out.mkdir()
    cpu0 = time.process_time()
    try:
        for frame in range(1, frames + 1):
            plate = plates / f"plate.{frame:04d}.png"
            name = timed("content_name (sha256 of the input)", lambda: transfer.content_name(plate))
            up = timed("POST /upload/image (multipart)", lambda: client.upload_image(plate, name))
            graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in sc.UPLOAD_WORKFLOW.items()}
            graph["1"]["inputs"]["image"] = up.load_image_value
            graph["3"]["inputs"]["filename_prefix"] = f"calls/{frame}"
            pid = uuid.uuid4().hex
            watch = tracker.watch(pid)
            timed("POST /prompt", lambda: client.submit(graph, client_id=tracker.client_id, prompt_id=pid))
            entry = timed("wait for completion (caller side)", lambda: watch.wait(30))
            image, dest = entry.images[0], out / f"f.{frame:04d}.png"
            timed("GET /view + atomic write (fsync)",
                  lambda: transfer.atomic_write(dest, lambda tmp: client.download(image, tmp)))
            timed("output check (PIL decode)", lambda: transfer.output_problem(dest, dest.name))
        total = time.process_time() - cpu0
    finally:
        tracker.stop()
        client.close()
        sc.stop_servers(procs)
    for label, seconds in spent.items():
        print(f"{seconds * 1e3 / frames:7.3f} ms  {label}")
    print(f"{(total - sum(spent.values())) * 1e3 / frames:7.3f} ms  other threads (the server's websocket reader)")
    print(f"{total * 1e3 / frames:7.3f} ms  client CPU per frame, one frame at a time")


def throughput(base: Path, frames: int = 240, speeds: tuple[float, ...] = (0.1, 0.2, 0.2, 0.4)) -> None:
    procs = sc.start_servers(speeds, base, prefix="diag-tp")
    done: dict[str, list[float]] = collections.defaultdict(list)
    lock = threading.Lock()

    def on_event(event: Any) -> None:
        if event.kind == "completed":
            with lock:
                done[event.data.get("server")].append(time.time())

    try:
        pool = sc.make_pool(procs)
        try:
            start = time.time()
            wall, _, result = sc.render(pool, frames, base / "diag-tp-out", on_event=on_event)
        finally:
            pool.close()
    finally:
        sc.stop_servers(procs)
    ideal = frames / sum(1 / s for s in speeds)
    print(f"makespan {wall:.2f} s, ideal {ideal:.2f} s, efficiency {ideal / wall:.3f}, frames {result.by_server}")
    for proc, speed in zip(procs, speeds):
        n = len(done[proc.name])
        print(f"{proc.name} ({speed} s/frame): {n} frames = {n * speed:.2f} s of work, last done at "
              f"{max(done[proc.name]) - start:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("calls", "throughput"))
    parser.add_argument("frames", type=int, nargs="?", default=None)
    args = parser.parse_args(argv)
    with sc.temp_dir() as tmp:
        if args.what == "calls":
            calls(Path(tmp), args.frames or 500)
        else:
            throughput(Path(tmp), args.frames or 240)
    return 0


if __name__ == "__main__":
    sys.exit(main())
