"""A RunPod on-demand pods account for tests and the bench, over real HTTP on loopback.

Follows runpod_pods.md §9: REST v2 (``/v2/pods``, ``/action``, RFC 9457 errors, unknown
keys 422, disallowed actions 409, terminate 204 then 404) and GraphQL (HTTP 200 with
``errors[0].message``; ``gpuTypes`` as an array with ``lowestPrice``; ``myself``; ``pod``;
``podFindAndDeployOnDemand``; ``podStop``/``podResume``; ``podTerminate`` with no
selection set) over one pod store. REST v1 answers 410: it retired on 2026-11-15.

A created pod moves PROVISIONING -> STARTING -> RUNNING on timers; ``runtime`` and
``ssh.direct`` stay null until the container is up, and its ComfyUI (a real emulated one,
``EmulatorThread``) listens ``comfy_boot_s`` later. Stock is counted per (GPU type, data
centre, cloud); running out answers the exact no-capacity text. Cost accrues per second
while RUNNING (compute at ``costPerHr`` = per-GPU price x count, plus disk and network
volume storage), the balance falls, a create under one hour of balance is a 402.

The HTTP proxy (``pods_proxy.py``) listens on its own loopback port and routes ``/{podId}-{port}/...`` to the
pod's ComfyUI (HTTP and websocket): 502 until ComfyUI listens, 524 when one answer takes
longer than ``proxy_timeout_s`` (100 s, as RunPod's Cloudflare proxy). ``proxy_url`` is the
template for ``PodsPolicy.proxy_url``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .pods_proxy import PodProxy
from .process import EmulatorThread

log = logging.getLogger(__name__)

NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
NO_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
DISK_PER_GB_MONTH = 0.10
NETWORK_VOLUME_PER_GB_MONTH = 0.07
MONTH_S = 30 * 86400
V2_CREATE_KEYS = frozenset({"name", "image", "gpu", "cpu", "cloud", "dataCenterIds", "disk", "ports", "env", "args",
                            "registry", "mounts", "startSsh", "startJupyter", "globalNetworking", "templateId"})
ACTIONS = {"PROVISIONING": ("stop", "terminate"), "STARTING": ("stop", "terminate"),
           "RUNNING": ("stop", "restart", "terminate"), "EXITED": ("start", "terminate"),
           "ERROR": ("start", "terminate"), "TERMINATED": ()}
DATA_CENTERS = ("EU-RO-1", "US-TX-3")


@dataclass
class GpuType:
    id: str
    display_name: str
    memory_gb: int
    secure_price: float
    community_price: float
    stock: dict[tuple[str, str], int] = field(default_factory=dict)   # (dc, cloud) -> free GPUs


def default_gpu_types() -> list[GpuType]:
    return [GpuType("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34,
                    {(dc, c): 4 for dc in DATA_CENTERS for c in ("SECURE", "COMMUNITY")}),
            GpuType("NVIDIA RTX A5000", "RTX A5000", 24, 0.27, 0.16,
                    {(dc, c): 4 for dc in DATA_CENTERS for c in ("SECURE", "COMMUNITY")})]


@dataclass
class Pod:
    id: str
    name: str
    image: str
    gpu: GpuType
    gpu_count: int
    cloud: str
    dc: str
    disk: int
    ports: list[str]
    env: dict[str, str]
    volume: dict[str, Any] | None
    created: float
    status: str = "PROVISIONING"
    phase_at: float = 0.0                    # when the current timed phase started
    started: float | None = None
    comfy: EmulatorThread | None = None
    comfy_starting: bool = False
    public_ports: dict[int, int] = field(default_factory=dict)
    accrued: float = 0.0
    last_status_change: str = "Rented by User"
    host_id: str = field(default_factory=lambda: secrets.token_hex(4))
    holds_gpu: bool = True

    @property
    def cost_per_hr(self) -> float:
        price = self.gpu.secure_price if self.cloud == "SECURE" else self.gpu.community_price
        return round(price * self.gpu_count, 4)

    @property
    def container_up(self) -> bool:
        return self.status == "RUNNING" and bool(self.public_ports)


@dataclass
class PodKnobs:
    provision_s: float = 0.3
    start_s: float = 0.3
    comfy_boot_s: float = 0.3
    seconds_per_job: float = 0.0
    proxy_timeout_s: float = 100.0
    early_running: bool = False     # v2 measured: RUNNING right after create, runtime still null


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str, errors: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status, content_type="application/problem+json")


def _pod_id() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=14))


class PodsEmulator:
    """One emulated account: pods, GPU stock, network volumes, balance; API and proxy ports."""

    def __init__(self, *, api_key: str = "emu-key", host: str = "127.0.0.1", port: int = 0, proxy_port: int = 0,
                 gpu_types: list[GpuType] | None = None, balance: float = 100.0, **knobs: Any) -> None:
        self._api_key = api_key
        self.host, self.port, self.proxy_port = host, port, proxy_port
        self.knobs = PodKnobs(**knobs)
        self.gpu_types = {g.id: g for g in (gpu_types or default_gpu_types())}
        self.balance = balance
        self.pods: dict[str, Pod] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.terminated: list[Pod] = []
        self.created: list[Pod] = []
        self.peak = 0                              # most pods alive at once
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._runners: list[web.AppRunner] = []
        self._proxy = PodProxy(self._upstream, lambda: self.knobs.proxy_timeout_s)
        self._ticker: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle / control
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{self.url}/v2"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def proxy_url(self) -> str:
        """The proxy URL template, as ``PodsPolicy.proxy_url`` takes it."""
        return f"http://{self.host}:{self.proxy_port}/{{pod_id}}-{{port}}"

    def start(self, timeout: float = 15.0) -> PodsEmulator:
        self._thread = threading.Thread(target=self._serve, name="pods-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("pods emulator did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            self._stop_container(pod)

    def __enter__(self) -> PodsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, **knobs: Any) -> None:
        with self._lock:
            for name, value in knobs.items():
                if not hasattr(self.knobs, name):
                    raise ValueError(f"unknown pods emulator knob {name!r}")
                setattr(self.knobs, name, value)

    def set_stock(self, gpu_id: str, count: int, *, dc: str | None = None, cloud: str | None = None) -> None:
        """Free GPUs of a type (every DC and cloud unless named)."""
        with self._lock:
            gpu = self.gpu_types[gpu_id]
            for key in list(gpu.stock):
                if (dc is None or key[0] == dc) and (cloud is None or key[1] == cloud):
                    gpu.stock[key] = count

    def add_volume(self, name: str, size: int, dc: str) -> str:
        with self._lock:
            vid = _pod_id()[:10]
            self.volumes[vid] = {"id": vid, "name": name, "size": size, "dataCenter": dc, "type": "STANDARD"}
            return vid

    def fail_pod(self, pod_id: str) -> None:
        """The pod's host dies: its ComfyUI vanishes and the pod reads EXITED."""
        with self._lock:
            pod = self.pods[pod_id]
            self._to_exited(pod, "Exited by Runpod: host failure")

    def billing(self) -> list[Pod]:
        """Pods that still cost money (anything not terminated)."""
        with self._lock:
            return list(self.pods.values())

    def spend(self) -> float:
        with self._lock:
            return sum(p.accrued for p in [*self.pods.values(), *self.terminated])

    # ------------------------------------------------------------------ server
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        api = web.Application(middlewares=[self._auth], client_max_size=4 * 1024 * 1024)
        api.router.add_get("/v2/pods", self._v2_list)
        api.router.add_post("/v2/pods", self._v2_create)
        api.router.add_get("/v2/pods/{id}", self._v2_get)
        api.router.add_delete("/v2/pods/{id}", self._v2_delete)
        api.router.add_post("/v2/pods/{id}/action", self._v2_action)
        api.router.add_get("/v2/network-volumes", self._v2_volumes)
        api.router.add_post("/v2/network-volumes", self._v2_volume_create)
        api.router.add_get("/v2/network-volumes/{id}", self._v2_volume)
        api.router.add_patch("/v2/network-volumes/{id}", self._v2_volume)
        api.router.add_delete("/v2/network-volumes/{id}", self._v2_volume)
        api.router.add_get("/v2/catalog/gpus", self._v2_catalog)
        api.router.add_route("*", "/v1/{tail:.*}", self._v1_gone)
        api.router.add_post("/graphql", self._graphql)
        proxy = self._proxy.make_app()
        for app, attr in ((api, "port"), (proxy, "proxy_port")):
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, self.host, getattr(self, attr)).start())
            setattr(self, attr, runner.addresses[0][1])
            self._runners.append(runner)
        loop.run_until_complete(self._proxy.open())
        self._ticker = loop.create_task(self._tick_forever())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self._proxy.close()
        for runner in self._runners:
            await runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        key = given[7:] if given.startswith("Bearer ") else request.query.get("api_key", "")
        if not secrets.compare_digest(key.encode(), self._api_key.encode()):
            if request.path == "/graphql":
                return web.json_response({"errors": [{"message": "Unauthorized"}]}, status=401)
            return _problem(401, "Unauthorized", "missing bearer token")
        return await handler(request)

    # ------------------------------------------------------------------ time passes
    async def _tick_forever(self) -> None:
        last = time.time()
        while True:
            await asyncio.sleep(0.05)
            now = time.time()
            with self._lock:
                self._advance(now, now - last)
                boot = [p for p in self.pods.values() if p.container_up and p.comfy is None and not p.comfy_starting
                        and now - p.phase_at >= self.knobs.comfy_boot_s]
                for pod in boot:
                    pod.comfy_starting = True
            last = now
            for pod in boot:
                asyncio.get_running_loop().run_in_executor(None, self._start_container, pod)

    def _advance(self, now: float, dt: float) -> None:
        for pod in list(self.pods.values()):
            if pod.status == "PROVISIONING" and now - pod.phase_at >= self.knobs.provision_s:
                pod.status, pod.phase_at = "STARTING", now
            if pod.status == "STARTING" and now - pod.phase_at >= self.knobs.start_s:
                pod.status, pod.phase_at, pod.started = "RUNNING", now, now
                pod.public_ports = {int(p.split("/")[0]): random.randint(10000, 60000) for p in pod.ports}
            rate = self._storage_per_s(pod) + (pod.cost_per_hr / 3600 if pod.status == "RUNNING" else 0.0)
            pod.accrued += rate * dt
            self.balance -= rate * dt
        if self.balance <= 0:
            for pod in list(self.pods.values()):
                if pod.status != "EXITED":
                    self._to_exited(pod, "Exited by Runpod: balance exhausted")
                if pod.volume is None:
                    self._terminate(pod)

    def _storage_per_s(self, pod: Pod) -> float:
        disk = pod.disk * DISK_PER_GB_MONTH / MONTH_S if pod.status == "RUNNING" else 0.0
        if pod.volume is not None:
            disk += self.volumes[pod.volume["volumeId"]]["size"] * NETWORK_VOLUME_PER_GB_MONTH / MONTH_S
        return disk

    def _start_container(self, pod: Pod) -> None:
        comfy = EmulatorThread(name=f"pod-{pod.id}", seconds_per_job=self.knobs.seconds_per_job).start()
        with self._lock:
            pod.comfy_starting = False
            if pod.container_up and pod.id in self.pods:
                pod.comfy = comfy
                return
        comfy.stop()

    def _stop_container(self, pod: Pod) -> None:
        comfy, pod.comfy = pod.comfy, None
        if comfy is not None:
            threading.Thread(target=comfy.stop, daemon=True).start()

    def _to_exited(self, pod: Pod, why: str) -> None:
        self._stop_container(pod)
        pod.status, pod.public_ports, pod.last_status_change = "EXITED", {}, why
        self._release_gpu(pod)

    def _release_gpu(self, pod: Pod) -> None:
        if pod.holds_gpu:
            pod.gpu.stock[(pod.dc, pod.cloud)] += pod.gpu_count
            pod.holds_gpu = False

    def _terminate(self, pod: Pod) -> None:
        self._stop_container(pod)
        self._release_gpu(pod)
        pod.status, pod.public_ports = "TERMINATED", {}
        self.pods.pop(pod.id, None)
        self.terminated.append(pod)

    def _upstream(self, pod_id: str, port: int) -> str | None:
        """The loopback URL behind ``{pod_id}-{port}``: only an ``N/http`` port whose ComfyUI listens."""
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.comfy is None or f"{port}/http" not in pod.ports:
                return None
            return pod.comfy.url

    # ------------------------------------------------------------------ the store
    def _create(self, *, name: str, image: str, gpu_id: str, count: int, cloud: str, dcs: list[str], disk: int,
                ports: list[str], env: dict[str, str], volume_id: str | None, mount: str) -> Pod | tuple[int, str]:
        """A new pod, or (status, message) as REST v2 would answer it."""
        gpu = self.gpu_types.get(gpu_id)
        if gpu is None:
            return 400, f"unknown GPU type {gpu_id!r}"
        volume = None
        if volume_id is not None:
            nv = self.volumes.get(volume_id)
            if nv is None:
                return 400, f"network volume {volume_id} not found"
            if cloud != "SECURE":
                return 400, "Something went wrong. Please try again later or contact support."
            dcs = [dc for dc in (dcs or DATA_CENTERS) if dc == nv["dataCenter"]]
            volume = {"volumeId": volume_id, "path": mount}
        price = (gpu.secure_price if cloud == "SECURE" else gpu.community_price) * count
        if self.balance < price:
            return 402, "Insufficient balance: deploying needs at least one hour of credit."
        place = next((dc for dc in (dcs or DATA_CENTERS) if gpu.stock.get((dc, cloud), 0) >= count), None)
        if place is None:
            return 400, NO_CAPACITY
        gpu.stock[(place, cloud)] -= count
        pod = Pod(id=_pod_id(), name=name, image=image, gpu=gpu, gpu_count=count, cloud=cloud, dc=place, disk=disk,
                  ports=ports, env=env, volume=volume, created=time.time())
        pod.phase_at = pod.created
        self.pods[pod.id] = pod
        self.created.append(pod)
        self.peak = max(self.peak, len(self.pods))
        return pod

    def _action(self, pod: Pod, action: str) -> tuple[int, str] | None:
        if action not in ACTIONS[pod.status]:
            return 409, f"action {action!r} is not allowed while the pod is {pod.status}"
        now = time.time()
        if action == "stop":
            self._to_exited(pod, "Exited by User")
        elif action == "start":
            if pod.gpu.stock.get((pod.dc, pod.cloud), 0) < pod.gpu_count:
                return 400, NO_FREE_GPUS
            pod.gpu.stock[(pod.dc, pod.cloud)] -= pod.gpu_count
            pod.holds_gpu = True
            pod.status, pod.phase_at, pod.last_status_change = "STARTING", now, "Resumed by User"
        elif action == "restart":
            self._stop_container(pod)
            pod.status, pod.phase_at, pod.public_ports = "STARTING", now, {}
        else:
            self._terminate(pod)
        return None

    def _v2_view(self, pod: Pod) -> dict[str, Any]:
        up = pod.container_up
        runtime = None
        direct = None
        if up:
            runtime = {"uptime": int(time.time() - (pod.started or pod.created)), "gpus": [{"util": 0, "memoryUtil": 0}],
                       "cpu": {"util": 1}, "memory": {"util": 5},
                       "ports": [{"private": priv, "public": pub, "type": p.split("/")[1],
                                  "ip": "100.65.0.2" if p.endswith("/http") else "127.0.0.1"}
                                 for p in pod.ports for priv, pub in [(int(p.split("/")[0]),
                                                                       pod.public_ports[int(p.split("/")[0])])]]}
            if 22 in pod.public_ports:
                direct = {"host": "127.0.0.1", "port": pod.public_ports[22], "username": "root",
                          "command": f"ssh root@127.0.0.1 -p {pod.public_ports[22]}"}
        user = f"{pod.id}-{pod.host_id}"
        status = "RUNNING" if self.knobs.early_running and pod.status in ("PROVISIONING", "STARTING") else pod.status
        return {"id": pod.id, "name": pod.name, "status": status, "actions": list(ACTIONS[pod.status]),
                "image": pod.image, "args": "", "disk": pod.disk, "ports": pod.ports,
                "env": pod.env, "registry": None, "mounts": {"network": [pod.volume]} if pod.volume else {},
                "gpu": {"id": pod.gpu.id, "count": pod.gpu_count}, "cloud": pod.cloud, "dataCenterId": pod.dc,
                "cudaVersion": "12.8", "template": None, "cost": pod.cost_per_hr, "locked": False,
                "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22, "username": user,
                                  "command": f"ssh {user}@ssh.runpod.io"}, "direct": direct},
                "globalNetworking": {"enabled": False}, "runtime": runtime,
                "createdAt": _iso(pod.created), "startedAt": _iso(pod.started)}

    # ------------------------------------------------------------------ REST v2
    async def _v2_list(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response({"pods": [self._v2_view(p) for p in self.pods.values()]})

    async def _v2_get(self, request: web.Request) -> web.Response:
        with self._lock:
            pod = self.pods.get(request.match_info["id"])
            if pod is None:
                return _problem(404, "Not Found", "pod not found")
            return web.json_response(self._v2_view(pod))

    async def _v2_create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _problem(422, "Unprocessable Entity", "Request validation failed.", ["$: not JSON"])
        if not isinstance(body, dict):
            return _problem(422, "Unprocessable Entity", "Request validation failed.", ["$: must be an object"])
        errors = [f"$.{k}: unevaluated property" for k in body if k not in V2_CREATE_KEYS]
        gpu: Any = body.get("gpu")
        if not isinstance(body.get("name"), str) or not body["name"]:
            errors.append("$.name: required")
        if not isinstance(body.get("image"), str) and "templateId" not in body:
            errors.append("$.image: required")
        if not isinstance(gpu, dict) or not isinstance(gpu.get("id"), str) or int(gpu.get("count", 1)) < 1:
            errors.append("$.gpu: required {id, count>=1}")
        if body.get("cloud", "SECURE") not in ("SECURE", "COMMUNITY"):
            errors.append("$.cloud: value must be one of 'SECURE', 'COMMUNITY'")
        network: list[dict[str, Any]] = (body.get("mounts") or {}).get("network") or []
        if len(network) > 1:
            errors.append("$.mounts.network: at most 1 entry")
        if errors:
            return _problem(422, "Unprocessable Entity", "Request validation failed.", errors)
        ports = body.get("ports") or []
        ports = [p.strip() for p in ports.split(",")] if isinstance(ports, str) else list(ports)
        env = body.get("env") or {}
        env = {e["key"]: e["value"] for e in env} if isinstance(env, list) else dict(env)
        with self._lock:
            made = self._create(name=body["name"], image=body.get("image", ""), gpu_id=gpu["id"],
                                count=int(gpu.get("count", 1)), cloud=body.get("cloud", "SECURE"),
                                dcs=list(body.get("dataCenterIds") or []), disk=int(body.get("disk", 50)),
                                ports=ports, env=env, volume_id=network[0]["volumeId"] if network else None,
                                mount=network[0].get("path", "/workspace") if network else "/workspace")
            if isinstance(made, tuple):
                status, detail = made
                return _problem(status, {402: "Payment Required"}.get(status, "Bad Request"), detail)
            return web.json_response(self._v2_view(made), status=201)

    async def _v2_action(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        if action not in ("start", "stop", "restart", "terminate"):
            return _problem(422, "Unprocessable Entity", "Request validation failed.",
                            ["$.action: value must be one of 'start', 'stop', 'restart', 'terminate'"])
        with self._lock:
            pod = self.pods.get(request.match_info["id"])
            if pod is None:
                return _problem(404, "Not Found", "pod not found")
            failed = self._action(pod, action)
            if failed is not None:
                return _problem(failed[0], "Conflict" if failed[0] == 409 else "Bad Request", failed[1])
            if action == "terminate":
                return web.Response(status=204)
            return web.json_response(self._v2_view(pod))

    async def _v2_delete(self, request: web.Request) -> web.Response:
        with self._lock:
            pod = self.pods.get(request.match_info["id"])
            if pod is None:
                return _problem(404, "Not Found", "pod not found")
            self._terminate(pod)
            return web.Response(status=204)

    async def _v2_volumes(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response({"networkVolumes": list(self.volumes.values())})

    async def _v2_volume_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        size, dc = body.get("size"), body.get("dataCenter")
        if not isinstance(body.get("name"), str) or not isinstance(size, int) or not isinstance(dc, str):
            return _problem(422, "Unprocessable Entity", "Request validation failed.",
                            ["$: name, size and dataCenter are required"])
        if not 10 <= size <= 4096:
            return _problem(400, "Bad Request", "size must be between 10 and 4096 GB")
        if dc not in DATA_CENTERS:
            return _problem(400, "Bad Request", "Failed to find data center")
        vid = self.add_volume(body["name"], size, dc)
        return web.json_response(self.volumes[vid], status=201)

    async def _v2_volume(self, request: web.Request) -> web.Response:
        with self._lock:
            volume = self.volumes.get(request.match_info["id"])
            if volume is None:
                return _problem(404, "Not Found", "network volume not found")
            if request.method == "DELETE":
                if any(p.volume and p.volume["volumeId"] == volume["id"] for p in self.pods.values()):
                    return _problem(400, "Bad Request", "network volume is attached to a pod")
                del self.volumes[volume["id"]]
                return web.Response(status=204)
            if request.method == "PATCH":
                body = await request.json()
                if "size" in body and (not isinstance(body["size"], int) or body["size"] < volume["size"]):
                    return _problem(400, "Bad Request", "a network volume can only grow")
                volume.update({k: body[k] for k in ("name", "size") if k in body})
            return web.json_response(volume)

    async def _v2_catalog(self, request: web.Request) -> web.Response:
        with self._lock:
            gpus = [{"id": g.id, "name": g.display_name, "memory": g.memory_gb,
                     "price": {"secure": g.secure_price, "community": g.community_price},
                     "availability": _stock_word(sum(g.stock.values())),
                     "dataCenters": [{"id": dc, "availability": _stock_word(g.stock.get((dc, "SECURE"), 0))}
                                     for dc in DATA_CENTERS]} for g in self.gpu_types.values()]
        return web.json_response({"gpus": gpus})

    async def _v1_gone(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "REST v1 was retired on 2026-11-15; use REST v2", "status": 410},
                                 status=410)

    # ------------------------------------------------------------------ GraphQL
    async def _graphql(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"errors": [{"message": "body is not JSON"}]}, status=400)
        query = str(body.get("query", ""))
        variables = body.get("variables") or {}
        op = next((name for name in ("podFindAndDeployOnDemand", "podTerminate", "podStop", "podResume",
                                     "gpuTypes", "myself", "pod") if re.search(rf"\b{name}\b", query)), None)
        if op is None:
            return web.json_response({"errors": [{"message": "Cannot query this field"}], "data": None})
        given = variables.get("input") if isinstance(variables.get("input"), dict) else {}
        if not given:
            given = dict(re.findall(r'(\w+)\s*:\s*"([^"]*)"', query))
        with self._lock:
            data = self._gql(op, query, given)
        if isinstance(data, web.Response):
            return data
        if isinstance(data, str):
            return web.json_response({"errors": [{"message": data, "path": [op]}], "data": {op: None}})
        return web.json_response({"data": {op: data}})

    def _gql(self, op: str, query: str, given: dict[str, Any]) -> Any:
        if op == "gpuTypes":
            wanted = given.get("id")
            return [self._gql_gpu(g) for g in self.gpu_types.values() if wanted in (None, g.id)]
        if op == "myself":
            spend = sum(p.cost_per_hr for p in self.pods.values() if p.status == "RUNNING")
            return {"id": "emu-user", "pubKey": "", "clientBalance": round(self.balance, 6),
                    "currentSpendPerHr": round(spend, 4), "pods": [self._gql_pod(p) for p in self.pods.values()],
                    "networkVolumes": [{"id": v["id"], "name": v["name"], "size": v["size"],
                                        "dataCenterId": v["dataCenter"]} for v in self.volumes.values()]}
        if op == "podFindAndDeployOnDemand":
            allowed = {"cloudType", "gpuTypeId", "gpuCount", "name", "imageName", "containerDiskInGb", "volumeInGb",
                       "volumeMountPath", "ports", "env", "networkVolumeId", "dataCenterId", "startSsh",
                       "supportPublicIp", "templateId", "dockerArgs", "minVcpuCount", "minMemoryInGb"}
            unknown = [k for k in given if k not in allowed]
            if unknown:
                return web.json_response({"errors": [{"message": f"Variable \"$input\" got invalid value; Field "
                                                                 f"\"{unknown[0]}\" is not defined"}]}, status=400)
            ports = given.get("ports") or ""
            env = given.get("env") or []
            made = self._create(name=str(given.get("name", "my pod")), image=str(given.get("imageName", "")),
                                gpu_id=str(given.get("gpuTypeId")), count=int(given.get("gpuCount", 1)),
                                cloud="SECURE" if given.get("cloudType", "ALL") in ("ALL", "SECURE") else "COMMUNITY",
                                dcs=[given["dataCenterId"]] if given.get("dataCenterId") else [],
                                disk=int(given.get("containerDiskInGb", 10)),
                                ports=[p.strip() for p in str(ports).split(",") if p.strip()],
                                env={e["key"]: e["value"] for e in env} if isinstance(env, list) else dict(env),
                                volume_id=given.get("networkVolumeId"),
                                mount=str(given.get("volumeMountPath", "/workspace")))
            return made[1] if isinstance(made, tuple) else self._gql_pod(made)
        pod = self.pods.get(str(given.get("podId", "")))
        if op == "pod":
            return None if pod is None else self._gql_pod(pod)
        if op == "podTerminate" and re.search(r"podTerminate\s*(\([^)]*\))?\s*\{", query):
            return "Field \"podTerminate\" must not have a selection since type \"Void\" has no subfields."
        if pod is None:
            return "pod not found"
        failed = self._action(pod, {"podStop": "stop", "podResume": "start", "podTerminate": "terminate"}[op])
        if failed is not None:
            return failed[1]
        return None if op == "podTerminate" else self._gql_pod(pod)

    def _gql_gpu(self, g: GpuType) -> dict[str, Any]:
        free = sum(n for (dc, cloud), n in g.stock.items() if cloud == "SECURE")
        return {"id": g.id, "displayName": g.display_name, "manufacturer": "Nvidia", "memoryInGb": g.memory_gb,
                "maxGpuCount": 8, "secureCloud": True, "communityCloud": True, "securePrice": g.secure_price,
                "communityPrice": g.community_price, "secureSpotPrice": round(g.secure_price / 2, 3),
                "communitySpotPrice": round(g.community_price / 2, 3),
                "lowestPrice": {"minimumBidPrice": round(g.community_price / 2, 3),
                                "uninterruptablePrice": g.secure_price, "stockStatus": _stock_word(free).title(),
                                "availableGpuCounts": [n for n in (1, 2, 4, 8) if n <= free]}}

    def _gql_pod(self, pod: Pod) -> dict[str, Any]:
        runtime = None
        if pod.container_up:
            runtime = {"uptimeInSeconds": int(time.time() - (pod.started or pod.created)),
                       "ports": [{"ip": "127.0.0.1", "isIpPublic": p.endswith("/tcp"), "privatePort": priv,
                                  "publicPort": pod.public_ports[priv], "type": p.split("/")[1]}
                                 for p in pod.ports for priv in [int(p.split("/")[0])]]}
        return {"id": pod.id, "name": pod.name, "desiredStatus": "EXITED" if pod.status == "EXITED" else "RUNNING",
                "lastStatusChange": pod.last_status_change, "costPerHr": pod.cost_per_hr,
                "adjustedCostPerHr": pod.cost_per_hr, "podType": "RESERVED", "imageName": pod.image,
                "env": [f"{k}={v}" for k, v in pod.env.items()], "ports": ",".join(pod.ports),
                "gpuCount": pod.gpu_count, "containerDiskInGb": pod.disk, "machineId": pod.host_id,
                "machine": {"podHostId": f"{pod.id}-{pod.host_id}", "gpuDisplayName": pod.gpu.display_name,
                            "location": pod.dc, "dataCenterId": pod.dc}, "runtime": runtime}


def _stock_word(free: int) -> str:
    return "NONE" if free <= 0 else "LOW" if free <= 2 else "MEDIUM" if free <= 6 else "HIGH"


__all__ = ["NO_CAPACITY", "NO_FREE_GPUS", "GpuType", "PodsEmulator", "default_gpu_types"]
