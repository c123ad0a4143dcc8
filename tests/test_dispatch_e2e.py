"""End to end over loopback: the dispatcher, the real pool and emulated ComfyUI processes.

Every server here is a separate OS process (``EmulatorProcess``) that a test can SIGKILL,
and the pixels checked are what a real ComfyUI 0.3.64 gives (float32, truncating save).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster import run
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorProcess
from comfy_cluster.jobs import journal_path, read_journal
from comfy_cluster.pool import ComfyUIServerPool
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]

INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "comp"}},
}



def _plates(folder: Path, frames: range, size: tuple[int, int] = (24, 16)) -> dict[int, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pixels = {}
    for f in frames:
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(folder / f"plate.{f:04d}.png")
        pixels[f] = arr
    return pixels


def _inverted(arr: np.ndarray) -> np.ndarray:
    """ComfyUI's LoadImage -> ImageInvert -> SaveImage, in its float32 arithmetic (truncation)."""
    image = arr.astype(np.float32) / np.float32(255.0)
    return np.clip((np.float32(1.0) - image) * np.float32(255.0), 0, 255).astype(np.uint8)


def _start(*procs: EmulatorProcess) -> None:
    errors: list[BaseException] = []

    def go(p: EmulatorProcess) -> None:
        try:
            p.start(timeout=30)
        except BaseException as err:  # surfaced below
            errors.append(err)
    threads = [threading.Thread(target=go, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _visible(folder: Path) -> list[str]:
    """File names in ``folder`` apart from the hidden journal: no temp or duplicate files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".comfy-journal.jsonl"))


def _history(url: str) -> dict:
    return requests.get(f"{url}/history", timeout=10).json()


@pytest.fixture
def cluster(tmp_path):
    """Three servers of different speeds, each its own process."""
    procs = [EmulatorProcess(name=name, seconds_per_job=s, base_dir=tmp_path / name)
             for name, s in (("gpu-fast", 0.03), ("gpu-mid", 0.09), ("gpu-slow", 0.27))]
    try:
        _start(*procs)
        yield procs
    finally:
        for p in procs:
            p.stop()


def _pool(procs: list[EmulatorProcess], **kw) -> ComfyUIServerPool:
    cfgs = [ServerConfig(name=p.name, ip="127.0.0.1", port=p.port, **kw) for p in procs]
    pool = ComfyUIServerPool(cfgs, poll_interval=0.3, offline_after=0.5).start()
    pool.update_all_server_status()
    return pool


def test_48_frames_over_three_speeds_pixels_exact_fastest_does_most(cluster, tmp_path):
    plates = _plates(tmp_path / "plates", range(1001, 1049))
    with _pool(cluster) as pool:
        batch = run.animation_submit(INVERT, pool=pool, frames="1001-1048",
                                     inputs={"Plate.image": str(tmp_path / "plates" / "plate.####.png")},
                                     output=str(tmp_path / "out" / "sh010_comfy.####.png"), job_timeout=30)
        res = batch.result(timeout=90)
    assert res.ok, res.failed
    assert sorted(res.frames) == list(range(1001, 1049))
    for frame, files in res.frames.items():
        assert files == [tmp_path / "out" / f"sh010_comfy.{frame}.png"]
        with Image.open(files[0]) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), _inverted(plates[frame])), frame
    counts = res.by_server
    assert sum(counts.values()) == 48
    assert counts["gpu-fast"] > counts["gpu-mid"] > counts.get("gpu-slow", 0)
    assert _visible(tmp_path / "out") == [f"sh010_comfy.{f}.png" for f in range(1001, 1049)]


def test_a_server_killed_mid_batch_loses_and_duplicates_nothing(cluster, tmp_path):
    _plates(tmp_path / "plates", range(1, 31))
    victim = cluster[1]
    on_victim = threading.Event()

    def watch(event):
        if event.kind == "completed" and event.data["server"] == victim.name:
            on_victim.set()
    with _pool(cluster) as pool:
        batch = run.animation_submit(INVERT, pool=pool, frames="1-30", on_event=watch,
                                     inputs={"Plate.image": str(tmp_path / "plates" / "plate.####.png")},
                                     output=str(tmp_path / "out" / "k.####.png"), job_timeout=20)
        assert on_victim.wait(30)
        victim.kill()
        res = batch.result(timeout=90)
    assert res.ok, res.failed
    assert sorted(res.frames) == list(range(1, 31))
    assert _visible(tmp_path / "out") == [f"k.{f:04d}.png" for f in range(1, 31)]
    journal = read_journal(journal_path(str(tmp_path / "out" / "k.####.png")))
    done = [r["frame"] for r in journal.records if r["type"] == "done"]
    assert sorted(done) == list(range(1, 31))  # each frame written exactly once
    moved = {f: reasons for f, reasons in res.retries.items() if any(r.startswith(victim.name) for r in reasons)}
    assert moved, "the killed server held frames of ours; they must have moved"
    for frame in moved:
        assert any(r["type"] == "retried" and r["frame"] == frame for r in journal.records)


def test_client_killed_mid_batch_then_resume_renders_only_missing_frames(tmp_path):
    _plates(tmp_path / "plates", range(1, 25))
    servers = [EmulatorProcess(name=n, seconds_per_job=0.15, base_dir=tmp_path / n) for n in ("a", "b")]
    try:
        _start(*servers)
        servers_file = tmp_path / "servers.json"
        servers_file.write_text(json.dumps([{"name": p.name, "ip": "127.0.0.1", "port": p.port} for p in servers]))
        workflow = tmp_path / "invert.json"
        workflow.write_text(json.dumps(INVERT))
        output = str(tmp_path / "out" / "r.####.png")
        cmd = [sys.executable, "-m", "comfy_cluster", "--servers", str(servers_file), "render", str(workflow),
               "--frames", "1-24", "--input", f"Plate.image={tmp_path / 'plates' / 'plate.####.png'}",
               "--output", output]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        jpath = journal_path(output)

        def done_count() -> int:
            return len(read_journal(jpath).done_frames()) if jpath.exists() else 0
        client = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: done_count() >= 8, 60, "8 frames journaled")
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(10)
        done_before = {f for f, files in read_journal(jpath).done_frames().items() if all(p.is_file() for p in files)}
        assert 8 <= len(done_before) < 24
        # let prompts the dead client left on the servers finish, then count what the servers ran
        wait_until(lambda: all(requests.get(f"{p.url}/queue", timeout=5).json()["queue_running"] == []
                              and requests.get(f"{p.url}/queue", timeout=5).json()["queue_pending"] == []
                              for p in servers), 30, "servers idle")
        prompts_before = sum(len(_history(p.url)) for p in servers)

        resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=90)
        assert resumed.returncode == 0, resumed.stderr
        prompts_after = sum(len(_history(p.url)) for p in servers)
        assert prompts_after - prompts_before == 24 - len(done_before)
        assert _visible(tmp_path / "out") == [f"r.{f:04d}.png" for f in range(1, 25)]
        assert f"{24 - len(done_before)} frame(s) rendered, {len(done_before)} already done" in resumed.stdout
    finally:
        for p in servers:
            p.stop()


def test_cancel_leaves_another_clients_prompts_alone(tmp_path):
    _plates(tmp_path / "plates", range(1, 11))
    server = EmulatorProcess(name="shared-gpu", seconds_per_job=0.4, base_dir=tmp_path / "gpu")
    try:
        _start(server)
        # another artist's prompt, queued first (EmptyImage: needs no input file)
        theirs = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "artist"}}}
        other = [requests.post(f"{server.url}/prompt", json={"prompt": theirs, "client_id": "other-artist"},
                               timeout=10).json()["prompt_id"] for _ in range(2)]
        with _pool([server], max_queue=2) as pool:
            batch = run.animation_submit(INVERT, pool=pool, frames="1-10",
                                         inputs={"Plate.image": str(tmp_path / "plates" / "plate.####.png")},
                                         output=str(tmp_path / "out" / "c.####.png"), job_timeout=30)
            wait_until(lambda: sum(1 for t in batch.tasks() if t.attempts) >= 2, 20, "two prompts of ours sent")
            ours = {a.prompt_id for t in batch.tasks() for a in t.attempts}
            batch.cancel()
            res = batch.result(timeout=30)
        assert res.cancelled and not res.failed
        queue = requests.get(f"{server.url}/queue", timeout=5).json()
        queued_ids = {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
        assert not (queued_ids & ours)  # ours are gone from the queue
        # the other artist's prompts run to success
        wait_until(lambda: all(pid in _history(server.url) for pid in other), 20, "the other artist's prompts")
        history = _history(server.url)
        assert all(history[pid]["status"]["status_str"] == "success" for pid in other)
    finally:
        server.stop()


def test_shared_mode_maps_windows_paths_to_the_servers_posix_paths(tmp_path):
    """A Windows artist (U:\\proj) and a Linux server that mounts the same storage at /…/proj."""
    storage = tmp_path / "proj"
    pixels = _plates(storage / "plates", range(1, 4))
    server = EmulatorProcess(name="linux-gpu", seconds_per_job=0.0, base_dir=tmp_path / "gpu")
    try:
        _start(server)
        cfg = ServerConfig(name="linux-gpu", ip="127.0.0.1", port=server.port, transfer="shared",
                           path_map=[{"local": "U:\\proj", "remote": str(storage)}])
        wf = dict(INVERT)
        # the artist's Windows path, frame token and all, as it sits in the workflow; the
        # preview comes back over HTTP, so this machine never needs the U: drive
        wf["1"] = {"class_type": "LoadImage", "inputs": {"image": "U:\\proj\\plates\\plate.####.png"}}
        wf["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
        pool = ComfyUIServerPool([cfg], poll_interval=0.3).start()
        with pool:
            pool.update_all_server_status()
            res = run.animation_submit(wf, pool=pool, frames="1-3", output=str(tmp_path / "out" / "w.####.png"),
                                       job_timeout=30).result(timeout=60)
        assert res.ok, res.failed
        for frame in (1, 2, 3):
            with Image.open(res.frames[frame][0]) as img:
                assert np.array_equal(np.asarray(img.convert("RGB")), _inverted(pixels[frame]))
    finally:
        server.stop()
