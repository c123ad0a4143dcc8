"""The server status panel, offscreen, against live emulated servers and a RunPod emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.fake_nuke import install
from tests.helpers import named_child, wait_until

install()
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from comfy_cluster.config import RunPodConfig, ServerConfig  # noqa: E402
from comfy_cluster.emulator.process import EmulatorProcess, EmulatorThread  # noqa: E402
from comfy_cluster.emulator.runpod import RunPodEmulator  # noqa: E402
from comfy_cluster.pool import ComfyUIServerPool  # noqa: E402
from comfy_cluster.runpod import RunPodEndpoint  # noqa: E402
from comfy_cluster.runpod_admin import RunPodAdmin  # noqa: E402
from nuke_menu import core  # noqa: E402
from nuke_menu.panel import COLUMNS, StatusPanel  # noqa: E402
from nuke_menu.qt import QtWidgets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EID, KEY = "nukeemu01", "emu-key-not-secret"


def drain(qtbot, panel: StatusPanel, condition, timeout: float = 10.0) -> None:
    """Let the panel's timer run until ``condition()`` holds."""
    qtbot.waitUntil(lambda: (panel.refresh(), condition())[1], timeout=int(timeout * 1000))


@pytest.fixture
def servers():
    procs = [EmulatorProcess(seconds_per_job=0.1, name=f"gpu-0{i}").start() for i in (1, 2)]
    threads = [EmulatorThread(seconds_per_job=0.1, name=f"gpu-0{i}") .start() for i in (3, 4)]
    try:
        yield procs + threads
    finally:
        for emu in procs + threads:
            emu.stop()


@pytest.fixture
def runpod(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, workers=1).start()
    cfg = RunPodConfig(endpoint_id=EID, base_url=emu.base_url, admin_url=f"{emu.url}/v1",
                       admin_v2_url=f"{emu.url}/v2", graphql_url=f"{emu.url}/graphql", daily_budget=5.0)
    endpoint = RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": KEY}, poll_interval=0.3).start()
    admin = RunPodAdmin(cfg, environ={"RUNPOD_API_KEY": KEY}, state_dir=tmp_path / "state", timeout=5.0)
    try:
        yield emu, endpoint, admin
    finally:
        endpoint.stop()
        emu.stop()


@pytest.fixture
def panel_for(qtbot):
    made = []

    def make(servers, runpod=None):
        configs = [ServerConfig(name=f"gpu-0{i}", ip="127.0.0.1", port=e.port, priority=i)
                   for i, e in enumerate(servers, 1)]
        pool = ComfyUIServerPool(configs, poll_interval=0.2, offline_after=0.5,
                                 runpod=runpod[1] if runpod else None).start()
        core.set_shared_pool(pool, runpod[2] if runpod else None)
        panel = StatusPanel(interval_ms=100)   # as Nuke builds it: no pool passed in
        qtbot.addWidget(panel)
        made.append((pool, panel))
        return pool, panel

    yield make
    for pool, panel in made:
        panel.close()
        for thread in panel.threads:
            thread.join(timeout=10)
        pool.close()
    core.set_shared_pool(None)


def test_rows_appear_and_a_killed_server_turns_offline(qtbot, servers, panel_for):
    pool, panel = panel_for(servers)
    drain(qtbot, panel, lambda: panel.server_names() == ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]
          and all(panel.cell(n, "State") == "online" for n in panel.server_names()))
    assert panel.cell("gpu-01", "Address") == servers[0].url
    assert panel.cell("gpu-02", "Priority") == "2"
    assert "cuda" not in panel.cell("gpu-01", "GPU") and "GB" in panel.cell("gpu-01", "VRAM free/total")
    assert panel.summary.text() == "4 of 4 servers online"

    gpu = panel.cell("gpu-02", "GPU")
    servers[1].kill()
    drain(qtbot, panel, lambda: panel.cell("gpu-02", "State") == "offline", timeout=15)
    assert panel.cell("gpu-01", "State") == "online"
    assert panel.summary.text() == "3 of 4 servers online"
    # an offline server's GPU and VRAM are not current: blank, the last values only in the tooltip
    assert panel.cell("gpu-02", "GPU") == "-" and panel.cell("gpu-02", "VRAM free/total") == "-"
    assert "GB" in panel.cell("gpu-01", "VRAM free/total")
    row = panel.server_names().index("gpu-02")
    assert panel.table.item(row, COLUMNS.index("GPU")).toolTip().startswith(f"last seen: {gpu}, VRAM ")


