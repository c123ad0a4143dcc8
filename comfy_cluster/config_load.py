"""Loading the cluster configuration (``config.py``'s models) from the environment or a file.

Read once, at the edge, from the environment (``load_config(environ)``) or a file
(``load_config_file(path)``), then passed down. Sources, first match wins:

1. ``NUKE_COMFYUI_SERVERS``: a JSON array of servers, or ``@/path/to/servers.json``.
2. The single-server variables ``NUKE_COMFYUI_IP``, ``NUKE_COMFYUI_PORT``,
   ``NUKE_COMFYUI_DIR_LOCAL``, ``NUKE_COMFYUI_DIR_REMOTE`` (any of them set).
3. ``127.0.0.1:8188``.

A missing or blank ``NUKE_COMFYUI_SERVERS`` falls back, and the log says so once. A
``NUKE_COMFYUI_SERVERS`` that is set but wrong is an error, never a silent fallback. All
problems are collected into one ``ConfigError``, one line each, naming the source, the
server and the field::

    NUKE_COMFYUI_SERVERS[1] ("server2"): port: must be between 1 and 65535, got 70000

Secrets never live here: a server names the environment variable that holds its bearer
token (``auth_token_env``) and RunPod names the one holding its API key (``api_key_env``);
their values are read only when a session is built.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, StrictFloat

from .config import (
    ClusterConfig,
    RunPodConfig,
    ServerConfig,
    check_endpoint_id,
    duplicate_problems,
    json_type,
    server_problems,
    show,
    validated,
)
from .errors import ConfigError, capped
from .pod_policy import PODS_VAR, PodsPolicy

log = logging.getLogger(__name__)

SERVERS_VAR = "NUKE_COMFYUI_SERVERS"
IP_VAR = "NUKE_COMFYUI_IP"
PORT_VAR = "NUKE_COMFYUI_PORT"
DIR_LOCAL_VAR = "NUKE_COMFYUI_DIR_LOCAL"
DIR_REMOTE_VAR = "NUKE_COMFYUI_DIR_REMOTE"
POLL_INTERVAL_VAR = "NUKE_COMFYUI_POLL_INTERVAL"
RUNPOD_VAR = "NUKE_COMFYUI_RUNPOD"
ENDPOINT_ID_VAR = "RUNPOD_ENDPOINT_ID"

DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 8188
#: Name of the one server built from the single-server variables or the default.
FALLBACK_NAME = "default"

_logged_sources: set[str] = set()
_logged_lock = threading.Lock()


def parse_document(text: str, source: str) -> Any:
    """The JSON in ``text``; a ``ConfigError`` names ``source`` and the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _servers_from_data(data: Any, source: str) -> list[ServerConfig]:
    if not isinstance(data, list):
        raise ConfigError(f"{source}: must be a JSON array of server objects, got {json_type(data)}")
    if not data:
        raise ConfigError(f"{source}: the array is empty: list at least one server")
    servers: list[ServerConfig] = []
    lines: list[str] = []
    for index, item in enumerate(data):
        try:
            servers.append(ServerConfig.from_dict(item, source=f"{source}[{index}]"))
        except ConfigError as exc:
            lines.append(str(exc))
    lines += duplicate_problems([i.get("name") if isinstance(i, dict) else None for i in data],
                                 [f"{source}[{i}]" for i in range(len(data))])
    if lines:
        raise ConfigError("\n".join(capped(lines)))
    return servers


def parse_servers(text: str, *, source: str = SERVERS_VAR) -> list[ServerConfig]:
    """Servers from the text of a JSON array; ``ConfigError`` lists every problem.

    >>> [s.base_url for s in parse_servers('[{"name": "gpu-01", "ip": "10.0.0.5", "port": 8188}]')]
    ['http://10.0.0.5:8188']
    """
    return _servers_from_data(parse_document(text, source), source)


