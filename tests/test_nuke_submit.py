"""The Nuke layer end to end: a fake ``nuke`` (tests/fake_nuke), real emulated ComfyUI servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fake_nuke import install
from tests.helpers import wait_until

install()

import nuke  # noqa: E402  (the fake, put on sys.path by install())

from comfy_cluster.config import ServerConfig  # noqa: E402
from comfy_cluster.emulator.process import EmulatorThread  # noqa: E402
from comfy_cluster.pool import ComfyUIServerPool  # noqa: E402
from nuke_menu import core, headless, reads, render_node  # noqa: E402
from nuke_menu import settings as s  # noqa: E402
from nuke_menu.submit import submit_nodes  # noqa: E402

FIRST, LAST = 1001, 1006
INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sh010"}},
}


@pytest.fixture
def session(tmp_path: Path):
    """A fresh GUI session with a saved script and a plate sequence on a Read node."""
    nuke.fake_reset(gui=True)
    core.set_shared_pool(None)
    nuke.root()["name"].setValue((tmp_path / "sh010_comp_v001.nk").as_posix())
    plates = tmp_path / "plates"
    plates.mkdir()
    for frame in range(FIRST, LAST + 1):
        value = 20 * (frame - FIRST) + 10
        Image.new("RGB", (16, 12), (value, 255 - value, 128)).save(plates / f"plate.{frame:04d}.png")
    read = nuke.nodes.Read(file=(plates / "plate.####.png").as_posix(), first=FIRST, last=LAST)
    workflow = tmp_path / "invert_api.json"
    workflow.write_text(json.dumps(INVERT))
    yield {"read": read, "workflow": workflow, "tmp": tmp_path}
    core.set_shared_pool(None)


@pytest.fixture
def cluster():
    emus = [EmulatorThread(seconds_per_job=0.05, name=f"gpu-0{i}").start() for i in (1, 2)]
    configs = [ServerConfig(name=f"gpu-0{i}", ip="127.0.0.1", port=e.port) for i, e in zip((1, 2), emus)]
    pool = ComfyUIServerPool(configs, poll_interval=0.2).start()
    try:
        wait_until(lambda: all(str(x.state.value) == "online" for x in pool.snapshot().servers), timeout=10)
        yield pool, emus
    finally:
        pool.close()
        for emu in emus:
            emu.stop()


def make_render_node(session, mode: s.Mode = s.Mode.RANGE) -> nuke.Node:
    session["read"].setSelected(True)
    node = render_node.create(["auto", "gpu-01", "gpu-02"])
    node[s.KNOB_WORKFLOW].setValue(session["workflow"].as_posix())
    node[s.KNOB_MODE].setValue(mode.value)
    return node


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_range_renders_on_both_servers_and_makes_the_read(session, cluster):
    pool, _ = cluster
    node = make_render_node(session)
    assert node.input(0) is session["read"], "created below the selection, wired to it"

    submissions = submit_nodes([node], pool=pool)
    assert len(submissions) == 1 and not nuke.fake_messages
    nuke.fake_run_main_thread(until=submissions[0].finished.is_set, timeout=60)
    assert not nuke.fake_main_thread_errors

    outcome = submissions[0].outcome
    assert outcome is not None and not outcome.failed and not outcome.error
    assert sorted(outcome.frames) == list(range(FIRST, LAST + 1))
    assert sum(outcome.by_server.values()) == 6
    read = nuke.toNode(f"{node.name()}_Read")
    assert read is not None and read.Class() == "Read"
    expected = (session["tmp"] / "comfy" / node.name() / f"sh010_comp_v001_{node.name()}.####.png").as_posix()
    assert read["file"].value() == expected
    assert (read["first"].value(), read["last"].value()) == (FIRST, LAST)
    assert read.ypos() > node.ypos()
    for frame in (FIRST, LAST):
        plate = pixels(session["tmp"] / "plates" / f"plate.{frame:04d}.png")
        out = pixels(Path(expected.replace("####", f"{frame:04d}")))
        assert np.abs(out - (255 - plate)).max() <= 1, "the emulator inverted the frame Nuke rendered"
    assert node["tile_color"].value() == 0
    assert node[s.KNOB_STATUS].value().startswith("done: 6")
    task = nuke.fake_progress_tasks[0]
    assert task.progress == 100 and "6 of 6 frames done" in task.message
    assert any("gpu-0" in m for _, m in task.history), "per-server counts in the progress message"
    assert [name for name, _, _ in nuke.fake_executed()].count("Write1") == 6, "inputs rendered by a Write"
    assert nuke.toNode("Write1") is None, "the temporary Write is deleted"
    assert core.active() == []


def test_a_failing_server_lists_failed_frames_once_and_marks_the_node(session, cluster):
    pool, emus = cluster
    emus[0].set_faults(seconds_per_job=0.02)
    emus[1].set_faults(fail_node="ImageInvert", fail_exception_type="RuntimeError", fail_message="bad frame",
                       seconds_per_job=0.4)
    node = make_render_node(session)
    submission = submit_nodes([node], pool=pool)[0]
    nuke.fake_run_main_thread(until=submission.finished.is_set, timeout=60)

    outcome = submission.outcome
    assert outcome is not None and outcome.failed and outcome.frames
    assert len(outcome.failed) + len(outcome.frames) == 6
    assert len(nuke.fake_messages) == 1, "all failures in one message"
    text = nuke.fake_messages[0]
    for frame in outcome.failed:
        assert f"frame {frame}:" in text
    assert "bad frame" in text
    assert node["tile_color"].value() == reads.FAILED_COLOR
    read = nuke.toNode(f"{node.name()}_Read")
    assert read is not None and (read["first"].value(), read["last"].value()) == (FIRST, LAST)


def test_validation_shows_every_problem_at_once_and_sends_nothing(session, tmp_path):
    dead = ServerConfig(name="gpu-dead", ip="127.0.0.1", port=9)
    pool = ComfyUIServerPool([dead], poll_interval=5).start()
    try:
        # the submit reads the status cache only (no network on Nuke's main thread)
        wait_until(lambda: pool.snapshot().servers[0].last_status_check is not None, what="first probe")
        node = make_render_node(session)
        node[s.KNOB_BINDINGS].setValue("0 = LoadImage.image\n1 = Nope.image\n7 = LoadImage.image")
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder should be")
        node[s.KNOB_OUTPUT].setValue((blocker / "out.####.png").as_posix())
        assert submit_nodes([node], pool=pool) == []
    finally:
        pool.close()
    assert len(nuke.fake_messages) == 1
    text = nuke.fake_messages[0]
    assert "input 7 does not exist" in text
    assert "input 1 (Nope.image) is not connected" in text
    assert "input binding Nope.image" in text
    assert "output: folder" in text and "not writable" in text
    assert "no backend is reachable" in text and "gpu-dead" in text
    assert nuke.fake_executed() == [], "nothing rendered when the checks fail"
    assert node["tile_color"].value() == reads.FAILED_COLOR


def test_missing_workflow_and_unsaved_script_are_reported(session, cluster):
    pool, _ = cluster
    nuke.root()["name"].setValue("Root")
    node = make_render_node(session)
    node[s.KNOB_WORKFLOW].setValue((session["tmp"] / "missing.json").as_posix())
    assert submit_nodes([node], pool=pool) == []
    text = nuke.fake_messages[0]
    assert "workflow: file not found" in text
    assert "save the script first" in text


def test_cancel_in_the_progress_bar_cancels_the_batch(session, cluster):
    pool, emus = cluster
    for emu in emus:
        emu.set_faults(hang=True)
    node = make_render_node(session)
    submission = submit_nodes([node], pool=pool)[0]
    wait_until(lambda: bool(nuke.fake_progress_tasks) and bool(core.active()), timeout=10)
    assert core.active()[0].label.startswith(node.name())
    nuke.fake_progress_tasks[0].fake_cancel()
    nuke.fake_run_main_thread(until=submission.finished.is_set, timeout=60)
    assert submission.outcome is not None and submission.outcome.cancelled
    assert node[s.KNOB_STATUS].value().startswith("cancelled")
    assert core.active() == []


def test_single_frame_follows_the_output_pattern_and_reads_the_still(session, cluster):
    pool, _ = cluster
    nuke.frame(1003)
    node = make_render_node(session, s.Mode.SINGLE)
    submission = submit_nodes([node], pool=pool)[0]
    nuke.fake_run_main_thread(until=submission.finished.is_set, timeout=60)
    assert submission.outcome is not None and list(submission.outcome.frames) == [1003]
    [still] = submission.outcome.frames[1003]
    assert still.name == f"sh010_comp_v001_{node.name()}.1003.png"   # the node's output pattern, frame 1003
    read = nuke.toNode(f"{node.name()}_Read")
    assert read is not None
    out = pixels(Path(read["file"].value()))
    plate = pixels(session["tmp"] / "plates" / "plate.1003.png")
    assert np.abs(out - (255 - plate)).max() <= 1


NOISE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}},
    "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 7, "strength": 0.4}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "look"}},
}


def test_iterations_make_one_read_per_variation_labelled_with_its_seed(session, cluster):
    pool, _ = cluster
    workflow = session["tmp"] / "noise_api.json"
    workflow.write_text(json.dumps(NOISE))
    node = make_render_node(session, s.Mode.ITERATIONS)
    node[s.KNOB_WORKFLOW].setValue(workflow.as_posix())
    node[s.KNOB_ITERATIONS].setValue(3)
    node[s.KNOB_SEED_MODE].setValue("increment")
    submissions = submit_nodes([node], pool=pool)
    assert len(submissions) == 1, nuke.fake_messages
    nuke.fake_run_main_thread(until=submissions[0].finished.is_set, timeout=60)
    assert not nuke.fake_messages, nuke.fake_messages
    found = [nuke.toNode(f"{node.name()}_Read_v{i}") for i in (1, 2, 3)]
    assert all(r is not None and Path(r["file"].value()).is_file() for r in found)
    assert len({r.xpos() for r in found}) == 3 and len({r["file"].value() for r in found}) == 3
    assert [r["label"].value() for r in found] == ["seed 7", "seed 8", "seed 9"]
    looks = [pixels(Path(r["file"].value())) for r in found]
    assert not np.array_equal(looks[0], looks[1]) and not np.array_equal(looks[1], looks[2])


def test_seed_labels_name_the_seed():
    from nuke_menu.submit import _seed_label

    assert _seed_label({"3.seed": 1234}) == "seed 1234"
    assert _seed_label({"3.seed": 1, "7.noise_seed": 2}) == "3.seed 1, 7.noise_seed 2"
    assert _seed_label({}) == ""


def test_headless_submit_runs_to_the_end_with_progress_in_the_log(session, cluster, caplog):
    pool, _ = cluster
    nuke.fake_reset(gui=False)
    nuke.root()["name"].setValue((session["tmp"] / "farm.nk").as_posix())
    plates = session["tmp"] / "plates"
    read = nuke.nodes.Read(file=(plates / "plate.####.png").as_posix(), first=FIRST, last=1003)
    read.setSelected(True)
    node = render_node.create()
    node[s.KNOB_WORKFLOW].setValue(session["workflow"].as_posix())
    node[s.KNOB_MODE].setValue(s.Mode.RANGE.value)
    with caplog.at_level(logging.INFO, logger="nuke_menu"):
        code = headless.main([node.name()], pool=pool)
    assert code == 0
    read_out = nuke.toNode(f"{node.name()}_Read")
    assert read_out is not None and (read_out["first"].value(), read_out["last"].value()) == (FIRST, 1003)
    assert any("3 of 3 frames done" in r.getMessage() for r in caplog.records)
    assert not nuke.fake_progress_tasks and not nuke.fake_messages
    assert headless.main(["Nope1"], pool=pool) == 1


def test_the_submit_button_code_survives_a_missing_plugin(session, monkeypatch):
    node = make_render_node(session)
    monkeypatch.setitem(__import__("sys").modules, "nuke_menu.submit", None)
    node[s.KNOB_SUBMIT].execute()
    assert nuke.fake_messages and "not installed" in nuke.fake_messages[0]


def test_reachability_reads_the_cache_and_trusts_a_server_not_probed_yet():
    """Nuke's main thread makes no network call: a pool that has not polled yet is not refused."""
    dead = ServerConfig(name="gpu-dead", ip="127.0.0.1", port=9)
    pool = ComfyUIServerPool([dead], poll_interval=5)          # not started: nothing probed
    try:
        assert core.reachability_problem(pool, None) is None
        assert core.reachability_problem(pool, "gpu-dead") is None
        pool.update_all_server_status()                        # now the cache knows it is offline
        assert "no backend is reachable" in core.reachability_problem(pool, None)
        assert core.reachability_problem(pool, "gpu-dead").startswith("target: server 'gpu-dead' is offline")
    finally:
        pool.close()


