"""Shared fixtures. Every test starts with no comfy-cluster or RunPod variables set."""

from __future__ import annotations

import os

import pytest

from tests.real_components import real_comfyui, real_comfyui_factory, real_install  # noqa: F401 - fixtures

_PREFIXES = ("NUKE_COMFYUI_", "RUNPOD_", "COMFY_CLUSTER_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A studio machine's own settings must never leak into a test."""
    for key in list(os.environ):
        if key.startswith(_PREFIXES):
            monkeypatch.delenv(key, raising=False)


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
        timeout = kwargs.pop("timeout", 15.0)
        proc = EmulatorProcess(**kwargs)
        started.append(proc)
        return proc.start(timeout=timeout)

    try:
        yield make
    finally:
        for proc in started:
            proc.kill()
            proc.stop()
