"""Chaos: a 300-frame render over 5 emulated servers (separate processes) while a seeded
fault injector kills, restarts, hangs and slows servers and drops their websockets.

At the end every frame exists exactly once, with the pixels a real ComfyUI would give
(LoadImage -> ImageInvert -> SaveImage in float32, truncated: comfyui_api.md section 7);
the journal agrees with the disk; no temp file is left; and no frame was attempted more
often than the retry limit allows. Set COMFY_CHAOS_SEED to replay another schedule.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from comfy_cluster import run
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.chaos import FaultInjector
from comfy_cluster.emulator.process import EmulatorProcess
from comfy_cluster.jobs import journal_path, read_journal
from comfy_cluster.pool import ComfyUIServerPool

FRAMES = range(1001, 1301)
SERVERS = 5
SECONDS_PER_JOB = 0.05
RETRIES = 4
JOB_TIMEOUT = 3.0
SEED = int(os.environ.get("COMFY_CHAOS_SEED", "20240607"))

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "chaos"}},
}


def expected_invert(pixels: np.ndarray) -> np.ndarray:
    """What ComfyUI writes for LoadImage -> ImageInvert -> SaveImage: float32, then truncation."""
    image = pixels.astype(np.float32) / np.float32(255.0)
    inverted = np.float32(1.0) - image
    return np.clip(inverted * np.float32(255.0), 0, 255).astype(np.uint8)


@pytest.fixture
def servers():
    procs = [EmulatorProcess(seconds_per_job=SECONDS_PER_JOB, name=f"chaos-{i}") for i in range(SERVERS)]
    try:
        with ThreadPoolExecutor(SERVERS) as ex:
            list(ex.map(lambda p: p.start(timeout=30), procs))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def test_render_survives_chaos(servers, tmp_path):
    print(f"chaos seed: {SEED} (set COMFY_CHAOS_SEED to replay)")
    rng = np.random.default_rng(SEED)
    plates = tmp_path / "plates"
    plates.mkdir()
    sources = {}
    for frame in FRAMES:
        pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(plates / f"sh010.{frame:04d}.png")
        sources[frame] = pixels
    out_dir = tmp_path / "renders"
    output = out_dir / "sh010_comfy.####.png"

    configs = [ServerConfig(name=p.name, ip="127.0.0.1", port=p.port) for p in servers]
    pool = ComfyUIServerPool(configs, poll_interval=0.5, max_backoff=1.0)
    injector = FaultInjector(servers, seed=SEED, interval=(0.25, 0.6), heal_after=(0.5, 1.5), max_faulted=2,
                             slow_seconds=0.3, base_seconds=SECONDS_PER_JOB)
    try:
        pool.start()
        batch = run.animation_submit(WORKFLOW, pool=pool, frames=f"{FRAMES[0]}-{FRAMES[-1]}",
                                     inputs={"Plate.image": str(plates / "sh010.####.png")}, output=str(output),
                                     retries=RETRIES, job_timeout=JOB_TIMEOUT)
        injector.start()
        result = batch.result(timeout=100)
    finally:
        injector.stop()
        pool.close()
    print("faults:", {a: injector.count(a) for a in injector.actions}, "injector errors:", injector.errors)
    print("by server:", result.by_server, "retried frames:", len(result.retries), "elapsed:", round(result.elapsed, 1))

    # the chaos really happened and really hit the batch
    assert injector.count("kill") + injector.count("die") >= 1
    assert result.retries, "no frame was retried: the faults never touched the batch"

    # every frame done, exactly once, with a real server's pixels
    assert result.failed == {}
    assert result.cancelled == []
    assert sorted(result.frames) == list(FRAMES)
    on_disk = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    assert on_disk == [f"sh010_comfy.{f:04d}.png" for f in FRAMES]
    for frame in FRAMES:
        assert result.frames[frame] == [out_dir / f"sh010_comfy.{frame:04d}.png"]
        got = np.asarray(Image.open(result.frames[frame][0]).convert("RGB"))
        np.testing.assert_array_equal(got, expected_invert(sources[frame]), err_msg=f"frame {frame}")

    # no temp files anywhere in the output folder
    hidden = sorted(p.name for p in out_dir.iterdir() if p.name.startswith("."))
    assert hidden == [journal_path(output).name]

    # the journal agrees with the disk: one done record per frame, naming exactly its file
    journal = read_journal(journal_path(output))
    done_records = [r for r in journal.records if r["type"] == "done"]
    assert sorted(int(r["frame"]) for r in done_records) == list(FRAMES)
    assert journal.done_frames() == {f: [out_dir / f"sh010_comfy.{f:04d}.png"] for f in FRAMES}
    assert not [r for r in journal.records if r["type"] == "failed"]

    # attempts per frame within the retry limit, and the journal's count matches the result's
    submitted: dict[int, int] = {}
    for record in journal.records:
        if record["type"] == "submitted":
            submitted[int(record["frame"])] = submitted.get(int(record["frame"]), 0) + 1
    assert max(submitted.values()) <= RETRIES + 1
    for frame in FRAMES:
        assert submitted[frame] == len(result.retries.get(frame, [])) + 1, f"frame {frame}"
    assert sum(result.by_server.values()) == len(FRAMES)