def test_the_wait_for_server_knob_ends_a_submit_nothing_can_take(session):
    """The Render node's 'wait for server' knob: the progress message says why nothing runs,
    then the frames fail with every backend's reason instead of waiting forever."""
    pool = ComfyUIServerPool([ServerConfig(name="gpu-01", ip="127.0.0.1", port=9)])   # never answers
    try:
        node = make_render_node(session)
        assert node[s.KNOB_WAIT_FOR_SERVER].value() == s.DEFAULT_WAIT_FOR_SERVER == 300
        node[s.KNOB_WAIT_FOR_SERVER].setValue(1)
        assert render_node.read_settings(node).wait_for_server == 1.0
        submission = submit_nodes([node], pool=pool)[0]
        nuke.fake_run_main_thread(until=submission.finished.is_set, timeout=60)
    finally:
        pool.close()
    outcome = submission.outcome
    assert outcome is not None and sorted(outcome.failed) == list(range(FIRST, LAST + 1))
    assert "no backend could take the work (waited 1 s)" in outcome.failed[FIRST]
    assert "gpu-01: offline" in outcome.failed[FIRST] and "runpod: not configured" in outcome.failed[FIRST]
    messages = [m for _, m in nuke.fake_progress_tasks[0].history]
    assert any("nothing can run: gpu-01: offline" in m for m in messages), messages
