"""The always-on worker switch against the emulator's three admin APIs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from comfy_cluster.config import RunPodConfig
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import ConfigError, ServerUnavailable
from comfy_cluster.locks import file_lock
from comfy_cluster.runpod_admin import RunPodAdmin

KEY = "rpa_ADMIN_5d4c3b2a1f0e9d8c"
EID = "ep-always-on"

#: A studio endpoint whose settings all differ from saveEndpoint's defaults.
STUDIO = {"workersMax": 7, "idleTimeout": 42, "scalerValue": 9, "scalerType": "REQUEST_COUNT",
          "gpuIds": "AMPERE_48,-NVIDIA L40", "gpuCount": 2, "locations": "EU-RO-1",
          "networkVolumeIds": [{"networkVolumeId": "vol-models", "dataCenterId": "EU-RO-1"}],
          "networkVolumeId": "vol-models", "executionTimeoutMs": 1_234_000, "flashBootType": "FLASHBOOT",
          "instanceIds": ["cpu3c-2-4"], "name": "studio-comfy-burst", "workersMin": 0, "workersStandby": 0}


@pytest.fixture
def emu():
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[], endpoint_settings=dict(STUDIO)) as server:
        yield server


def make_admin(emu: RunPodEmulator, tmp_path: Path, key: str = KEY, endpoint_id: str = EID) -> RunPodAdmin:
    cfg = RunPodConfig(endpoint_id=endpoint_id, base_url=f"{emu.url}/v2/{{endpoint_id}}",
                       admin_url=f"{emu.url}/v1",
                       admin_v2_url=f"{emu.url}/v2", graphql_url=f"{emu.url}/graphql")
    return RunPodAdmin(cfg, environ={"RUNPOD_API_KEY": key}, state_dir=tmp_path / "state", timeout=10)


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_status_reads_the_worker_settings(emu, tmp_path) -> None:
    settings = make_admin(emu, tmp_path).status()
    assert (settings.workers_min, settings.workers_max, settings.idle_timeout) == (0, 7, 42)
    assert settings.via == "rest-v2" and not settings.warm


def test_warm_and_cold_via_rest_v2(emu, tmp_path) -> None:
    admin = make_admin(emu, tmp_path)
    before = emu.endpoint()
    result = admin.warm()
    assert result.changed and result.via == "rest-v2"
    assert (result.before.workers_min, result.after.workers_min) == (0, 1)
    assert str(result) == f"RunPod endpoint {EID}: warm: workersMin 0 -> 1 via rest-v2"
    assert changed_fields(before, emu.endpoint()) == {"workersMin", "workersStandby"}
    assert emu.count("PATCH", f"/v2/serverless/{EID}") == 1

    again = admin.warm()
    assert not again.changed and "already warm" in again.message
    assert emu.count("PATCH", f"/v2/serverless/{EID}") == 1       # nothing sent

    cold = admin.cold()
    assert cold.changed and cold.after.workers_min == 0
    assert emu.endpoint() == before
    assert "already cold" in admin.cold().message


def test_falls_back_to_rest_v1(emu, tmp_path) -> None:
    emu.set(admin_apis=("v1", "graphql"))
    before = emu.endpoint()
    result = make_admin(emu, tmp_path).warm()
    assert result.changed and result.via == "rest-v1" and result.after.via == "rest-v1"
    assert changed_fields(before, emu.endpoint()) == {"workersMin", "workersStandby"}
    assert emu.count("PATCH", f"/v1/endpoints/{EID}") == 1


def test_graphql_fallback_is_read_modify_write_of_every_field(emu, tmp_path) -> None:
    emu.set(admin_apis=("graphql",))
    before = emu.endpoint()
    admin = make_admin(emu, tmp_path)
    result = admin.warm()
    assert result.changed and result.via == "graphql"
    after = emu.endpoint()
    assert changed_fields(before, after) == {"workersMin", "workersStandby"}
    assert (after["workersMin"], after["workersStandby"]) == (1, 1)
    assert (after["workersMax"], after["idleTimeout"], after["scalerValue"]) == (7, 42, 9)
    assert after["networkVolumeIds"] == STUDIO["networkVolumeIds"]
    assert admin.cold().changed
    final = emu.endpoint()
    assert final == before and final["workersStandby"] == 0      # really scales to zero


def test_the_emulator_plays_the_full_replace_pitfall(emu) -> None:
    # What a naive saveEndpoint does, so the test above can fail.
    query = "mutation($input: EndpointInput!) { saveEndpoint(input: $input) { id workersMin workersMax } }"
    r = requests.post(f"{emu.url}/graphql", headers={"Authorization": f"Bearer {KEY}"}, timeout=5,
                      json={"query": query, "variables": {"input": {"id": EID, "name": STUDIO["name"],
                                                                     "workersMin": 0}}})
    assert r.json()["data"]["saveEndpoint"]["workersMax"] == 3
    record = emu.endpoint()
    assert (record["idleTimeout"], record["scalerValue"], record["workersStandby"]) == (10, 4, 1)
    bad = requests.post(f"{emu.url}/graphql", headers={"Authorization": f"Bearer {KEY}"}, timeout=5,
                        json={"query": query, "variables": {"input": {
                            "id": EID, "name": "abc", "networkVolumeIds": STUDIO["networkVolumeIds"]}}})
    assert "networkVolumeIds" in bad.json()["errors"][0]["message"]


def test_v2_skipped_for_the_session_after_it_failed(emu, tmp_path) -> None:
    emu.set(admin_apis=("v1",))
    admin = make_admin(emu, tmp_path)
    admin.warm()
    admin.cold()
    assert emu.count("GET", f"/v2/serverless/{EID}") == 1          # tried once, then skipped


def test_two_toggles_at_once_change_once(emu, tmp_path) -> None:
    emu.set(admin_delay_s=0.3)
    admins = [make_admin(emu, tmp_path) for _ in range(2)]
    results: list = []
    threads = [threading.Thread(target=lambda a=a: results.append(a.warm())) for a in admins]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(r.changed for r in results) == [False, True]
    assert emu.count("PATCH", f"/v2/serverless/{EID}") == 1
    assert emu.endpoint()["workersMin"] == 1


def test_warm_and_cold_at_once_end_in_the_last_ones_state(emu, tmp_path) -> None:
    emu.set(admin_delay_s=0.2, admin_apis=("graphql",))
    before = emu.endpoint()
    results: dict[str, Any] = {}
    finished: list[str] = []

    def toggle(action: str) -> None:
        results[action] = getattr(make_admin(emu, tmp_path), action)()
        finished.append(action)
    threads = [threading.Thread(target=toggle, args=(a,)) for a in ("warm", "cold")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    first, last = results[finished[0]], results[finished[1]]
    assert first.after.workers_min == last.before.workers_min       # one after the other, never interleaved
    assert emu.endpoint()["workersMin"] == last.after.workers_min
    assert changed_fields(before, emu.endpoint()) <= {"workersMin", "workersStandby"}


def test_a_toggle_waits_for_the_lock_file(emu, tmp_path) -> None:
    admin = make_admin(emu, tmp_path)
    (tmp_path / "state").mkdir()
    done = threading.Event()
    with file_lock(tmp_path / "state" / f"runpod-admin-{EID}.lock", 5, owner="another process"):
        t = threading.Thread(target=lambda: (admin.warm(), done.set()))
        t.start()
        assert not done.wait(0.3)               # held by "another process"
        assert emu.count("PATCH", "") == 0
    t.join(10)
    assert done.is_set() and emu.endpoint()["workersMin"] == 1


def test_401_names_the_key_and_does_not_fall_back(emu, tmp_path) -> None:
    with pytest.raises(ServerUnavailable) as info:
        make_admin(emu, tmp_path, key="rpa_bad_key_1").warm()
    assert "RUNPOD_API_KEY" in str(info.value) and "rpa_bad_key_1" not in str(info.value)
    assert emu.count("POST", "/graphql") == 0


def test_no_api_left_says_what_each_answered(emu, tmp_path) -> None:
    emu.set(admin_apis=())
    with pytest.raises(ServerUnavailable) as info:
        make_admin(emu, tmp_path).status()
    text = str(info.value)
    assert "rest-v2: HTTP 404" in text and "rest-v1: HTTP 404" in text and "graphql: HTTP 404" in text


def test_unknown_endpoint_in_graphql_names_the_variable(emu, tmp_path) -> None:
    emu.set(admin_apis=("graphql",))
    with pytest.raises(ServerUnavailable, match="RUNPOD_ENDPOINT_ID"):
        make_admin(emu, tmp_path, endpoint_id="ep-other").status()


def test_warm_needs_room_under_workers_max(tmp_path) -> None:
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[],
                        endpoint_settings={"workersMax": 0}) as emu:
        with pytest.raises(ConfigError, match="workersMax is 0"):
            make_admin(emu, tmp_path).warm()


def test_set_min_workers(emu, tmp_path) -> None:
    admin = make_admin(emu, tmp_path)
    result = admin.set_min_workers(3)
    assert result.changed and result.after.workers_min == 3
    assert admin.warm().changed is False                          # 3 is warm already
    with pytest.raises(ConfigError):
        admin.set_min_workers(-1)


def test_warm_worker_shows_in_health(emu, tmp_path) -> None:
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=["http://127.0.0.1:9"]) as server:
        admin = make_admin(server, tmp_path)
        admin.warm()
        deadline = time.monotonic() + 5
        idle = 0
        while idle == 0 and time.monotonic() < deadline:
            idle = requests.get(f"{server.base_url}/health", headers={"Authorization": f"Bearer {KEY}"},
                                timeout=5).json()["workers"]["idle"]
            time.sleep(0.02)
        assert idle == 1
