"""Regenerate the README's panel screenshot (docs/panel.png) from a live emulated cluster.

    QT_QPA_PLATFORM=offscreen python scripts/panel_screenshot.py [--output docs/panel.png]

Four emulated ComfyUI servers (one then killed, so it shows offline), an emulated RunPod
endpoint and one running batch, drawn by the real status panel. Tests run this script with
``--output`` in a temporary folder; nothing here runs as part of importing the package.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
KEY = "emu-key-not-secret"
EID = "nukeemu01"


def _until(app: object, condition: Callable[[], bool], panel: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"panel_screenshot: {what} not reached within {timeout:g} s")
        panel.refresh()            # type: ignore[attr-defined]
        app.processEvents()        # type: ignore[attr-defined]
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "panel.png")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["RUNPOD_API_KEY"] = KEY
    sys.path.insert(0, str(ROOT))

    from comfy_cluster.config import RunPodConfig, ServerConfig
    from comfy_cluster.emulator.process import EmulatorThread
    from comfy_cluster.emulator.runpod import RunPodEmulator
    from comfy_cluster.pool import ComfyUIServerPool
    from comfy_cluster.runpod import RunPodEndpoint
    from comfy_cluster.runpod_admin import RunPodAdmin
    from nuke_menu import core
    from nuke_menu.panel import StatusPanel
    from nuke_menu.qt import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    servers = [EmulatorThread(seconds_per_job=0.1, name=f"gpu-0{i}").start() for i in (1, 2, 3, 4)]
    rp = RunPodEmulator(endpoint_id=EID, api_key=KEY, workers=1).start()
    with tempfile.TemporaryDirectory() as state:
        cfg = RunPodConfig(endpoint_id=EID, base_url=rp.base_url, admin_url=f"{rp.url}/v1",
                           admin_v2_url=f"{rp.url}/v2", graphql_url=f"{rp.url}/graphql", daily_budget=5.0)
        endpoint = RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": KEY}, poll_interval=0.3).start()
        admin = RunPodAdmin(cfg, environ={"RUNPOD_API_KEY": KEY}, state_dir=Path(state), timeout=5.0)
        configs = [ServerConfig(name=e.name, ip="127.0.0.1", port=e.port, priority=i)
                   for i, e in enumerate(servers, 1)]
        pool = ComfyUIServerPool(configs, poll_interval=0.2, offline_after=0.5, runpod=endpoint).start()
        core.set_shared_pool(pool, admin)
        panel = StatusPanel(interval_ms=100)
        try:
            panel.resize(1000, 430)
            panel.show()
            _until(app, lambda: len(panel.server_names()) == 4 and all(
                panel.cell(n, "State") == "online" for n in panel.server_names())
                and panel.runpod_labels["workers"].text() != "-/-", panel, 60, "every server online")
            servers[1].stop()
            _until(app, lambda: panel.cell("gpu-02", "State") == "offline", panel, 60, "gpu-02 offline")

            class Work:
                progress = (14, 0, 24)

            entry = core.register("ComfyUIRender1 (frame range, 24 frames)", Work())
            entry.servers = {"gpu-01": 5, "gpu-03": 5, "gpu-04": 4}
            try:
                _until(app, lambda: len(panel.batch_bars) == 1, panel, 30, "the batch bar")
                args.output.parent.mkdir(parents=True, exist_ok=True)
                if not panel.grab().save(str(args.output)):
                    raise SystemExit(f"panel_screenshot: could not write {args.output}")
            finally:
                core.finish(entry)
        finally:
            panel.close()
            for thread in panel.threads:
                thread.join(timeout=10)
            pool.close()
            endpoint.stop()
            core.set_shared_pool(None)
            rp.stop()
            for emu in servers:
                emu.stop()
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
