"""The real-component fixtures themselves: own directories, custom nodes linked in, kill, loud failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from comfy_cluster.client import ComfyClient
from comfy_cluster.errors import ServerUnavailable
from comfy_cluster.tracker import PromptTracker
from tests.helpers import wait_until
from tests.real_components import (
    CONTRACT_NODES,
    RealComfyUIFailed,
    RealComponentsMissing,
    real_layout,
    start_real_comfyui,
)

ROOT = Path(__file__).resolve().parents[2]

NODE_PACKAGE = '''
class ContractProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "comfy-cluster/test"
    def run(self, value):
        return (value,)

NODE_CLASS_MAPPINGS = {"ContractProbe": ContractProbe}
'''


def test_factory_server_has_its_own_dirs_and_linked_custom_nodes(real_comfyui_factory, tmp_path: Path) -> None:
    package = tmp_path / "src" / "contract_probe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(NODE_PACKAGE)
    server = real_comfyui_factory(custom_nodes=[package, CONTRACT_NODES])

    info = requests.get(f"{server.url}/object_info/ContractProbe", timeout=10).json()
    assert info["ContractProbe"]["category"] == "comfy-cluster/test"
    assert (server.base_dir / "custom_nodes" / "contract_probe").resolve() == package.resolve()
    argv = requests.get(f"{server.url}/system_stats", timeout=10).json()["system"]["argv"]
    for flag, value in (("--output-directory", server.output_dir), ("--input-directory", server.input_dir),
                        ("--user-directory", server.user_dir), ("--port", server.port)):
        assert argv[argv.index(flag) + 1] == str(value)
    assert (server.base_dir / "comfyui.db").exists()

    # A fault: the server dies under a running prompt; the client's watch says so, it does not hang.
    client = ComfyClient(server.url, name="doomed")
    tracker = PromptTracker(client, "doomed-client", poll_interval=0.2)
    tracker.unreachable_after = 1.0  # seconds of failed polls, socket down, before ServerUnavailable
    tracker.start()
    try:
        assert tracker.wait_connected(30)
        watch = tracker.watch("doomed-prompt")
        hold = {"class_type": "ContractHold", "inputs": {"token": "doomed", "seconds": 120.0}}
        client.submit({"hold": hold, "save": {"class_type": "SaveImage", "inputs": {"images": ["hold", 0],
                                                                               "filename_prefix": "doomed"}}},
                      client_id="doomed-client", prompt_id="doomed-prompt")
        wait_until(lambda: client.get_queue().running, timeout=30, what="the held prompt running")
        server.kill()
        assert not server.alive
        with pytest.raises(ServerUnavailable):
            watch.wait(60)
    finally:
        tracker.stop()
        client.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/system_stats", timeout=5)


def test_a_server_that_cannot_start_fails_with_its_log(real_install, tmp_path: Path) -> None:
    with pytest.raises(RealComfyUIFailed, match="unrecognized arguments: --no-such-flag"):
        start_real_comfyui(tmp_path / "bad", extra_args=["--no-such-flag"], layout=real_install, timeout=60)


def test_a_missing_install_names_the_setup_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMFY_CLUSTER_REAL_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(RealComponentsMissing, match="setup_real_components.py"):
        real_layout()


@pytest.mark.parametrize("skip, outcome", [(None, "1 error"), ("1", "1 skipped")])
def test_without_an_install_real_tests_fail_unless_skipping_is_asked_for(tmp_path: Path, skip: str | None,
                                                                         outcome: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_CLUSTER_")}
    env.update(COMFY_CLUSTER_REAL_HOME=str(tmp_path / "no-install"), PYTHONPATH=str(ROOT))
    if skip:
        env["COMFY_CLUSTER_SKIP_REAL"] = skip
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/contract/test_comfyui_http.py::test_system_stats"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert f"1 passed, {outcome}" in done.stdout, done.stdout[-2000:]
    assert "setup_real_components.py" in done.stdout
    assert (done.returncode == 0) == bool(skip)