def test_the_enable_switch_disables_the_server_in_the_pool(qtbot, servers, panel_for):
    pool, panel = panel_for(servers[2:])
    drain(qtbot, panel, lambda: panel.server_names() == ["gpu-01", "gpu-02"])
    switch = named_child(panel, QtWidgets.QCheckBox, "enable:gpu-02")
    assert switch.isChecked()
    switch.setChecked(False)   # as a click does: toggled -> worker thread -> pool.disable
    wait_until(lambda: not pool.get_server_by_name("gpu-02").enabled, timeout=5)
    drain(qtbot, panel, lambda: panel.cell("gpu-02", "State") == "disabled")
    assert not named_child(panel, QtWidgets.QCheckBox, "enable:gpu-02").isChecked() and pool.get_server_by_name("gpu-01").enabled
    named_child(panel, QtWidgets.QCheckBox, "enable:gpu-02").setChecked(True)
    wait_until(lambda: pool.get_server_by_name("gpu-02").enabled, timeout=5)


def test_the_always_on_toggle_reaches_the_endpoint_admin(qtbot, servers, runpod, panel_for):
    emu = runpod[0]
    pool, panel = panel_for(servers[2:], runpod)
    drain(qtbot, panel, lambda: panel.runpod_box.isVisible() or panel.runpod_labels["workers"].text() != "-")
    drain(qtbot, panel, lambda: panel.runpod_labels["workers"].text().startswith("0/"))
    assert not panel.always_on.isChecked() and panel.always_on.isEnabled()
    panel.always_on.setChecked(True)
    wait_until(lambda: emu.endpoint(EID)["workersMin"] == 1, timeout=15)
    drain(qtbot, panel, lambda: panel.runpod_labels["workers"].text().startswith("1/"))
    assert panel.always_on.isChecked()
    assert "$" in panel.runpod_labels["spend"].text() and "of $5.00" in panel.runpod_labels["spend"].text()
    panel.always_on.setChecked(False)
    wait_until(lambda: emu.endpoint(EID)["workersMin"] == 0, timeout=15)


def test_active_batches_show_progress_bars(qtbot, servers, panel_for):
    pool, panel = panel_for(servers[2:])

    class Work:
        progress = (3, 1, 8)

    entry = core.register("ComfyUIRender1 (frame range, 8 frames)", Work())
    entry.servers = {"gpu-01": 2, "gpu-02": 1}
    try:
        drain(qtbot, panel, lambda: len(panel.batch_bars) == 1)
        label, bar = next(iter(panel.batch_bars.values()))
        assert (bar.value(), bar.maximum()) == (4, 8) and not panel.no_batches.isVisibleTo(panel)
        assert label.text() == "ComfyUIRender1 (frame range, 8 frames): 3/8 done, 1 failed (gpu-01: 2, gpu-02: 1)"
    finally:
        core.finish(entry)
    drain(qtbot, panel, lambda: not panel.batch_bars)


def test_the_screenshot_script_draws_the_panel_outside_the_tree(tmp_path):
    """docs/panel.png is made by scripts/panel_screenshot.py; a test never writes into the tree."""
    target = tmp_path / "panel.png"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "panel_screenshot.py"), "--output", str(target)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=110,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == str(target) and target.stat().st_size > 5000
    with Image.open(target) as image:
        assert image.size == (1000, 430)
