"""`comfy-cluster runpod status|warm|cold|cost` against the RunPod emulator over loopback."""

from __future__ import annotations

import io
import json

import pytest

from comfy_cluster import cli
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.ledger import CostLedger

KEY = "rp-cli-test-key-9f3e2d"
EID = "ep-cli"


@pytest.fixture
def endpoint(tmp_path, monkeypatch):
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, workers=1,
                         endpoint_settings={"workersMin": 0, "workersMax": 3, "idleTimeout": 42}).start()
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", EID)
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NUKE_COMFYUI_RUNPOD", json.dumps({
        "base_url": emu.base_url, "admin_v2_url": f"{emu.url}/v2", "admin_url": f"{emu.url}/v1",
        "graphql_url": f"{emu.url}/graphql", "daily_budget": 5.0}))
    try:
        yield emu, tmp_path / "state"
    finally:
        emu.stop()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


def test_warm_cold_and_already_warm(endpoint, capsys) -> None:
    emu, _ = endpoint
    code, text = run("runpod", "warm")
    assert code == 0 and "workersMin 0 -> 1" in text, text
    assert emu.endpoint()["workersMin"] == 1
    code, text = run("runpod", "warm")
    assert code == 0 and "already warm" in text, text
    code, text = run("runpod", "cold")
    assert code == 0 and emu.endpoint()["workersMin"] == 0
    assert emu.endpoint()["workersMax"] == 3 and emu.endpoint()["idleTimeout"] == 42
    assert KEY not in text + capsys.readouterr().err


def test_status_json_reads_health_and_settings(endpoint) -> None:
    code, text = run("runpod", "status", "--json")
    assert code == 0
    data = json.loads(text)
    assert data["settings"]["workers_max"] == 3
    assert data["status"]["state"] in ("online", "busy", "booting")
    assert KEY not in text


def test_cost_reports_todays_spend_against_the_budget(endpoint) -> None:
    _, state = endpoint
    ledger = CostLedger(state, environ={})
    ledger.record(endpoint=EID, job_id="j1", batch="b1", execution_ms=2000, delay_ms=900, cost=0.5)
    ledger.record(endpoint=EID, job_id="j2", batch="b1", execution_ms=1000, delay_ms=100, cost=0.25)
    code, text = run("runpod", "cost", "--json")
    assert code == 0
    data = json.loads(text)
    assert data["today"] == pytest.approx(0.75) and data["jobs_today"] == 2
    code, text = run("runpod", "cost")
    assert code == 0 and "0.75" in text


def test_no_endpoint_configured_is_one_clear_line(capsys) -> None:
    code, _ = run("runpod", "status")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().startswith("comfy-cluster: error: no RunPod endpoint is configured: set RUNPOD_ENDPOINT_ID")
    assert "Traceback" not in err


def test_wrong_key_names_the_variable_never_the_key(endpoint, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong-key-123456")
    code, _ = run("runpod", "status")
    err = capsys.readouterr().err
    assert code != 0 and "RUNPOD_API_KEY" in err and "wrong-key-123456" not in err
