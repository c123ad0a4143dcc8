"""The Nuke status panel shows a tunnelled server's tunnel and its state (offscreen Qt, a real sshd)."""

from __future__ import annotations

import os

from tests.fake_nuke import install

install()
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from comfy_cluster.config import ServerConfig  # noqa: E402
from comfy_cluster.pool import ComfyUIServerPool  # noqa: E402
from nuke_menu import core  # noqa: E402
from nuke_menu.panel import COLUMNS, StatusPanel  # noqa: E402
from tests.sshd import sshd, state  # noqa: E402,F401 - fixtures


def test_the_panel_shows_the_tunnel_and_its_state(qtbot, sshd, state, emulator):
    cfg = ServerConfig.from_dict({"name": "gpu-ssh", "ip": "192.0.2.10", "port": emulator.port,
                                  "ssh": sshd.ssh_config()})
    pool = ComfyUIServerPool([cfg], poll_interval=0.2).start()
    core.set_shared_pool(pool, None)
    panel = StatusPanel(interval_ms=100)
    qtbot.addWidget(panel)
    column = COLUMNS.index("Address")

    def shows(words: str) -> bool:
        panel.refresh()
        if panel.table.rowCount() == 0:   # never ask Qt for a missing item: PySide6 mis-counts the None it returns
            return False
        item = panel.table.item(0, column)
        return f"via {words}" in item.text() and item.toolTip().startswith(words)
    try:
        qtbot.waitUntil(lambda: shows(f"ssh {sshd.user}@127.0.0.1:{sshd.port} -> 127.0.0.1:"), timeout=30000)
        qtbot.waitUntil(lambda: (panel.refresh(), " up (pid " in panel.table.item(0, column).toolTip()
                                 and panel.table.item(0, COLUMNS.index("State")).text() == "online")[1],
                        timeout=30000)
    finally:
        panel.close()
        for thread in panel.threads:
            thread.join(timeout=10)
        pool.close()
