"""The Nuke submit asks first when a burst would pass today's RunPod budget (fake ``nuke``,
emulated RunPod over loopback, the ledger in the test's state dir)."""

from __future__ import annotations

import time

import pytest

from tests.fake_nuke import install
from tests.helpers import wait_until

install()

import nuke  # noqa: E402

from comfy_cluster.config import RunPodConfig  # noqa: E402
from comfy_cluster.emulator.runpod import RunPodEmulator  # noqa: E402
from comfy_cluster.ledger import CostLedger  # noqa: E402
from comfy_cluster.pool import ComfyUIServerPool  # noqa: E402
from comfy_cluster.runpod import RunPodEndpoint  # noqa: E402
from nuke_menu import render_node  # noqa: E402
from nuke_menu import settings as s  # noqa: E402
from nuke_menu.submit import submit_nodes  # noqa: E402
from tests.test_nuke_submit import session  # noqa: E402,F401  (the fixture)

KEY = "rpa_NUKE_BUDGET_T3ST_1a2b"
EID = "ep-nuke-budget"


@pytest.fixture
def burst_pool():
    """The studio is off: only RunPod, $5 a day, and a job two days ago measured 120 s ($1.20)."""
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, workers=1).start()
    ledger = CostLedger()
    ledger.record(endpoint=EID, job_id="earlier", execution_ms=120_000, cost=1.2, when=time.time() - 2 * 86400)
    cfg = RunPodConfig(endpoint_id=EID, base_url=emu.base_url, price_per_second=0.01, daily_budget=5.0)
    endpoint = RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": KEY}, ledger=ledger, poll_interval=0.2)
    pool = ComfyUIServerPool([], runpod=endpoint, poll_interval=0.2).start()
    try:
        wait_until(lambda: endpoint.state.value == "online", what="RunPod healthy")
        yield pool, emu
    finally:
        pool.close()
        emu.stop()


def render_node_for(session) -> nuke.Node:
    session["read"].setSelected(True)
    node = render_node.create(["auto", "runpod"])
    node[s.KNOB_WORKFLOW].setValue(session["workflow"].as_posix())
    node[s.KNOB_MODE].setValue(s.Mode.RANGE.value)
    return node


def test_a_burst_past_the_budget_asks_and_no_sends_nothing(session, burst_pool):
    pool, emu = burst_pool
    node = render_node_for(session)
    nuke.fake_answers.append(False)
    assert submit_nodes([node], pool=pool) == []
    assert not nuke.fake_answers, "the artist was asked"
    assert emu.count("POST", "/run") == 0


def test_yes_starts_the_render(session, burst_pool):
    pool, emu = burst_pool
    node = render_node_for(session)
    nuke.fake_answers.append(True)
    started = submit_nodes([node], pool=pool)
    assert len(started) == 1 and not nuke.fake_answers
    nuke.fake_run_main_thread(until=started[0].finished.is_set, timeout=60)
    assert started[0].outcome is not None and started[0].outcome.by_server == {"runpod": 6}
    assert emu.count("POST", "/run") == 6


def test_within_the_budget_nothing_is_asked(session, burst_pool):
    pool, emu = burst_pool
    node = render_node_for(session)
    node[s.KNOB_MODE].setValue(s.Mode.SINGLE.value)
    started = submit_nodes([node], pool=pool)            # 1 frame: $1.20 of $5
    assert len(started) == 1 and not nuke.fake_messages and not nuke.fake_answers
    nuke.fake_run_main_thread(until=started[0].finished.is_set, timeout=60)
    assert started[0].outcome is not None and started[0].outcome.by_server == {"runpod": 1}
