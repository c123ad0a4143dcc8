"""Shared fixtures. Every test starts with no comfy-cluster or RunPod variables set."""

from __future__ import annotations

import os

import pytest

_PREFIXES = ("NUKE_COMFYUI_", "RUNPOD_", "COMFY_CLUSTER_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """A studio machine's own settings must never leak into a test."""
    for key in list(os.environ):
        if key.startswith(_PREFIXES):
            monkeypatch.delenv(key, raising=False)
