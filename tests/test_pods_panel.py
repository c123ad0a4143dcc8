"""The status panel's pod rows and buttons, offscreen, against the pods emulator."""

from __future__ import annotations

import os

import pytest

from tests.fake_nuke import install

install()
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from comfy_cluster.config import ClusterConfig, ServerConfig  # noqa: E402
from comfy_cluster.emulator.pods import PodsEmulator  # noqa: E402
from comfy_cluster.pool import ComfyUIServerPool  # noqa: E402
from nuke_menu.panel import StatusPanel  # noqa: E402
from tests.test_autoscale import GPU_A, KEY, policy_for  # noqa: E402


@pytest.fixture
def pods_emu():
    emu = PodsEmulator(api_key=KEY, provision_s=0.1, start_s=0.1, comfy_boot_s=0.1).start()
    try:
        yield emu
    finally:
        emu.stop()


def test_pod_rows_spawn_terminate_and_shutdown_all(qtbot, pods_emu, emulator, tmp_path):
    env = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state")}
    cfg = ClusterConfig(servers=[ServerConfig(name="local", ip="127.0.0.1", port=emulator.port)], source="test",
                        pods=policy_for(pods_emu, idle_s=60.0))
    pool = ComfyUIServerPool.from_config(cfg, environ=env, poll_interval=0.2).start()
    panel = StatusPanel(pool=pool, interval_ms=100)
    qtbot.addWidget(panel)
    try:
        box = panel.pods_box
        assert not box.isHidden() and box.table.rowCount() == 0
        box.spawn_button.click()
        qtbot.waitUntil(lambda: box.table.rowCount() == 1, timeout=10_000)
        assert box.table.item(0, 1).text() == GPU_A and box.table.item(0, 2).text() == "$0.69"
        assert len(pods_emu.pods) == 1
        box.table.selectRow(0)
        box.terminate_button.click()
        qtbot.waitUntil(lambda: box.table.rowCount() == 0 and not pods_emu.pods, timeout=10_000)
        box.spawn_button.click()
        qtbot.waitUntil(lambda: len(pods_emu.pods) == 1, timeout=10_000)
        box.spawn_button.click()
        qtbot.waitUntil(lambda: box.table.rowCount() == 2, timeout=10_000)
        box.shutdown_button.click()
        qtbot.waitUntil(lambda: box.table.rowCount() == 0 and not pods_emu.pods, timeout=10_000)
    finally:
        panel.close()
        pool.close()
    assert not pods_emu.pods
