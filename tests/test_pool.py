"""ComfyUIServerPool against three emulated ComfyUI processes of different speeds.

Selection under mixed load, offline/online within a bound, capability filtering,
max_queue, 50 racing selections, run-time membership, snapshots, RunPod overflow.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from comfy_cluster.backend import PromptRequest
from comfy_cluster.backend import ServerState
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorProcess, EmulatorThread
from comfy_cluster.errors import MissingNodes
from comfy_cluster.pool import ComfyUIServerPool, PoolEvent, PoolSnapshot, Strategy
from comfy_cluster.transport import Timeouts

from tests.helpers import wait_until

from .test_server import OTHER_ARTIST, config_for, drain, graph

FAST = Timeouts(connect=1.0, read=5.0, transfer=10.0)
POLL = 0.25
SPEEDS = {"gpu-01": 0.05, "gpu-02": 0.15, "gpu-03": 0.3}


@pytest.fixture(scope="module")
def emus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EmulatorProcess]]:
    procs = {name: EmulatorProcess(seconds_per_job=spj, name=name, base_dir=tmp_path_factory.mktemp(name))
             for name, spj in SPEEDS.items()}
    try:
        with ThreadPoolExecutor(len(procs)) as ex:
            list(ex.map(lambda p: p.start(), procs.values()))
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture
def configs(emus: dict[str, EmulatorProcess]) -> Iterator[list[ServerConfig]]:
    yield [config_for(proc.url, name) for name, proc in emus.items()]
    for proc in emus.values():
        if proc.alive:
            drain(proc)


def make_pool(configs: list[ServerConfig], **kw: Any) -> ComfyUIServerPool:
    kw.setdefault("poll_interval", POLL)
    return ComfyUIServerPool(configs, environ={}, **kw)


def online(pool: ComfyUIServerPool, *names: str) -> bool:
    return all(pool.get_server_by_name(n).state in (ServerState.ONLINE, ServerState.BUSY) for n in names)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, PoolEvent]] = []

    def __call__(self, event: PoolEvent) -> None:
        self.events.append((time.monotonic(), event))

    def first(self, kind: str, server: str, after: float = 0.0) -> float | None:
        return next((t for t, e in self.events if e.kind == kind and e.server == server and t > after), None)


# -- selection -----------------------------------------------------------------------------


def test_least_loaded_avoids_a_server_full_of_other_artists_work(configs, emus) -> None:
    emus["gpu-01"].set_faults(hang=True)
    with ComfyClient(emus["gpu-01"].url, timeouts=FAST) as other:
        for _ in range(3):
            other.submit(graph(), client_id=OTHER_ARTIST)
    with make_pool(configs) as pool:
        assert wait_until(lambda: pool.get_server_by_name("gpu-01").queue_pending == 2)
        assert wait_until(lambda: online(pool, "gpu-02", "gpu-03"))
        leases = [pool.acquire() for _ in range(4)]
        names = sorted(lease.backend.name for lease in leases)
        assert names == ["gpu-02", "gpu-02", "gpu-03", "gpu-03"]   # all unmeasured: same speed
        fifth = pool.acquire()
        assert fifth.backend.name == "gpu-01"                       # the only free slot left
        sixth = pool.acquire()
        assert sixth.backend.name == "gpu-01" and pool.acquire() is None   # every slot taken
        for lease in (*leases, fifth, sixth):
            lease.release()


def test_measured_speed_decides(configs) -> None:
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        for name in SPEEDS:   # one real job each measures every server
            lease = pool.acquire(target=name)
            result = lease.backend.run_prompt(PromptRequest(uuid.uuid4().hex, graph(color=hash(name) & 0xFFFFFF)),
                                              on_event=lambda k, d: None, cancel=threading.Event())
            lease.release(seconds=result.elapsed)
        speeds = {s.name: s.seconds_per_job for s in pool.servers}
        assert speeds["gpu-01"] < speeds["gpu-02"] < speeds["gpu-03"], speeds
        first, second = pool.acquire(), pool.acquire()
        # gpu-01 with one job queued (2 x 0.05 s) still beats gpu-02 idle (0.15 s)
        assert (first.backend.name, second.backend.name) == ("gpu-01", "gpu-01")
        assert pool.acquire().backend.name == "gpu-02"           # gpu-01 is at max_queue


def test_the_last_frames_wait_for_a_faster_busy_server(configs) -> None:
    """At a batch's tail an idle slow GPU would finish a frame later than a full fast one."""
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        for name, seconds in (("gpu-01", 0.05), ("gpu-02", 0.3), ("gpu-03", 0.6)):
            pool.get_server_by_name(name).record_result(seconds, ok=True)
        held = [pool.acquire(target="gpu-01"), pool.acquire(target="gpu-01")]     # gpu-01 full: 3 x 0.05 s
        assert pool.acquire(wait_for_faster=True) is None                        # gpu-02 idle: 0.3 s, later
        second = pool.acquire()                                                   # in steady state it is used
        assert second.backend.name == "gpu-02"
        held[0].release(seconds=0.05)
        tail = pool.acquire(wait_for_faster=True)                                 # a slot of the fast one
        assert tail.backend.name == "gpu-01"
        for lease in (held[1], second, tail):
            lease.release(seconds=None)


