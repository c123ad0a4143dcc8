"""The package's frontend in the real ComfyUI 1.27.10 page, in headless Chromium: the
min-workers button shows the RunPod emulator's state and flips it, the Cluster tab lists the
servers and follows a killed one to offline through pushed events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_cluster.emulator.runpod import RunPodEmulator

from .comfyui_browser import comfy_page, seed_user_settings
from .helpers import wait_until
from .comfyui_real_helpers import CORE_ENV, EID, KEY, PACKAGE, require_core, runpod_env

BUTTON = "button.comfy-cluster-min-workers"
ROW = '.comfy-cluster-server[data-server="{}"] td.state'
TAB_COMMAND = "Workspace.ToggleSidebarTab.comfy-cluster"


@pytest.fixture
def page_stack(real_install, real_comfyui_factory, emulator_factory, emulator_thread_factory, tmp_path: Path):
    require_core(real_install)
    servers = [emulator_factory(name=f"gpu-0{i}") for i in (1, 2)]
    worker = emulator_thread_factory(name="rp-worker")
    runpod = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[worker.url],
                            endpoint_settings={"workersMax": 2}).start()
    base = tmp_path / "comfyui"
    seed_user_settings(base / "user")
    env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": s.name, "ip": "127.0.0.1", "port": s.port} for s in servers]),
           "NUKE_COMFYUI_POLL_INTERVAL": "0.5", "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state"),
           **runpod_env(runpod), **CORE_ENV}
    try:
        comfy = real_comfyui_factory(base, custom_nodes=(PACKAGE,), env=env)
        yield comfy, servers, runpod
    finally:
        runpod.stop()


def test_min_workers_button_shows_and_flips_the_endpoint(page_stack) -> None:
    comfy, _, runpod = page_stack
    with comfy_page(comfy.url) as (page, errors):
        button = page.locator(BUTTON)
        button.wait_for(timeout=30_000)
        wait_until(lambda: button.inner_text().strip() == "Min Workers: 0 (Cost Saving)", 30, "the cold label")
        runpod.set(admin_delay_s=3.0)
        button.click()
        wait_until(lambda: "setting 1" in button.inner_text(), 10, "the loading label")
        assert button.is_disabled() and runpod.endpoint()["workersMin"] == 0
        wait_until(lambda: runpod.endpoint()["workersMin"] == 1, 30, "workersMin 1 on the endpoint")
        runpod.set(admin_delay_s=0.0)
        wait_until(lambda: button.inner_text().strip() == "Min Workers: 1 (Always Ready)", 30, "the warm label")
        toast = page.locator(".p-toast-message").first
        toast.wait_for(timeout=10_000)
        assert "Min workers 0 -> 1" in toast.inner_text()
        button.click()
        wait_until(lambda: button.inner_text().strip() == "Min Workers: 0 (Cost Saving)", 30, "the cold label again")
        assert runpod.endpoint()["workersMin"] == 0
        runpod.set(admin_apis=())                      # every admin API answers 404 now
        page.evaluate("() => window.app.extensionManager.toast.removeAll()")
        button.click()
        failure = page.locator(".p-toast-message-error").first
        failure.wait_for(timeout=30_000)
        assert "RunPod min workers" in failure.inner_text()
        wait_until(lambda: button.inner_text().strip() == "Min Workers: 0 (Cost Saving)", 30, "the label kept")
        assert not button.is_disabled()
        page_text = page.content()
    assert KEY not in page_text and EID not in page_text
    assert not [e for e in errors if "Error loading extension" in e or "comfy_cluster" in e], errors


def test_cluster_tab_lists_the_servers_and_follows_a_kill(page_stack) -> None:
    comfy, servers, _ = page_stack
    with comfy_page(comfy.url) as (page, errors):
        page.evaluate(f"() => window.app.extensionManager.command.execute({json.dumps(TAB_COMMAND)})")
        for server in servers:
            page.locator(ROW.format(server.name)).wait_for(timeout=30_000)
        wait_until(lambda: all(page.locator(ROW.format(s.name)).inner_text() == "online" for s in servers), 30,
                   "both servers online in the tab")
        assert page.locator(ROW.format("runpod")).count() == 1
        servers[1].kill()
        wait_until(lambda: page.locator(ROW.format("gpu-02")).inner_text() == "offline", 60,
                   "the killed server offline in the tab")
        assert page.locator(ROW.format("gpu-01")).inner_text() == "online"
    assert not [e for e in errors if "Error loading extension" in e], errors
