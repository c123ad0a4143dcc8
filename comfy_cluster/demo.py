"""``comfy-cluster demo``: the whole product in a few seconds, on any machine.

Starts three emulated ComfyUI servers of different speeds (one child process), writes a
short plate sequence (a moving gradient), renders LoadImage -> ImageBlur -> ImageInvert ->
SaveImage over the cluster, then the same on the fastest server alone, and prints where
each frame ran, both wall times and the speed-up. Then the "offline burst": with the local
servers stopped, the same sequence completes on an emulated RunPod endpoint, with its cost.
Finally it checks that the cluster and the burst gave exactly the pixels the single server
gave, frame by frame. The emulator process is
stopped on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import requests
from PIL import Image

log = logging.getLogger(__name__)

#: (name, seconds per job): different GPUs, as in a real studio.
DEMO_SERVERS = (("gpu-fast", 0.15), ("gpu-mid", 0.3), ("gpu-slow", 0.6))
PLATE_SIZE = (160, 90)

#: The emulated RunPod endpoint of the offline-burst scene: its workers and a key it accepts.
RUNPOD_WORKERS = 3
DEMO_RUNPOD_KEY = "demo-runpod-key"

DEMO_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "demo"}},
}


def write_plates(folder: Path, frames: int, first: int = 1001) -> str:
    """A moving diagonal gradient with a bright bar, one PNG per frame; returns the pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = PLATE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        phase = i / max(1, frames)
        r = (x / width + phase) % 1.0
        g = (y / height + 0.5 * phase) % 1.0
        b = np.abs(np.sin((x + y) / 23.0 + 6.28 * phase))
        rgb = np.stack([r, g, b], axis=-1)
        bar = slice(int(width * phase), int(width * phase) + 8)
        rgb[:, bar, :] = 1.0
        Image.fromarray((rgb * 255).astype(np.uint8), "RGB").save(folder / f"plate.{first + i:04d}.png")
    return str(folder / "plate.####.png")


def _render(servers: list[tuple[str, int]], *, frames: str, plates: str, output: str):
    from . import run
    from .config import ServerConfig
    from .pool import ComfyUIServerPool

    configs = [ServerConfig(name=name, ip="127.0.0.1", port=port) for name, port in servers]
    with ComfyUIServerPool(configs, poll_interval=0.5) as pool:
        pool.update_all_server_status()
        started = time.monotonic()
        batch = run.animation_submit(DEMO_WORKFLOW, pool=pool, frames=frames, inputs={"Plate.image": plates},
                                     output=output, job_timeout=60, cache=False)  # the demo times rendering
        result = batch.result(timeout=300)
        return result, time.monotonic() - started


def _burst(servers: list[tuple[str, int]], *, frames: str, plates: str, output: str, state: Path):
    """The offline burst: every local server is down, so the pool sends the work to RunPod."""
    from . import run
    from .config import RunPodConfig, ServerConfig
    from .emulator.runpod import RunPodEmulator
    from .ledger import CostLedger
    from .pool import ComfyUIServerPool
    from .runpod import RunPodEndpoint

    environ = {"RUNPOD_API_KEY": DEMO_RUNPOD_KEY}
    emulator = RunPodEmulator(endpoint_id="demo-burst", api_key=DEMO_RUNPOD_KEY, workers=RUNPOD_WORKERS,
                              cold_start_s=0.5, seconds_per_job=0.15).start()
    try:
        cfg = RunPodConfig(endpoint_id="demo-burst", base_url=emulator.base_url, max_concurrent=RUNPOD_WORKERS,
                           status_poll_min=0.1, status_poll_max=0.5)
        ledger = CostLedger(state, environ=environ)
        endpoint = RunPodEndpoint(cfg, environ=environ, ledger=ledger, poll_interval=0.5)
        configs = [ServerConfig(name=name, ip="127.0.0.1", port=port) for name, port in servers]
        with ComfyUIServerPool(configs, poll_interval=0.5, runpod=endpoint, environ=environ) as pool:
            pool.update_all_server_status()
            started = time.monotonic()
            batch = run.animation_submit(DEMO_WORKFLOW, pool=pool, frames=frames, inputs={"Plate.image": plates},
                                         output=output, job_timeout=60, cache=False)
            result = batch.result(timeout=300)
            return result, time.monotonic() - started, ledger.spend_for_batch(batch.batch_id)
    finally:
        emulator.stop()