def test_fifty_threads_at_once_never_overfill(configs) -> None:
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        barrier = threading.Barrier(50)

        def grab(_: int):
            barrier.wait()
            return pool.acquire()

        with ThreadPoolExecutor(50) as ex:
            leases = [lease for lease in ex.map(grab, range(50)) if lease is not None]
        per_server = {name: sum(1 for lease in leases if lease.backend.name == name) for name in SPEEDS}
        assert per_server == {"gpu-01": 2, "gpu-02": 2, "gpu-03": 2}
        assert all(s.in_flight == 2 for s in pool.servers)
        for lease in leases:
            lease.release()
            lease.release()   # idempotent
        assert all(s.in_flight == 0 for s in pool.servers)


def test_priority_and_round_robin_strategies(configs) -> None:
    configs = [configs[0].model_copy(update={"priority": 3}), configs[1].model_copy(update={"priority": 1}),
               configs[2].model_copy(update={"priority": 2})]
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        got = [pool.acquire(strategy="priority").backend.name for _ in range(6)]
        assert got == ["gpu-02", "gpu-02", "gpu-03", "gpu-03", "gpu-01", "gpu-01"]
    with make_pool(configs, strategy=Strategy.ROUND_ROBIN) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        rr = []
        for _ in range(6):
            lease = pool.acquire()
            rr.append(lease.backend.name)
            lease.release()
        assert rr == ["gpu-01", "gpu-02", "gpu-03"] * 2


def test_max_queue_and_wait_for_change(configs) -> None:
    with make_pool([configs[0].model_copy(update={"max_queue": 1})]) as pool:
        assert wait_until(lambda: online(pool, "gpu-01"))
        lease = pool.acquire()
        assert lease is not None and pool.acquire() is None
        threading.Timer(0.1, lease.release).start()
        assert pool.wait_for_change(5)
        assert wait_until(lambda: lease.released) and pool.acquire() is not None


def test_target_and_exclude(configs) -> None:
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        assert pool.acquire(target="gpu-03").backend.name == "gpu-03"
        assert pool.acquire(exclude={"gpu-01", "gpu-02"}).backend.name == "gpu-03"
        assert pool.acquire(exclude={"gpu-01", "gpu-02"}) is None
        with pytest.raises(ValueError, match="gpu-01, gpu-02, gpu-03"):
            pool.acquire(target="gpu-99")
        with pytest.raises(ValueError, match="RunPod"):
            pool.acquire(target="runpod")


def test_capability_filter_and_missing_nodes(configs, tmp_path: Path) -> None:
    blur = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "blur"}}}
    with EmulatorThread(node_classes=["EmptyImage", "ImageInvert", "SaveImage"], name="old-box") as old:
        old_cfg = config_for(old.url, "old-box", priority=0)
        with make_pool([old_cfg]) as pool:
            assert wait_until(lambda: online(pool, "old-box"))
            with pytest.raises(MissingNodes) as info:
                pool.acquire({"ImageBlur", "EmptyImage"})
            assert info.value.missing == {"ImageBlur"} and "old-box" in str(info.value)
            assert "ImageBlur" in str(info.value)
            assert pool.acquire({"EmptyImage"}).backend.name == "old-box"
        with make_pool([old_cfg, configs[2]]) as pool:
            assert wait_until(lambda: online(pool, "old-box", "gpu-03"))
            assert pool.get_available_server(workflow=blur).name == "gpu-03"
            leases = [pool.acquire(blur) for _ in range(3)]
            assert [lease and lease.backend.name for lease in leases] == ["gpu-03", "gpu-03", None]


