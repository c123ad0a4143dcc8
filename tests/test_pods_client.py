"""The pods client and the pods emulator over loopback: shapes, named errors, secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest
import requests

from comfy_cluster import cli
from comfy_cluster.autoscale import Autoscaler
from comfy_cluster.emulator.pods import NO_CAPACITY, PodsEmulator
from comfy_cluster.errors import ConfigError
from comfy_cluster.pod_policy import PodsPolicy
from comfy_cluster.pods import (
    InsufficientBalance,
    NoCapacity,
    PodsAuthError,
    PodsClient,
    VolumeDataCenterMismatch,
    parse_time,
)
from comfy_cluster.pool import ComfyUIServerPool
from tests.helpers import wait_until
from tests.test_autoscale import GPU_A, GPU_B, KEY, policy_for


@pytest.fixture
def emu():
    emulator = PodsEmulator(api_key=KEY, provision_s=0.1, start_s=0.1, comfy_boot_s=0.3).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def client(emu):
    c = PodsClient(policy_for(emu), environ={"RUNPOD_API_KEY": KEY})
    yield c
    c.close()


def test_create_walks_the_states_and_ports_stay_null_until_the_container_is_up(emu, client):
    pod = client.create("comfy-cluster-t1", GPU_A)
    assert pod.status == "PROVISIONING" and not pod.ready and pod.cost_per_hr == 0.69
    raw = requests.get(f"{emu.rest_url}/pods/{pod.id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).json()
    assert raw["runtime"] is None and raw["ssh"]["direct"] is None
    seen = []

    def up() -> bool:
        now = client.get(pod.id)
        seen.append(now.status)
        return now.ready
    wait_until(up, 10, "the container up")
    assert seen[-1] == "RUNNING" and set(seen) <= {"PROVISIONING", "STARTING", "RUNNING"}
    url = client.policy.pod_url(pod.id)
    first = requests.get(f"{url}/system_stats", timeout=5).status_code
    wait_until(lambda: requests.get(f"{url}/system_stats", timeout=5).status_code == 200, 10, "ComfyUI answering")
    assert first in (502, 200)
    assert [p.id for p in client.list_pods()] == [pod.id]
    assert client.terminate(pod.id) is True
    assert client.get(pod.id) is None and client.list_pods() == [] and client.terminate(pod.id) is False


def test_the_proxy_answers_502_until_comfyui_listens_and_524_after_its_timeout(emu, client):
    emu.set(comfy_boot_s=1.0, proxy_timeout_s=0.5)
    pod = client.create("comfy-cluster-t2", GPU_A)
    url = client.policy.pod_url(pod.id)
    assert requests.get(f"{url}/queue", timeout=5).status_code == 502
    wait_until(lambda: client.get(pod.id).ready, 10, "the container up")
    assert requests.get(f"{url}/queue", timeout=5).status_code == 502     # up, but ComfyUI still booting
    wait_until(lambda: requests.get(f"{url}/queue", timeout=5).status_code == 200, 10, "ComfyUI answering")
    requests.post(f"{emu.pods[pod.id].comfy.url}/_emulator/faults", json={"delay_s": 2.0}, timeout=5)
    assert requests.get(f"{url}/queue", timeout=10).status_code == 524
    assert requests.get(f"{emu.proxy_url.format(pod_id=pod.id, port=9999)}/queue", timeout=5).status_code == 502


def test_no_capacity_is_named_with_the_gpu_type(emu, client):
    emu.set_stock(GPU_A, 0)
    with pytest.raises(NoCapacity) as err:
        client.create("comfy-cluster-t3", GPU_A)
    assert err.value.gpu_type == GPU_A and "no longer any instances available" in str(err.value)
    assert client.create("comfy-cluster-t3", GPU_B).gpu_type == GPU_B


def test_a_bad_key_is_named_by_its_variable_never_its_value(emu):
    wrong = "sk-WRONG-secret-value-42"
    bad = PodsClient(policy_for(emu), environ={"RUNPOD_API_KEY": wrong})
    for call in (bad.list_pods, bad.gpu_types, lambda: bad.create("comfy-cluster-x", GPU_A)):
        with pytest.raises(PodsAuthError) as err:
            call()
        assert "RUNPOD_API_KEY" in str(err.value) and wrong not in str(err.value) and wrong not in repr(bad)
    with pytest.raises(ConfigError, match="RUNPOD_API_KEY"):
        PodsClient(policy_for(emu), environ={})


def test_insufficient_balance_is_a_402(emu, client):
    emu.balance = 0.5
    with pytest.raises(InsufficientBalance, match="402"):
        client.create("comfy-cluster-t4", GPU_A)
    assert emu.created == []


def test_a_volume_in_another_data_centre_is_refused_before_the_call(emu):
    volume = emu.add_volume("models", 50, "US-TX-3")
    policy = policy_for(emu, network_volume_id=volume, data_center_ids=["EU-RO-1"])
    with pytest.raises(VolumeDataCenterMismatch, match="US-TX-3"):
        PodsClient(policy, environ={"RUNPOD_API_KEY": KEY}).create("comfy-cluster-v", GPU_A)
    with pytest.raises(VolumeDataCenterMismatch, match="Secure Cloud"):
        PodsClient(policy_for(emu, network_volume_id=volume, cloud="COMMUNITY"),
                   environ={"RUNPOD_API_KEY": KEY}).create("comfy-cluster-v", GPU_A)
    assert emu.created == []
    pod = PodsClient(policy_for(emu, network_volume_id=volume), environ={"RUNPOD_API_KEY": KEY}).create(
        "comfy-cluster-v", GPU_A)
    assert pod.data_center == "US-TX-3"


def test_stop_and_start_and_cost_accrual(emu, client):
    pod = client.create("comfy-cluster-t5", GPU_A)
    wait_until(lambda: client.get(pod.id).ready, 10, "running")
    balance0, spend = client.balance()
    assert spend == pytest.approx(0.69)
    wait_until(lambda: client.balance()[0] < balance0, 10, "the balance falling while it runs")
    stopped = client.stop(pod.id)
    assert stopped.status == "EXITED" and not stopped.ready
    assert client.start(pod.id).status == "STARTING"
    with pytest.raises(Exception, match="409"):
        client.start(pod.id)


def test_gpu_types_and_prices_come_from_graphql(client):
    types = {t.id: t for t in client.gpu_types()}
    assert types[GPU_A].secure_price == 0.69 and types[GPU_A].stock == "High"
    assert client.price_per_hour(GPU_B) == pytest.approx(0.27)


def test_emulator_quirks_422_409_graphql_errors_and_v1_gone(emu):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(f"{emu.rest_url}/pods", json={"name": "x", "image": "i", "gpu": {"id": GPU_A},
                                                    "gpuTypeIds": [GPU_A]}, headers=auth, timeout=5)
    assert r.status_code == 422 and "gpuTypeIds" in " ".join(r.json()["errors"])
    assert requests.get(f"{emu.rest_url}/pods", timeout=5).json()["detail"] == "missing bearer token"
    pod = requests.post(f"{emu.rest_url}/pods", json={"name": "x", "image": "i", "gpu": {"id": GPU_A, "count": 2},
                                                      "ports": "8188/http,22/tcp"}, headers=auth, timeout=5).json()
    assert pod["cost"] == pytest.approx(1.38) and pod["ports"] == ["8188/http", "22/tcp"]
    r = requests.post(f"{emu.rest_url}/pods/{pod['id']}/action", json={"action": "start"}, headers=auth, timeout=5)
    assert r.status_code == 409
    r = requests.post(f"{emu.rest_url}/pods/{pod['id']}/action", json={"action": "reset"}, headers=auth, timeout=5)
    assert r.status_code == 422
    gql = requests.post(emu.graphql_url, json={"query": f'mutation {{ podTerminate(input: {{podId: "{pod["id"]}"}})'
                                                        " { id } }"}, headers=auth, timeout=5).json()
    assert gql["data"] == {"podTerminate": None} and "selection" in gql["errors"][0]["message"]
    gql = requests.post(f"{emu.graphql_url}?api_key={KEY}",
                        json={"query": f'mutation {{ podTerminate(input: {{podId: "{pod["id"]}"}}) }}'}, timeout=5)
    assert gql.json() == {"data": {"podTerminate": None}} and not emu.pods
    emu.set_stock(GPU_A, 0)
    gql = requests.post(emu.graphql_url, json={"query": "mutation($input: PodFindAndDeployOnDemandInput!) "
                                                        "{ podFindAndDeployOnDemand(input: $input) { id } }",
                                               "variables": {"input": {"gpuTypeId": GPU_A, "name": "y"}}},
                        headers=auth, timeout=5).json()
    assert gql["errors"][0]["message"] == NO_CAPACITY and gql["data"] == {"podFindAndDeployOnDemand": None}
    assert requests.get(f"{emu.url}/v1/pods", headers=auth, timeout=5).status_code == 410


def test_parse_time_reads_rfc3339_and_go_style():
    assert parse_time("2026-08-20T06:16:19Z") == parse_time("2026-08-20 06:16:19.00 +0000 UTC")
    assert parse_time("") is None and parse_time("garbage") is None


def test_the_api_key_never_reaches_a_log_line_a_file_or_an_error(emu, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    env = {"RUNPOD_API_KEY": KEY, "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state")}
    scaler = Autoscaler(ComfyUIServerPool(environ=env), policy_for(emu, env={"HF_HOME": "/workspace/hf"}),
                        environ=env)
    scaler.registry.heartbeat(scaler.owner)
    pod = scaler.spawn()
    assert pod is not None
    emu.set_stock(GPU_A, 0)
    emu.set_stock(GPU_B, 0)
    assert scaler.spawn() is None
    texts = [repr(scaler), repr(scaler.client), json.dumps(scaler.rows())]
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "local", "ip": "127.0.0.1", "port": 1}],
                                "pods": policy_for(emu).model_dump(mode="json")}))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    for argv in (["pods", "ls"], ["pods", "gpus"], ["pods", "shutdown-all"]):
        assert cli.main(["--servers", str(path), "--log-level", "DEBUG", *argv], out=out) == 0
    monkeypatch.setenv("RUNPOD_API_KEY", "sk-another-secret")
    assert cli.main(["--servers", str(path), "pods", "ls"], out=out) == 1
    files = [p.read_text(errors="replace") for p in (tmp_path / "state").iterdir() if p.is_file()]
    for text in [caplog.text, out.getvalue(), *texts, *files]:
        assert KEY not in text and "sk-another-secret" not in text
    assert "comfy-cluster-" in out.getvalue()


def test_policy_refuses_a_key_in_the_config_and_names_fields(tmp_path):
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "a", "ip": "127.0.0.1", "port": 1}],
                                "pods": {"image": "x", "gpu_types": [GPU_A], "api_key": "sk-in-file"}}))
    from comfy_cluster.config_load import load_config_file
    with pytest.raises(ConfigError, match="pods: api_key: refused") as err:
        load_config_file(path)
    assert "sk-in-file" not in str(err.value)
    path.write_text(json.dumps({"servers": [{"name": "a", "ip": "127.0.0.1", "port": 1}],
                                "pods": {"image": "x", "gpu_types": [], "proxy_url": "https://nope"}}))
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert "pods: gpu_types" in str(err.value) and "pods: proxy_url" in str(err.value)
    assert PodsPolicy(image="x", gpu_types=[GPU_A]).pod_url("abc123") == "https://abc123-8188.proxy.runpod.net"


def test_cli_spawn_and_terminate(emu, tmp_path, monkeypatch):
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "a", "ip": "127.0.0.1", "port": 1}],
                                "pods": policy_for(emu).model_dump(mode="json")}))
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    out = io.StringIO()
    assert cli.main(["--servers", str(path), "pods", "spawn", "--gpu", GPU_B], out=out) == 0
    pod = next(iter(emu.pods.values()))
    assert pod.gpu.id == GPU_B and pod.name in out.getvalue()
    assert cli.main(["--servers", str(path), "pods", "ls", "--json"], out=(listing := io.StringIO())) == 0
    row = json.loads(listing.getvalue())[0]
    assert row["gpu"] == GPU_B and row["cost_per_hr"] == 0.27 and "uptime_s" in row and "cost" in row
    assert cli.main(["--servers", str(path), "pods", "terminate", pod.id], out=out) == 0
    assert not emu.pods


def test_status_shows_pod_rows_and_leaves_a_spawned_pod_for_the_next_render(emu, tmp_path, monkeypatch,
                                                                             emulator_thread_factory):
    local = emulator_thread_factory(name="local")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "local", "ip": "127.0.0.1", "port": local.port}],
                                "pods": policy_for(emu, idle_s=60.0).model_dump(mode="json")}))
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["--servers", str(path), "pods", "spawn"], out=io.StringIO()) == 0
    pod = next(iter(emu.pods.values()))
    wait_until(lambda: emu.pods[pod.id].comfy is not None, 10, "the pod up")
    out = io.StringIO()
    assert cli.main(["--servers", str(path), "status"], out=out) == 0
    row = next(line for line in out.getvalue().splitlines() if line.startswith(pod.name))
    assert pod.id in row and GPU_A in row and "$0.69/h" in row and "RUNNING" in row
    assert pod.id in emu.pods                    # a status call does not end a pod it never used


def test_early_running_is_not_ready_until_ports_are_mapped(emu, client):
    emu.set(early_running=True, start_s=0.5)
    pod = client.create("comfy-cluster-t6", GPU_A)
    assert pod.status == "RUNNING" and not pod.ready        # the measured v2 quirk: wait for a port
    wait_until(lambda: client.get(pod.id).ready, 10, "ports mapped")


def test_network_volume_crud_and_bounds(emu, client):
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{emu.rest_url}/network-volumes"
    assert requests.post(url, json={"name": "m", "size": 5, "dataCenter": "EU-RO-1"}, headers=auth,
                         timeout=5).status_code == 400
    assert requests.post(url, json={"name": "m", "size": 20, "dataCenter": "XX-1"}, headers=auth,
                         timeout=5).json()["detail"] == "Failed to find data center"
    made = requests.post(url, json={"name": "m", "size": 20, "dataCenter": "EU-RO-1"}, headers=auth, timeout=5)
    assert made.status_code == 201
    vid = made.json()["id"]
    assert [(v.id, v.data_center, v.size_gb) for v in client.network_volumes()] == [(vid, "EU-RO-1", 20)]
    assert requests.patch(f"{url}/{vid}", json={"size": 10}, headers=auth, timeout=5).status_code == 400
    assert requests.patch(f"{url}/{vid}", json={"size": 40}, headers=auth, timeout=5).json()["size"] == 40
    assert requests.delete(f"{url}/{vid}", headers=auth, timeout=5).status_code == 204
    assert client.network_volumes() == []


def test_resume_onto_a_full_host_is_refused_with_runpods_text(emu, client):
    pod = client.create("comfy-cluster-t7", GPU_A)
    client.stop(pod.id)
    emu.set_stock(GPU_A, 0, dc=pod.data_center)
    with pytest.raises(Exception, match="not enough free GPUs on the host machine"):
        client.start(pod.id)


def test_status_still_shows_the_servers_when_the_pods_api_refuses_the_key(emu, tmp_path, monkeypatch,
                                                                          emulator_thread_factory):
    local = emulator_thread_factory(name="local")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "local", "ip": "127.0.0.1", "port": local.port}],
                                "pods": policy_for(emu).model_dump(mode="json")}))
    monkeypatch.setenv("RUNPOD_API_KEY", "sk-not-the-key")
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    out = io.StringIO()
    assert cli.main(["--servers", str(path), "status"], out=out) == 0
    assert "local" in out.getvalue() and "RunPod pods:" in out.getvalue() and "RUNPOD_API_KEY" in out.getvalue()
    assert "sk-not-the-key" not in out.getvalue()
