"""The cluster configuration's models: servers, path mappings, RunPod, and the whole cluster.

Each model checks its own fields, and a bad value reads as one line that names the field
and what is wrong with it (``error_lines``; numeric bounds are ``Field(ge=..., le=...)``)::

    port: must be between 1 and 65535, got 70000

``config_load.py`` reads these models from the environment and from servers files, and
prefixes each line with where the value came from (the variable, the file, the server).

Secrets never live here: a server names the environment variable that holds its bearer
token (``auth_token_env``) and RunPod names the one holding its API key (``api_key_env``);
their values are read only when a session is built.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from typing import Any, Literal, Mapping, Optional, TypeVar, get_args
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

from .errors import ConfigError
from .paths import is_absolute
from .pod_policy import PodsPolicy
from .tunnel_config import SSHConfig

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENDPOINT_RE = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Headers that decide where a request goes or how its bytes are framed: the client sets them.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                              "upgrade", "te", "trailer", "expect", "proxy-connection"})

# --- field checks shared by the models (each raises ValueError with the user-facing text) ---

def show(value: Any) -> str:
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
        raise ValueError(f"must not contain spaces, line breaks or control characters, got {show(ip)}")
    if "://" in ip:
        raise ValueError(f'must be a host name or address only, without a scheme (use "scheme"), got {show(ip)}')
    if "/" in ip or "\\" in ip or "?" in ip or "#" in ip:
        raise ValueError(f"must be a host name or address only, without a path, got {show(ip)}")
    if ip.startswith("[") and ip.endswith("]"):
        raise ValueError(f"give an IPv6 address without brackets, got {show(ip)}")
    try:
        ipaddress.ip_address(ip)
        return ip
    except ValueError:
        pass
    if ":" in ip:
        raise ValueError(f'must be a host name or address without a port (use "port"), got {show(ip)}')
    host = ip[:-1] if ip.endswith(".") else ip
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"must be a valid host name (RFC 1123) or IP address, got {show(ip)}")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"is not a valid IPv4 address, got {show(ip)}")
    return ip


def check_endpoint_id(value: str) -> str:
    """A RunPod endpoint id: letters, digits, ``_`` or ``-`` (it goes into URLs)."""
    if not _ENDPOINT_RE.fullmatch(value):
        raise ValueError(f"must be letters, digits, '_' or '-', got {show(value)}")
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"must be an environment variable name (letters, digits, _), got {show(value)}")
    return value


def _check_dir(value: str) -> str:
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError("must not contain NUL or line breaks")
    if not is_absolute(value):
        raise ValueError(f"must be an absolute path (U:/..., //server/share/... or /...), got {show(value)}")
    return value


def _check_url(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces, line breaks or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {show(value)}")
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
    port: StrictInt = Field(ge=1, le=65535)
    dir_local: Optional[StrictStr] = None
    dir_remote: Optional[StrictStr] = None
    priority: StrictInt = 1
    enabled: StrictBool = True
    scheme: Literal["http", "https"] = "http"
    headers: dict[str, str] = Field(default_factory=dict)
    auth_token_env: Optional[StrictStr] = None
    transfer: Literal["upload", "shared"] = "upload"
    max_queue: StrictInt = Field(default=2, ge=1)
    path_map: list[PathMapping] = Field(default_factory=list)
    ssh: Optional[SSHConfig] = None       # reached through an SSH tunnel (tunnel_config.py)
    base_path: Optional[StrictStr] = None   # a server behind a path-routing proxy (``/pod-8188``)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
                             f"letter or digit (it is used in file names), got {show(value)}")
        return value

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _check_host(value)

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
            raise ValueError(f"must be a URL path starting with '/', got {show(value)}")
        return value.rstrip("/") or None if value is not None else None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        # Header values are never echoed: a studio may put an API key in a custom header.
        if not isinstance(value, dict):
            raise ValueError(f"must be a JSON object of header names to values, got {json_type(value)}")
        problems = []
        for key, val in value.items():
            if not isinstance(key, str) or not _TOKEN_RE.fullmatch(key):
                problems.append(f"{show(key)} is not a valid header name")
            elif key.lower() in _SECRET_HEADERS:
                problems.append(f"{key}: refused: put the token in an environment variable and name it "
                                "in auth_token_env")
            elif key.lower() in _FRAMING_HEADERS:
                problems.append(f"{key}: refused: this header decides where the request goes or how it is "
                                "framed, and the client sets it itself")
            elif not isinstance(val, str):
                problems.append(f"{key}: the value must be a string, got {json_type(val)}")
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
        return _validate_server(data, f"{source} ({show(data.get('name'))})"
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
    price_per_second: Optional[StrictFloat] = Field(default=None, ge=0, allow_inf_nan=False)
    max_concurrent: Optional[StrictInt] = Field(default=None, ge=1)
    base_url: Optional[StrictStr] = None

    @field_validator("endpoint_id")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint_id(value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)


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
    max_concurrent: StrictInt = Field(default=4, ge=1)
    price_per_second: StrictFloat = Field(default=0.00044, ge=0, allow_inf_nan=False)
    daily_budget: Optional[StrictFloat] = Field(default=None, ge=0, allow_inf_nan=False)
    overflow_after_s: StrictFloat = Field(default=120.0, ge=0, allow_inf_nan=False)
    status_poll_min: StrictFloat = Field(default=0.25, gt=0, allow_inf_nan=False)
    status_poll_max: StrictFloat = Field(default=5.0, gt=0, allow_inf_nan=False)
    lossy_inputs: StrictBool = False       # allow JPEG inputs when a PNG payload passes the 10 MB /run limit
    gpu_class: Optional[StrictStr] = None  # the main endpoint's GPU type ("A100"), for target="runpod:A100"
    endpoints: list[RunPodEndpointSpec] = Field(default_factory=list)   # more endpoints, tried in order

    @field_validator("endpoint_id")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint_id(value)

    @field_validator("base_url", "admin_url", "admin_v2_url", "graphql_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str) -> str:
        return _check_env_name(value)

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
    poll_interval: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    pods: Optional[PodsPolicy] = None

    @field_validator("servers")
    @classmethod
    def _unique(cls, servers: list[ServerConfig]) -> list[ServerConfig]:
        problems = duplicate_problems([s.name for s in servers], [f"servers[{i}]" for i in range(len(servers))])
        if problems:
            raise ValueError("; ".join(problems))
        return servers

    @property
    def enabled_servers(self) -> list[ServerConfig]:
        """Enabled servers, preferred first (lowest priority number; ties keep the configured order)."""
        return sorted((s for s in self.servers if s.enabled), key=lambda s: s.priority)


# --- pydantic errors -> one line each ---

def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"string {show(value)}"
    if isinstance(value, (int, float)):
        return f"number {show(value)}"
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
        key = str(part) if str(part).isidentifier() else show(str(part))
        text += f".{key}" if text else key
    return text


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than_equal", "finite_number"})


def _types_in(annotation: Any) -> list[type]:
    """The classes an annotation holds (``Optional[X]``, ``list[X]``), for following a location."""
    if isinstance(annotation, type):
        return [annotation]
    return [t for arg in get_args(annotation) for t in _types_in(arg)]


def _bounds(model: type[BaseModel], loc: tuple[Any, ...]) -> dict[str, Any]:
    """The ``ge``/``gt``/``le`` of the field at ``loc`` (through nested models and lists), or ``{}``;
    ``float`` is set for a float field (its value is shown as the float it was taken as)."""
    current: type[BaseModel] | None = model
    found: dict[str, Any] = {}
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return {}
        info = current.model_fields[part]
        found = {key: getattr(meta, key) for meta in info.metadata for key in ("ge", "gt", "le")
                 if getattr(meta, key, None) is not None}
        types = _types_in(info.annotation)
        found["float"] = float in types
        current = next((t for t in types if issubclass(t, BaseModel)), None)
    return found


def _range_message(bounds: Mapping[str, Any], value: Any) -> str | None:
    """``must be between 1 and 65535, got 0``, or ``None`` for a field without bounds."""
    if bounds.get("float") and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}, got {value}"
    if "ge" in bounds:
        return f"must be at least {bounds['ge']}, got {value}"
    if "gt" in bounds:
        return f"must be greater than {bounds['gt']}, got {value}"
    return None


def _error_line(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error as ``field: message`` (or just the message for a model-level rule)."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    known_fields = list(model.model_fields)
    in_range = _range_message(_bounds(model, loc), value) if kind in _RANGE_ERRORS else None
    if in_range is not None:
        message = in_range
    elif kind == "value_error":
        message = str(err["ctx"]["error"])
    elif kind == "missing":
        message = "required"
    elif kind == "extra_forbidden":
        field = str(loc[-1])
        close = difflib.get_close_matches(field, known_fields, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (known fields: {', '.join(known_fields)})"
        return f"{_loc(loc)}: unknown field{hint}"
    elif kind in ("int_type", "int_from_float", "int_parsing"):
        message = f"must be an integer, got {json_type(value)}"
    elif kind in ("float_type", "float_parsing", "finite_number"):
        message = f"must be a number, got {json_type(value)}"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"must be true or false, got {json_type(value)}"
    elif kind == "string_type":
        message = f"must be a string, got {json_type(value)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"must be a JSON object, got {json_type(value)}"
    elif kind == "list_type":
        message = f"must be a JSON array, got {json_type(value)}"
    elif kind == "literal_error":
        message = f"must be one of {err['ctx']['expected']}, got {json_type(value)}"
    else:
        message = str(err["msg"])
    return f"{_loc(loc)}: {message}" if loc else message


def error_lines(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """Every problem of a failed validation of ``model``, one line each, without repeats."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        line = _error_line(err, model)
        if line not in lines:
            lines.append(line)
    return lines


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: Any, source: str) -> Model:
    """``model`` from JSON data, or a ``ConfigError`` with one line per problem, each after ``source``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{source}: {line}" for line in error_lines(exc, model))) from None


def server_problems(data: dict[str, Any]) -> tuple[ServerConfig | None, list[tuple[str, str]]]:
    """Validate one server; every problem as (field, message)."""
    try:
        return ServerConfig.model_validate(data), []
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False):
            if err["loc"]:
                field, _, message = _error_line(err, ServerConfig).partition(": ")
                problems += [(field, line) for line in message.split("\n")]
        problems += _cross_field_problems(data.get("dir_local"), data.get("dir_remote"),
                                          data.get("transfer"), data.get("path_map"))
        return None, list(dict.fromkeys(problems))


def _validate_server(data: Any, label: str) -> ServerConfig:
    """One server from JSON data, or ``ConfigError`` with every problem prefixed by ``label``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: must be a JSON object, got {json_type(data)}")
    server, problems = server_problems(data)
    if server is None:
        raise ConfigError("\n".join(f"{label}: {field}: {message}" for field, message in problems))
    return server


def duplicate_problems(names: list[Any], labels: list[str]) -> list[str]:
    """Names must be unique regardless of case: they become file names on case-blind disks."""
    seen: dict[str, str] = {}
    problems = []
    for name, label in zip(names, labels):
        if not isinstance(name, str):
            continue
        first = seen.setdefault(name.lower(), label)
        if first != label:
            problems.append(f"{label} ({show(name)}): name: duplicate of {first} (names must be unique, "
                            "regardless of case)")
    return problems


__all__ = [
    "ClusterConfig",
    "PathMapping",
    "RunPodConfig",
    "RunPodEndpointSpec",
    "ServerConfig",
    "check_endpoint_id",
    "duplicate_problems",
    "error_lines",
    "json_type",
    "server_problems",
    "show",
    "validated",
]
