"""Frames per second through an SSH tunnel against the same server reached directly.

Run: ``python -m bench.bench_tunnel`` (or ``python bench/bench_tunnel.py``) from the repo root;
``--frames N --runs R --seconds-per-job S``. It starts a real ``sshd`` on loopback (the tests'
fixture, keys generated on the spot) and one emulated ComfyUI in its own process, then
renders the same batch on a fresh pool per run, once with the server's address and once
with an ``ssh`` block, and prints the medians as JSON. With instant jobs (the default) the
number is the tunnel's overhead per frame: every request, upload, websocket message and
download crosses ``ssh -L`` and sshd's forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scenarios import render
from comfy_cluster.backend import ServerState
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorProcess
from comfy_cluster.pool import ComfyUIServerPool
from tests.sshd import SshServer


def _pool(cfg: ServerConfig, state: Path) -> ComfyUIServerPool:
    pool = ComfyUIServerPool([cfg], poll_interval=1.0, environ={"COMFY_CLUSTER_STATE_DIR": str(state)}).start()
    deadline = time.monotonic() + 60
    while pool.servers[0].state not in (ServerState.ONLINE, ServerState.BUSY):
        if time.monotonic() > deadline:
            pool.close()
            raise SystemExit(f"bench: {cfg.name} did not come online: {pool.servers[0].last_error}")
        pool.wait_for_change(0.5)
    return pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds-per-job", type=float, default=0.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        base = Path(tmp)
        emu = EmulatorProcess(name="gpu-01", seconds_per_job=args.seconds_per_job, base_dir=base / "emu")
        emu.start(timeout=60)
        sshd = SshServer(base / "sshd").start()
        try:
            configs = {
                "direct": ServerConfig(name="gpu-01", ip="127.0.0.1", port=emu.port),
                "tunnel": ServerConfig.from_dict({"name": "gpu-01", "ip": "192.0.2.10", "port": emu.port,
                                                  "ssh": sshd.ssh_config()}),
            }
            fps: dict[str, list[float]] = {mode: [] for mode in configs}
            for i in range(args.runs):
                for mode, cfg in configs.items():   # interleaved, so drift in the machine's load hits both
                    pool = _pool(cfg, base / "state")
                    try:
                        wall, _cpu, _res = render(pool, args.frames, base / f"out-{mode}-{i}")
                    finally:
                        pool.close()
                    fps[mode].append(args.frames / wall)
        finally:
            sshd.stop()
            emu.stop()
    direct, tunnel = (statistics.median(fps[m]) for m in ("direct", "tunnel"))
    result = {"frames": args.frames, "runs": args.runs, "seconds_per_job": args.seconds_per_job,
              "direct_fps": round(direct, 2), "tunnel_fps": round(tunnel, 2),
              "tunnel_vs_direct": round(tunnel / direct, 3),
              "overhead_ms_per_frame": round((1 / tunnel - 1 / direct) * 1e3, 2),
              "runs_fps": {m: [round(v, 2) for v in vs] for m, vs in fps.items()}}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
