"""``comfy-cluster``: the cluster from a shell or a farm script.

    comfy-cluster status [--json] [--watch]
    comfy-cluster info SERVER
    comfy-cluster submit WORKFLOW [--input NODE.INPUT=PATH]... [--set NODE.INPUT=VALUE]... [--output DIR]
    comfy-cluster render WORKFLOW --frames RANGE --input NODE.INPUT=PATTERN --output PATTERN [--chunk N] [--resume]
                         [--job-timeout S] [--wait-for-server S]
    comfy-cluster iterate WORKFLOW --count N [--seed-mode MODE] --output PATTERN
    comfy-cluster config check|add|remove|set|enable|disable|export|import|backup|restore
    comfy-cluster emulator --port P [--count N] [--seconds-per-job S]
    comfy-cluster demo

Servers come from ``NUKE_COMFYUI_SERVERS`` (and its fallbacks) or ``--servers FILE``.
Exit codes: 0 done, 1 the work (or a server check) failed, 2 a usage or configuration
error, 130 interrupted. Errors are one line on stderr; ``--log-level DEBUG`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from . import __version__
from .cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    cluster_config,
    fmt_bytes,
    fmt_seconds,
    table,
)
from .cli_pods import pods_status, register as register_pods
from .cli_tunnel import register as _register_tunnel
from .errors import BindingError, ComfyClusterError, ConfigError, MissingInputs, capped
from .estimate import estimate_cmd, estimate_gate
from .frames import FrameSpec
from .jobs import BatchEvent

log = logging.getLogger(__name__)

#: Without a terminal, the render progress is a log line this often.
PLAIN_PROGRESS_EVERY = 5.0


# --------------------------------------------------------------------------- shared helpers


def _pool(args: argparse.Namespace, *, monitor: bool = True, **kw: Any):
    """The pool from ``--servers FILE`` or the environment, probed once; ``monitor`` keeps
    probing in the background (work, ``status --watch``). A one-shot command probes each
    server exactly once, so a hung server costs one probe timeout, not two."""
    from .pool import ComfyUIServerPool

    pool = ComfyUIServerPool.from_config(cluster_config(args), environ=os.environ,
                                         reload=lambda: cluster_config(args), **kw)
    if monitor:
        pool.start()
    pool.update_all_server_status()
    return pool


def _assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    from .workflow import parse_assignment

    out: dict[str, Any] = {}
    for item in items or ():
        spec, value = parse_assignment(item)
        if what == "input" and not isinstance(value, str):
            value = item.partition("=")[2]  # a path that happens to parse as JSON (e.g. 1001) stays text
        out[spec] = value
    return out


def _workflow(path: str):
    from .workflow import Workflow

    if not Path(path).is_file():
        raise FileNotFoundError(f"workflow file not found: {path}")
    return Workflow.from_file(path)


# --------------------------------------------------------------------------- status / info


def status_table(snapshot: dict[str, Any]) -> str:
    """The ``status`` table from a pool snapshot dict (``PoolSnapshot.to_dict()``)."""
    rows = []
    for s in snapshot["servers"]:
        device = (s.get("devices") or [{}])[0]
        gpu = (device.get("name") or "-").split(" : ")[0]
        vram = f"{fmt_bytes(device.get('vram_free'))}/{fmt_bytes(device.get('vram_total'))}" if device else "-"
        ready = s["state"] in ("online", "busy")
        if not ready:   # GPU and VRAM of a server that does not answer are its last known, not now
            gpu, vram = "-", "-"
        rows.append([s["name"], s["state"], f"{s['queue_running']}/{s['queue_pending']}", gpu, vram,
                     s.get("comfyui_version") or "-", f"{s['in_flight']}/{s['max_queue']}",
                     fmt_seconds(s.get("seconds_per_job")),
                     s.get("address", "") + (f" via {s['tunnel']}" if s.get("tunnel") else ""),
                     "" if ready else _detail(s.get("last_error"))])
    if snapshot.get("runpod"):
        rp = snapshot["runpod"]
        rows.append([rp.get("name", "runpod"), rp.get("state", "-"), "-", "serverless", "-", "-",
                     f"{rp.get('in_flight', 0)}/{rp.get('max_concurrent', '-')}",
                     fmt_seconds(rp.get("seconds_per_job")), rp.get("endpoint_id", ""),
                     _detail(rp.get("blocked_reason") or rp.get("last_error"))])
    return table(rows, ["SERVER", "STATE", "RUN/PEND", "GPU", "VRAM FREE", "COMFYUI", "OURS", "S/JOB", "ADDRESS",
                         "REASON"])


def _detail(text: str | None, limit: int = 100) -> str:
    """A reason on one table line: first line, cut at ``limit`` characters."""
    if not text:
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    pool = _pool(args, monitor=args.watch)
    try:
        while True:
            snap = pool.snapshot().to_dict()
            if args.json:
                out.write(json.dumps(snap, indent=None if args.watch else 2, default=str) + "\n")
            else:
                if args.watch and out.isatty():
                    out.write("\x1b[H\x1b[2J")
                out.write(status_table(snap) + "\n" + pods_status(pool))
                if args.watch:
                    out.write(f"\n{time.strftime('%H:%M:%S')}  every {pool.poll_interval:g} s, Ctrl-C to stop\n")
            out.flush()
            if not args.watch:
                ready = [s for s in snap["servers"] if s["state"] in ("online", "busy")]
                return EXIT_OK if ready else EXIT_FAILED
            pool.wait_for_change(max(0.5, pool.poll_interval))
    finally:
        pool.close()


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    from .tunnel import open_client

    cfg = cluster_config(args)
    match = [s for s in cfg.servers if s.name == args.server]
    if not match:
        raise UsageError(f"no server {args.server!r}; configured: {', '.join(s.name for s in cfg.servers)}")
    server = match[0]
    with open_client(server, os.environ) as client:
        stats = client.get_system_stats()
        queue = client.get_queue()
        nodes = client.node_classes()
        history = client.get_recent_history(5)
    info = {
        "name": server.name, "address": server.base_url, "comfyui_version": stats.comfyui_version,
        "devices": [{"name": d.name, "type": d.type, "vram_total": d.vram_total, "vram_free": d.vram_free}
                    for d in stats.devices],
        "queue_running": [e.prompt_id for e in queue.running], "queue_pending": [e.prompt_id for e in queue.pending],
        "node_count": len(nodes),
        "recent_history": [{"prompt_id": h.prompt_id, "status": h.status_str or None} for h in history],
    }
    if args.json:
        out.write(json.dumps(info, indent=2) + "\n")
        return EXIT_OK
    out.write(f"{info['name']}  {info['address']}  ComfyUI {info['comfyui_version'] or '?'}  "
              f"{info['node_count']} node classes\n")
    for d in info["devices"]:
        out.write(f"  device {d['name']} ({d['type']}): VRAM {fmt_bytes(d['vram_free'])} free of "
                  f"{fmt_bytes(d['vram_total'])}\n")
    out.write(f"  queue: {len(info['queue_running'])} running, {len(info['queue_pending'])} pending\n")
    for item in info["recent_history"]:
        out.write(f"  history {item['prompt_id']}: {item['status'] or '?'}\n")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace, out: TextIO) -> int:
    from .server import ComfyUIServer

    cfg = cluster_config(args)
    out.write(f"configuration from {cfg.source}: {len(cfg.servers)} server(s)\n")
    failures = 0
    rows = []
    for server_cfg in cfg.servers:
        if not server_cfg.enabled:
            rows.append([server_cfg.name, server_cfg.base_url, "disabled", ""])
            continue
        server = ComfyUIServer(server_cfg, client_id="comfy-cluster-config-check", environ=os.environ)
        try:
            status = server.update_status()
            ok = status.state.value in ("online", "busy")
            rows.append([server_cfg.name, server_cfg.base_url, status.state.value,
                         f"ComfyUI {status.comfyui_version or '?'}" if ok else (status.last_error or "")])
        except ComfyClusterError as err:
            ok = False
            rows.append([server_cfg.name, server_cfg.base_url, "error", str(err)])
        finally:
            server.close()
        failures += not ok
    out.write(table(rows, ["SERVER", "ADDRESS", "STATE", "DETAIL"]) + "\n")
    if cfg.runpod is not None:
        out.write(f"runpod endpoint {cfg.runpod.endpoint_id}: configured\n")
    return EXIT_FAILED if failures else EXIT_OK


# --------------------------------------------------------------------------- runpod


def _runpod_config(args: argparse.Namespace) -> Any:
    cfg = cluster_config(args).runpod
    if cfg is None:
        raise ConfigError("no RunPod endpoint is configured: set RUNPOD_ENDPOINT_ID and RUNPOD_API_KEY "
                          "(and optionally NUKE_COMFYUI_RUNPOD)")
    return cfg


def cmd_runpod_status(args: argparse.Namespace, out: TextIO) -> int:
    from .runpod import RunPodEndpoint, runpod_status_text
    from .runpod_admin import RunPodAdmin

    cfg = _runpod_config(args)
    endpoint = RunPodEndpoint(cfg, environ=os.environ)
    status = endpoint.update_status()
    settings = RunPodAdmin(cfg, environ=os.environ).status()
    endpoint.set_endpoint_settings(settings)
    if args.json:
        out.write(json.dumps({"status": endpoint.get_status().to_dict(), "settings": settings.to_dict()},
                             indent=2, default=str) + "\n")
    else:
        out.write(runpod_status_text(status, settings) + "\n")
    return EXIT_OK


def cmd_runpod_toggle(args: argparse.Namespace, out: TextIO) -> int:
    from .runpod_admin import RunPodAdmin

    admin = RunPodAdmin(_runpod_config(args), environ=os.environ)
    result = admin.warm() if args.action == "warm" else admin.cold()
    out.write(f"{result.message}\n")
    return EXIT_OK


def cmd_runpod_cost(args: argparse.Namespace, out: TextIO) -> int:
    from .ledger import CostLedger, cost_report

    runpod = cluster_config(args).runpod
    report = cost_report(CostLedger(environ=os.environ), daily_budget=runpod.daily_budget if runpod else None)
    out.write((json.dumps(report.to_dict(), indent=2, default=str) if args.json else str(report)) + "\n")
    return EXIT_OK


# --------------------------------------------------------------------------- work


class Progress:
    """Render progress on stderr: one redrawn line on a terminal, else a line every few seconds.

    Fed by batch events (worker threads) and drawn by the main thread. With the batch, the
    line also says why nothing runs (each backend's reason), which servers are out of
    rotation, and which frames wait far past their server's seconds per job.
    """

    def __init__(self, total: int, stream: TextIO, *, done: int = 0, clock: Callable[[], float] = time.monotonic,
                 batch: Any = None) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.done = done
        self.failed = 0
        self.retried = 0
        self.batch = batch
        self._start = clock()
        self._clock = clock
        self._base = done
        self._last_plain = 0.0
        self._lock = threading.Lock()

    def on_event(self, event: BatchEvent) -> None:
        with self._lock:
            if event.kind == "completed":
                self.done += 1
            elif event.kind == "failed":
                self.failed += 1
            elif event.kind == "retried":
                self.retried += 1

    def line(self) -> str:
        by_server = self.batch.by_server if self.batch is not None else {}   # the batch's lock, not under ours
        with self._lock:
            elapsed = self._clock() - self._start
            rendered = self.done - self._base
            left = self.total - self.done - self.failed
            eta = elapsed / rendered * left if rendered and left > 0 else None
            servers = " ".join(f"{k}:{v}" for k, v in sorted(by_server.items()))
            width = 24
            filled = int(width * (self.done + self.failed) / self.total) if self.total else width
            bar = "#" * filled + "-" * (width - filled)
            text = (f"[{bar}] {self.done}/{self.total} done, {self.failed} failed"
                    f"{f', {self.retried} retried' if self.retried else ''}  {servers}  "
                    f"elapsed {fmt_seconds(elapsed)}  ETA {fmt_seconds(eta) if eta is not None else '-'}")
        return text + self._why()

    def _why(self) -> str:
        """What the batch is stuck on, if anything: read from its cache, never the network."""
        if self.batch is None:
            return ""
        parts = []
        blocked = self.batch.blocked
        if blocked:
            parts.append("nothing can run: " + "; ".join(capped(blocked, 4)))
        benched = self.batch.benched
        if benched:
            parts.append("out of rotation: " + ", ".join(sorted(benched)))
        overdue = self.batch.overdue()
        if overdue:
            parts.append("waiting: " + ", ".join(f"{label} on {server} {fmt_seconds(waited)} (s/job {fmt_seconds(per)})"
                                                 for label, server, waited, per in overdue[:3])
                         + (f" and {len(overdue) - 3} more" if len(overdue) > 3 else ""))
        return "".join(f"  | {part}" for part in parts)

    def draw(self, final: bool = False) -> None:
        now = self._clock()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
        elif final or now - self._last_plain >= PLAIN_PROGRESS_EVERY:
            self._last_plain = now
            self.stream.write(self.line() + "\n")
        self.stream.flush()

def _follow(batch: Any, progress: Progress) -> None:
    """Draw progress until the batch ends; Ctrl-C cancels it (our prompts only)."""
    interval = 0.2 if progress.tty else 1.0
    try:
        while not batch.wait(interval):
            progress.draw()
    except KeyboardInterrupt:
        progress.stream.write("\ncancelling: removing our prompts from the servers...\n")
        batch.cancel()
        batch.wait(60)
        progress.draw(final=True)
        raise
    progress.draw(final=True)


def _summary(res: Any, out: TextIO, seconds: dict[str, list[tuple[float, float]]]) -> None:
    """Per server: frames, mean run time on the server, mean wait (queue, transfer) apart."""
    rows = []
    for server, count in sorted(res.by_server.items(), key=lambda kv: -kv[1]):
        times = seconds.get(server, [])
        run = sum(t[0] for t in times) / len(times) if times else None
        wait = sum(t[1] for t in times) / len(times) if times else None
        rows.append([server, str(count), fmt_seconds(run), fmt_seconds(wait)])
    if rows:
        out.write(table(rows, ["SERVER", "FRAMES", "AVG RUN", "AVG WAIT"]) + "\n")
    rendered = len(res.frames) - len(res.skipped) - res.cached
    cached = f", {res.cached} unchanged, taken from the cache" if res.cached else ""
    out.write(f"{rendered} frame(s) rendered{cached}, {len(res.skipped)} already done, {len(res.failed)} failed, "
              f"{len(res.cancelled)} cancelled in {fmt_seconds(res.elapsed)}\n")
    by_error: dict[str, list[int]] = {}
    for frame, err in sorted(res.failed.items()):
        by_error.setdefault(str(err), []).append(frame)
    lines = []
    for text, frames in by_error.items():   # one cause shared by many frames is shown once
        label = f"frame {frames[0]}" if len(frames) == 1 else f"frames {FrameSpec.from_frames(frames)}"
        lines.append(f"  {label}: " + text.replace("\n", "\n  "))
    for line in capped(lines):
        out.write(f"{line if line.startswith(' ') else '  ' + line}\n")


def _run_batch(args: argparse.Namespace, out: TextIO, start: Callable[..., Any]) -> int:
    pool = _pool(args)
    try:
        seconds: dict[str, list[tuple[float, float]]] = {}

        def collect(event: BatchEvent) -> None:
            if event.kind == "completed":
                times = (float(event.data.get("run_seconds", 0.0)), float(event.data.get("wait_seconds", 0.0)))
                seconds.setdefault(event.data.get("server", "?"), []).append(times)

        batch = start(pool)
        batch.subscribe(collect)
        done, _, total = batch.progress
        progress = Progress(total, sys.stderr, done=done, batch=batch)
        batch.subscribe(progress.on_event)
        _follow(batch, progress)
        res = batch.result()
        _summary(res, out, seconds)
        return EXIT_OK if res.ok else EXIT_FAILED
    finally:
        pool.close()


def _wait_for_server(args: argparse.Namespace) -> float:
    """``--wait-for-server``, or the library's default (``batch.WAIT_FOR_SERVER``)."""
    from .batch import WAIT_FOR_SERVER

    return WAIT_FOR_SERVER if args.wait_for_server is None else float(args.wait_for_server)


def cmd_render(args: argparse.Namespace, out: TextIO) -> int:
    from . import run

    wf = _workflow(args.workflow)
    inputs = _assignments(args.input, "input")
    values = _assignments(args.set, "value")
    if args.estimate:
        return estimate_cmd(args, out, _pool(args))

    def start(pool: Any) -> Any:
        estimate_gate(args, pool)
        return run.animation_submit(
            wf, pool=pool, frames=args.frames, inputs=inputs, values=values, output=args.output, chunk=args.chunk,
            resume=args.resume, retries=args.retries, target=args.target, job_timeout=args.job_timeout,
            wait_for_server=_wait_for_server(args), cache=not args.no_cache)
    return _run_batch(args, out, start)


def cmd_iterate(args: argparse.Namespace, out: TextIO) -> int:
    from . import run

    wf = _workflow(args.workflow)
    inputs = _assignments(args.input, "input")
    values = _assignments(args.set, "value")

    def start(pool: Any) -> Any:
        batch = run.iteration_submit(wf, pool=pool, count=args.count, output=args.output, seed_mode=args.seed_mode,
                                     inputs=inputs, values=values, retries=args.retries, target=args.target,
                                     job_timeout=args.job_timeout, wait_for_server=_wait_for_server(args),
                                     cache=not args.no_cache)
        for iteration, seeds in sorted(batch.seeds.items()):
            log.info("iteration %d seeds: %s", iteration, seeds)
        return batch
    return _run_batch(args, out, start)


def cmd_submit(args: argparse.Namespace, out: TextIO) -> int:
    from . import run

    wf = _workflow(args.workflow)
    pool = _pool(args)
    try:
        job = run.submit(wf, pool=pool, inputs=_assignments(args.input, "input"), values=_assignments(args.set, "value"),
                         output_dir=args.output, target=args.target, timeout=args.job_timeout,
                         wait_for_server=_wait_for_server(args))
        try:
            result = job.result()
        except KeyboardInterrupt:
            job.cancel()
            job.wait(60)
            raise
        for path in result.outputs:
            out.write(f"{path}\n")
        log.info("prompt %s on %s in %.2f s", result.prompt_id, result.server, result.elapsed)
        sys.stderr.write(f"done on {result.server} in {fmt_seconds(result.elapsed)} "
                         f"({len(result.outputs)} file(s))\n")
        return EXIT_OK
    finally:
        pool.close()


def cmd_emulator(args: argparse.Namespace, out: TextIO) -> int:
    from .emulator.__main__ import main as emulator_main

    argv = ["--port", str(args.port), "--count", str(args.count), "--seconds-per-job", str(args.seconds_per_job),
            "--name", args.name]
    if args.base_directory:
        argv += ["--base-directory", args.base_directory]
    return emulator_main(argv)


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from .demo import run_demo

    return run_demo(frames=args.frames, output=Path(args.output), out=out)


# --------------------------------------------------------------------------- the parser


def _add_work_options(p: argparse.ArgumentParser, *, pattern: bool) -> None:
    p.add_argument("workflow", help="API-format workflow .json (or a ComfyUI .png)")
    p.add_argument("--input", action="append", metavar="NODE.INPUT=" + ("PATTERN" if pattern else "PATH"),
                   help="feed a local file" + (" sequence (####, %%04d, $F4)" if pattern else "") + " to an input")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="literal override, e.g. 3.seed=42")
    p.add_argument("--target", default=None, help="a server name, 'runpod', or auto (default)")
    p.add_argument("--job-timeout", type=float, default=None, metavar="S", help="seconds per prompt before retrying")
    p.add_argument("--wait-for-server", type=_seconds_arg, default=None, metavar="S",
                   help="while no server (nor RunPod) can take the work, wait this long, then fail saying why "
                        "(default 300)")


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def _register_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="a table of the servers")
    p.add_argument("--json", action="store_true", help="machine-readable snapshot")
    p.add_argument("--watch", action="store_true", help="redraw on every change until Ctrl-C")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("info", help="one server in detail: system stats, queue, recent history, node count")
    p.add_argument("server")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)