# -- monitoring ------------------------------------------------------------------------------


def test_killed_server_offline_within_bound_and_back_after_restart(tmp_path: Path) -> None:
    proc = EmulatorProcess(seconds_per_job=0.05, name="gpu-07", base_dir=tmp_path / "emu").start()
    try:
        pool = make_pool([config_for(proc.url, "gpu-07")], max_backoff=1.0)
        rec = Recorder()
        pool.subscribe(rec)
        with pool:
            server = pool.get_server_by_name("gpu-07")
            assert wait_until(lambda: online(pool, "gpu-07"))
            lost = server.lost
            proc.kill()
            assert wait_until(lambda: server.state is ServerState.OFFLINE, 30, what="gpu-07 offline")
            assert lost.is_set() and pool.acquire() is None
            assert wait_until(lambda: rec.first("offline", "gpu-07"))
            proc.restart()
            assert wait_until(lambda: online(pool, "gpu-07"), 10)
            assert not server.lost.is_set()
            assert wait_until(lambda: rec.first("online", "gpu-07", after=rec.first("offline", "gpu-07")))
            assert pool.acquire() is not None
    finally:
        proc.stop()


def test_readers_never_wait_on_a_slow_server(configs, emus) -> None:
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        emus["gpu-02"].set_faults(delay_s=30.0)   # its next probe hangs for the whole test
        try:
            assert wait_until(lambda: "gpu-02" in pool._probing, what="a probe of gpu-02 in flight")
            for _ in range(50):
                pool.snapshot()
                lease = pool.acquire()
                assert lease is not None
                lease.release()
            assert "gpu-02" in pool._probing, "the readers returned while the slow probe was still waiting"
        finally:
            emus["gpu-02"].set_faults(delay_s=0.0)


def test_websocket_status_updates_counts_between_polls(configs, emus) -> None:
    pool = make_pool(configs[:1], poll_interval=60.0)
    with pool:
        server = pool.get_server_by_name("gpu-01")
        assert wait_until(lambda: online(pool, "gpu-01"))
        with pool.acquire() as lease:   # starts this server's tracker
            lease.backend.run_prompt(PromptRequest(uuid.uuid4().hex, graph(color=7)),
                                     on_event=lambda k, d: None, cancel=threading.Event())
        checked = server.last_status_check
        emus["gpu-01"].set_faults(hang=True)
        with ComfyClient(emus["gpu-01"].url, timeouts=FAST) as other:
            other.submit(graph(), client_id=OTHER_ARTIST)
            other.submit(graph(), client_id=OTHER_ARTIST)
        assert wait_until(lambda: server.queue_running + server.queue_pending == 2, 5)
        assert server.state is ServerState.BUSY and server.last_status_check == checked   # no poll happened


# -- membership, snapshot --------------------------------------------------------------------


def test_membership_at_run_time(configs) -> None:
    pool = make_pool(configs[:1], strategy="priority")
    rec = Recorder()
    pool.subscribe(rec)
    with pool:
        assert wait_until(lambda: online(pool, "gpu-01"))
        pool.add_server(configs[1].model_copy(update={"priority": 0}))
        assert wait_until(lambda: online(pool, "gpu-02"))
        assert pool.get_available_server().name == "gpu-02"
        pool.disable("gpu-02")
        assert pool.get_server_by_name("gpu-02").state is ServerState.DISABLED
        assert pool.get_available_server().name == "gpu-01"
        pool.enable("gpu-02")
        pool.set_priority("gpu-02", 5)
        assert pool.get_available_server().name == "gpu-01"
        pool.remove_server("gpu-01")
        assert [s.name for s in pool.servers] == ["gpu-02"]
        with pytest.raises(ValueError):
            pool.add_server(configs[1])
        assert wait_until(lambda: {("added", "gpu-02"), ("changed", "gpu-02"), ("removed", "gpu-01")}
                        <= {(e.kind, e.server) for _, e in rec.events})


