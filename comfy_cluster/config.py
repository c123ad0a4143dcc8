"""Cluster configuration: the servers, the RunPod policy and the poll interval.

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

import difflib
import ipaddress
import json
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Any, Literal, Mapping, Optional
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, capped
from .paths import is_absolute
from .tunnel_config import SSHConfig
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

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENDPOINT_RE = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Headers that decide where a request goes or how its bytes are framed: the client sets them.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                              "upgrade", "te", "trailer", "expect", "proxy-connection"})

_logged_sources: set[str] = set()
_logged_lock = threading.Lock()


# --- field checks shared by the models (each raises ValueError with the user-facing text) ---

def _show(value: Any) -> str:
    """A value as the user wrote it in JSON, shortened, with control characters escaped."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_host(ip: str) -> str:
    """A bare host name (RFC 1123) or IPv4/IPv6 address; nothing else."""
    if not ip:
        raise ValueError("must not be empty")
    if "@" in ip:  # the value may carry a password: never echo it
        raise ValueError("must be a host name or address only, without user@ credentials")
    if any(c.isspace() or not c.isprintable() for c in ip):
        raise ValueError(f"must not contain spaces, line breaks or control characters, got {_show(ip)}")
    if "://" in ip:
        raise ValueError(f'must be a host name or address only, without a scheme (use "scheme"), got {_show(ip)}')
    if "/" in ip or "\\" in ip or "?" in ip or "#" in ip:
        raise ValueError(f"must be a host name or address only, without a path, got {_show(ip)}")
    if ip.startswith("[") and ip.endswith("]"):
        raise ValueError(f"give an IPv6 address without brackets, got {_show(ip)}")
    try:
        ipaddress.ip_address(ip)
        return ip
    except ValueError:
        pass
    if ":" in ip:
        raise ValueError(f'must be a host name or address without a port (use "port"), got {_show(ip)}')
    host = ip[:-1] if ip.endswith(".") else ip
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"must be a valid host name (RFC 1123) or IP address, got {_show(ip)}")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"is not a valid IPv4 address, got {_show(ip)}")
    return ip


def _check_range(value: int | float, low: float, high: float | None = None) -> None:
    if high is not None and not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, got {value}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"must be at least {low}, got {value}")


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"must be an environment variable name (letters, digits, _), got {_show(value)}")
    return value


def _check_dir(value: str) -> str:
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError("must not contain NUL or line breaks")
    if not is_absolute(value):
        raise ValueError(f"must be an absolute path (U:/..., //server/share/... or /...), got {_show(value)}")
    return value


