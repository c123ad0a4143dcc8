"""The pod autoscaler against the pods emulator over loopback: scale up, join, finish, scale down."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_cluster import run
from comfy_cluster.config import ClusterConfig, RunPodConfig, ServerConfig
from comfy_cluster.emulator.pods import PodsEmulator
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pod_policy import PodsPolicy
from comfy_cluster.pod_registry import POD_LEDGER_PREFIX, PodRegistry
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.server import ServerState
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


def pod_frames(result: run.BatchResult) -> int:
    return sum(n for name, n in result.by_server.items() if name.startswith("comfy-cluster-"))


def test_long_batch_spawns_pods_up_to_the_cap_they_join_and_terminate_when_idle(
        pods_emu, emulator_thread_factory, tmp_path):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.4)
    pool = make_pool(local.port, policy_for(pods_emu), tmp_path / "state")
    try:
        seen_booting = []
        pool.subscribe(lambda e: seen_booting.append(e.server) if e.kind == "changed" else None)
        batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-60", output=str(tmp_path / "out" / "f.####.png"))
        wait_until(lambda: len(pods_emu.created) == 2, 30, "two pods created")
        booting = wait_until(lambda: [s for s in pool.servers if s.name.startswith("comfy-cluster-")
                                      and s.state is ServerState.BOOTING] or
                             [s for s in pool.servers if s.name.startswith("comfy-cluster-")], 10, "pods in the pool")
        assert booting
        result = batch.result(timeout=180)
        assert result.ok and len(result.frames) == 60
        assert pod_frames(result) > 0, result.by_server
        assert all(p.exists() for paths in result.frames.values() for p in paths)
        assert pods_emu.peak <= 2 and len(pods_emu.created) == 2
        wait_until(lambda: not pods_emu.billing(), 30, "every pod terminated after the idle time")
        assert not [s for s in pool.servers if s.name.startswith("comfy-cluster-")]
        entries = [e for e in CostLedger(tmp_path / "state").entries() if e.endpoint.startswith(POD_LEDGER_PREFIX)]
        assert len(entries) == 2 and all(e.cost > 0 for e in entries)
        assert {e.job_id for e in entries} == {p.id for p in pods_emu.created}
        assert PodRegistry(tmp_path / "state").records() == []
    finally:
        pool.close()
    assert not pods_emu.billing()
