"""Scenario 7 (issue 13): a long batch on one local server, alone, with serverless, with pods.

The local server runs in a child process; the pods emulator (and the ComfyUI each pod
starts) and the RunPod serverless emulator run where the scenario puts them. Times are
emulated seconds (a frame is ``frame_s``, a pod boots in ``boot_s``); costs are RunPod's
prices applied to those seconds: a pod bills from RUNNING until terminated (including its
``idle_s`` tail), a serverless job bills its executionTime.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from comfy_cluster.autoscale import Autoscaler
from comfy_cluster.config import RunPodConfig
from comfy_cluster.emulator.pods import PodsEmulator
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pod_policy import PodsPolicy
from comfy_cluster.pod_registry import POD_LEDGER_PREFIX, PodRegistry
from comfy_cluster.runpod import RunPodEndpoint

from bench.scenarios import (
    RUNPOD_ENDPOINT,
    RUNPOD_KEY,
    Metric,
    make_pool,
    render,
    render_on,
    start_runpod,
    start_servers,
    stop_servers,
)

PODS_KEY = "bench-pods-key"


def _pods_run(procs: list, frames: int, out: Path, *, frame_s: float, boot_s: float, idle_s: float,
              max_pods: int) -> tuple[float, float, int, int]:
    """(makespan, cost, pods rented, frames on pods) of one batch with the autoscaler on."""
    env = {"RUNPOD_API_KEY": PODS_KEY}
    with PodsEmulator(api_key=PODS_KEY, provision_s=boot_s / 3, start_s=boot_s / 3, comfy_boot_s=boot_s / 3,
                      seconds_per_job=frame_s) as emu:
        policy = PodsPolicy(image="comfyui", gpu_types=["NVIDIA GeForce RTX 4090"], max_pods=max_pods,
                            rest_url=emu.rest_url, graphql_url=emu.graphql_url, proxy_url=emu.proxy_url,
                            idle_s=idle_s, tick_s=0.5, scale_up_wait_s=10.0, boot_estimate_s=boot_s)
        ledger = CostLedger(out / "ledger", environ={})
        pool = make_pool(procs, poll=1.0)
        scaler = Autoscaler(pool, policy, registry=PodRegistry(out / "state"), ledger=ledger, environ=env)
        pool.autoscaler = scaler
        scaler.start()
        try:
            wall, _, result = render(pool, frames, out)
            deadline = time.monotonic() + 120
            while emu.billing() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            pool.close()
        on_pods = sum(n for name, n in result.by_server.items() if name.startswith(policy.name_prefix))
        cost = sum(e.cost for e in ledger.entries() if e.endpoint.startswith(POD_LEDGER_PREFIX))
        return wall, cost, len(emu.created), on_pods


def pods_vs_local_vs_serverless(base: Path, runs: int, frames: int = 200, frame_s: float = 0.5,
                                boot_s: float = 6.0, idle_s: float = 5.0, max_pods: int = 2,
                                workers: int = 2, cold_start: float = 2.0) -> list[Metric]:
    """200 frames on one local server: alone, + serverless (``workers``), + pods (``max_pods``)."""
    procs = start_servers([frame_s], base, prefix="pods-local")
    cloud, url = start_runpod(base, workers, frame_s, cold_start)
    alone, sls, sls_cost, pods, pods_cost, rented, on_pods = [], [], [], [], [], [], []
    cfg = RunPodConfig(endpoint_id=RUNPOD_ENDPOINT, base_url=f"{url}/v2/{RUNPOD_ENDPOINT}", max_concurrent=workers,
                       overflow_after_s=0.5, status_poll_min=0.1, status_poll_max=1.0)
    try:
        for i in range(runs):
            alone.append(render_on(procs, frames, base / f"pods-alone-{i}")[0])
            ledger = CostLedger(base / f"pods-sls-ledger-{i}", environ={})
            endpoint = RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": RUNPOD_KEY}, ledger=ledger, poll_interval=1.0)
            sls.append(render_on(procs, frames, base / f"pods-sls-{i}", runpod=endpoint)[0])
            sls_cost.append(ledger.spend_today())
            wall, cost, n, done = _pods_run(procs, frames, base / f"pods-pods-{i}", frame_s=frame_s, boot_s=boot_s,
                                            idle_s=idle_s, max_pods=max_pods)
            pods.append(wall)
            pods_cost.append(cost)
            rented.append(n)
            on_pods.append(done)
    finally:
        cloud.kill()
        cloud.wait(timeout=10)
        stop_servers(procs)
    note = (f"{frames} frames at {frame_s} s each on one local server; serverless: {workers} workers, "
            f"{cold_start} s cold start, ${cfg.price_per_second}/s; pods: up to {max_pods} RTX 4090 at $0.69/h, "
            f"{boot_s} s boot, {idle_s} s idle before terminate; pods rented per run {rented}, frames on pods "
            f"{on_pods}. Emulated seconds: costs scale with the real frame time")
    med = statistics.median
    return [
        Metric("7 pods", "makespan, local + pods", "s", pods, f"< local alone ({med(alone):.1f} s)",
               med(pods) < med(alone), {"local alone": med(alone), "local + serverless": med(sls)}, note),
        Metric("7 pods", "cost, local + pods", "USD", pods_cost, "", None,
               {"local alone": 0.0, "local + serverless": med(sls_cost)}),
    ]