def run_demo(frames: int = 24, output: Path = Path("demo-output"), out: TextIO | None = None) -> int:
    """Run the demo; returns the exit code (0 when every frame rendered and matched)."""
    from .emulator.process import EmulatorProcess

    out = out or sys.stdout
    if frames < 2:
        raise ValueError(f"the demo needs at least 2 frames, got {frames}")
    output = output.resolve()
    spec = f"1001-{1000 + frames}"
    out.write(f"writing {frames} plate frames to {output / 'plates'}\n")
    plates = write_plates(output / "plates", frames)
    out.write(f"starting {len(DEMO_SERVERS)} emulated ComfyUI servers ("
              + ", ".join(f"{n}: {s:g} s/frame" for n, s in DEMO_SERVERS) + ")\n")
    out.flush()
    emulator = EmulatorProcess(port=0, count=len(DEMO_SERVERS), name="demo", base_dir=output / "servers")
    try:
        emulator.start()
        for url, (_, seconds) in zip(emulator.urls, DEMO_SERVERS):
            requests.post(f"{url}/_emulator/faults", json={"seconds_per_job": seconds}, timeout=10).raise_for_status()
        servers = [(name, port) for (name, _), port in zip(DEMO_SERVERS, emulator.ports)]

        out.write(f"rendering frames {spec} over the cluster...\n")
        out.flush()
        cluster, cluster_s = _render(servers, frames=spec, plates=plates,
                                     output=str(output / "cluster" / "demo.####.png"))
        out.write(f"rendering frames {spec} on {servers[0][0]} alone...\n")
        out.flush()
        single, single_s = _render(servers[:1], frames=spec, plates=plates,
                                   output=str(output / "single" / "demo.####.png"))
    finally:
        emulator.stop()
    out.write(f"offline burst: the local servers are stopped; rendering {spec} on an emulated RunPod "
              f"endpoint ({RUNPOD_WORKERS} workers)...\n")
    out.flush()
    burst, burst_s, burst_cost = _burst(servers, frames=spec, plates=plates, state=output / "state",
                                        output=str(output / "burst" / "demo.####.png"))

    rows = [(name, cluster.by_server.get(name, 0), seconds) for name, seconds in DEMO_SERVERS]
    out.write("\nserver      speed      frames\n")
    for name, count, seconds in rows:
        out.write(f"{name:<11} {seconds:>4.2f} s/f  {count:>5}  {'#' * count}\n")
    out.write(f"\ncluster: {cluster_s:6.2f} s for {frames} frames\n")
    out.write(f"alone:   {single_s:6.2f} s on {servers[0][0]}\n")
    out.write(f"speed-up: {single_s / cluster_s:.1f}x\n")
    burst_where = ", ".join(f"{name}: {count}" for name, count in sorted(burst.by_server.items()))
    out.write(f"offline burst: {burst_s:6.2f} s for {len(burst.frames)} frames ({burst_where}), "
              f"cost ${burst_cost:.4f}\n")

    mismatched = sorted(set(_compare(cluster.frames, single.frames)) | set(_compare(burst.frames, single.frames)))
    ok = cluster.ok and single.ok and burst.ok and not mismatched
    if mismatched:
        out.write(f"pixel check FAILED on frames {', '.join(map(str, mismatched))}\n")
    elif ok:
        out.write(f"pixel check: all {frames} cluster and burst frames equal the single-server frames\n")
    for frame, err in sorted({**cluster.failed, **single.failed, **burst.failed}.items()):
        out.write(f"frame {frame} failed: {err}\n")
    out.write(f"outputs: {output / 'cluster'}\n")
    return 0 if ok else 1


def _compare(a: dict[int, list[Path]], b: dict[int, list[Path]]) -> list[int]:
    """Frames whose images differ (or are missing on one side)."""
    bad = []
    for frame in sorted(set(a) | set(b)):
        fa, fb = a.get(frame), b.get(frame)
        if not fa or not fb:
            bad.append(frame)
            continue
        with Image.open(fa[0]) as ia, Image.open(fb[0]) as ib:
            if not np.array_equal(np.asarray(ia), np.asarray(ib)):
                bad.append(frame)
    return bad
