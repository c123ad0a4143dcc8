"""Make the ComfyUI screenshots in docs/ (not part of the tests).

Starts two emulated servers plus one that is then killed, the RunPod emulator and the real
ComfyUI 0.3.64 with the package, runs a Remote Render graph from the page, and saves:

- docs/comfyui_remote_render.png: the graph after a cluster run, with the node's preview
- docs/comfyui_min_workers.png:   the top bar with the min-workers button (after a click)
- docs/comfyui_cluster_tab.png:   the Cluster tab, one server offline

Run from the repository: ``PYTHONPATH=$PWD python scripts/comfyui_screenshots.py``.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfy_cluster.emulator.process import EmulatorProcess, EmulatorThread  # noqa: E402
from comfy_cluster.emulator.runpod import RunPodEmulator  # noqa: E402
from tests.comfyui_browser import comfy_page, seed_user_settings  # noqa: E402
from tests.comfyui_real_helpers import CORE_ENV, EID, KEY, PACKAGE, runpod_env  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.real_components import start_real_comfyui  # noqa: E402

log = logging.getLogger("comfyui_screenshots")
DOCS = REPO / "docs"

GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ComfyClusterRemoteRender", "inputs": {"mode": "cluster", "image": ["2", 0],
                                                              "workflow_json": "", "input_binding": "LoadImage.image"}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
}


def plate(path: Path) -> None:
    """A 384x256 gradient with a disc, so the preview shows something."""
    y, x = np.mgrid[0:256, 0:384]
    rgb = np.stack([x / 383, y / 255, 0.5 + 0.5 * np.sin(x / 40.0)], axis=-1)
    disc = (x - 192) ** 2 + (y - 128) ** 2 < 70 ** 2
    rgb[disc] = [0.95, 0.85, 0.2]
    Image.fromarray((255 * rgb).astype(np.uint8)).save(path)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="comfy-cluster-shots-"))
    servers = [EmulatorProcess(name=name).start() for name in ("gpu-01", "gpu-02", "gpu-03")]
    worker = EmulatorThread(name="rp-worker").start()
    runpod = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[worker.url],
                            endpoint_settings={"workersMax": 3}).start()
    comfy = None
    try:
        seed_user_settings(work / "comfyui" / "user")
        env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": s.name, "ip": "127.0.0.1", "port": s.port}
                                                   for s in servers]),
               "NUKE_COMFYUI_POLL_INTERVAL": "0.5", "COMFY_CLUSTER_STATE_DIR": str(work / "state"),
               **runpod_env(runpod), **CORE_ENV}
        comfy = start_real_comfyui(work / "comfyui", custom_nodes=(PACKAGE,), env=env)
        plate(comfy.input_dir / "plate.png")
        with comfy_page(comfy.url, width=1500, height=860) as (page, _errors):
            page.evaluate("(g) => window.app.loadApiJson(g, 'remote_render.json')", GRAPH)
            page.evaluate("() => window.app.queuePrompt(0, 1)")
            wait_until(lambda: any(h.get("status", {}).get("completed")
                                   for h in requests.get(f"{comfy.url}/history", timeout=10).json().values()),
                       120, "the Remote Render run", interval=0.2)
            page.wait_for_timeout(1500)       # let the canvas draw the preview
            page.screenshot(path=str(DOCS / "comfyui_remote_render.png"))
            log.info("wrote docs/comfyui_remote_render.png")

            button = page.locator("button.comfy-cluster-min-workers")
            wait_until(lambda: "Cost Saving" in button.inner_text(), 30, "the min-workers label")
            button.click()
            wait_until(lambda: "Always Ready" in button.inner_text(), 30, "the flipped label")
            page.locator(".p-toast-message").first.wait_for(timeout=10_000)
            page.screenshot(path=str(DOCS / "comfyui_min_workers.png"),
                            clip={"x": 0, "y": 0, "width": 1500, "height": 200})
            log.info("wrote docs/comfyui_min_workers.png")

            servers[2].kill()
            page.evaluate("(id) => window.app.extensionManager.command.execute(id)",
                          "Workspace.ToggleSidebarTab.comfy-cluster")
            row = page.locator('.comfy-cluster-server[data-server="gpu-03"] td.state')
            row.wait_for(timeout=30_000)
            wait_until(lambda: row.inner_text() == "offline", 60, "gpu-03 offline in the tab")
            page.screenshot(path=str(DOCS / "comfyui_cluster_tab.png"))
            log.info("wrote docs/comfyui_cluster_tab.png")
    finally:
        if comfy is not None:
            comfy.stop()
        runpod.stop()
        worker.stop()
        for server in servers:
            server.kill()
            server.stop()


if __name__ == "__main__":
    main()
