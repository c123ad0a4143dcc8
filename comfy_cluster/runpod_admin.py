"""The always-on worker switch: read and set a RunPod endpoint's ``workersMin``.

``warm()`` sets ``workersMin`` to 1 so a worker stays booted (no cold start, billed while
idle); ``cold()`` sets it to 0 so the endpoint scales to zero.

Three APIs, best first (runpod_api.md §2): REST v2 ``PATCH /v2/serverless/{id}`` with
``{"workers": {"min": n}}`` (a real PATCH), REST v1 ``PATCH /endpoints/{id}`` with
``{"workersMin": n}`` (retired 15 Nov 2026, still tried), and GraphQL ``saveEndpoint``,
which *replaces the whole record*: it is done as read-modify-write of every field
(``name`` kept, ``networkVolumeIds`` reshaped to ``[{networkVolumeId}]``,
``workersStandby`` set with ``workersMin`` so the endpoint can really reach zero). An API
that answers 404/405/410/422 or not at all is skipped for the rest of the session.

Toggles are serialised by a lock per endpoint in this process and a lock file in the
state directory across processes, and every change is read back: two toggles at once end
in the state of the last one, each reporting what it did; "already warm" is a result.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import requests

from .config import RunPodConfig
from .errors import ConfigError, ProtocolError, ServerUnavailable
from .ledger import state_dir as default_state_dir
from .locks import file_lock
from .runpod import ENDPOINT_ID_ENV, auth_failure, json_of, send_with_retry

log = logging.getLogger(__name__)

APIS = ("rest-v2", "rest-v1", "graphql")
_FALLBACK_STATUSES = frozenset({404, 405, 410, 422, 501})

#: Every Endpoint field read back before a saveEndpoint (runpod-python, runpod-mcp).
GRAPHQL_FIELDS = ("id", "name", "gpuIds", "gpuCount", "idleTimeout", "locations", "networkVolumeId",
                  "networkVolumeIds { networkVolumeId dataCenterId }", "scalerType", "scalerValue", "templateId",
                  "type", "workersMin", "workersMax", "workersStandby", "executionTimeoutMs", "flashBootType",
                  "allowedCudaVersions", "instanceIds")
_GRAPHQL_READ = "query Endpoints { myself { endpoints { %s } } }" % " ".join(GRAPHQL_FIELDS)
_GRAPHQL_SAVE = ("mutation SaveEndpoint($input: EndpointInput!) { saveEndpoint(input: $input) "
                 "{ id name workersMin workersMax workersStandby idleTimeout } }")

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class _Skip(Exception):
    """This API is not there (404/405/422, unreachable): try the next one."""


@dataclass(frozen=True)
class EndpointSettings:
    """The worker settings of an endpoint, as one API read them."""

    endpoint_id: str
    name: str | None
    workers_min: int
    workers_max: int
    idle_timeout: int | None
    workers_standby: int | None = None
    via: str = ""

    @property
    def warm(self) -> bool:
        return self.workers_min >= 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ToggleResult:
    """What a warm/cold/set did: from -> to, through which API, or that nothing was needed."""

    endpoint_id: str
    action: str
    changed: bool
    before: EndpointSettings
    after: EndpointSettings
    via: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.message


class RunPodAdmin:
    """Reads and sets ``workersMin`` of one endpoint (the panel's always-on switch)."""

    def __init__(self, config: RunPodConfig, *, environ: Mapping[str, str] = os.environ,
                 session: requests.Session | None = None, state_dir: Path | str | None = None,
                 timeout: float = 30.0, lock_timeout: float = 120.0) -> None:
        self.endpoint_id = config.endpoint_id
        self.key_env = config.api_key_env
        key = config.api_key(environ)
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.urls = {"rest-v2": config.admin_v2_url.rstrip("/"), "rest-v1": config.admin_url.rstrip("/"),
                     "graphql": config.graphql_url}
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir(environ)
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self._skipped: set[str] = set()

    def __repr__(self) -> str:
        return f"RunPodAdmin(endpoint_id={self.endpoint_id!r})"

    # ------------------------------------------------------------------ public
    def status(self) -> EndpointSettings:
        """The endpoint's workersMin, workersMax and idleTimeout, from the best API that answers."""
        return self._each_api("read", lambda api: self._read(api))[0]

    def warm(self) -> ToggleResult:
        """Keep one worker booted (workersMin 1); "already warm" when workersMin is 1 or more."""
        return self._toggle(1, "warm", lambda s: s.workers_min >= 1)

    def cold(self) -> ToggleResult:
        """Let the endpoint scale to zero (workersMin 0)."""
        return self._toggle(0, "cold", lambda s: s.workers_min == 0)

    def set_min_workers(self, n: int) -> ToggleResult:
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"RunPod endpoint '{self.endpoint_id}': workersMin must be an integer >= 0, got {n!r}")
        return self._toggle(n, "set", lambda s: s.workers_min == n)

    # ------------------------------------------------------------------ toggling
    def _toggle(self, n: int, action: str, done: Callable[[EndpointSettings], bool]) -> ToggleResult:
        with self._locked():
            before = self.status()
            if done(before):
                word = {"warm": "already warm", "cold": "already cold"}.get(action, "already set")
                message = (f"RunPod endpoint {self.endpoint_id}: {word} (workersMin {before.workers_min}, "
                           f"workersMax {before.workers_max})")
                log.info("%s", message)
                return ToggleResult(self.endpoint_id, action, False, before, before, before.via, message)
            if n > before.workers_max:
                raise ConfigError(f"RunPod endpoint {self.endpoint_id}: cannot set workersMin to {n}: workersMax "
                                  f"is {before.workers_max}; raise workersMax first")
            _, via = self._each_api("write", lambda api: self._write(api, n))
            after = self.status()
            if after.workers_min != n:
                raise ServerUnavailable(f"RunPod endpoint {self.endpoint_id}: set workersMin {n} via {via}, but "
                                        f"it reads back {after.workers_min}", server="runpod")
            message = (f"RunPod endpoint {self.endpoint_id}: {action}: workersMin {before.workers_min} -> "
                       f"{after.workers_min} via {via}")
            log.info("%s", message)
            return ToggleResult(self.endpoint_id, action, True, before, after, via, message)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _process_locks_guard:
            lock = _process_locks.setdefault(self.endpoint_id, threading.Lock())
        if not lock.acquire(timeout=self.lock_timeout):
            raise ServerUnavailable(f"RunPod endpoint {self.endpoint_id}: another toggle is still running",
                                    server="runpod")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with file_lock(self.state_dir / f"runpod-admin-{self.endpoint_id}.lock", self.lock_timeout,
                           owner="RunPod admin", server="runpod"):
                yield
        finally:
            lock.release()

    def _each_api(self, what: str, attempt: Callable[[str], Any]) -> tuple[Any, str]:
        reasons = []
        for api in APIS:
            if api in self._skipped:
                continue
            try:
                return attempt(api), api
            except _Skip as skip:
                log.info("RunPod endpoint %s: %s via %s not possible (%s); trying the next API",
                         self.endpoint_id, what, api, skip)
                self._skipped.add(api)
                reasons.append(f"{api}: {skip}")
        raise ServerUnavailable(f"RunPod endpoint {self.endpoint_id}: could not {what} the endpoint settings "
                                f"through any API ({'; '.join(reasons) or 'all skipped earlier'})", server="runpod")

    # ------------------------------------------------------------------ HTTP
    def _send(self, api: str, method: str, url: str, body: Any = None) -> Any:
        what = f"RunPod {api}: {method} {url}"
        try:
            resp = send_with_retry(self.session, method, url, what=what, timeout=self.timeout, json_body=body,
                                   attempts=3)
        except ServerUnavailable as err:
            raise _Skip(str(err)) from err
        failure = auth_failure(resp, what=what, key_env=self.key_env)
        if failure is not None:
            raise failure
        if resp.status_code in _FALLBACK_STATUSES:
            raise _Skip(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            detail = resp.text[:300]
            raise ServerUnavailable(f"{what}: HTTP {resp.status_code}: {detail}", server="runpod")
        try:
            data = json_of(resp, what)
        except ProtocolError as err:
            raise _Skip(str(err)) from err
        if api == "graphql":
            errors = data.get("errors") if isinstance(data, dict) else None
            if errors:
                message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
                raise ServerUnavailable(f"{what}: GraphQL error: {message}", server="runpod")
            data = data.get("data") if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise _Skip("answer is not a JSON object")
        return data

    def _read(self, api: str) -> EndpointSettings:
        if api == "graphql":
            record = self._graphql_record()
            return _settings(self.endpoint_id, record, api)
        path = f"/serverless/{self.endpoint_id}" if api == "rest-v2" else f"/endpoints/{self.endpoint_id}"
        data = self._send(api, "GET", self.urls[api] + path)
        return _settings(self.endpoint_id, data, api)

    def _write(self, api: str, n: int) -> None:
        if api == "rest-v2":
            self._send(api, "PATCH", f"{self.urls[api]}/serverless/{self.endpoint_id}", {"workers": {"min": n}})
        elif api == "rest-v1":
            self._send(api, "PATCH", f"{self.urls[api]}/endpoints/{self.endpoint_id}", {"workersMin": n})
        else:
            record = self._graphql_record()
            fields = _graphql_input(record)
            fields.update(workersMin=n, workersStandby=n)
            self._send(api, "POST", self.urls[api], {"query": _GRAPHQL_SAVE, "variables": {"input": fields}})

    def _graphql_record(self) -> dict[str, Any]:
        data = self._send("graphql", "POST", self.urls["graphql"], {"query": _GRAPHQL_READ})
        myself = data.get("myself")
        if not isinstance(myself, dict):
            raise ServerUnavailable("RunPod graphql: myself is null (is the API key a user key? check "
                                    f"{self.key_env})", server="runpod")
        for record in myself.get("endpoints") or []:
            if isinstance(record, dict) and str(record.get("id")) == self.endpoint_id:
                return record
        raise ServerUnavailable(f"RunPod graphql: no endpoint {self.endpoint_id} in this account; check "
                                f"{ENDPOINT_ID_ENV}", server="runpod")


def _graphql_input(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every field read, in the shape saveEndpoint takes, so nothing is reset to a default."""
    fields = {k: v for k, v in record.items() if v is not None}
    if "networkVolumeIds" in fields:
        fields["networkVolumeIds"] = [{"networkVolumeId": v["networkVolumeId"]}
                                      for v in fields["networkVolumeIds"] if isinstance(v, dict)]
    return fields


def _settings(endpoint_id: str, data: Mapping[str, Any], via: str) -> EndpointSettings:
    """REST v2 nests ``workers: {min, max, idleTimeout}``; v1 and GraphQL are flat."""
    nested = data.get("workers")
    workers = nested if isinstance(nested, dict) else {}
    def pick(nested: str, flat: str) -> Any:
        return workers.get(nested, data.get(flat))
    w_min, w_max = pick("min", "workersMin"), pick("max", "workersMax")
    if not isinstance(w_min, int) or not isinstance(w_max, int):
        raise _Skip("the answer has no workersMin/workersMax")
    idle = pick("idleTimeout", "idleTimeout")
    standby = data.get("workersStandby")
    return EndpointSettings(endpoint_id=endpoint_id, name=data.get("name"), workers_min=w_min, workers_max=w_max,
                            idle_timeout=idle if isinstance(idle, int) else None,
                            workers_standby=standby if isinstance(standby, int) else None, via=via)


__all__ = ["EndpointSettings", "RunPodAdmin", "ToggleResult"]
