"""``python -m bench``: run every benchmark scenario and write bench/RESULTS.md and bench/results.json.

Emulated servers run in child processes; the client's CPU is this process's alone.
``--quick`` is a smaller smoke run (its numbers are not the goals' sizes); ``--runs N``
repeats the timed scenarios and reports medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

from bench import bench_pods, bench_sharing, bench_tunnel, scenarios
from bench.scenarios import Metric

HERE = Path(__file__).resolve().parent
NAMES = ("throughput", "dispatch", "monitoring", "memory", "failover", "overflow", "pods", "sharing", "tunnel")


def _plan(args: argparse.Namespace, base: Path) -> dict[str, Callable[[], list[Metric]]]:
    q = args.quick
    return {
        "throughput": lambda: scenarios.throughput(base, args.runs, frames=60 if q else 240),
        "dispatch": lambda: scenarios.dispatch_overhead(base, args.runs, frames=300 if q else 2000),
        "monitoring": lambda: scenarios.monitoring(args.runs, count=100, window=5.0 if q else 60.0),
        "memory": lambda: scenarios.memory(base, frames=1000 if q else 10_000),
        "failover": lambda: scenarios.failover(base, args.runs, frames=40 if q else 120),
        "overflow": lambda: scenarios.overflow(base, args.runs, frames=24 if q else 60),
        "pods": lambda: bench_pods.pods_vs_local_vs_serverless(base, args.runs, frames=60 if q else 200),
        "sharing": lambda: bench_sharing.sharing(base, args.runs, frames=30 if q else 120),
        "tunnel": lambda: bench_tunnel.tunnel(base, args.runs, frames=30 if q else 100),
    }


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def write_markdown(path: Path, metrics: list[Metric], meta: dict) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench{' --quick' if meta['quick'] else ''} --runs {meta['runs']}` on "
        f"{meta['date']} ({meta['machine']}; Python {meta['python']}). Emulated ComfyUI servers run in "
        "child processes that share the machine's cores with the client; the client's CPU is "
        "`time.process_time()` of the client process alone. Values are medians of the runs listed; "
        "baselines are measured in the same invocation. The machine is shared with other work: load "
        f"average (1, 5, 15 min) {meta['load_before']} before the run, {meta['load_after']} after; the run "
        f"took {meta['seconds']:.0f} s.",
        "",
        "| scenario | metric | value | goal | met | baselines | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        met = "" if m.ok is None else ("yes" if m.ok else "**no**")
        baselines = "; ".join(f"{k}: {_fmt(v)}" for k, v in m.baselines.items())
        runs = ", ".join(_fmt(v) for v in m.runs)
        lines.append(f"| {m.scenario} | {m.metric} | {_fmt(m.value)} {m.unit} | {m.goal} | {met} | {baselines} | {runs} |")
    lines += ["", "## Machine load per scenario", "",
              "Busy cores: CPU seconds the whole machine spent (this bench, its emulators and every other user's "
              f"processes) over the scenario's wall time, out of {os.cpu_count()}.", "",
              "| scenario | seconds | busy cores | load average after |", "|---|---|---|---|"]
    lines += [f"| {row['scenario']} | {row['seconds']:.0f} | {row['machine_busy_cores']:.2f} | {row['load_after']} |"
              for row in meta["load"]]
    lines += ["", "## Notes", ""]
    for m in metrics:
        if m.note:
            lines.append(f"- **{m.scenario} / {m.metric}**: {m.note}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (not the goals' sizes)")
    parser.add_argument("--runs", type=int, default=3, help="repeats of the timed scenarios (median reported)")
    parser.add_argument("--only", action="append", choices=NAMES, help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS.md and results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    metrics: list[Metric] = []
    load: list[dict] = []
    load_before = [round(v, 2) for v in os.getloadavg()]
    started = time.monotonic()
    with scenarios.temp_dir() as tmp:
        plan = _plan(args, Path(tmp))
        for name in args.only or NAMES:
            t0, busy0 = time.monotonic(), scenarios.machine_busy()
            print(f"== {name} ...", flush=True)
            rows = plan[name]()
            seconds = time.monotonic() - t0
            load.append({"scenario": name, "seconds": round(seconds, 1),
                         "machine_busy_cores": round((scenarios.machine_busy() - busy0) / seconds, 2),
                         "load_after": [round(v, 2) for v in os.getloadavg()]})
            for m in rows:
                print(f"   {m.metric}: {_fmt(m.value)} {m.unit} (goal {m.goal or '-'}) runs {[_fmt(v) for v in m.runs]} "
                      f"{' '.join(f'{k}={_fmt(v)}' for k, v in m.baselines.items())}", flush=True)
            print(f"   ({seconds:.0f} s, machine busy {load[-1]['machine_busy_cores']} cores)", flush=True)
            metrics.extend(rows)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "quick": args.quick, "runs": args.runs, "seconds": round(time.monotonic() - started, 1),
        "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()], "load": load,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out / "RESULTS.md", metrics, meta)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "metrics": [m.to_dict() for m in metrics]},
                                                      indent=2) + "\n")
    print(f"wrote {args.out / 'RESULTS.md'} and results.json in {meta['seconds']} s")
    return 0 if all(m.ok is not False for m in metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
