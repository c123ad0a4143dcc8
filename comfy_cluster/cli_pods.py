"""``comfy-cluster pods ls|gpus|spawn|terminate|shutdown-all|reap``: the on-demand pod tier by hand.

``reap`` is meant for a cron job (every few minutes): it terminates our pods whose client
is gone, the ones past the lifetime cap, and tagged pods the registry does not know.
``shutdown-all`` is the emergency stop: every pod carrying our name prefix, whoever started it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, TextIO

from .cli_common import cluster_config, table
from .errors import ComfyClusterError, ConfigError


def _policy(args: argparse.Namespace) -> Any:

    cfg = cluster_config(args)
    if cfg.pods is None:
        raise ConfigError(f"{cfg.source}: no \"pods\" policy is configured (a \"pods\" object in the servers "
                          "file, or NUKE_COMFYUI_PODS)")
    return cfg.pods


def _client(args: argparse.Namespace) -> Any:
    from .pods import PodsClient

    return PodsClient(_policy(args), environ=os.environ)


def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s"


def pod_rows(client: Any) -> list[dict[str, Any]]:
    """Our pods (name prefix) as RunPod lists them: GPU, $/h, uptime, cost so far."""
    from .pod_registry import pod_cost

    now = time.time()
    rows = []
    for pod in client.list_pods():
        if not pod.name.startswith(client.policy.name_prefix):
            continue
        start = pod.started_at or pod.created_at
        rows.append({"name": pod.name, "pod_id": pod.id, "status": pod.status, "gpu": pod.gpu_type,
                     "cost_per_hr": pod.cost_per_hr, "uptime_s": (now - start) if start else None,
                     "cost": round(pod_cost(pod, None, now), 4)})
    return rows


def pod_table(rows: list[dict[str, Any]]) -> str:

    return table([[r["name"], r["pod_id"], r["status"], r["gpu"], f"${r['cost_per_hr']:.2f}/h",
                    _fmt_uptime(r["uptime_s"]), f"${r['cost']:.4f}"] for r in rows],
                  ["POD", "ID", "STATUS", "GPU", "PRICE", "UPTIME", "COST"])


def pods_status(pool: Any) -> str:
    """The pod rows under ``comfy-cluster status`` ("" when no pod tier is configured)."""
    autoscaler = getattr(pool, "autoscaler", None)
    if autoscaler is None:
        return ""
    try:
        rows = pod_rows(autoscaler.client)
    except ComfyClusterError as err:   # the servers table still stands without the pod rows
        return f"\nRunPod pods: {err}\n"
    return "\n" + (pod_table(rows) if rows else "no RunPod pods of ours are running") + "\n"


def cmd_ls(args: argparse.Namespace, out: TextIO) -> int:
    client = _client(args)
    rows = pod_rows(client)
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        out.write((pod_table(rows) if rows else "no RunPod pods of ours") + "\n")
    return 0


def cmd_gpus(args: argparse.Namespace, out: TextIO) -> int:

    client = _client(args)
    types = client.gpu_types()
    wanted = client.policy.gpu_types
    rows = [[t.id, str(t.memory_gb or "-"), f"${t.secure_price:.2f}" if t.secure_price is not None else "-",
             f"${t.community_price:.2f}" if t.community_price is not None else "-", t.stock or "-",
             str(wanted.index(t.id) + 1) if t.id in wanted else ""] for t in types]
    out.write(table(rows, ["GPU", "GB", "SECURE $/H", "COMMUNITY $/H", "STOCK", "PREFERENCE"]) + "\n")
    return 0


def _autoscaler(args: argparse.Namespace) -> Any:
    from .autoscale import Autoscaler
    from .pool import ComfyUIServerPool

    return Autoscaler(ComfyUIServerPool(environ=os.environ), _policy(args), environ=os.environ)


def cmd_spawn(args: argparse.Namespace, out: TextIO) -> int:
    """Rent one pod by hand; it is left running (``pods reap`` ends it once nobody uses it)."""
    scaler = _autoscaler(args)
    pod = scaler.spawn(args.gpu or None)
    if pod is None:
        out.write(f"no capacity for {', '.join(args.gpu or scaler.policy.gpu_types)}\n")
        return 1
    scaler.registry.retire_owner(scaler.owner)
    out.write(f"spawned {pod.name} ({pod.pod_id}, {pod.gpu_type} at ${pod.cost_per_hr:.2f}/h); its ComfyUI will "
              f"be at {scaler.policy.pod_url(pod.pod_id)}\n")
    return 0


def cmd_terminate(args: argparse.Namespace, out: TextIO) -> int:
    from .pod_registry import PodRegistry

    client = _client(args)
    registry = PodRegistry(environ=os.environ)
    code = 0
    for wanted in args.pod:
        match = [p for p in client.list_pods() if wanted in (p.id, p.name) and p.name.startswith(client.policy.name_prefix)]
        if not match:
            out.write(f"{wanted}: no pod of ours with that id or name\n")
            code = 1
            continue
        client.terminate(match[0].id)
        registry.forget(match[0].name)
        out.write(f"terminated {match[0].name} ({match[0].id})\n")
    return code


def _reap(args: argparse.Namespace, out: TextIO, everything: bool) -> int:
    from .ledger import CostLedger
    from .pod_registry import PodRegistry, reap

    results = reap(_client(args), PodRegistry(environ=os.environ), ledger=CostLedger(environ=os.environ),
                   everything=everything)
    for r in results:
        out.write(f"{r.action} {r.name} ({r.pod_id or '-'}): {r.reason}"
                  + (f", ${r.cost:.4f}" if r.action == "terminated" else "") + "\n")
    if not results:
        out.write("no pods of ours\n")
    return 0


def cmd_reap(args: argparse.Namespace, out: TextIO) -> int:
    return _reap(args, out, everything=False)


def cmd_shutdown_all(args: argparse.Namespace, out: TextIO) -> int:
    return _reap(args, out, everything=True)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pods`` and its actions to the ``comfy-cluster`` parser."""
    p = sub.add_parser("pods", help="RunPod on-demand pods: list, GPU prices, spawn, terminate, reap")
    group = p.add_subparsers(dest="pods_command", metavar="ACTION", required=True, parser_class=type(p))
    ls = group.add_parser("ls", help="our pods: GPU, price, uptime, cost so far")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)
    group.add_parser("gpus", help="GPU types, prices and stock").set_defaults(func=cmd_gpus)
    spawn = group.add_parser("spawn", help="rent one pod now (first GPU type with capacity)")
    spawn.add_argument("--gpu", action="append", help="GPU type id (repeat for a preference order)")
    spawn.set_defaults(func=cmd_spawn)
    term = group.add_parser("terminate", help="terminate pods of ours by id or name")
    term.add_argument("pod", nargs="+")
    term.set_defaults(func=cmd_terminate)
    group.add_parser("shutdown-all", help="terminate every pod with our name prefix").set_defaults(
        func=cmd_shutdown_all)
    group.add_parser("reap", help="terminate pods nobody uses or past the lifetime cap (for cron)").set_defaults(
        func=cmd_reap)


__all__ = ["pod_rows", "pod_table", "pods_status", "register"]
