"""Shared fixtures. Every test starts with no comfy-cluster, RunPod or proxy variables set."""

from __future__ import annotations

import os

import pytest

from comfy_cluster.emulator.process import START_TIMEOUT
from tests.real_components import real_comfyui, real_comfyui_factory, real_install  # noqa: F401 - fixtures

_PREFIXES = ("NUKE_COMFYUI_", "RUNPOD_", "COMFY_CLUSTER_")
_KEEP = ("COMFY_CLUSTER_REAL_HOME", "COMFY_CLUSTER_SKIP_REAL")  # test infrastructure (tests/real_components.py)
#: Proxy settings, in every case (requests reads both): a proxy would take loopback traffic.
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A studio machine's own settings (and its proxies) must never leak into a test, nor one
    test's state (RunPod ledger, result cache, config backups) into another: each test gets its own state dir."""
    for key in list(os.environ):
        if (key.startswith(_PREFIXES) and key not in _KEEP) or key.lower() in _PROXY_VARS:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def emulator():
    """A started in-process ComfyUI emulator (port 0, instant jobs), stopped at teardown."""
    from comfy_cluster.emulator.process import EmulatorThread

    emu = EmulatorThread(name="emu").start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator_thread_factory():
    """Make more in-process emulators: ``emulator_thread_factory(name="gpu-02", seconds_per_job=0.2)``."""
    from comfy_cluster.emulator.process import EmulatorThread

    started = []

    def make(**kwargs):
        emu = EmulatorThread(**kwargs).start()
        started.append(emu)
        return emu

    try:
        yield make
    finally:
        for emu in started:
            emu.stop()


@pytest.fixture
def emulator_factory():
    """Start emulator processes: ``emulator_factory(name="gpu-01", seconds_per_job=0.1)``; all stopped at teardown."""
    from comfy_cluster.emulator.process import EmulatorProcess

    started = []

    def make(**kwargs):
        timeout = kwargs.pop("timeout", START_TIMEOUT)
        proc = EmulatorProcess(**kwargs)
        started.append(proc)
        return proc.start(timeout=timeout)

    try:
        yield make
    finally:
        for proc in started:
            proc.kill()
            proc.stop()