def test_load_configuration_adds_removes_updates(configs) -> None:
    def env(servers: list[ServerConfig]) -> dict[str, str]:
        return {"NUKE_COMFYUI_SERVERS": json.dumps([s.to_dict() for s in servers])}

    pool = ComfyUIServerPool.from_env(env(configs[:2]), poll_interval=POLL)
    with pool:
        assert [s.name for s in pool.servers] == ["gpu-01", "gpu-02"]
        kept = pool.get_server_by_name("gpu-02")
        pool.load_configuration(env([configs[1].model_copy(update={"priority": 7}), configs[2]]))
        assert [s.name for s in pool.servers] == ["gpu-02", "gpu-03"]
        assert pool.get_server_by_name("gpu-02") is kept and kept.priority == 7
        assert wait_until(lambda: online(pool, "gpu-02", "gpu-03"))


def test_snapshot_round_trips_through_json(configs) -> None:
    with make_pool(configs) as pool:
        assert wait_until(lambda: online(pool, *SPEEDS))
        snap = pool.snapshot()
        data = json.loads(json.dumps(snap.to_dict()))
        assert data == snap.to_dict() and PoolSnapshot.from_dict(data) == snap
        assert data["strategy"] == "least_loaded" and data["poll_interval"] == POLL and data["runpod"] is None
        assert {s["name"]: s["state"] for s in data["servers"]} == dict.fromkeys(SPEEDS, "online")


# -- RunPod overflow --------------------------------------------------------------------------


class FakeRunPod:
    """Just the duck-typed surface the pool calls; the policy is the real one's rule."""

    name = "runpod"
    kind = "runpod"
    max_queue = 2
    overflow_after_s = 1.0
    seconds_per_job = None

    def __init__(self) -> None:
        self.asked: list[tuple[int, float | None]] = []
        self.results: list[tuple[float | None, bool]] = []
        self.running = False

    def start(self) -> FakeRunPod:      # the pool starts and stops the endpoint's monitor with its own
        self.running = True
        return self

    def stop(self) -> None:
        self.running = False

    def missing_classes(self, classes: Any) -> frozenset[str]:
        return frozenset()

    def has_free_slot(self) -> bool:
        return True

    def should_take(self, *, local_online: int, predicted_local_wait: float | None) -> bool:
        self.asked.append((local_online, predicted_local_wait))
        return local_online == 0 or predicted_local_wait is None or predicted_local_wait > self.overflow_after_s

    def record_result(self, seconds: float | None, ok: bool) -> None:
        self.results.append((seconds, ok))

    def get_status(self) -> Any:
        return type("S", (), {"to_dict": lambda self: {"name": "runpod", "state": "online"}})()


def test_runpod_overflow(configs) -> None:
    runpod = FakeRunPod()
    pool = make_pool(configs[2:], runpod=runpod)   # gpu-03 only, 0.3 s per job
    burst = pool.acquire()
    assert burst.backend is runpod                 # nothing local online yet: offline burst
    assert runpod.asked[-1] == (0, None)
    burst.release(ok=False)
    with pool:
        assert runpod.running
        assert wait_until(lambda: online(pool, "gpu-03"))
        server = pool.get_server_by_name("gpu-03")
        server.record_result(0.6, ok=True)
        local = pool.acquire()
        assert local.backend is server              # predicted 0.6 s <= overflow_after_s
        second = pool.acquire()
        assert second.backend is runpod              # 2 x 0.6 s > 1 s: RunPod takes it
        assert runpod.asked[-1] == (1, pytest.approx(1.2))
        third = pool.acquire()
        assert third.backend is runpod
        assert pool.acquire(target="runpod") is None   # both RunPod slots are leased
        fourth = pool.acquire()
        assert fourth.backend is server                 # RunPod full: local, though slow
        second.release(seconds=3.0)
        assert runpod.results == [(None, False), (3.0, True)]
        assert pool.acquire(target="runpod").backend is runpod
        assert pool.backends[-1] is runpod and pool.snapshot().runpod == {"name": "runpod", "state": "online"}
        for lease in (local, third, fourth):
            lease.release()
