"""The comfy-cluster command: exit codes, one-line errors, status --json, render, demo."""

from __future__ import annotations

import io
import threading
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_cluster import cli
from comfy_cluster.emulator.process import EmulatorThread

INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "comp"}},
}


@pytest.fixture
def servers(tmp_path):
    emus = [EmulatorThread(name=f"gpu-0{i}", base_dir=tmp_path / f"gpu{i}").start() for i in (1, 2)]
    path = tmp_path / "servers.json"
    path.write_text(json.dumps([{"name": e.name, "ip": "127.0.0.1", "port": e.port} for e in emus]))
    try:
        yield path
    finally:
        for e in emus:
            e.stop()


def _run(argv, capsys) -> tuple[int, str, str]:
    out = io.StringIO()
    code = cli.main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("comfy-cluster: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    code, _, err = _run(["render"], capsys)
    assert code == 2 and "required" in _one_error_line(err)
    code, _, err = _run(["--servers", str(tmp_path / "nope.json"), "status"], capsys)
    assert code == 2
    _one_error_line(err)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "gpu-01", "ip": "127.0.0.1", "port": 70000}]')
    code, _, err = _run(["--servers", str(bad), "config", "check"], capsys)
    assert code == 2 and "70000" in _one_error_line(err)


def test_missing_workflow_and_bad_frames(servers, tmp_path, capsys):
    code, _, err = _run(["--servers", str(servers), "render", str(tmp_path / "missing.json"), "--frames", "1-2",
                         "--output", str(tmp_path / "o.####.png")], capsys)
    assert code == 2 and "workflow file not found" in _one_error_line(err)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(INVERT))
    code, _, err = _run(["--servers", str(servers), "render", str(wf), "--frames", "10-1",
                         "--output", str(tmp_path / "o.####.png")], capsys)
    assert code == 2 and "frame range" in _one_error_line(err)
    code, _, err = _run(["--servers", str(servers), "render", str(wf), "--frames", "1-2",
                         "--input", "Plates.image=x.####.png", "--output", str(tmp_path / "o.####.png")], capsys)
    assert code == 2 and "Plates" in _one_error_line(err)


def test_status_json_and_table(servers, capsys):
    code, out, _ = _run(["--servers", str(servers), "status", "--json"], capsys)
    assert code == 0
    snap = json.loads(out)
    assert [s["name"] for s in snap["servers"]] == ["gpu-01", "gpu-02"]
    assert all(s["state"] == "online" for s in snap["servers"])
    code, out, _ = _run(["--servers", str(servers), "status"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("SERVER") and "gpu-02" in out


def test_config_check_tries_each_server(servers, tmp_path, capsys):
    code, out, _ = _run(["--servers", str(servers), "config", "check"], capsys)
    assert code == 0 and out.count("online") == 2
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps([{"name": "gone", "ip": "127.0.0.1", "port": 9}]))
    code, out, _ = _run(["--servers", str(dead), "config", "check"], capsys)
    assert code == 1 and "gone" in out


def test_info_shows_one_server(servers, capsys):
    code, out, _ = _run(["--servers", str(servers), "info", "gpu-02", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "gpu-02" and info["node_count"] > 5 and info["comfyui_version"]
    code, _, err = _run(["--servers", str(servers), "info", "gpu-09"], capsys)
    assert code == 2 and "gpu-09" in _one_error_line(err)


def test_render_then_failures_exit_1(servers, tmp_path, capsys):
    plates = tmp_path / "plates"
    plates.mkdir()
    for f in (1, 2, 3):
        Image.fromarray(np.full((4, 4, 3), 10 * f, np.uint8)).save(plates / f"p.{f}.png")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(INVERT))
    argv = ["--servers", str(servers), "render", str(wf), "--frames", "1-3",
            "--input", f"Plate.image={plates / 'p.#.png'}", "--output", str(tmp_path / "out" / "o.####.png")]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "3 frame(s) rendered, 0 already done, 0 failed" in out and "AVG RUN  AVG WAIT" in out
    with Image.open(tmp_path / "out" / "o.0002.png") as img:
        assert np.asarray(img)[0, 0, 0] == 235
    assert "3/3 done, 0 failed" in err  # the final progress line
    # frame 4 has no plate: a local problem, refused before anything is sent, one line, exit 2
    code, out, err = _run(argv[:5] + ["1-4"] + argv[6:], capsys)
    line = _one_error_line(err)
    assert code == 2 and f"{plates / 'p.4.png'}: not found" in line and "nothing was sent" in line


def test_submit_prints_the_output_files(servers, tmp_path, capsys):
    plate = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(plate)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(INVERT))
    code, out, err = _run(["--servers", str(servers), "submit", str(wf), "--input", f"1.image={plate}",
                           "--output", str(tmp_path / "o")], capsys)
    assert code == 0, err
    files = [Path(line) for line in out.splitlines()]
    assert len(files) == 1 and files[0].parent == tmp_path / "o" and files[0].is_file()


def test_demo_runs(tmp_path, capsys):
    code, out, err = _run(["demo", "--frames", "6", "--output", str(tmp_path / "demo")], capsys)
    assert code == 0, out + err
    assert "speed-up" in out and "pixel check: all 6 cluster and burst frames equal" in out
    assert "offline burst:" in out and "runpod: 6" in out and "cost $" in out
    assert len(list((tmp_path / "demo" / "cluster").glob("demo.*.png"))) == 6


def test_servers_file_keeps_runpod_from_the_environment(tmp_path, monkeypatch, capsys):
    """``--servers FILE`` replaces only the server list: RunPod still comes from the environment."""
    from comfy_cluster.emulator.runpod import RunPodEmulator

    emu = RunPodEmulator(endpoint_id="ep-file", api_key="rp-file-key-123456").start()
    try:
        monkeypatch.setenv("RUNPOD_API_KEY", "rp-file-key-123456")
        monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "ep-file")
        monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("NUKE_COMFYUI_RUNPOD", json.dumps({"base_url": emu.base_url}))
        path = tmp_path / "servers.json"
        path.write_text(json.dumps([{"name": "gpu-01", "ip": "127.0.0.1", "port": 9}]))
        code, out, err = _run(["--servers", str(path), "status", "--json"], capsys)
    finally:
        emu.stop()
    snapshot = json.loads(out)
    assert [s["name"] for s in snapshot["servers"]] == ["gpu-01"]
    assert snapshot["runpod"] is not None and snapshot["runpod"]["endpoint_id"] == "ep-file", snapshot["runpod"]