def _register_work(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run one prompt on the best server")
    _add_work_options(p, pattern=False)
    p.add_argument("--output", default=".", metavar="DIR", help="folder for the outputs (default: here)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("render", help="render a frame sequence over the cluster")
    _add_work_options(p, pattern=True)
    p.add_argument("--frames", required=True, metavar="RANGE", help="1001-1100, 1001-1100x2, 1,5,9-12")
    p.add_argument("--output", required=True, metavar="PATTERN", help="e.g. /renders/sh010_comfy.####.png")
    p.add_argument("--chunk", type=int, default=1, metavar="N", help="frames per prompt (workflows that batch)")
    p.add_argument("--resume", action="store_true", help="render only frames not done and present on disk")
    p.add_argument("--no-cache", action="store_true", help="render even frames the result cache holds")
    p.add_argument("--estimate", action="store_true", help="show where frames would run and the RunPod cost; send nothing")
    p.add_argument("--force", action="store_true", help="render even when RunPod would pass today's budget")
    p.add_argument("--retries", type=int, default=3)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("iterate", help="render N variations (different seeds) in parallel")
    _add_work_options(p, pattern=True)
    p.add_argument("--count", type=int, required=True, metavar="N")
    p.add_argument("--seed-mode", choices=("random", "increment", "fixed"), default="random")
    p.add_argument("--no-cache", action="store_true", help="render even frames the result cache holds")
    p.add_argument("--output", required=True, metavar="PATTERN", help="e.g. /renders/look_v{iteration:02d}.png")
    p.add_argument("--retries", type=int, default=3)
    p.set_defaults(func=cmd_iterate)


def _register_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="configuration")
    group = p.add_subparsers(dest="config_command", metavar="ACTION", required=True, parser_class=Parser)
    check = group.add_parser("check", help="validate the configuration and try each server")
    check.set_defaults(func=cmd_config_check)
    from .cli_config import register  # add|remove|set|enable|disable|export|import|backup|restore

    register(group)


def _register_emulators(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("emulator", help="run emulated ComfyUI servers (tests, demos)")
    p.add_argument("--port", type=int, default=8188, help="first port (0: any free port)")
    p.add_argument("--count", type=int, default=1, help="servers on consecutive ports")
    p.add_argument("--seconds-per-job", type=float, default=0.0)
    p.add_argument("--name", default="emu")
    p.add_argument("--base-directory", default=None)
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("demo", help="render a short sequence over a small emulated cluster")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--output", default="demo-output", metavar="DIR")
    p.set_defaults(func=cmd_demo)


def _register_runpod(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runpod", help="the RunPod serverless endpoint: status, always-on worker, cost")
    group = p.add_subparsers(dest="runpod_command", metavar="ACTION", required=True, parser_class=Parser)
    status = group.add_parser("status", help="workers, queue, spend today, always-on setting")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_runpod_status)
    for action, text in (("warm", "keep one worker always on (workersMin 1): no cold starts, billed while idle"),
                         ("cold", "let the endpoint scale to zero (workersMin 0)")):
        toggle = group.add_parser(action, help=text)
        toggle.set_defaults(func=cmd_runpod_toggle, action=action)
    cost = group.add_parser("cost", help="spend today, per batch and per job, from the local cost ledger")
    cost.add_argument("--json", action="store_true", help="machine-readable output")
    cost.set_defaults(func=cmd_runpod_cost)


#: One function per command group; each adds its subcommands. Add a group here.
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_status, _register_work, _register_config, _register_runpod, _register_emulators, _register_tunnel,
    register_pods,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="comfy-cluster", description="Send ComfyUI workflows to a cluster of ComfyUI servers.")
    parser.add_argument("--servers", metavar="FILE", help="servers file (overrides NUKE_COMFYUI_SERVERS)")
    parser.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default WARNING")
    parser.add_argument("--version", action="version", version=f"comfy-cluster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    debug = False
    try:
        args = build_parser().parse_args(argv)
        debug = args.log_level == "DEBUG"
        logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.func(args, out)
    except KeyboardInterrupt:
        sys.stderr.write("comfy-cluster: interrupted\n")
        return EXIT_INTERRUPTED
    except UsageError as err:
        sys.stderr.write(f"comfy-cluster: error: {err}\n")
        return EXIT_USAGE
    except (ComfyClusterError, OSError, ValueError) as err:
        if debug:
            log.exception("failed")
        usage = isinstance(err, (ConfigError, BindingError, MissingInputs)) or not isinstance(err, ComfyClusterError)
        code = EXIT_USAGE if usage else EXIT_FAILED
        sys.stderr.write(f"comfy-cluster: error: {_one_line(err)}\n")
        return code


def _one_line(err: BaseException) -> str:
    """The error as one line; an OS error names its path (``File exists: /etc/passwd``)."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.strerror}: {err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
    else:
        text = str(err) or type(err).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines) if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
