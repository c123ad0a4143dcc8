"""Several RunPod endpoints: a throttled one passes work to the next, a GPU class is honoured,
each endpoint's cost is kept apart. Two emulated RunPod accounts over loopback, the real
pool and dispatcher."""

from __future__ import annotations

import pytest

from comfy_cluster import run
from comfy_cluster.config import RunPodConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import ConfigError
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.runpod_group import RunPodGroup, runpod_backend
from tests.helpers import wait_until

KEY = "rpa_ENDPOINTS_T3ST_0b1c2d3e"
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": 99}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ep"}}}


@pytest.fixture
def accounts():
    workers = [EmulatorThread(name=f"rp-w{i}", seconds_per_job=0.05).start() for i in range(2)]
    emus = [RunPodEmulator(endpoint_id=eid, api_key=KEY, comfy_urls=[w.url]).start()
            for eid, w in zip(("ep-l40", "ep-a100"), workers)]
    try:
        yield emus
    finally:
        for emu in emus:
            emu.stop()
        for w in workers:
            w.stop()


def config(emus, **policy) -> RunPodConfig:
    first, second = emus
    return RunPodConfig.model_validate({
        "endpoint_id": first.endpoint_id, "base_url": first.base_url, "gpu_class": "L40",
        "price_per_second": 0.0004, "status_poll_min": 0.05, "status_poll_max": 0.3, "max_concurrent": 2,
        "endpoints": [{"endpoint_id": second.endpoint_id, "base_url": second.base_url, "gpu_class": "A100",
                       "price_per_second": 0.0012}], **policy})


def pool_for(emus, tmp_path, **policy) -> tuple[ComfyUIServerPool, RunPodGroup, CostLedger]:
    ledger = CostLedger(tmp_path / "state")
    group = runpod_backend(config(emus, **policy), environ={"RUNPOD_API_KEY": KEY}, ledger=ledger,
                           poll_interval=0.2)
    assert isinstance(group, RunPodGroup)
    pool = ComfyUIServerPool([], runpod=group, poll_interval=0.2).start()
    wait_until(lambda: all(e.state.value == "online" for e in group.endpoints), what="both endpoints healthy")
    return pool, group, ledger


def test_single_endpoint_config_is_unchanged():
    backend = runpod_backend(RunPodConfig(endpoint_id="solo"), environ={"RUNPOD_API_KEY": KEY})
    assert type(backend).__name__ == "RunPodEndpoint" and backend.base_url == "https://api.runpod.ai/v2/solo"


def test_endpoint_list_inherits_and_validates():
    cfg = RunPodConfig.model_validate({"endpoint_id": "a", "price_per_second": 0.0005, "max_concurrent": 3,
                                       "endpoints": [{"endpoint_id": "b", "gpu_class": "H100"}]})
    main, extra = cfg.endpoint_configs()
    assert (extra.base_url, extra.price_per_second, extra.max_concurrent) == ("https://api.runpod.ai/v2/b", 0.0005, 3)
    with pytest.raises(Exception, match="every endpoint_id must be different"):
        RunPodConfig.model_validate({"endpoint_id": "a", "endpoints": [{"endpoint_id": "a"}]})


def test_a_throttled_endpoint_passes_work_to_the_next(accounts, tmp_path):
    first, second = accounts
    pool, group, ledger = pool_for(accounts, tmp_path)
    try:
        first.set(rate_limit_next=10_000, retry_after="5")     # every job call on the first account: 429
        batch = run.animation_submit(WORKFLOW, pool=pool, frames="1-4", output=str(tmp_path / "out/t.####.png"),
                                     target="runpod", cache=False)
        result = batch.result(timeout=90)
        assert result.ok, result.failed
        assert sorted(result.frames) == [1, 2, 3, 4] and all(p.is_file() for ps in result.frames.values() for p in ps)
        assert first.count("POST", "/run") >= 1 and second.count("POST", "/run") == 4
        entries = ledger.entries()
        assert {e.endpoint for e in entries} == {"ep-a100"} and len(entries) == 4
        assert all(abs(e.cost - e.execution_ms / 1000 * 0.0012) < 1e-12 for e in entries)
    finally:
        pool.close()


def test_gpu_class_target_and_cost_kept_per_endpoint(accounts, tmp_path):
    first, second = accounts
    pool, group, ledger = pool_for(accounts, tmp_path)
    try:
        a100 = run.animation_submit(WORKFLOW, pool=pool, frames="1-2", output=str(tmp_path / "a/x.####.png"),
                                    target="runpod:A100", cache=False).result(timeout=60)
        l40 = run.animation_submit(WORKFLOW, pool=pool, frames="1-3", output=str(tmp_path / "l/x.####.png"),
                                   target="runpod:l40", cache=False).result(timeout=60)
        assert a100.ok and l40.ok
        assert second.count("POST", "/run") == 2 and first.count("POST", "/run") == 3
        per_endpoint: dict[str, float] = {}
        for e in ledger.entries():
            per_endpoint[e.endpoint] = per_endpoint.get(e.endpoint, 0.0) + e.cost
        assert set(per_endpoint) == {"ep-l40", "ep-a100"}
        assert [e.endpoint for e in ledger.entries()].count("ep-l40") == 3
        with pytest.raises(ValueError, match=r"no RunPod endpoint has gpu_class 'H100' \(configured: A100, L40\)"):
            group.for_gpu_class("H100")
        unknown = run.animation_submit(WORKFLOW, pool=pool, frames="1", output=str(tmp_path / "h/x.####.png"),
                                       target="runpod:H100", cache=False).result(timeout=30)
        assert not unknown.ok and first.count("POST", "/run") == 3 and second.count("POST", "/run") == 2
    finally:
        pool.close()


def test_endpoints_in_a_servers_file_load_through_the_config(tmp_path):
    import json

    from comfy_cluster.config_load import load_config_file

    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "gpu-01", "ip": "10.0.0.1", "port": 8188}],
                                "runpod": {"endpoint_id": "main", "endpoints": [{"endpoint_id": "big",
                                                                                 "gpu_class": "A100",
                                                                                 "price_per_second": "cheap"}]}}))
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.price_per_second: must be a number"):
        load_config_file(path)


def test_an_unknown_gpu_class_is_a_clear_cli_error(accounts, tmp_path, monkeypatch, capsys):
    import io
    import json

    from comfy_cluster.cli import main

    first, second = accounts
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    servers = tmp_path / "servers.json"
    runpod = {"endpoint_id": first.endpoint_id, "base_url": first.base_url, "gpu_class": "L40",
              "endpoints": [{"endpoint_id": second.endpoint_id, "base_url": second.base_url, "gpu_class": "A100"}]}
    servers.write_text(json.dumps({"servers": [{"name": "gpu-01", "ip": "127.0.0.1", "port": 9}], "runpod": runpod}))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    code = main(["--servers", str(servers), "render", str(wf), "--frames", "1-2", "--output",
                 str(tmp_path / "o/o.####.png"), "--target", "runpod:H100"], out=io.StringIO())
    assert code == 2
    assert "no RunPod endpoint has gpu_class 'H100' (configured: A100, L40)" in capsys.readouterr().err
    assert first.count("POST", "/run") == 0 and second.count("POST", "/run") == 0
