"""Cost before you burst: the estimate from measured seconds per frame against the later
ledger (emulated RunPod over loopback), the split between tiers, and the CLI refusal."""

from __future__ import annotations

import io
import json

import pytest

from comfy_cluster import run
from comfy_cluster.cli import main
from comfy_cluster.config import RunPodConfig, ServerConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import BudgetExceeded
from comfy_cluster.estimate import Estimate, TierEstimate, check_budget, estimate_render
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.runpod import RunPodEndpoint
from tests.helpers import wait_until

KEY = "rpa_ESTIMATE_T3ST_55aa66bb"
EID = "ep-estimate"
PRICE = 0.01


def workflow(color: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "est"}}}


@pytest.fixture
def emu():
    worker = EmulatorThread(name="rp-est-worker", seconds_per_job=0.25).start()
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[worker.url]).start()
    try:
        yield emu
    finally:
        emu.stop()
        worker.stop()


def runpod_config(emu, **policy) -> RunPodConfig:
    return RunPodConfig(endpoint_id=EID, base_url=emu.base_url, price_per_second=PRICE, status_poll_min=0.05,
                        status_poll_max=0.2, max_concurrent=1, **policy)


def test_estimate_matches_the_later_ledger_within_the_measured_spread(emu, tmp_path):
    ledger = CostLedger()
    endpoint = RunPodEndpoint(runpod_config(emu), environ={"RUNPOD_API_KEY": KEY}, ledger=ledger)
    pool = ComfyUIServerPool([], runpod=endpoint, poll_interval=0.2).start()
    try:
        unmeasured = estimate_render(pool, 5, target="runpod")
        assert not unmeasured.tiers[0].measured and unmeasured.tiers[0].seconds_per_frame == 60.0
        warm = run.animation_submit(workflow(1), pool=pool, frames="1-5", output=str(tmp_path / "w/w.####.png"),
                                    target="runpod", cache=False).result(timeout=60)
        assert warm.ok
        est = estimate_render(pool, 6, target="runpod")
        tier = est.tiers[0]
        assert (tier.name, tier.kind, tier.frames, tier.measured) == ("runpod", "runpod", 6, True)
        measured = [e.execution_ms / 1000 for e in ledger.entries()]
        assert tier.seconds_low == min(measured) and tier.seconds_high == max(measured)
        assert tier.seconds_low >= 0.25                       # the worker's own 0.25 s per job, billed

        batch = run.animation_submit(workflow(2), pool=pool, frames="1-6", output=str(tmp_path / "r/r.####.png"),
                                     target="runpod", cache=False)
        assert batch.result(timeout=60).ok
        actual = ledger.spend_for_batch(batch.batch_id)
        spread = (tier.seconds_high - tier.seconds_low) * PRICE * 6
        assert abs(actual - est.cost) <= max(spread, 0.05 * est.cost), (actual, est.cost, spread)
        assert est.spend_today == pytest.approx(sum(e.cost for e in ledger.entries()[:5]))
    finally:
        pool.close()


def test_frames_stay_local_while_a_local_server_keeps_up(emu, tmp_path):
    local = EmulatorThread(name="gpu-01").start()
    endpoint = RunPodEndpoint(runpod_config(emu), environ={"RUNPOD_API_KEY": KEY}, ledger=CostLedger())
    pool = ComfyUIServerPool([ServerConfig(name="gpu-01", ip="127.0.0.1", port=local.port)], runpod=endpoint,
                             poll_interval=0.2).start()
    try:
        wait_until(lambda: pool.get_server_by_name("gpu-01").state.value == "online", what="gpu-01 online")
        est = estimate_render(pool, 10)
        assert [(t.name, t.frames) for t in est.tiers] == [("gpu-01", 10)] and est.cost == 0.0
        local.stop()
        wait_until(lambda: pool.get_server_by_name("gpu-01").state.value == "offline", what="gpu-01 offline")
        est = estimate_render(pool, 10)
        assert [(t.name, t.frames) for t in est.tiers] == [("runpod", 10)] and est.cost > 0
    finally:
        pool.close()
        local.stop()


def test_budget_check_refuses_with_the_numbers_unless_forced():
    est = Estimate(prompts=4, tiers=(TierEstimate("runpod", "runpod", 4, 2.0, 1.5, 2.5, 0.5),), spend_today=1.0,
                   daily_budget=4.0)
    assert est.cost == 4.0 and est.over_budget
    with pytest.raises(BudgetExceeded, match=r"RunPod would cost \$4\.0000 \(\$3\.0000-\$5\.0000\) for 4 "
                                             r"prompt\(s\), \$1\.0000 already spent today of the \$4\.00 budget"):
        check_budget(est)
    check_budget(est, force=True)
    assert "would pass today's budget: $5.0000 > $4.00" in str(est)


def test_cli_render_estimate_and_refusal_send_nothing(emu, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    ledger = CostLedger()
    ledger.record(endpoint=EID, job_id="earlier", execution_ms=300, cost=0.003)
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({
        "servers": [{"name": "gpu-01", "ip": "127.0.0.1", "port": 9}],         # the studio is off
        "runpod": {"endpoint_id": EID, "base_url": emu.base_url, "price_per_second": PRICE, "daily_budget": 0.01}}))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow(3)))
    argv = ["--servers", str(servers), "render", str(wf), "--frames", "1-10", "--output", str(tmp_path / "o/o.####.png")]
    out = io.StringIO()
    assert main(argv + ["--estimate"], out=out) == 1
    text = out.getvalue()
    assert "runpod (runpod): 10 frame(s), 0.30 s/frame, $0.0300" in text
    assert "would pass today's budget: $0.0330 > $0.01" in text
    assert main(argv, out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "not started: RunPod would cost $0.0300" in err and "use --force" in err
    assert emu.count("POST", "/run") == 0
    small = io.StringIO()
    assert main(argv + ["--frames", "1-2", "--estimate"], out=small) == 0   # fits: $0.006 + $0.003 < $0.01
    assert "would pass" not in small.getvalue() and emu.count("POST", "/run") == 0
