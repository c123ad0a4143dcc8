"""The ``ssh`` block of a server entry: how to reach a ComfyUI that only SSH can reach.

A server entry with ``ssh`` is reached through a local forward made by the system OpenSSH
client (``comfy_cluster.tunnel``)::

    {"name": "pod-a", "ip": "203.0.113.7", "port": 8188,
     "ssh": {"user": "root", "host": "203.0.113.7", "port": 40022,
             "identity_file": "~/.ssh/id_ed25519"}}

``host`` may be a ``~/.ssh/config`` alias: it goes to ``ssh`` as it is, so the user's own
config (``HostName``, ``User``, ``Port``, ``ProxyJump``, ``IdentityFile``), agent and
``known_hosts`` all apply. Fields left out are left to that config. The model does no I/O:
whether the identity file exists is checked when the tunnel opens.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, field_validator, model_validator

#: ``ServerAliveInterval`` x ``ServerAliveCountMax``: a silent link is dropped after 45 s.
ALIVE_INTERVAL = 15
ALIVE_COUNT_MAX = 3
CONNECT_TIMEOUT = 10


def _check_word(value: str, what: str) -> str:
    """A value that goes on ssh's command line: never an option, never two arguments."""
    if not value:
        raise ValueError("must not be empty")
    if value.startswith("-"):
        raise ValueError(f"must not start with '-' (it would be read as an ssh option), got {value!r}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"must not contain spaces or control characters, got {value!r}")
    if what == "user" and "@" in value:
        raise ValueError(f"must be a user name only, without '@', got {value!r}")
    if what == "host" and ("@" in value or "/" in value):
        raise ValueError(f"must be a host name, address or ~/.ssh/config alias only (user goes in \"user\"), "
                         f"got {value!r}")
    return value


def _check_path(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if any(c in value for c in "\x00\r\n"):
        raise ValueError("must not contain NUL or line breaks")
    return value


class SSHConfig(BaseModel):
    """How to open the tunnel to one server (every field but ``host`` may come from ~/.ssh/config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: StrictStr
    user: Optional[StrictStr] = None
    port: Optional[StrictInt] = None
    identity_file: Optional[StrictStr] = None
    remote_port: Optional[StrictInt] = None          # ComfyUI's port on the SSH host; default the server's port
    local_port: Optional[StrictInt] = None           # preferred local port; another is picked when taken
    strict_host_key_checking: Literal["yes", "accept-new"] = "yes"
    known_hosts_file: Optional[StrictStr] = None
    config_file: Optional[StrictStr] = None          # an ssh_config to use instead of ~/.ssh/config
    alive_interval: StrictInt = ALIVE_INTERVAL
    alive_count_max: StrictInt = ALIVE_COUNT_MAX
    connect_timeout: StrictInt = CONNECT_TIMEOUT

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        """Name an unknown key against this block's fields (the server's own would mislead)."""
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1)
                    hint = f'did you mean "{close[0]}"?' if close else f"known fields: {', '.join(known)}"
                    raise ValueError(f"unknown field {key!r} ({hint})")
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_word(value, "host")

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        return None if value is None else _check_word(value, "user")

    @field_validator("port", "remote_port", "local_port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"must be between 1 and 65535, got {value}")
        return value

    @field_validator("identity_file", "known_hosts_file", "config_file")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @field_validator("alive_interval", "alive_count_max", "connect_timeout")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @property
    def destination(self) -> str:
        """``user@host``, or ``host`` alone so ~/.ssh/config (or the local user name) decides."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        """``user@host:port`` for messages and the status table."""
        return self.destination + (f":{self.port}" if self.port is not None else "")


def pod_ssh(public_ip: str, ssh_port: int, *, identity_file: str | None = None, user: str = "root",
            known_hosts_file: str | None = None,
            strict_host_key_checking: Literal["yes", "accept-new"] = "yes", **more: Any) -> SSHConfig:
    """The ``ssh`` block for a RunPod pod reached directly: its public IP and the public port of 22/tcp.

    A pod's host key is new with every pod, and a public port can come back on another pod
    after a reset, so give each pod its own ``known_hosts_file`` and
    ``strict_host_key_checking="accept-new"``: the first key is recorded, a changed one is
    still refused.

    >>> pod_ssh("203.0.113.7", 40022).label
    'root@203.0.113.7:40022'
    """
    return SSHConfig(host=public_ip, port=ssh_port, user=user, identity_file=identity_file,
                     known_hosts_file=known_hosts_file, strict_host_key_checking=strict_host_key_checking, **more)


__all__ = ["SSHConfig", "pod_ssh"]
