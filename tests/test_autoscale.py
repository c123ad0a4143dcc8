"""The pod autoscaler against the pods emulator over loopback: scale up, join, finish, scale down."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_cluster import run
from comfy_cluster.backend import ServerState
from comfy_cluster.batch import BatchResult
from comfy_cluster.config import ClusterConfig, RunPodConfig, ServerConfig
from comfy_cluster.emulator.pods import PodsEmulator
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pod_policy import PodsPolicy
from comfy_cluster.pod_registry import POD_LEDGER_PREFIX, PodRegistry
from comfy_cluster.pool import ComfyUIServerPool
from tests.helpers import wait_until

KEY = "pods-test-key-0123456789"
GPU_A = "NVIDIA GeForce RTX 4090"
GPU_B = "NVIDIA RTX A5000"
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x336699}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pods"}},
}


@pytest.fixture
def pods_emu():
    emu = PodsEmulator(api_key=KEY, provision_s=0.2, start_s=0.2, comfy_boot_s=0.3, seconds_per_job=0.05).start()
    try:
        yield emu
    finally:
        emu.stop()


def policy_for(emu: PodsEmulator, **kw) -> PodsPolicy:
    values = dict(image="comfyui:test", gpu_types=[GPU_A, GPU_B], max_pods=2, rest_url=emu.rest_url,
                  graphql_url=emu.graphql_url, proxy_url=emu.proxy_url, idle_s=1.0, tick_s=0.2,
                  scale_up_wait_s=1.0, boot_estimate_s=0.5, owner_timeout_s=5.0)
    values.update(kw)
    return PodsPolicy(**values)


def make_pool(local_url_port: int, policy: PodsPolicy, state: Path, runpod: RunPodConfig | None = None):
    environ = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(state)}
    cfg = ClusterConfig(servers=[ServerConfig(name="local", ip="127.0.0.1", port=local_url_port)], source="test",
                        pods=policy, runpod=runpod)
    pool = ComfyUIServerPool.from_config(cfg, environ=environ, poll_interval=0.2).start()
    wait_until(lambda: pool.get_server_by_name("local").state in (ServerState.ONLINE, ServerState.BUSY),
               10, "the local server online")
    return pool


_READY = (ServerState.ONLINE, ServerState.BUSY)


def record_pod_states(pool):
    """(server name, state) of every pod server at each pool event, in order."""
    states = []

    def note(event):
        server = pool.get_server_by_name(event.server)
        if server is not None and event.server.startswith("comfy-cluster-"):
            states.append((event.server, server.state))
    pool.subscribe(note)
    return states


def pod_frames(result: BatchResult) -> int:
    return sum(n for name, n in result.by_server.items() if name.startswith("comfy-cluster-"))


def test_long_batch_spawns_pods_up_to_the_cap_they_join_and_terminate_when_idle(
        pods_emu, emulator_thread_factory, tmp_path):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.4)
    pool = make_pool(local.port, policy_for(pods_emu), tmp_path / "state")
    try:
        states = record_pod_states(pool)
        batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-60", output=str(tmp_path / "out" / "f.####.png"))
        wait_until(lambda: len(pods_emu.created) == 2, 30, "two pods created")
        rows = wait_until(lambda: len(pool.snapshot().to_dict()["pods"]) == 2 and pool.snapshot().to_dict()["pods"],
                          10, "two pod rows in the snapshot")
        assert {r["gpu"] for r in rows} == {GPU_A} and all(r["cost_per_hr"] == 0.69 for r in rows)
        assert {"uptime_s", "cost", "state", "pod_id"} <= set(rows[0])
        result = batch.result(timeout=180)
        assert result.ok and len(result.frames) == 60
        assert pod_frames(result) > 0, result.by_server
        for pod in pods_emu.created:   # each pod was booting in the pool (proxy 502) before it took frames
            seen = [state for name, state in states if name.endswith(pod.name[-6:])]
            assert ServerState.BOOTING in seen and ServerState.ONLINE in seen or ServerState.BUSY in seen, seen
            assert seen.index(ServerState.BOOTING) < min(seen.index(s) for s in _READY if s in seen)
        assert all(p.exists() for paths in result.frames.values() for p in paths)
        assert pods_emu.peak <= 2 and len(pods_emu.created) == 2
        wait_until(lambda: not pods_emu.billing(), 30, "every pod terminated after the idle time")
        ledger = CostLedger(tmp_path / "state")
        entries = wait_until(lambda: [e for e in ledger.entries() if e.endpoint.startswith(POD_LEDGER_PREFIX)][1:]
                             and [e for e in ledger.entries() if e.endpoint.startswith(POD_LEDGER_PREFIX)], 10,
                             "both pods' cost in the ledger")
        assert len(entries) == 2 and all(e.cost > 0 for e in entries)
        assert {e.batch for e in entries} == {batch.batch_id}
        assert sum(e.cost for e in entries) == pytest.approx(pods_emu.spend(), rel=0.25)   # what RunPod billed
        assert not [s for s in pool.servers if s.name.startswith("comfy-cluster-")]
        assert {e.job_id for e in entries} == {p.id for p in pods_emu.created}
        assert PodRegistry(tmp_path / "state").records() == []
    finally:
        pool.close()
    assert not pods_emu.billing()


def test_no_capacity_for_the_first_gpu_type_falls_to_the_next_then_to_serverless(
        pods_emu, emulator_thread_factory, tmp_path):
    pods_emu.set_stock(GPU_A, 0)
    pods_emu.set_stock(GPU_B, 0)
    pods_emu.set_stock(GPU_B, 1, dc="EU-RO-1", cloud="SECURE")
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.4)
    with RunPodEmulator(api_key=KEY, workers=2, seconds_per_job=0.4) as serverless:   # as slow as a GPU
        runpod = RunPodConfig(endpoint_id=serverless.endpoint_id, base_url=serverless.base_url, overflow_after_s=0.5,
                              max_concurrent=2, status_poll_min=0.05, status_poll_max=0.2)
        pool = make_pool(local.port, policy_for(pods_emu, max_pods=3), tmp_path / "state", runpod=runpod)
        try:
            batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-50", output=str(tmp_path / "o" / "f.####.png"))
            result = batch.result(timeout=180)
        finally:
            pool.close()
    assert result.ok and len(result.frames) == 50
    assert [p.gpu.id for p in pods_emu.created] == [GPU_B]        # A had none; B had exactly one
    assert pod_frames(result) > 0 and result.by_server.get("runpod", 0) > 0, result.by_server
    assert not pods_emu.billing()


def test_the_daily_budget_stops_new_pods_drains_running_ones_and_loses_nothing(
        pods_emu, emulator_thread_factory, tmp_path):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.3)
    # $0.69/h: the budget is gone about two seconds after the first pod starts
    pool = make_pool(local.port, policy_for(pods_emu, daily_budget=0.0004, idle_s=60.0), tmp_path / "state")
    try:
        batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-40", output=str(tmp_path / "o" / "f.####.png"))
        wait_until(lambda: pods_emu.created, 30, "a pod created")
        wait_until(lambda: pool.autoscaler.blocked_reason, 30, "the budget reached")
        wait_until(lambda: not pods_emu.billing(), 30, "pods drained and terminated by the budget")
        created = len(pods_emu.created)
        result = batch.result(timeout=180)
        assert len(pods_emu.created) == created          # no new pod once the budget is reached
        assert "budget" in pool.autoscaler.blocked_reason
    finally:
        pool.close()
    assert result.ok and len(result.frames) == 40 and not result.failed
    assert result.by_server.get("local", 0) > 0
    spent = CostLedger(tmp_path / "state").spend_today()
    assert spent >= 0.0004


def test_nothing_is_spawned_when_todays_ledger_is_already_over_budget(pods_emu, emulator_thread_factory, tmp_path):
    CostLedger(tmp_path / "state").record(endpoint="emu-endpoint", job_id="j1", cost=1.0)
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.2)
    pool = make_pool(local.port, policy_for(pods_emu, daily_budget=0.5), tmp_path / "state")
    try:
        result = run.animation_submit(WORKFLOW, pool=pool, frames="1-20",
                                      output=str(tmp_path / "o" / "f.####.png")).result(timeout=120)
        assert "budget" in (pool.autoscaler.blocked_reason or "")
    finally:
        pool.close()
    assert result.ok and len(result.frames) == 20 and pods_emu.created == []


def test_a_pod_dying_mid_batch_loses_no_frame(pods_emu, emulator_thread_factory, tmp_path):
    pods_emu.set(seconds_per_job=0.3)
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.4)
    pool = make_pool(local.port, policy_for(pods_emu, max_pods=1), tmp_path / "state")
    try:
        batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-40", output=str(tmp_path / "o" / "f.####.png"))
        first = wait_until(lambda: pods_emu.created, 30, "a pod")[0]
        wait_until(lambda: (s := pool.get_server_by_name(first.name)) is not None and s.in_flight > 0, 30,
                   "the pod rendering one of our frames")
        pods_emu.fail_pod(first.id)
        result = batch.result(timeout=180)
        wait_until(lambda: pool.get_server_by_name(first.name) is None, 30, "the dead pod removed from the pool")
    finally:
        pool.close()
    assert result.ok and len(result.frames) == 40 and not result.failed
    assert any(result.retries.values()), "the frame running on the dead pod was retried elsewhere"
    assert first.id not in {p.id for p in pods_emu.billing()}
    assert not pods_emu.billing()


def test_a_short_burst_rents_no_pod_when_it_would_boot_after_the_queue_drains(
        pods_emu, emulator_thread_factory, tmp_path):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.3)
    pool = make_pool(local.port, policy_for(pods_emu, boot_estimate_s=60.0), tmp_path / "state")
    try:
        result = run.animation_submit(WORKFLOW, pool=pool, frames="1-12",
                                      output=str(tmp_path / "o" / "f.####.png")).result(timeout=60)
    finally:
        pool.close()
    assert result.ok and result.by_server == {"local": 12} and pods_emu.created == []


def test_serverless_cheaper_than_a_pod_takes_the_overflow_and_no_pod_is_rented(
        pods_emu, emulator_thread_factory, tmp_path):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.3)
    with RunPodEmulator(api_key=KEY, workers=2) as serverless:
        # $0.0001/s = $0.36/h of rendering, cheaper than the cheapest pod ($0.69/h)
        runpod = RunPodConfig(endpoint_id=serverless.endpoint_id, base_url=serverless.base_url, overflow_after_s=0.5,
                              max_concurrent=2, price_per_second=0.0001, status_poll_min=0.05, status_poll_max=0.2)
        pool = make_pool(local.port, policy_for(pods_emu), tmp_path / "state", runpod=runpod)
        try:
            result = run.animation_submit(WORKFLOW, pool=pool, frames="1-30",
                                          output=str(tmp_path / "o" / "f.####.png")).result(timeout=120)
        finally:
            pool.close()
    assert result.ok and len(result.frames) == 30
    assert result.by_server.get("runpod", 0) > 0 and pods_emu.created == []


def test_a_pod_whose_comfyui_never_answers_is_terminated_after_the_boot_timeout(
        pods_emu, emulator_thread_factory, tmp_path):
    pods_emu.set(comfy_boot_s=3600.0)
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.3)
    pool = make_pool(local.port, policy_for(pods_emu, max_pods=1, boot_timeout_s=1.0, tick_s=0.3),
                     tmp_path / "state")
    try:
        batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-30", output=str(tmp_path / "o" / "f.####.png"))
        wait_until(lambda: pods_emu.terminated, 30, "the pod that never booted terminated")
        result = batch.result(timeout=120)
    finally:
        pool.close()
    assert result.ok and result.by_server == {"local": 30}
    assert not pods_emu.billing()
    assert len(pods_emu.created) <= 3     # backs off after a failed boot instead of renting in a loop
