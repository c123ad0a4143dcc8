"""The RunPod on-demand pods client: create, list, get, stop, start, terminate, GPU types, volumes.

REST v2 (``/v2/pods``) for pods and network volumes: it is the current API (REST v1 retired
on 2026-11-15). GraphQL only for what nothing else has: GPU types with prices and stock
(``gpuTypes``) and the balance (``myself``). runpod_pods.md §1.2, §2, §3, §5.

Every failure is named: ``NoCapacity`` (no machine for that GPU type: v2 answers 400 with
no code, so the message text decides), ``InsufficientBalance`` (402), ``PodsAuthError``
(401/403, naming the variable that holds the key), ``VolumeDataCenterMismatch`` (checked
*before* the call: a pod must sit in its network volume's data centre, on Secure Cloud).
The key comes from the environment and lives only in the session's header: no message,
log line or repr contains it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import requests

from .errors import ConfigError, ServerUnavailable
from .pod_policy import PodsPolicy
from .runpod import json_of, send_with_retry

log = logging.getLogger(__name__)

NO_CAPACITY_MARK = "no longer any instances available"
USER_AGENT = "comfy-cluster-pods/1"
GPU_QUERY = ("query GpuTypes { gpuTypes { id displayName memoryInGb securePrice communityPrice "
             "lowestPrice(input: {gpuCount: 1, secureCloud: true}) { stockStatus } } }")
BALANCE_QUERY = "query Myself { myself { clientBalance currentSpendPerHr } }"


class PodsError(ServerUnavailable):
    """A RunPod pods call failed (the base of the named failures below); ``status`` is the HTTP status."""

    def __init__(self, message: str, *, server: str | None = "pods", status: int | None = None) -> None:
        super().__init__(message, server=server)
        self.status = status


class NoCapacity(PodsError):
    """No machine has this GPU type free right now (try the next type, or serverless)."""

    def __init__(self, message: str, *, gpu_type: str) -> None:
        super().__init__(message, status=400)
        self.gpu_type = gpu_type


class InsufficientBalance(PodsError):
    """HTTP 402: the account has less than one hour of credit for this pod."""


class PodsAuthError(PodsError):
    """HTTP 401/403: RunPod refused the key."""


class VolumeDataCenterMismatch(ConfigError):
    """The network volume is in another data centre than the pod may be placed in."""


@dataclass(frozen=True)
class PodInfo:
    """One pod as REST v2 describes it; ``ready`` once the container's ports are mapped."""

    id: str
    name: str
    status: str
    gpu_type: str
    gpu_count: int
    cost_per_hr: float
    data_center: str | None
    created_at: float | None
    started_at: float | None
    ready: bool
    uptime_s: float | None = None

    @classmethod
    def from_v2(cls, data: Mapping[str, Any]) -> PodInfo:
        gpu: dict[str, Any] = data["gpu"] if isinstance(data.get("gpu"), dict) else {}
        runtime: dict[str, Any] | None = data["runtime"] if isinstance(data.get("runtime"), dict) else None
        uptime = runtime.get("uptime") if runtime else None
        return cls(id=str(data["id"]), name=str(data.get("name", "")), status=str(data.get("status", "")),
                   gpu_type=str(gpu.get("id", "")), gpu_count=int(gpu.get("count", 1) or 1),
                   cost_per_hr=float(data.get("cost") or 0.0), data_center=data.get("dataCenterId"),
                   created_at=parse_time(data.get("createdAt")), started_at=parse_time(data.get("startedAt")),
                   ready=bool(runtime and runtime.get("ports")),
                   uptime_s=float(uptime) if isinstance(uptime, (int, float)) else None)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GpuTypeInfo:
    id: str
    display_name: str
    memory_gb: int | None
    secure_price: float | None
    community_price: float | None
    stock: str | None

    def price(self, cloud: str) -> float | None:
        return self.secure_price if cloud == "SECURE" else self.community_price


@dataclass(frozen=True)
class NetworkVolume:
    id: str
    name: str
    size_gb: int
    data_center: str


def parse_time(value: Any) -> float | None:
    """Epoch seconds from RFC 3339 (v2) or Go's ``"2026-08-20 06:16:19.43 +0000 UTC"`` (v1)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4]
        for fmt in ("%Y-%m-%d %H:%M:%S.%f %z", "%Y-%m-%d %H:%M:%S %z"):
            try:
                return datetime.strptime(text, fmt).timestamp()
            except ValueError:
                continue
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _detail(resp: requests.Response) -> str:
    """The message of an RFC 9457 problem, a v1 ``{"error"}`` or a GraphQL ``errors[0]``, shortened."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if isinstance(data.get(key), str):
                extra = data.get("errors")
                return data[key] + (f" ({'; '.join(map(str, extra))})" if isinstance(extra, list) else "")
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message", ""))
    return str(data)[:200]


