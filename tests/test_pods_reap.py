"""Nothing keeps billing: a client SIGKILLed with pods up, then `pods reap` or the next client."""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfy_cluster import cli
from comfy_cluster.autoscale import Autoscaler
from comfy_cluster.emulator.pods import PodsEmulator
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pod_registry import POD_LEDGER_PREFIX, PodRegistry, reap
from comfy_cluster.pods import PodsClient
from comfy_cluster.pool import ComfyUIServerPool
from tests.helpers import wait_until
from tests.test_autoscale import KEY, policy_for

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import sys, time
from comfy_cluster import run
from comfy_cluster.pool import ComfyUIServerPool
wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kill"}}}
pool = ComfyUIServerPool.from_env(poll_interval=0.2).start()
batch = run.animation_submit(wf, pool=pool, frames="1-2000", output=sys.argv[1])
while len([s for s in pool.servers if s.name.startswith("comfy-cluster-")]) < 2:
    time.sleep(0.05)
print("PODS_UP", flush=True)
time.sleep(600)
"""


@pytest.fixture
def pods_emu():
    emu = PodsEmulator(api_key=KEY, provision_s=0.2, start_s=0.2, comfy_boot_s=0.3, seconds_per_job=0.2).start()
    try:
        yield emu
    finally:
        emu.stop()


def servers_file(tmp_path: Path, local_port: int, emu: PodsEmulator) -> Path:
    policy = policy_for(emu, owner_timeout_s=600.0).model_dump(mode="json")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "local", "ip": "127.0.0.1", "port": local_port}],
                                "pods": policy}))
    return path


def killed_client(tmp_path: Path, local_port: int, emu: PodsEmulator) -> tuple[Path, dict[str, str]]:
    """Run a client that rents two pods, SIGKILL it, and return (servers file, its environment)."""
    path = servers_file(tmp_path, local_port, emu)
    env = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state"),
           "NUKE_COMFYUI_SERVERS": f"@{path}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "out" / "f.####.png")],
                             env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "child.log", "wb"))
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(child.stdout, selectors.EVENT_READ)
            assert sel.select(60), f"the child never rented its pods: {(tmp_path / 'child.log').read_text()}"
            assert child.stdout.readline().strip() == b"PODS_UP"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return path, env


def test_pods_reap_terminates_the_pods_of_a_sigkilled_client(pods_emu, emulator_thread_factory, tmp_path,
                                                              monkeypatch):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.4)
    path, env = killed_client(tmp_path, local.port, pods_emu)
    assert len(pods_emu.billing()) == 2            # left alone, they would bill forever
    time.sleep(0.5)
    assert len(pods_emu.billing()) == 2
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    assert cli.main(["--servers", str(path), "pods", "reap"], out=out) == 0
    assert not pods_emu.billing(), out.getvalue()
    assert out.getvalue().count("terminated") == 2 and "is gone" in out.getvalue()
    entries = [e for e in CostLedger(tmp_path / "state").entries() if e.endpoint.startswith(POD_LEDGER_PREFIX)]
    assert {e.job_id for e in entries} == {p.id for p in pods_emu.created}
    assert PodRegistry(tmp_path / "state").records() == []


def test_the_next_client_adopts_the_pods_of_a_sigkilled_one_and_stops_them_when_idle(
        pods_emu, emulator_thread_factory, tmp_path):
    local = emulator_thread_factory(name="slow-local", seconds_per_job=0.4)
    path, env = killed_client(tmp_path, local.port, pods_emu)
    orphans = {p.name for p in pods_emu.billing()}
    assert len(orphans) == 2
    pool = ComfyUIServerPool.from_file(path, environ=env, poll_interval=0.2).start()
    try:
        wait_until(lambda: orphans <= {s.name for s in pool.servers}, 30, "both orphans adopted into the pool")
        wait_until(lambda: not pods_emu.billing(), 30, "the adopted pods terminated after the idle time")
    finally:
        pool.close()
    assert {p.name for p in pods_emu.terminated} == orphans


def test_reap_keeps_pods_in_use_and_ends_them_past_the_lifetime_cap(pods_emu, tmp_path):
    env = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state")}
    scaler = Autoscaler(ComfyUIServerPool(environ=env), policy_for(pods_emu), environ=env)
    scaler.registry.heartbeat(scaler.owner)
    pod = scaler.spawn()
    assert pod is not None
    registry = PodRegistry(tmp_path / "state")
    client = PodsClient(policy_for(pods_emu), environ=env)
    assert [r.action for r in reap(client, registry)] == ["kept"]
    capped = PodsClient(policy_for(pods_emu, max_lifetime_s=0.2), environ=env)
    wait_until(lambda: time.time() - pods_emu.created[0].created > 0.3, 5, "the pod older than the cap")
    results = reap(capped, registry)
    assert [(r.action, r.pod_id) for r in results] == [("terminated", pod.pod_id)]
    assert "lifetime cap" in results[0].reason and not pods_emu.billing()


def test_shutdown_all_terminates_every_pod_with_our_prefix(pods_emu, tmp_path, monkeypatch):
    env = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "a")}
    for folder in ("a", "b"):   # two installs (two state folders) sharing one account
        scaler = Autoscaler(ComfyUIServerPool(environ=env), policy_for(pods_emu),
                            environ={**env, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / folder)})
        scaler.registry.heartbeat(scaler.owner)
        assert scaler.spawn() is not None
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "local", "ip": "127.0.0.1", "port": 1}],
                                "pods": policy_for(pods_emu).model_dump(mode="json")}))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    assert cli.main(["--servers", str(path), "pods", "reap"], out=out) == 0
    assert len(pods_emu.billing()) == 2 and out.getvalue().count("kept") == 1   # both owners are alive
    assert cli.main(["--servers", str(path), "pods", "shutdown-all"], out=out) == 0
    assert not pods_emu.billing()


def test_reloading_the_configuration_keeps_the_rented_pods_in_the_pool(pods_emu, emulator, tmp_path):
    path = servers_file(tmp_path, emulator.port, pods_emu)
    env = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state")}
    pool = ComfyUIServerPool.from_file(path, environ=env, poll_interval=0.2).start()
    try:
        pod = pool.autoscaler.spawn()
        assert pod is not None and pool.get_server_by_name(pod.name) is not None
        pool.load_configuration()
        assert {s.name for s in pool.servers} == {"local", pod.name}
    finally:
        pool.close()
    assert not pods_emu.billing()