def read_document(path: Path, source: str) -> Any:
    """The JSON of the file at ``path``; a ``ConfigError`` names ``source`` when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_document(text, source)


class _FileParts(BaseModel):
    """The object form of a servers file."""

    model_config = ConfigDict(extra="forbid")

    servers: list[Any]
    runpod: Optional[dict[str, Any]] = None
    poll_interval: Optional[StrictFloat] = None
    pods: Optional[dict[str, Any]] = None


def _file_parts(data: Any, source: str) -> tuple[list[ServerConfig], dict[str, Any] | None, float | None,
                                                 dict[str, Any] | None]:
    """A file holds a JSON array of servers, or ``{"servers": [...], "runpod": {...}, "poll_interval": s}``."""
    if isinstance(data, list):
        return _servers_from_data(data, source), None, None, None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON array of servers or an object with \"servers\", "
                          f"got {json_type(data)}")
    parts = validated(_FileParts, data, source)
    if parts.poll_interval is not None:
        _check_poll(parts.poll_interval, f"{source}: poll_interval")
    return _servers_from_data(parts.servers, f"{source}: servers"), parts.runpod, parts.poll_interval, parts.pods


def _check_poll(value: float, label: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{label}: must be a number greater than 0, got {show(value)}")
    return value


def _runpod_from_env(environ: Mapping[str, str], file_policy: dict[str, Any] | None,
                     file_source: str) -> RunPodConfig | None:
    """RunPod from ``RUNPOD_ENDPOINT_ID`` (or a file's ``endpoint_id``) and the policy object.

    The policy is ``NUKE_COMFYUI_RUNPOD`` when set, else the file's ``runpod`` object.
    """
    text = (environ.get(RUNPOD_VAR) or "").strip()
    if text:
        source, policy = RUNPOD_VAR, parse_document(text, RUNPOD_VAR)
        if not isinstance(policy, dict):
            raise ConfigError(f"{RUNPOD_VAR}: must be a JSON object, got {json_type(policy)}")
        if "endpoint_id" in policy:
            raise ConfigError(f"{RUNPOD_VAR}: endpoint_id: unknown field (set {ENDPOINT_ID_VAR} instead)")
    else:
        source, policy = f"{file_source}: runpod", dict(file_policy or {})
    endpoint_id = (environ.get(ENDPOINT_ID_VAR) or "").strip()
    if endpoint_id:
        try:
            policy["endpoint_id"] = check_endpoint_id(endpoint_id)
        except ValueError as err:
            raise ConfigError(f"{ENDPOINT_ID_VAR}: {err}") from None
    elif "endpoint_id" not in policy:
        if text:
            log.warning("%s is set but %s is not: RunPod is off", RUNPOD_VAR, ENDPOINT_ID_VAR)
        return None
    if "api_key" in policy:
        raise ConfigError(f"{source}: api_key: refused: put the key in an environment variable and name it "
                          "in api_key_env (default RUNPOD_API_KEY)")
    return validated(RunPodConfig, policy, source)


def _pods_from_env(environ: Mapping[str, str], file_pods: dict[str, Any] | None,
                   file_source: str) -> PodsPolicy | None:
    """The pod tier's policy: ``NUKE_COMFYUI_PODS`` when set, else the file's ``pods`` object."""
    text = (environ.get(PODS_VAR) or "").strip()
    source, policy = (PODS_VAR, parse_document(text, PODS_VAR)) if text else (f"{file_source}: pods", file_pods)
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise ConfigError(f"{source}: must be a JSON object, got {json_type(policy)}")
    if "api_key" in policy:
        raise ConfigError(f"{source}: api_key: refused: put the key in an environment variable and name it "
                          "in api_key_env (default RUNPOD_API_KEY)")
    return validated(PodsPolicy, policy, source)


def _poll_from_env(environ: Mapping[str, str], fallback: float | None) -> float:
    text = (environ.get(POLL_INTERVAL_VAR) or "").strip()
    if not text:
        return 2.0 if fallback is None else fallback
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{POLL_INTERVAL_VAR}: must be a number greater than 0, got {show(text)}") from None
    return _check_poll(value, POLL_INTERVAL_VAR)


def _single_server(environ: Mapping[str, str]) -> tuple[list[ServerConfig], str]:
    """The one server of the single-server plugin's variables, or the default."""
    var_of = {"ip": IP_VAR, "port": PORT_VAR, "dir_local": DIR_LOCAL_VAR, "dir_remote": DIR_REMOTE_VAR}
    values = {field: (environ.get(var) or "").strip() for field, var in var_of.items()}
    if not any(values.values()):
        return [ServerConfig(name=FALLBACK_NAME, ip=DEFAULT_IP, port=DEFAULT_PORT)], "default"
    problems: list[tuple[str, str]] = []
    port: Any = DEFAULT_PORT
    if values["port"]:
        try:
            port = int(values["port"])
        except ValueError:
            problems.append(("port", f"must be an integer between 1 and 65535, got {show(values['port'])}"))
    data = {"name": FALLBACK_NAME, "ip": values["ip"] or DEFAULT_IP, "port": port,
            "dir_local": values["dir_local"] or None, "dir_remote": values["dir_remote"] or None}
    server, more = server_problems(data)
    if server is None or problems:
        raise ConfigError("\n".join(f"{var_of.get(field, field)}: {message}" for field, message in problems + more))
    return [server], "NUKE_COMFYUI_IP/PORT"


def _servers_from_env(environ: Mapping[str, str]) -> tuple[list[ServerConfig], str, dict[str, Any] | None,
                                                          float | None, dict[str, Any] | None]:
    text = (environ.get(SERVERS_VAR) or "").strip()
    if not text:
        servers, source = _single_server(environ)
        return servers, source, None, None, None
    if text.startswith("@"):
        path = text[1:].strip()
        source = f"@{path}"
        if not path:
            raise ConfigError(f"{SERVERS_VAR}: '@' must be followed by the path of a servers file")
        data = read_document(Path(path), f"{SERVERS_VAR}={source}")
        servers, policy, poll, pods = _file_parts(data, source)
        return servers, source, policy, poll, pods
    return parse_servers(text, source=SERVERS_VAR), SERVERS_VAR, None, None, None


def _log_source(config: ClusterConfig) -> None:
    """Say once per process and source where the servers came from."""
    with _logged_lock:
        if config.source in _logged_sources:
            return
        _logged_sources.add(config.source)
    if config.source == "default":
        log.info("%s and %s are not set: using the default server %s", SERVERS_VAR, IP_VAR,
                 config.servers[0].address)
    elif config.source == "NUKE_COMFYUI_IP/PORT":
        log.info("%s is not set: using the single server %s from %s/%s", SERVERS_VAR,
                 config.servers[0].address, IP_VAR, PORT_VAR)
    else:
        log.info("using %d server(s) from %s: %s", len(config.servers), config.source,
                 ", ".join(s.name for s in config.servers))


def load_config(environ: Mapping[str, str] = os.environ, *,
                servers_file: str | os.PathLike[str] | None = None) -> ClusterConfig:
    """The cluster configuration from environment variables (see the module docstring).

    ``servers_file`` (``--servers FILE``) takes the place of ``NUKE_COMFYUI_SERVERS``;
    everything else (RunPod, the poll interval) is read the same way for every entry point.

    >>> load_config({"NUKE_COMFYUI_IP": "10.0.0.7"}).servers[0].base_url
    'http://10.0.0.7:8188'
    """
    if servers_file is not None:
        source = f"@{os.fspath(servers_file)}"
        config = config_from_document(read_document(Path(servers_file), source), source, environ)
    else:
        servers, source, file_policy, file_poll, file_pods = _servers_from_env(environ)
        config = _assemble(servers, source, file_policy, file_poll, file_pods, environ)
    _log_source(config)
    return config


def config_from_document(data: Any, source: str, environ: Mapping[str, str] = os.environ) -> ClusterConfig:
    """The configuration a servers document (a file's JSON) stands for, ``environ``'s settings on top.

    ``ConfigError`` lists every problem, each line after ``source``; nothing is logged.
    """
    servers, policy, poll, pods = _file_parts(data, source)
    return _assemble(servers, source, policy, poll, pods, environ)


def _assemble(servers: list[ServerConfig], source: str, file_policy: dict[str, Any] | None, file_poll: float | None,
              file_pods: dict[str, Any] | None, environ: Mapping[str, str]) -> ClusterConfig:
    """The servers with RunPod, the poll interval and the pod tier, each from ``environ`` or the file."""
    return ClusterConfig(servers=servers, source=source, runpod=_runpod_from_env(environ, file_policy, source),
                         poll_interval=_poll_from_env(environ, file_poll),
                         pods=_pods_from_env(environ, file_pods, source))


def load_config_file(path: str | os.PathLike[str], *, environ: Mapping[str, str] = os.environ) -> ClusterConfig:
    """The configuration in a file (``--servers FILE``): a JSON array, or an object with ``servers``.

    The object may also hold ``runpod`` (its policy; ``endpoint_id`` inside it or from
    ``RUNPOD_ENDPOINT_ID``) and ``poll_interval``. ``NUKE_COMFYUI_RUNPOD``,
    ``RUNPOD_ENDPOINT_ID`` and ``NUKE_COMFYUI_POLL_INTERVAL`` of ``environ`` apply on top,
    exactly as for ``NUKE_COMFYUI_SERVERS=@file``.
    """
    return load_config(environ, servers_file=path)


__all__ = [
    "config_from_document",
    "load_config",
    "load_config_file",
    "parse_document",
    "parse_servers",
    "read_document",
]
