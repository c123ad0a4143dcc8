"""The result cache over loopback: emulated ComfyUI servers, the real pool and dispatcher.

Prompts are counted on the servers' own ``/history``: a re-render of an unchanged sequence
sends none, a changed seed sends all again, an altered or missing cached file is rendered.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster import run
from comfy_cluster.cache import CACHE_BACKEND, ResultCache
from comfy_cluster.cli import main
from comfy_cluster.config import ServerConfig
from comfy_cluster.jobs import journal_path, read_journal
from comfy_cluster.pool import ComfyUIServerPool
from tests.helpers import wait_until

NOISE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 11, "strength": 0.3}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "comp"}},
}
FRAMES = range(1001, 1005)


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def cluster(emulator_thread_factory, state):
    emus = [emulator_thread_factory(name=f"gpu-0{i}") for i in (1, 2)]
    pool = ComfyUIServerPool([ServerConfig(name=e.name, ip="127.0.0.1", port=e.port) for e in emus],
                             poll_interval=0.2).start()
    wait_until(lambda: all(s.state.value == "online" for s in pool.servers), what="servers online")
    try:
        yield pool, emus
    finally:
        pool.close()


def prompts(emus) -> int:
    return sum(len(requests.get(f"{e.url}/history", timeout=10).json()) for e in emus)


def plates(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for f in FRAMES:
        Image.fromarray(rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8), "RGB").save(folder / f"plate.{f:04d}.png")
    return str(folder / "plate.####.png")


def render(pool, tmp_path, plate, output, workflow=NOISE, **kw):
    batch = run.animation_submit(workflow, pool=pool, frames="1001-1004", inputs={"1.image": plate},
                                 output=str(tmp_path / output), **kw)
    result = batch.result(timeout=60)
    assert result.ok, result.failed
    return result


def test_unchanged_sequence_renders_nothing_and_a_changed_seed_renders_again(cluster, tmp_path):
    pool, emus = cluster
    plate = plates(tmp_path / "plates")
    first = render(pool, tmp_path, plate, "out/a.####.png")
    assert first.cached == 0 and prompts(emus) == 4
    pixels = {f: (tmp_path / f"out/a.{f}.png").read_bytes() for f in FRAMES}

    again = render(pool, tmp_path, plate, "out/a.####.png")
    assert again.cached == 4 and prompts(emus) == 4                 # nothing sent
    assert {f: (tmp_path / f"out/a.{f}.png").read_bytes() for f in FRAMES} == pixels
    done = [r for r in read_journal(journal_path(str(tmp_path / "out/a.####.png"))).records if r["type"] == "done"]
    assert {r["backend"] for r in done} == {CACHE_BACKEND} and len(done) == 4

    elsewhere = render(pool, tmp_path, plate, "copy/b.####.png")    # another output: copied there
    assert elsewhere.cached == 4 and prompts(emus) == 4
    assert (tmp_path / "copy/b.1002.png").read_bytes() == pixels[1002]

    reseeded = json.loads(json.dumps(NOISE))
    reseeded["2"]["inputs"]["seed"] = 12
    changed = render(pool, tmp_path, plate, "out/a.####.png", workflow=reseeded)
    assert changed.cached == 0 and prompts(emus) == 8
    assert (tmp_path / "out/a.1001.png").read_bytes() != pixels[1001]

    forced = render(pool, tmp_path, plate, "out/a.####.png", workflow=reseeded, cache=False)
    assert forced.cached == 0 and prompts(emus) == 12


def test_changed_input_bytes_missing_or_altered_files_render_again(cluster, tmp_path):
    pool, emus = cluster
    plate = plates(tmp_path / "plates")
    render(pool, tmp_path, plate, "out/a.####.png")
    assert prompts(emus) == 4
    (tmp_path / "out/a.1001.png").unlink()                           # missing
    with open(tmp_path / "out/a.1002.png", "ab") as fh:              # altered
        fh.write(b"x")
    Image.new("RGB", (12, 8), "red").save(tmp_path / "plates/plate.1003.png")   # new input pixels
    result = render(pool, tmp_path, plate, "out/a.####.png")
    assert result.cached == 1 and prompts(emus) == 7
    assert result.by_server.get(CACHE_BACKEND) == 1


def test_the_key_ignores_the_per_job_prefix_and_input_paths_but_not_the_kind(tmp_path, state):
    from comfy_cluster.backend import PromptRequest
    from comfy_cluster.workflow import Workflow

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"same pixels")
    b.write_bytes(b"same pixels")
    cache = ResultCache()
    graph = Workflow.from_dict(NOISE)
    one = PromptRequest("p1", graph.with_output_prefix("comfy_cluster/r1/1001_1").to_dict(), {("1", "image"): a})
    two = PromptRequest("p2", graph.with_output_prefix("comfy_cluster/r2/1001_3").to_dict(), {("1", "image"): b})
    assert cache.key(one, "comfyui") == cache.key(two, "comfyui")
    assert cache.key(one, "comfyui") != cache.key(one, "runpod")
    b.write_bytes(b"other pixels")
    assert cache.key(one, "comfyui") != cache.key(two, "comfyui")
    assert str(cache.directory).startswith(str(state))


def test_cli_summary_says_frames_came_from_the_cache(cluster, tmp_path):
    pool, emus = cluster
    plate = plates(tmp_path / "plates")
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps([{"name": e.name, "ip": "127.0.0.1", "port": e.port} for e in emus]))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(NOISE))
    argv = ["--servers", str(servers), "render", str(wf), "--frames", "1001-1004", "--input", f"1.image={plate}",
            "--output", str(tmp_path / "cli/c.####.png")]
    out = io.StringIO()
    assert main(argv, out=out) == 0
    assert "4 frame(s) rendered" in out.getvalue()
    out = io.StringIO()
    assert main(argv, out=out) == 0
    assert "0 frame(s) rendered" in out.getvalue() and "4 unchanged, taken from the cache" in out.getvalue()
    assert prompts(emus) == 4
    out = io.StringIO()
    assert main(argv + ["--no-cache"], out=out) == 0
    assert "4 frame(s) rendered" in out.getvalue() and prompts(emus) == 8
