"""Which RunPod pods are ours, who uses them, and the reaper that stops the ones nobody does.

Money is real, and the process that started a pod may die (Nuke crashes, a SIGKILL). So a
pod is tracked two ways: by a name tag (``{prefix}{install}-{random}``, ``install`` being a
random id kept in this state folder) and by a record in ``pods.json`` in the state folder,
written *before* the create call, so that even a client killed mid-create leaves a trace.
Each record names its owner (client id, host, pid) and the owner's heartbeat. A pod is in
use while its owner's heartbeat is fresh and its process is alive; otherwise whoever runs
next adopts it (a starting autoscaler) or terminates it (``comfy-cluster pods reap``, for a
cron job). No pod outlives ``max_lifetime_s``.

Reads and writes go through an exclusive file lock (``locks.file_lock``), and the
file is replaced atomically, so two clients never lose each other's records.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .ledger import CostLedger
from .ledger import state_dir as default_state_dir
from .locks import file_lock
from .pod_policy import PodsPolicy
from .pods import PodInfo, PodsClient
from .transfer import atomic_write

log = logging.getLogger(__name__)

REGISTRY_FILE = "pods.json"
LOCK_FILE = "pods.lock"
POD_LEDGER_PREFIX = "pod:"


@dataclass
class PodRecord:
    """One pod of ours as the registry knows it (``pod_id`` is empty until the create returned)."""

    name: str
    owner: str
    gpu_type: str = ""
    pod_id: str = ""
    cost_per_hr: float = 0.0
    created: float = 0.0
    batch: str = ""


@dataclass
class Owner:
    """A client that uses pods: where it runs and when it last said it is alive."""

    host: str
    pid: int
    heartbeat: float


@dataclass
class _State:
    install: str
    pods: dict[str, PodRecord] = field(default_factory=dict)
    owners: dict[str, Owner] = field(default_factory=dict)


@dataclass(frozen=True)
class ReapResult:
    """What a reap did to one pod and why."""

    name: str
    pod_id: str
    action: str          # "terminated", "forgotten", "kept"
    reason: str
    cost: float = 0.0


class PodRegistry:
    """The ``pods.json`` of one state folder."""

    def __init__(self, directory: Path | str | None = None, *, environ: Mapping[str, str] = os.environ,
                 clock: Callable[[], float] = time.time, lock_timeout: float = 30.0) -> None:
        self.directory = Path(directory) if directory is not None else default_state_dir(environ)
        self.path = self.directory / REGISTRY_FILE
        self._clock = clock
        self._lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"PodRegistry({str(self.directory)!r})"

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        """Read, let the caller change, write back atomically; all under the file lock."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / LOCK_FILE, self._lock_timeout, owner="RunPod pods", server="pods"):
            state = self._read()
            before = json.dumps(_dump(state), sort_keys=True)
            yield state
            after = _dump(state)
            if json.dumps(after, sort_keys=True) != before:
                text = json.dumps(after, indent=1, sort_keys=True) + "\n"

                def fill(tmp: Path) -> None:
                    tmp.write_text(text, encoding="utf-8")
                atomic_write(self.path, fill)

    def _read(self) -> _State:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _State(install=secrets.token_hex(3))
        except (OSError, ValueError) as err:
            log.warning("pod registry %s is unreadable (%s): starting a new one; `comfy-cluster pods reap` "
                        "still finds our pods by their name tag", self.path, err)
            return _State(install=secrets.token_hex(3))
        return _State(install=str(data.get("install") or secrets.token_hex(3)),
                      pods={k: PodRecord(**v) for k, v in (data.get("pods") or {}).items()},
                      owners={k: Owner(**v) for k, v in (data.get("owners") or {}).items()})

    # ------------------------------------------------------------------ reading
    def tag(self, policy: PodsPolicy) -> str:
        """The name prefix of the pods this state folder creates."""
        with self._locked() as state:
            return f"{policy.name_prefix}{state.install}-"

    def records(self) -> list[PodRecord]:
        with self._locked() as state:
            return list(state.pods.values())

    # ------------------------------------------------------------------ writing
    def heartbeat(self, owner: str) -> None:
        with self._locked() as state:
            state.owners[owner] = Owner(host=socket.gethostname(), pid=os.getpid(), heartbeat=self._clock())

    def retire_owner(self, owner: str) -> None:
        with self._locked() as state:
            state.owners.pop(owner, None)

    def intend(self, policy: PodsPolicy, owner: str, gpu_type: str, batch: str = "") -> str:
        """Record a pod about to be created and return its tagged name (before the API call)."""
        with self._locked() as state:
            name = f"{policy.name_prefix}{state.install}-{secrets.token_hex(3)}"
            state.pods[name] = PodRecord(name=name, owner=owner, gpu_type=gpu_type, created=self._clock(), batch=batch)
            return name

    def bind(self, name: str, pod: PodInfo) -> None:
        with self._locked() as state:
            record = state.pods.get(name)
            if record is not None:
                record.pod_id, record.cost_per_hr = pod.id, pod.cost_per_hr
                record.created = pod.created_at or record.created

    def adopt(self, name: str, owner: str, pod: PodInfo | None = None) -> PodRecord:
        with self._locked() as state:
            record = state.pods.get(name)
            if record is None:
                record = PodRecord(name=name, owner=owner)
                state.pods[name] = record
            record.owner = owner
            if pod is not None:
                record.pod_id, record.gpu_type, record.cost_per_hr = pod.id, pod.gpu_type, pod.cost_per_hr
                record.created = pod.created_at or record.created or self._clock()
            return PodRecord(**asdict(record))

    def forget(self, name: str) -> None:
        with self._locked() as state:
            state.pods.pop(name, None)

    def orphans(self, timeout: float) -> set[str]:
        """Names of records whose owner is gone (no fresh heartbeat, or its process is dead)."""
        with self._locked() as state:
            now = self._clock()
            return {name for name, r in state.pods.items() if not _alive(state.owners.get(r.owner), now, timeout)}


