"""env.py: the single-server plugin's names, read at call time, over config.py."""

from __future__ import annotations

import json
import os

import pytest

import env
from comfy_cluster.config import ServerConfig
from comfy_cluster.errors import ConfigError

CLUSTER = [
    {"name": "slow", "ip": "192.168.1.190", "port": 8190, "priority": 3},
    {"name": "off", "ip": "192.168.1.191", "port": 8191, "priority": 0, "enabled": False},
    {"name": "main", "ip": "192.168.1.187", "port": 8188, "priority": 1,
     "dir_local": "U:/", "dir_remote": "/home/kmmuser/ComfyUI/"},
    {"name": "twin", "ip": "192.168.1.188", "port": 8189, "priority": 1},
]


def test_servers_are_validated_configs() -> None:
    servers = env.NUKE_COMFYUI_SERVERS({"NUKE_COMFYUI_SERVERS": json.dumps(CLUSTER)})
    assert all(isinstance(s, ServerConfig) for s in servers)
    assert [s.name for s in servers] == ["slow", "off", "main", "twin"]


def test_single_server_names_answer_for_the_first_enabled_server_by_priority() -> None:
    environ = {"NUKE_COMFYUI_SERVERS": json.dumps(CLUSTER)}
    assert env.NUKE_COMFYUI_IP(environ) == "192.168.1.187"     # "off" has priority 0 but is disabled
    assert env.NUKE_COMFYUI_PORT(environ) == 8188              # "main" wins the tie with "twin" by order
    assert env.NUKE_COMFYUI_DIR_LOCAL(environ) == "U:/"
    assert env.NUKE_COMFYUI_DIR_REMOTE(environ) == "/home/kmmuser/ComfyUI/"


def test_all_disabled_falls_back_to_the_first_by_priority() -> None:
    cluster = [dict(s, enabled=False) for s in CLUSTER]
    assert env.NUKE_COMFYUI_IP({"NUKE_COMFYUI_SERVERS": json.dumps(cluster)}) == "192.168.1.191"


def test_legacy_variables_and_defaults() -> None:
    assert (env.NUKE_COMFYUI_IP({}), env.NUKE_COMFYUI_PORT({})) == ("127.0.0.1", 8188)
    assert (env.NUKE_COMFYUI_DIR_LOCAL({}), env.NUKE_COMFYUI_DIR_REMOTE({})) == ("", "")
    legacy = {"NUKE_COMFYUI_IP": "10.10.10.10", "NUKE_COMFYUI_PORT": "8189",
              "NUKE_COMFYUI_DIR_LOCAL": "//10.10.10.10/shares/ComfyUI", "NUKE_COMFYUI_DIR_REMOTE": "/home/user/ComfyUI/"}
    assert env.NUKE_COMFYUI_IP(legacy) == "10.10.10.10"
    port = env.NUKE_COMFYUI_PORT(legacy)
    assert port == 8189 and isinstance(port, int)
    assert env.NUKE_COMFYUI_DIR_LOCAL(legacy) == "//10.10.10.10/shares/ComfyUI"


def test_reads_os_environ_at_call_time_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.NUKE_COMFYUI_IP() == "127.0.0.1"
    monkeypatch.setenv("NUKE_COMFYUI_IP", "10.0.0.42")
    assert env.NUKE_COMFYUI_IP() == "10.0.0.42"
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", json.dumps(CLUSTER[2:]))
    assert env.NUKE_COMFYUI_IP() == "192.168.1.187"
    assert os.environ["NUKE_COMFYUI_IP"] == "10.0.0.42"  # the cluster variable wins over the legacy one


def test_invalid_configuration_raises_named_error() -> None:
    with pytest.raises(ConfigError, match=r"^NUKE_COMFYUI_PORT: must be between 1 and 65535, got 0$"):
        env.NUKE_COMFYUI_PORT({"NUKE_COMFYUI_PORT": "0"})
    with pytest.raises(ConfigError, match=r"^NUKE_COMFYUI_SERVERS: invalid JSON"):
        env.NUKE_COMFYUI_SERVERS({"NUKE_COMFYUI_SERVERS": "[{"})


def test_proxy_variables_never_reach_a_test(tmp_path) -> None:
    """conftest clears HTTP(S)_PROXY, ALL_PROXY and NO_PROXY in every case before each test."""
    import subprocess
    import sys
    from pathlib import Path

    probe = tmp_path / "test_probe.py"
    probe.write_text("import os\n\ndef test_clean():\n"
                     "    left = sorted(k for k in os.environ if 'proxy' in k.lower())\n"
                     "    assert left == [], left\n")
    proxies = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                                                       "ALL_PROXY", "NO_PROXY", "no_proxy")}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(probe)], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **proxies})
    assert done.returncode == 0, done.stdout + done.stderr