def _check_url(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces, line breaks or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {_show(value)}")
    if "@" in parts.netloc:
        raise ValueError("must not carry user@ credentials")
    return value


# --- models ---

class PathMapping(BaseModel):
    """One local prefix and the name the server knows it by."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local: StrictStr
    remote: StrictStr

    @field_validator("local", "remote")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _check_dir(value)


class ServerConfig(BaseModel):
    """One ComfyUI server, as configured. Frozen: a changed server is a new config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr
    ip: StrictStr
    port: StrictInt
    dir_local: Optional[StrictStr] = None
    dir_remote: Optional[StrictStr] = None
    priority: StrictInt = 1
    enabled: StrictBool = True
    scheme: Literal["http", "https"] = "http"
    headers: dict[str, str] = Field(default_factory=dict)
    auth_token_env: Optional[StrictStr] = None
    transfer: Literal["upload", "shared"] = "upload"
    max_queue: StrictInt = 2
    path_map: list[PathMapping] = Field(default_factory=list)
    ssh: Optional[SSHConfig] = None       # reached through an SSH tunnel (tunnel_config.py)
    base_path: Optional[StrictStr] = None   # a server behind a path-routing proxy (``/pod-8188``)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
                             f"letter or digit (it is used in file names), got {_show(value)}")
        return value

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        _check_range(value, 1, 65535)
        return value

    @field_validator("max_queue")
    @classmethod
    def _max_queue(cls, value: int) -> int:
        _check_range(value, 1)
        return value

    @field_validator("dir_local", "dir_remote", mode="before")
    @classmethod
    def _blank_dir_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dir_local", "dir_remote")
    @classmethod
    def _dir(cls, value: str | None) -> str | None:
        return None if value is None else _check_dir(value)

    @field_validator("auth_token_env")
    @classmethod
    def _token_env(cls, value: str | None) -> str | None:
        return None if value is None else _check_env_name(value)

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(c in value for c in "?#\\ \r\n\x00")):
            raise ValueError(f"must be a URL path starting with '/', got {_show(value)}")
        return value.rstrip("/") or None if value is not None else None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        # Header values are never echoed: a studio may put an API key in a custom header.
        if not isinstance(value, dict):
            raise ValueError(f"must be a JSON object of header names to values, got {_json_type(value)}")
        problems = []
        for key, val in value.items():
            if not isinstance(key, str) or not _TOKEN_RE.fullmatch(key):
                problems.append(f"{_show(key)} is not a valid header name")
            elif key.lower() in _SECRET_HEADERS:
                problems.append(f"{key}: refused: put the token in an environment variable and name it "
                                "in auth_token_env")
            elif key.lower() in _FRAMING_HEADERS:
                problems.append(f"{key}: refused: this header decides where the request goes or how it is "
                                "framed, and the client sets it itself")
            elif not isinstance(val, str):
                problems.append(f"{key}: the value must be a string, got {_json_type(val)}")
            elif any(c in val for c in "\r\n\x00"):
                problems.append(f"{key}: the value must not contain CR, LF or NUL")
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        problems = _cross_field_problems(self.dir_local, self.dir_remote, self.transfer, self.path_map)
        if problems:
            raise ValueError("\n".join(f"{field}: {message}" for field, message in problems))
        return self

    def __repr_args__(self):
        for key, value in super().__repr_args__():
            yield key, ({k: "***" for k in value} if key == "headers" else value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "server") -> ServerConfig:
        """Validate one server; a ``ConfigError`` lists every problem, named after ``source``."""
        return _validate_server(data, f"{source} ({_show(data.get('name'))})"
                                if isinstance(data, Mapping) and isinstance(data.get("name"), str) else source)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as it would appear in ``NUKE_COMFYUI_SERVERS``."""
        return self.model_dump(mode="json")

    @property
    def host(self) -> str:
        """The host as it goes in a URL (IPv6 bracketed, a zone's ``%`` escaped)."""
        if ":" in self.ip:
            return "[" + self.ip.replace("%", "%25") + "]"
        return self.ip

    @property
    def address(self) -> str:
        """``host:port``, for messages and the status panel."""
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://ip:port`` (or https), IPv6 bracketed, then ``base_path`` when set."""
        return f"{self.scheme}://{self.address}{self.base_path or ''}"

    def auth_header(self, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
        """``{"Authorization": "Bearer …"}`` from the variable named in ``auth_token_env``, or ``{}``.

        Raises ``ConfigError`` naming the variable (never its value) when it is unset or empty.
        """
        if self.auth_token_env is None:
            return {}
        token = (environ.get(self.auth_token_env) or "").strip()
        if not token:
            raise ConfigError(f"server {self.name!r}: auth_token_env: the environment variable "
                              f"{self.auth_token_env} is not set or empty", server=self.name)
        if any(c in token for c in "\r\n\x00"):
            raise ConfigError(f"server {self.name!r}: auth_token_env: the environment variable "
                              f"{self.auth_token_env} holds CR, LF or NUL", server=self.name)
        return {"Authorization": f"Bearer {token}"}

    def mappings(self) -> list[PathMapping]:
        """``dir_local``/``dir_remote`` first, then ``path_map``."""
        first = [PathMapping(local=self.dir_local, remote=self.dir_remote)] \
            if self.dir_local is not None and self.dir_remote is not None else []
        return first + list(self.path_map)


def _cross_field_problems(dir_local: Any, dir_remote: Any, transfer: Any,
                          path_map: Any) -> list[tuple[str, str]]:
    """Rules across fields, as (field, message); also run on raw input, so they show alongside
    field errors (pydantic skips model rules once a field has failed)."""
    def given(value: Any) -> bool:
        return value is not None and not (isinstance(value, str) and not value.strip())

    problems = []
    if given(dir_local) and not given(dir_remote):
        problems.append(("dir_remote", "required when dir_local is set (give both or neither)"))
    if given(dir_remote) and not given(dir_local):
        problems.append(("dir_local", "required when dir_remote is set (give both or neither)"))
    has_map = (given(dir_local) and given(dir_remote)) or (isinstance(path_map, list) and path_map)
    if transfer == "shared" and not has_map:
        problems.append(("transfer", '"shared" needs dir_local/dir_remote or path_map'))
    return problems


class RunPodEndpointSpec(BaseModel):
    """One more serverless endpoint (another GPU type) beside the main one; unset fields inherit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_id: StrictStr
    gpu_class: Optional[StrictStr] = None
    price_per_second: Optional[StrictFloat] = None
    max_concurrent: Optional[StrictInt] = None
    base_url: Optional[StrictStr] = None

    @field_validator("endpoint_id")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not _ENDPOINT_RE.fullmatch(value):
            raise ValueError(f"must be letters, digits, '_' or '-', got {_show(value)}")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("price_per_second")
    @classmethod
    def _price(cls, value: float | None) -> float | None:
        if value is not None:
            _check_range(value, 0)
        return value

    @field_validator("max_concurrent")
    @classmethod
    def _concurrent(cls, value: int | None) -> int | None:
        if value is not None:
            _check_range(value, 1)
        return value


class RunPodConfig(BaseModel):
    """The RunPod serverless endpoint and the policy for bursting to it.

    ``base_url`` has ``{endpoint_id}`` filled in after validation. The API key is not here:
    ``api_key_env`` names the variable that holds it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_id: StrictStr
    base_url: StrictStr = "https://api.runpod.ai/v2/{endpoint_id}"
    admin_url: StrictStr = "https://rest.runpod.io/v1"
    admin_v2_url: StrictStr = "https://api.runpod.io/v2"
    graphql_url: StrictStr = "https://api.runpod.io/graphql"
    api_key_env: StrictStr = "RUNPOD_API_KEY"
    enabled: StrictBool = True
    max_concurrent: StrictInt = 4
    price_per_second: StrictFloat = 0.00044
    daily_budget: Optional[StrictFloat] = None
    overflow_after_s: StrictFloat = 120.0
    status_poll_min: StrictFloat = 0.25
    status_poll_max: StrictFloat = 5.0
    lossy_inputs: StrictBool = False       # allow JPEG inputs when a PNG payload passes the 10 MB /run limit
    gpu_class: Optional[StrictStr] = None  # the main endpoint's GPU type ("A100"), for target="runpod:A100"
    endpoints: list[RunPodEndpointSpec] = Field(default_factory=list)   # more endpoints, tried in order

    @field_validator("endpoint_id")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not _ENDPOINT_RE.fullmatch(value):
            raise ValueError(f"must be letters, digits, '_' or '-', got {_show(value)}")
        return value

    @field_validator("base_url", "admin_url", "admin_v2_url", "graphql_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str) -> str:
        return _check_env_name(value)

    @field_validator("max_concurrent")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        _check_range(value, 1)
        return value

    @field_validator("price_per_second", "daily_budget", "overflow_after_s")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        if value is not None:
            _check_range(value, 0)
        return value

    @field_validator("status_poll_min", "status_poll_max")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be greater than 0, got {value}")
        return value

    @model_validator(mode="after")
    def _fill(self) -> RunPodConfig:
        if self.status_poll_max < self.status_poll_min:
            raise ValueError("status_poll_max: must be at least status_poll_min")
        template = self.base_url
        if "{endpoint_id}" in self.base_url:
            object.__setattr__(self, "base_url", self.base_url.replace("{endpoint_id}", self.endpoint_id))
        ids = [self.endpoint_id] + [e.endpoint_id for e in self.endpoints]
        if len(set(ids)) != len(ids):
            raise ValueError("endpoints: every endpoint_id must be different (the main one included)")
        for index, spec in enumerate(self.endpoints):
            if spec.base_url is None and "{endpoint_id}" not in template:
                raise ValueError(f"endpoints[{index}].base_url: required when base_url has no {{endpoint_id}}")
        object.__setattr__(self, "_template", template)
        return self

    def endpoint_configs(self) -> list[RunPodConfig]:
        """The main endpoint, then every entry of ``endpoints``, each as a full config (fields inherited)."""
        template = getattr(self, "_template", self.base_url)
        out = [self]
        for spec in self.endpoints:
            out.append(self.model_copy(update={
                "endpoint_id": spec.endpoint_id, "gpu_class": spec.gpu_class, "endpoints": [],
                "base_url": spec.base_url or template.replace("{endpoint_id}", spec.endpoint_id),
                "price_per_second": self.price_per_second if spec.price_per_second is None else spec.price_per_second,
                "max_concurrent": self.max_concurrent if spec.max_concurrent is None else spec.max_concurrent}))
        return out

    def api_key(self, environ: Mapping[str, str] = os.environ) -> str:
        """The API key from ``api_key_env``; ``ConfigError`` naming the variable if unset."""
        key = (environ.get(self.api_key_env) or "").strip()
        if not key or any(c in key for c in "\r\n\x00"):
            raise ConfigError(f"RunPod: the environment variable {self.api_key_env} is not set, empty "
                              "or not a valid key", server="runpod")
        return key


class ClusterConfig(BaseModel):
    """Everything ``load_config`` reads: the servers, where they came from, RunPod, polling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: list[ServerConfig]
    source: str
    runpod: Optional[RunPodConfig] = None
    poll_interval: float = 2.0
    pods: Optional[PodsPolicy] = None

    @field_validator("servers")
    @classmethod
    def _unique(cls, servers: list[ServerConfig]) -> list[ServerConfig]:
        problems = _duplicate_problems([s.name for s in servers], [f"servers[{i}]" for i in range(len(servers))])
        if problems:
            raise ValueError("; ".join(problems))
        return servers

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be greater than 0, got {value}")
        return value

    @property
    def enabled_servers(self) -> list[ServerConfig]:
        """Enabled servers, preferred first (lowest priority number; ties keep the configured order)."""
        return sorted((s for s in self.servers if s.enabled), key=lambda s: s.priority)


# --- pydantic errors -> one line each ---

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"string {_show(value)}"
    if isinstance(value, (int, float)):
        return f"number {_show(value)}"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _loc(loc: tuple[Any, ...]) -> str:
    """``("path_map", 0, "local")`` as ``path_map[0].local``; odd keys quoted so a line stays one line."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = str(part) if str(part).isidentifier() else _show(str(part))
        text += f".{key}" if text else key
    return text


def _error_line(err: Mapping[str, Any], known_fields: list[str]) -> str:
    """One pydantic error as ``field: message`` (or just the message for a model-level rule)."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    if kind == "value_error":
        message = str(err["ctx"]["error"])
    elif kind == "missing":
        message = "required"
    elif kind == "extra_forbidden":
        field = str(loc[-1])
        close = difflib.get_close_matches(field, known_fields, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (known fields: {', '.join(known_fields)})"
        return f"{_loc(loc)}: unknown field{hint}"
    elif kind in ("int_type", "int_from_float", "int_parsing"):
        message = f"must be an integer, got {_json_type(value)}"
    elif kind in ("float_type", "float_parsing", "finite_number"):
        message = f"must be a number, got {_json_type(value)}"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"must be true or false, got {_json_type(value)}"
    elif kind == "string_type":
        message = f"must be a string, got {_json_type(value)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"must be a JSON object, got {_json_type(value)}"
    elif kind == "list_type":
        message = f"must be a JSON array, got {_json_type(value)}"
    elif kind == "literal_error":
        message = f"must be one of {err['ctx']['expected']}, got {_json_type(value)}"
    else:
        message = str(err["msg"])
    return f"{_loc(loc)}: {message}" if loc else message


def _error_lines(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    known = list(model.model_fields)
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        line = _error_line(err, known)
        if line not in lines:
            lines.append(line)
    return lines


def _server_problems(data: dict[str, Any]) -> tuple[ServerConfig | None, list[tuple[str, str]]]:
    """Validate one server; every problem as (field, message)."""
    try:
        return ServerConfig.model_validate(data), []
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False):
            if err["loc"]:
                field, _, message = _error_line(err, list(ServerConfig.model_fields)).partition(": ")
                problems += [(field, line) for line in message.split("\n")]
        problems += _cross_field_problems(data.get("dir_local"), data.get("dir_remote"),
                                          data.get("transfer"), data.get("path_map"))
        return None, list(dict.fromkeys(problems))


def _validate_server(data: Any, label: str) -> ServerConfig:
    """One server from JSON data, or ``ConfigError`` with every problem prefixed by ``label``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: must be a JSON object, got {_json_type(data)}")
    server, problems = _server_problems(data)
    if server is None:
        raise ConfigError("\n".join(f"{label}: {field}: {message}" for field, message in problems))
    return server


def _duplicate_problems(names: list[Any], labels: list[str]) -> list[str]:
    """Names must be unique regardless of case: they become file names on case-blind disks."""
    seen: dict[str, str] = {}
    problems = []
    for name, label in zip(names, labels):
        if not isinstance(name, str):
            continue
        first = seen.setdefault(name.lower(), label)
        if first != label:
            problems.append(f"{label} ({_show(name)}): name: duplicate of {first} (names must be unique, "
                            "regardless of case)")
    return problems


# --- parsing ---

def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _servers_from_data(data: Any, source: str) -> list[ServerConfig]:
    if not isinstance(data, list):
        raise ConfigError(f"{source}: must be a JSON array of server objects, got {_json_type(data)}")
    if not data:
        raise ConfigError(f"{source}: the array is empty: list at least one server")
    servers: list[ServerConfig] = []
    lines: list[str] = []
    for index, item in enumerate(data):
        name = item.get("name") if isinstance(item, dict) else None
        label = f"{source}[{index}]" + (f" ({_show(name)})" if isinstance(name, str) else "")
        try:
            servers.append(_validate_server(item, label))
        except ConfigError as exc:
            lines.append(str(exc))
    lines += _duplicate_problems([i.get("name") if isinstance(i, dict) else None for i in data],
                                 [f"{source}[{i}]" for i in range(len(data))])
    if lines:
        raise ConfigError("\n".join(capped(lines)))
    return servers


def parse_servers(text: str, *, source: str = SERVERS_VAR) -> list[ServerConfig]:
    """Servers from the text of a JSON array; ``ConfigError`` lists every problem.

    >>> [s.base_url for s in parse_servers('[{"name": "gpu-01", "ip": "10.0.0.5", "port": 8188}]')]
    ['http://10.0.0.5:8188']
    """
    return _servers_from_data(_load_json(text, source), source)


def _read_file(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return _load_json(text, source)


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
                          f"got {_json_type(data)}")
    try:
        parts = _FileParts.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{source}: {line}" for line in _error_lines(exc, _FileParts))) from None
    if parts.poll_interval is not None:
        _check_poll(parts.poll_interval, f"{source}: poll_interval")
    return _servers_from_data(parts.servers, f"{source}: servers"), parts.runpod, parts.poll_interval, parts.pods


def _check_poll(value: float, label: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{label}: must be a number greater than 0, got {_show(value)}")
    return value


def _runpod_from_env(environ: Mapping[str, str], file_policy: dict[str, Any] | None,
                     file_source: str) -> RunPodConfig | None:
    """RunPod from ``RUNPOD_ENDPOINT_ID`` (or a file's ``endpoint_id``) and the policy object.

    The policy is ``NUKE_COMFYUI_RUNPOD`` when set, else the file's ``runpod`` object.
    """
    text = (environ.get(RUNPOD_VAR) or "").strip()
    if text:
        source, policy = RUNPOD_VAR, _load_json(text, RUNPOD_VAR)
        if not isinstance(policy, dict):
            raise ConfigError(f"{RUNPOD_VAR}: must be a JSON object, got {_json_type(policy)}")
        if "endpoint_id" in policy:
            raise ConfigError(f"{RUNPOD_VAR}: endpoint_id: unknown field (set {ENDPOINT_ID_VAR} instead)")
    else:
        source, policy = f"{file_source}: runpod", dict(file_policy or {})
    endpoint_id = (environ.get(ENDPOINT_ID_VAR) or "").strip()
    if endpoint_id:
        if not _ENDPOINT_RE.fullmatch(endpoint_id):
            raise ConfigError(f"{ENDPOINT_ID_VAR}: must be letters, digits, '_' or '-', got {_show(endpoint_id)}")
        policy["endpoint_id"] = endpoint_id
    elif "endpoint_id" not in policy:
        if text:
            log.warning("%s is set but %s is not: RunPod is off", RUNPOD_VAR, ENDPOINT_ID_VAR)
        return None
    if "api_key" in policy:
        raise ConfigError(f"{source}: api_key: refused: put the key in an environment variable and name it "
                          "in api_key_env (default RUNPOD_API_KEY)")
    try:
        return RunPodConfig.model_validate(policy)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{source}: {line}" for line in _error_lines(exc, RunPodConfig))) from None


def _pods_from_env(environ: Mapping[str, str], file_pods: dict[str, Any] | None,
                   file_source: str) -> PodsPolicy | None:
    """The pod tier's policy: ``NUKE_COMFYUI_PODS`` when set, else the file's ``pods`` object."""
    text = (environ.get(PODS_VAR) or "").strip()
    source, policy = (PODS_VAR, _load_json(text, PODS_VAR)) if text else (f"{file_source}: pods", file_pods)
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise ConfigError(f"{source}: must be a JSON object, got {_json_type(policy)}")
    if "api_key" in policy:
        raise ConfigError(f"{source}: api_key: refused: put the key in an environment variable and name it "
                          "in api_key_env (default RUNPOD_API_KEY)")
    try:
        return PodsPolicy.model_validate(policy)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{source}: {line}" for line in _error_lines(exc, PodsPolicy))) from None


def _poll_from_env(environ: Mapping[str, str], fallback: float | None) -> float:
    text = (environ.get(POLL_INTERVAL_VAR) or "").strip()
    if not text:
        return 2.0 if fallback is None else fallback
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{POLL_INTERVAL_VAR}: must be a number greater than 0, got {_show(text)}") from None
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
            problems.append(("port", f"must be an integer between 1 and 65535, got {_show(values['port'])}"))
    data = {"name": FALLBACK_NAME, "ip": values["ip"] or DEFAULT_IP, "port": port,
            "dir_local": values["dir_local"] or None, "dir_remote": values["dir_remote"] or None}
    server, more = _server_problems(data)
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
        data = _read_file(Path(path), f"{SERVERS_VAR}={source}")
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
        servers, file_policy, file_poll, file_pods = _file_parts(_read_file(Path(servers_file), source), source)
    else:
        servers, source, file_policy, file_poll, file_pods = _servers_from_env(environ)
    config = ClusterConfig(servers=servers, source=source,
                           runpod=_runpod_from_env(environ, file_policy, source),
                           poll_interval=_poll_from_env(environ, file_poll),
                           pods=_pods_from_env(environ, file_pods, source))
    _log_source(config)
    return config


def load_config_file(path: str | os.PathLike[str], *, environ: Mapping[str, str] = os.environ) -> ClusterConfig:
    """The configuration in a file (``--servers FILE``): a JSON array, or an object with ``servers``.

    The object may also hold ``runpod`` (its policy; ``endpoint_id`` inside it or from
    ``RUNPOD_ENDPOINT_ID``) and ``poll_interval``. ``NUKE_COMFYUI_RUNPOD``,
    ``RUNPOD_ENDPOINT_ID`` and ``NUKE_COMFYUI_POLL_INTERVAL`` of ``environ`` apply on top,
    exactly as for ``NUKE_COMFYUI_SERVERS=@file``.
    """
    return load_config(environ, servers_file=path)


__all__ = [
    "ClusterConfig",
    "PathMapping",
    "RunPodConfig",
    "ServerConfig",
    "load_config",
    "load_config_file",
    "parse_servers",
]