def _alive(owner: Owner | None, now: float, timeout: float) -> bool:
    if owner is None or now - owner.heartbeat > timeout:
        return False
    if owner.host == socket.gethostname() and os.name == "posix":   # signal 0 means CTRL_C on Windows
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def _dump(state: _State) -> dict[str, Any]:
    return {"install": state.install, "pods": {k: asdict(v) for k, v in state.pods.items()},
            "owners": {k: asdict(v) for k, v in state.owners.items()}}


def pod_cost(pod: PodInfo | None, record: PodRecord | None, now: float) -> float:
    """Dollars a pod has cost so far: its hourly rate times the time since it started (or was created)."""
    rate = (pod.cost_per_hr if pod is not None and pod.cost_per_hr else None) or (record.cost_per_hr if record else 0.0)
    start = (pod.started_at or pod.created_at) if pod is not None else None
    start = start or (record.created if record is not None else None)
    return max(0.0, now - start) * rate / 3600 if start else 0.0


def record_pod_cost(ledger: CostLedger, *, name: str, pod_id: str, gpu_type: str, cost: float, seconds: float,
                    batch: str = "", status: str = "TERMINATED") -> None:
    """A terminated pod's bill in the same ledger (and daily budget) as serverless jobs."""
    ledger.record(endpoint=f"{POD_LEDGER_PREFIX}{gpu_type}", job_id=pod_id, label=name, batch=batch,
                  execution_ms=int(seconds * 1000), cost=cost, status=status)


def reap(client: PodsClient, registry: PodRegistry, *, ledger: CostLedger | None = None,
         everything: bool = False, now: float | None = None) -> list[ReapResult]:
    """Terminate our pods that nobody uses, that passed the lifetime cap, or (``everything``) all of them.

    "Ours" is a pod whose name carries this state folder's tag, or any pod the registry
    records. Registry records whose pod is gone are dropped. ``everything`` (shutdown-all)
    takes every pod with the policy's name prefix, from any state folder.
    """
    policy = client.policy
    moment = time.time() if now is None else now
    tag = registry.tag(policy)
    records = {r.name: r for r in registry.records()}
    orphaned = registry.orphans(policy.owner_timeout_s)
    results: list[ReapResult] = []
    live = client.list_pods()
    seen = set()
    for pod in live:
        record = records.get(pod.name)
        mine = pod.name.startswith(policy.name_prefix if everything else tag) or record is not None
        if not mine:
            continue
        seen.add(pod.name)
        age = moment - (pod.created_at or (record.created if record else moment))
        if everything:
            reason = "shutdown-all"
        elif age > policy.max_lifetime_s:
            reason = f"past the lifetime cap ({age:.0f} s > {policy.max_lifetime_s:g} s)"
        elif record is None:
            reason = "tagged as ours but not in the registry: its client died"
        elif pod.name in orphaned:
            reason = f"its client ({record.owner}) is gone"
        else:
            results.append(ReapResult(pod.name, pod.id, "kept", f"in use by {record.owner}"))
            continue
        cost = pod_cost(pod, record, moment)
        client.terminate(pod.id)
        registry.forget(pod.name)
        if ledger is not None:
            record_pod_cost(ledger, name=pod.name, pod_id=pod.id, gpu_type=pod.gpu_type, cost=cost,
                            seconds=moment - (pod.started_at or pod.created_at or moment),
                            batch=record.batch if record else "")
        log.warning("RunPod pods: terminated %s (%s): %s", pod.name, pod.id, reason)
        results.append(ReapResult(pod.name, pod.id, "terminated", reason, cost))
    for name, record in records.items():
        gone = record.pod_id != ""                         # it was created, and RunPod no longer lists it
        stale = name in orphaned and moment - record.created > policy.request_timeout_s * 2   # create never returned
        if name not in seen and (gone or stale):
            registry.forget(name)
            results.append(ReapResult(name, record.pod_id, "forgotten", "no such pod on RunPod any more"))
    return results


__all__ = ["PodRecord", "PodRegistry", "ReapResult", "pod_cost", "reap", "record_pod_cost"]