def test_an_os_error_at_the_edge_is_one_line_with_the_path_exit_2(servers, tmp_path, capsys):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(INVERT))
    for frame in (1, 2):
        Image.new("RGB", (4, 4)).save(tmp_path / f"p.{frame:04d}.png")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = _run(["--servers", str(servers), "render", str(workflow), "--frames", "1-2",
                         "--input", f"Plate.image={tmp_path}/p.####.png", "--output", f"{blocker}/x.####.png"], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(blocker) in line, line


class _Silent:
    """A TCP server that accepts connections and never answers (a hung ComfyUI), counting them."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_status_names_why_a_server_is_offline_and_probes_a_hung_server_once(servers, tmp_path, capsys):
    hung = _Silent()
    try:
        path = tmp_path / "with-hung.json"
        path.write_text(json.dumps([*json.loads(servers.read_text()), {"name": "hung", "ip": "127.0.0.1",
                                                                        "port": hung.port},
                                    {"name": "gone", "ip": "127.0.0.1", "port": 9}]))
        code, out, err = _run(["--servers", str(path), "status"], capsys)
        assert len(hung.accepted) == 1, "a one-shot status probes each server once and does not wait for more"
    finally:
        hung.close()
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-1] == "REASON"
    by_name = {row.split()[0]: row for row in rows}
    assert "offline" in by_name["gone"] and "refused" in by_name["gone"].lower(), by_name["gone"]
    assert "offline" in by_name["hung"] and "timed out" in by_name["hung"], by_name["hung"]
    assert by_name["gpu-01"].split()[1] == "online" and by_name["gpu-01"].rstrip().endswith(str(
        json.loads(servers.read_text())[0]["port"]))


def test_render_on_a_cluster_that_is_entirely_down_ends_with_every_reason(tmp_path, capsys):
    """Nothing can take the work: the progress line says why, and after --wait-for-server the
    batch ends, exit 1, one line per reason (each server, and RunPod's)."""
    for frame in (1, 2):
        Image.new("RGB", (4, 4)).save(tmp_path / f"p.{frame}.png")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(INVERT))
    path = tmp_path / "down.json"
    path.write_text(json.dumps([{"name": "gpu-01", "ip": "127.0.0.1", "port": 9},
                                {"name": "gpu-02", "ip": "127.0.0.1", "port": 9, "enabled": False}]))
    code, out, err = _run(["--servers", str(path), "render", str(wf), "--frames", "1-2", "--wait-for-server", "1",
                           "--input", f"Plate.image={tmp_path / 'p.#.png'}", "--output", str(tmp_path / "o.#.png")],
                          capsys)
    assert code == 1, err
    assert "2 failed" in out
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  frames 1-2: no backend could take the work"))
    reasons = lines[start + 1:start + 4]
    assert reasons[0].startswith("    gpu-01: offline (") and "refused" in reasons[0].lower(), reasons
    assert reasons[1] == "    gpu-02: disabled (switched off)"
    assert reasons[2].startswith("    runpod: not configured")
    assert "nothing can run: gpu-01: offline" in err   # the progress line said why meanwhile


def test_wait_for_server_must_be_a_number(capsys):
    code, _, err = _run(["render", "wf.json", "--frames", "1", "--output", "o.#.png", "--wait-for-server", "soon"],
                        capsys)
    assert code == 2 and "--wait-for-server" in _one_error_line(err)


def test_progress_line_shows_a_frame_waiting_far_past_its_servers_speed(tmp_path, monkeypatch):
    from comfy_cluster import batch as batch_module, run
    from tests.helpers import wait_until
    from tests.test_run import WORKFLOW, FakeBackend, FakePool

    monkeypatch.setattr(batch_module, "FAR_PAST_MIN", 0.2)
    release = threading.Event()
    slow = FakeBackend("slow", behaviour=lambda b, r, c: release.wait(30))
    slow.seconds_per_job = 0.01   # measured: 10 ms per job
    batch = run.animation_submit(WORKFLOW, pool=FakePool(slow), frames="7", output=str(tmp_path / "o.#.png"))
    progress = cli.Progress(1, io.StringIO(), batch=batch)
    try:
        assert wait_until(batch.overdue, what="frame 7 overdue")
        assert "waiting: frame 7 on slow " in progress.line() and "(s/job 0.0s)" in progress.line()
    finally:
        release.set()
    assert batch.result(30).ok and batch.overdue() == []