class PodsClient:
    """The pod calls of one RunPod account; ``policy`` says where the APIs are and which key."""

    def __init__(self, policy: PodsPolicy, *, environ: Mapping[str, str] = os.environ,
                 session: requests.Session | None = None) -> None:
        self.policy = policy
        self.timeout = policy.request_timeout_s
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {policy.api_key(environ)}"
        self.session.headers["User-Agent"] = USER_AGENT   # urllib's default is refused by Cloudflare (1010)
        self.session.trust_env = False

    def __repr__(self) -> str:
        return f"PodsClient({self.policy.rest_url!r})"

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, body: Any = None, *, gpu_type: str = "") -> requests.Response:
        url = self.policy.rest_url + path
        what = f"RunPod pods: {method} {path}"
        resp = send_with_retry(self.session, method, url, what=what, timeout=self.timeout, json_body=body,
                               attempts=1 if method == "POST" and path == "/pods" else 3, server="pods",
                               retry_connection=not (method == "POST" and path == "/pods"))
        self._raise_for(resp, what, gpu_type=gpu_type)
        return resp

    def _raise_for(self, resp: requests.Response, what: str, *, gpu_type: str = "") -> None:
        status = resp.status_code
        if status < 400:
            return
        detail = _detail(resp)
        if status in (401, 403):
            raise PodsAuthError(f"{what}: HTTP {status}, RunPod refused the API key; check "
                                f"{self.policy.api_key_env}", status=status)
        if status == 402:
            raise InsufficientBalance(f"{what}: HTTP 402, the RunPod balance is too low (a pod needs at least "
                                      f"one hour of credit): {detail}", status=status)
        if NO_CAPACITY_MARK in detail.lower():
            raise NoCapacity(f"{what}: no {gpu_type or 'GPU'} free on RunPod right now: {detail}",
                             gpu_type=gpu_type)
        raise PodsError(f"{what}: HTTP {status}: {detail}", status=status)

    def _graphql(self, query: str) -> dict[str, Any]:
        what = "RunPod GraphQL"
        resp = send_with_retry(self.session, "POST", self.policy.graphql_url, what=what, timeout=self.timeout,
                               json_body={"query": query}, attempts=3, server="pods")
        self._raise_for(resp, what)
        data = json_of(resp, what)
        errors = data.get("errors") if isinstance(data, dict) else None
        if errors:
            first = errors[0].get("message", errors[0]) if isinstance(errors[0], dict) else errors[0]
            raise PodsError(f"{what}: {first}", server="pods")
        result = data.get("data") if isinstance(data, dict) else None
        if not isinstance(result, dict):
            raise PodsError(f"{what}: answer without data", server="pods")
        return result

    # ------------------------------------------------------------------ pods
    def create(self, name: str, gpu_type: str) -> PodInfo:
        """Create one on-demand pod of ``gpu_type`` from the policy; NoCapacity when none is free.

        v2 places exactly one GPU type (no fallback), so the caller walks the preference list.
        """
        policy = self.policy
        body: dict[str, Any] = {"name": name, "image": policy.image, "gpu": {"id": gpu_type, "count": policy.gpu_count},
                                "cloud": policy.cloud, "disk": policy.disk_gb, "ports": policy.ports,
                                "env": dict(policy.env)}
        dcs = list(policy.data_center_ids)
        if policy.network_volume_id:
            volume = self.network_volume(policy.network_volume_id)
            check_volume_placement(volume, cloud=policy.cloud, data_centers=dcs)
            dcs = [volume.data_center]
            body["mounts"] = {"network": [{"volumeId": volume.id, "path": policy.volume_mount_path}]}
        if dcs:
            body["dataCenterIds"] = dcs
        log.info("RunPod pods: creating %s (%s x%d, %s)", name, gpu_type, policy.gpu_count, policy.cloud)
        return PodInfo.from_v2(json_of(self._call("POST", "/pods", body, gpu_type=gpu_type), "RunPod pods: create"))

    def list_pods(self) -> list[PodInfo]:
        data = json_of(self._call("GET", "/pods"), "RunPod pods: list")
        return [PodInfo.from_v2(p) for p in (data.get("pods") or []) if isinstance(p, dict)]

    def get(self, pod_id: str) -> PodInfo | None:
        """The pod, or None once it is gone (terminated pods answer 404)."""
        try:
            return PodInfo.from_v2(json_of(self._call("GET", f"/pods/{pod_id}"), "RunPod pods: get"))
        except PodsError as err:
            if err.status == 404:
                return None
            raise

    def _act(self, pod_id: str, action: str) -> requests.Response:
        return self._call("POST", f"/pods/{pod_id}/action", {"action": action})

    def stop(self, pod_id: str) -> PodInfo:
        """Stop (EXITED): compute stops billing, storage does not. Only terminate ends the charges."""
        return PodInfo.from_v2(json_of(self._act(pod_id, "stop"), "RunPod pods: stop"))

    def start(self, pod_id: str) -> PodInfo:
        return PodInfo.from_v2(json_of(self._act(pod_id, "start"), "RunPod pods: start"))

    def terminate(self, pod_id: str) -> bool:
        """Terminate; True when it was there, False when it was already gone (404)."""
        try:
            self._call("DELETE", f"/pods/{pod_id}")
        except PodsError as err:
            if err.status == 404:
                return False
            raise
        log.info("RunPod pods: terminated %s", pod_id)
        return True

    # ------------------------------------------------------------------ catalogue
    def gpu_types(self) -> list[GpuTypeInfo]:
        """Every GPU type with its per-GPU prices and stock (GraphQL: the only place with prices)."""
        types = self._graphql(GPU_QUERY).get("gpuTypes") or []
        out = []
        for t in types:
            if not isinstance(t, dict):
                continue
            lowest: dict[str, Any] = t["lowestPrice"] if isinstance(t.get("lowestPrice"), dict) else {}
            out.append(GpuTypeInfo(id=str(t.get("id")), display_name=str(t.get("displayName", "")),
                                   memory_gb=t.get("memoryInGb"), secure_price=_float(t.get("securePrice")),
                                   community_price=_float(t.get("communityPrice")), stock=lowest.get("stockStatus")))
        return out

    def price_per_hour(self, gpu_type: str) -> float | None:
        """The pod's $/h for ``gpu_type`` at the policy's cloud and GPU count, or None if unknown."""
        for t in self.gpu_types():
            if t.id == gpu_type:
                price = t.price(self.policy.cloud)
                return None if price is None else price * self.policy.gpu_count
        return None

    def balance(self) -> tuple[float | None, float | None]:
        """(clientBalance, currentSpendPerHr) of the account."""
        me = self._graphql(BALANCE_QUERY).get("myself") or {}
        return _float(me.get("clientBalance")), _float(me.get("currentSpendPerHr"))

    def network_volumes(self) -> list[NetworkVolume]:
        data = json_of(self._call("GET", "/network-volumes"), "RunPod pods: network volumes")
        return [NetworkVolume(id=str(v["id"]), name=str(v.get("name", "")), size_gb=int(v.get("size", 0)),
                              data_center=str(v.get("dataCenter") or v.get("dataCenterId") or ""))
                for v in data.get("networkVolumes") or [] if isinstance(v, dict)]

    def network_volume(self, volume_id: str) -> NetworkVolume:
        for volume in self.network_volumes():
            if volume.id == volume_id:
                return volume
        raise ConfigError(f"pods: network_volume_id: no network volume {volume_id!r} in this RunPod account",
                          server="pods")


def check_volume_placement(volume: NetworkVolume, *, cloud: str, data_centers: list[str]) -> None:
    """A pod with a network volume must be on Secure Cloud in the volume's data centre."""
    if cloud != "SECURE":
        raise VolumeDataCenterMismatch(f"pods: network_volume_id {volume.id}: network volumes attach only to "
                                       f"Secure Cloud pods, but cloud is {cloud}", server="pods")
    if data_centers and volume.data_center not in data_centers:
        raise VolumeDataCenterMismatch(f"pods: network_volume_id {volume.id} is in data centre "
                                       f"{volume.data_center}, but data_center_ids allows only "
                                       f"{', '.join(data_centers)}: a pod must be in its volume's data centre",
                                       server="pods")


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


__all__ = ["GpuTypeInfo", "InsufficientBalance", "NetworkVolume", "NoCapacity", "PodInfo", "PodsAuthError",
           "PodsClient", "PodsError", "VolumeDataCenterMismatch", "check_volume_placement", "parse_time"]
