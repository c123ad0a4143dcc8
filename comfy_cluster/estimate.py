"""Cost before you burst: where a render's frames are expected to run and what RunPod would
charge, computed before anything is sent.

The model follows the pool's own rule (``pool._select``): with a local server online whose
seconds per frame stay under RunPod's ``overflow_after_s``, every frame stays local (split
by speed); with no local server online, or a ``runpod`` target, every frame goes to RunPod;
when every local server is slower than the overflow threshold, RunPod takes its share by
throughput. Seconds per frame are measured: the servers' EWMA, and for RunPod the billed
``execution_ms`` of the endpoint's jobs in the cost ledger (their min and max give the
spread). Prices are the configured ones (serverless per second). A tier is one
``TierEstimate``; a pods tier (price per hour) is one more entry in ``Estimate.tiers``,
built in ``_tiers`` once a pods configuration exists.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from .errors import BudgetExceeded
from .ledger import CostLedger

log = logging.getLogger(__name__)

#: Ledger entries per endpoint used for the measured seconds per frame.
RECENT_JOBS = 50


@dataclass(frozen=True)
class TierEstimate:
    """Frames expected on one backend (a server or a RunPod endpoint) and what they cost."""

    name: str
    kind: str
    frames: int
    seconds_per_frame: float | None
    seconds_low: float | None = None
    seconds_high: float | None = None
    price_per_second: float = 0.0
    measured: bool = True

    @property
    def cost(self) -> float:
        return self.frames * (self.seconds_per_frame or 0.0) * self.price_per_second

    @property
    def cost_low(self) -> float:
        return self.frames * (self.seconds_low or self.seconds_per_frame or 0.0) * self.price_per_second

    @property
    def cost_high(self) -> float:
        return self.frames * (self.seconds_high or self.seconds_per_frame or 0.0) * self.price_per_second


@dataclass(frozen=True)
class Estimate:
    """The whole render: its tiers, RunPod's cost and today's budget."""

    prompts: int
    tiers: tuple[TierEstimate, ...]
    spend_today: float
    daily_budget: float | None

    @property
    def cost(self) -> float:
        return sum(t.cost for t in self.tiers)

    @property
    def cost_high(self) -> float:
        return sum(t.cost_high for t in self.tiers)

    @property
    def over_budget(self) -> bool:
        return self.daily_budget is not None and self.spend_today + self.cost > self.daily_budget + 1e-12

    @property
    def unplaced(self) -> int:
        return self.prompts - sum(t.frames for t in self.tiers)

    def __str__(self) -> str:
        lines = [f"estimate for {self.prompts} prompt(s):"]
        for t in self.tiers:
            spj = "unmeasured" if t.seconds_per_frame is None else (
                f"{t.seconds_per_frame:.2f} s/frame" + ("" if t.measured else " (assumed, not measured yet)"))
            line = f"  {t.name} ({t.kind}): {t.frames} frame(s), {spj}"
            if t.price_per_second:
                line += f", ${t.cost:.4f} (${t.cost_low:.4f}-${t.cost_high:.4f})"
            lines.append(line)
        if self.unplaced:
            lines.append(f"  {self.unplaced} frame(s) have no backend now: they wait for a server")
        budget = f" of ${self.daily_budget:.2f}" if self.daily_budget is not None else " (no daily budget)"
        lines.append(f"RunPod: ${self.cost:.4f} for this render, ${self.spend_today:.4f} spent today{budget}")
        if self.over_budget:
            lines.append(f"this render would pass today's budget: ${self.spend_today + self.cost:.4f} > "
                         f"${self.daily_budget:.2f}")
        return "\n".join(lines)


def _endpoints(runpod: Any, gpu_class: str | None) -> list[Any]:
    endpoints = list(getattr(runpod, "endpoints", None) or [runpod])
    if gpu_class:
        endpoints = [e for e in endpoints if str(getattr(e.config, "gpu_class", "") or "").lower()
                     == gpu_class.lower()]
    return endpoints


def _runpod_tier(endpoint: Any, frames: int, ledger: CostLedger) -> TierEstimate:
    """Measured from the ledger (billed seconds of this endpoint's recent jobs), else the default."""
    seconds = [e.execution_ms / 1000.0 for e in ledger.entries() if e.endpoint == endpoint.endpoint_id
               and e.execution_ms > 0][-RECENT_JOBS:]
    if seconds:
        mean = sum(seconds) / len(seconds)
        return TierEstimate(endpoint.name, "runpod", frames, mean, min(seconds), max(seconds),
                            endpoint.price_per_second)
    return TierEstimate(endpoint.name, "runpod", frames, float(endpoint.default_job_seconds), None, None,
                        endpoint.price_per_second, measured=False)


def _split(frames: int, rates: list[float]) -> list[int]:
    """``frames`` shared in proportion to ``rates`` (largest remainders), summing exactly."""
    total = sum(rates)
    shares = [frames * r / total for r in rates]
    counts = [math.floor(s) for s in shares]
    for i in sorted(range(len(rates)), key=lambda i: counts[i] - shares[i])[:frames - sum(counts)]:
        counts[i] += 1
    return counts


def _tiers(pool: Any, prompts: int, target: str | None, ledger: CostLedger) -> list[TierEstimate]:
    runpod = getattr(pool, "runpod", None)
    gpu_class = None
    if target and target.startswith("runpod:"):
        target, gpu_class = "runpod", target.partition(":")[2]
        if runpod is None:
            raise ValueError(f"target 'runpod:{gpu_class}': no RunPod endpoint is configured")
        runpod.for_gpu_class(gpu_class)  # ValueError naming the configured classes
    endpoints = _endpoints(runpod, gpu_class) if runpod is not None and runpod.enabled else []
    rp = _runpod_tier(endpoints[0], 0, ledger) if endpoints else None
    if target == "runpod":
        return [replace(rp, frames=prompts)] if rp else []
    servers = [s for s in pool.servers if s.enabled and s.state.value in ("online", "busy")
               and target in (None, "", "auto", s.name)]
    if not servers:
        if rp is None or target not in (None, "", "auto"):
            return []
        return [replace(rp, frames=prompts)]
    measured = [s.seconds_per_job for s in servers if s.seconds_per_job]
    default = sum(measured) / len(measured) if measured else None
    speeds = [s.seconds_per_job or default for s in servers]
    rates = [1.0 / v if v else 1.0 for v in speeds]
    overflow = runpod.overflow_after_s if rp is not None and runpod is not None else math.inf
    slow = rp is not None and all(v is not None and v > overflow for v in speeds)
    if slow and rp is not None and runpod is not None:
        rates.append(runpod.max_queue / max(rp.seconds_per_frame or 1.0, 1e-6))
    counts = _split(prompts, rates)
    tiers = [TierEstimate(s.name, "comfyui", n, v, measured=s.seconds_per_job is not None)
             for s, v, n in zip(servers, speeds, counts) if n]
    if slow and rp is not None and counts[-1]:
        tiers.append(replace(rp, frames=counts[-1]))
    return tiers


def estimate_render(pool: Any, prompts: int, *, target: str | None = None,
                    ledger: CostLedger | None = None) -> Estimate:
    """Where ``prompts`` prompts would run now and what RunPod would cost; reads caches only."""
    runpod = getattr(pool, "runpod", None)
    book = ledger if ledger is not None else (getattr(runpod, "ledger", None) or CostLedger())
    tiers = _tiers(pool, prompts, target, book)
    return Estimate(prompts=prompts, tiers=tuple(tiers), spend_today=book.spend_today(),
                    daily_budget=getattr(runpod, "daily_budget", None) if runpod is not None else None)


#: What the CLI suggests when a render would pass the budget.
CLI_HINT = "use --force to render anyway, or render locally (--target SERVER)"


def check_budget(estimate: Estimate, *, force: bool = False, hint: str = CLI_HINT) -> None:
    """``BudgetExceeded`` with the numbers when the render would pass today's budget, unless ``force``."""
    if estimate.over_budget and not force:
        raise BudgetExceeded(f"not started: RunPod would cost ${estimate.cost:.4f} "
                             f"(${sum(t.cost_low for t in estimate.tiers):.4f}-"
                             f"${estimate.cost_high:.4f}) for {estimate.prompts} prompt(s), "
                             f"${estimate.spend_today:.4f} already spent today of the "
                             f"${estimate.daily_budget:.2f} budget; {hint}", server="runpod")
    if estimate.over_budget:
        log.warning("rendering past today's RunPod budget (--force): %s", estimate)


def _render_prompts(args: Any) -> int:
    from .frames import FrameSpec

    return len(list(FrameSpec.parse(args.frames).chunks(max(1, args.chunk))))


def estimate_cmd(args: Any, out: Any, pool: Any) -> int:
    """``render --estimate``: print the estimate and send nothing (exit 1 when over budget)."""
    try:
        est = estimate_render(pool, _render_prompts(args), target=args.target)
    finally:
        pool.close()
    out.write(f"{est}\n")
    return 1 if est.over_budget else 0


def estimate_gate(args: Any, pool: Any) -> None:
    """Before ``render`` sends anything: refuse a burst past today's budget unless ``--force``."""
    est = estimate_render(pool, _render_prompts(args), target=args.target)
    if any(t.kind == "runpod" for t in est.tiers):
        log.info("%s", est)
    check_budget(est, force=args.force)


__all__ = ["Estimate", "TierEstimate", "check_budget", "estimate_cmd", "estimate_gate", "estimate_render"]
