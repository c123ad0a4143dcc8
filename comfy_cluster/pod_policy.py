"""The on-demand pod tier's configuration: where the RunPod APIs are and when to scale.

Kept apart from ``config.py`` (which imports it for ``ClusterConfig.pods``) so that the
pods client, the registry and the autoscaler share one validated model without importing
the whole configuration loader. Read from the servers file's ``"pods"`` object or from
``NUKE_COMFYUI_PODS`` (JSON), the way the ``"runpod"`` policy is. The API key is never
here: ``api_key_env`` names the variable that holds it.
"""

from __future__ import annotations

import math
import os
import re
from typing import Literal, Mapping, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from .errors import ConfigError

PODS_VAR = "NUKE_COMFYUI_PODS"
DEFAULT_PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class PodsPolicy(BaseModel):
    """Which pods to rent, how many, and when to start and stop them.

    ``scale_up_wait_s``: a pod is considered when the queued frames' predicted wait on the
    servers we have passes this. ``idle_s``: a pod with no frame of ours for this long is
    drained and terminated. ``max_lifetime_s``: no pod of ours lives longer, busy or not.
    ``boot_estimate_s`` is the boot time assumed before one was measured (break-even, see
    ``comfy_cluster.autoscale``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: StrictBool = True
    image: StrictStr
    gpu_types: list[StrictStr] = Field(min_length=1)
    gpu_count: StrictInt = 1
    cloud: Literal["SECURE", "COMMUNITY"] = "SECURE"
    disk_gb: StrictInt = 50
    port: StrictInt = 8188
    env: dict[str, str] = Field(default_factory=dict)
    network_volume_id: Optional[StrictStr] = None
    volume_mount_path: StrictStr = "/workspace"
    data_center_ids: list[StrictStr] = Field(default_factory=list)
    max_pods: StrictInt = 2
    max_queue: StrictInt = 2
    scale_up_wait_s: StrictFloat = 120.0
    idle_s: StrictFloat = 300.0
    max_lifetime_s: StrictFloat = 8 * 3600.0
    boot_timeout_s: StrictFloat = 1800.0
    boot_estimate_s: StrictFloat = 300.0
    daily_budget: Optional[StrictFloat] = None
    name_prefix: StrictStr = "comfy-cluster-"
    proxy_url: StrictStr = DEFAULT_PROXY_URL
    rest_url: StrictStr = "https://api.runpod.io/v2"
    graphql_url: StrictStr = "https://api.runpod.io/graphql"
    api_key_env: StrictStr = "RUNPOD_API_KEY"
    tick_s: StrictFloat = 5.0
    owner_timeout_s: StrictFloat = 120.0
    request_timeout_s: StrictFloat = 30.0

    @field_validator("gpu_count", "max_queue", "disk_gb")
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("max_pods")
    @classmethod
    def _not_negative_int(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be at least 0, got {value}")
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"must be between 1 and 65535, got {value}")
        return value

    @field_validator("scale_up_wait_s", "idle_s", "max_lifetime_s", "boot_timeout_s", "boot_estimate_s",
                     "tick_s", "owner_timeout_s", "request_timeout_s", "daily_budget")
    @classmethod
    def _seconds(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"must be a number >= 0, got {value}")
        return value

    @field_validator("rest_url", "graphql_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError(f"must be an http(s) URL without credentials, got {value!r}")
        return value.rstrip("/")

    @field_validator("proxy_url")
    @classmethod
    def _proxy(cls, value: str) -> str:
        if "{pod_id}" not in value:
            raise ValueError(f"must contain {{pod_id}} (and usually {{port}}), got {value!r}")
        sample = urlsplit(value.format(pod_id="abc", port=8188))
        if sample.scheme not in ("http", "https") or not sample.hostname:
            raise ValueError(f"must be an http(s) URL template, got {value!r}")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str) -> str:
        if not _ENV_NAME_RE.fullmatch(value):
            raise ValueError(f"must be an environment variable name, got {value!r}")
        return value

    @field_validator("name_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX_RE.fullmatch(value):
            raise ValueError(f"must be lower-case letters, digits and '-' (it tags our pods), got {value!r}")
        return value

    @property
    def ports(self) -> list[str]:
        """The pod's exposed ports: ComfyUI over the HTTP proxy, SSH over TCP."""
        return [f"{self.port}/http", "22/tcp"]

    def api_key(self, environ: Mapping[str, str] = os.environ) -> str:
        """The key from ``api_key_env``; ``ConfigError`` naming the variable (never a value)."""
        key = (environ.get(self.api_key_env) or "").strip()
        if not key or any(c in key for c in "\r\n\x00"):
            raise ConfigError(f"RunPod pods: the environment variable {self.api_key_env} is not set, empty "
                              "or not a valid key", server="pods")
        return key

    def pod_url(self, pod_id: str) -> str:
        """The URL of a pod's ComfyUI through the RunPod HTTP proxy (or the emulator's)."""
        return self.proxy_url.format(pod_id=pod_id, port=self.port).rstrip("/")


__all__ = ["DEFAULT_PROXY_URL", "PODS_VAR", "PodsPolicy"]
