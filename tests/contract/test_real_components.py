"""The real-component fixtures themselves: own directories, custom nodes linked in, loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.real_components import RealComfyUIFailed, RealComponentsMissing, real_layout, start_real_comfyui

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
    server = real_comfyui_factory(custom_nodes=[package])

    info = requests.get(f"{server.url}/object_info/ContractProbe", timeout=10).json()
    assert info["ContractProbe"]["category"] == "comfy-cluster/test"
    assert (server.base_dir / "custom_nodes" / "contract_probe").resolve() == package.resolve()
    argv = requests.get(f"{server.url}/system_stats", timeout=10).json()["system"]["argv"]
    for flag, value in (("--output-directory", server.output_dir), ("--input-directory", server.input_dir),
                        ("--user-directory", server.user_dir), ("--port", server.port)):
        assert argv[argv.index(flag) + 1] == str(value)
    assert (server.base_dir / "comfyui.db").exists()

    server.kill()
    assert not server.alive
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/system_stats", timeout=5)


def test_a_server_that_cannot_start_fails_with_its_log(real_install, tmp_path: Path) -> None:
    with pytest.raises(RealComfyUIFailed, match="unrecognized arguments: --no-such-flag"):
        start_real_comfyui(tmp_path / "bad", extra_args=["--no-such-flag"], layout=real_install, timeout=60)


def test_a_missing_install_names_the_setup_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMFY_CLUSTER_REAL_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(RealComponentsMissing, match="setup_real_components.py"):
        real_layout()
