"""The single-server plugin's settings, as functions over ``comfy_cluster.config``.

ComfyUI-for-Nuke (the artandmath fork) reads its settings by calling ``env.NUKE_COMFYUI_IP()``
and friends, each time, so a changed environment takes effect without restarting Nuke.
These functions keep those names and that behaviour, and add ``NUKE_COMFYUI_SERVERS()``.

Every call reads the environment afresh (nothing is read at import). The configuration is
``comfy_cluster.config.load_config``: ``NUKE_COMFYUI_SERVERS`` (JSON or ``@file``), else the
single-server variables, else ``127.0.0.1:8188``; an invalid setting raises ``ConfigError``.

With several servers, the single-server functions answer for the *primary* server: the
first enabled server by priority (lowest number; ties keep the configured order), or the
first by priority when every server is disabled.
"""

from __future__ import annotations

import os
from typing import Mapping

from comfy_cluster.config import ServerConfig
from comfy_cluster.config_load import load_config


def NUKE_COMFYUI_SERVERS(environ: Mapping[str, str] | None = None) -> list[ServerConfig]:  # noqa: N802
    """Every configured server, validated, in the configured order."""
    return load_config(os.environ if environ is None else environ).servers


def _primary(environ: Mapping[str, str] | None) -> ServerConfig:
    config = load_config(os.environ if environ is None else environ)
    return (config.enabled_servers or sorted(config.servers, key=lambda server: server.priority))[0]


def NUKE_COMFYUI_IP(environ: Mapping[str, str] | None = None) -> str:  # noqa: N802
    """The primary server's host name or address."""
    return _primary(environ).ip


def NUKE_COMFYUI_PORT(environ: Mapping[str, str] | None = None) -> int:  # noqa: N802
    """The primary server's port."""
    return _primary(environ).port


def NUKE_COMFYUI_DIR_LOCAL(environ: Mapping[str, str] | None = None) -> str:  # noqa: N802
    """The primary server's ComfyUI folder as this machine sees it; ``""`` when not shared."""
    return _primary(environ).dir_local or ""


def NUKE_COMFYUI_DIR_REMOTE(environ: Mapping[str, str] | None = None) -> str:  # noqa: N802
    """The primary server's ComfyUI folder as the server sees it; ``""`` when not shared."""
    return _primary(environ).dir_remote or ""


__all__ = [
    "NUKE_COMFYUI_DIR_LOCAL",
    "NUKE_COMFYUI_DIR_REMOTE",
    "NUKE_COMFYUI_IP",
    "NUKE_COMFYUI_PORT",
    "NUKE_COMFYUI_SERVERS",
]
