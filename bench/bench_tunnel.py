"""Frames per second through an SSH tunnel against the same server reached directly.

``python -m bench`` runs it as scenario 9. Alone: ``python -m bench.bench_tunnel`` (or
``python bench/bench_tunnel.py``) from the repo root, ``--frames N --runs R --seconds-per-job S``. It starts a real ``sshd`` on loopback (the tests'
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

import comfy_cluster as cc
from bench.scenarios import Metric, render
from comfy_cluster.emulator.process import EmulatorProcess
from tests.sshd import SshServer


def _pool(server: dict, state: Path) -> cc.ComfyUIServerPool:
    environ = {"NUKE_COMFYUI_SERVERS": json.dumps([server]), "NUKE_COMFYUI_POLL_INTERVAL": "1",
               "COMFY_CLUSTER_STATE_DIR": str(state)}
    pool = cc.ComfyUIServerPool.from_env(environ).start()
    deadline = time.monotonic() + 60
    while pool.servers[0].state.name not in ("ONLINE", "BUSY"):
        if time.monotonic() > deadline:
            pool.close()
            raise RuntimeError(f"bench: {server['name']} did not come online: {pool.servers[0].last_error}")
        pool.wait_for_change(0.5)
    return pool


def measure(base: Path, runs: int, frames: int = 100, seconds_per_job: float = 0.0) -> dict:
    """Frames per second of the same batch, direct and through the tunnel, interleaved ``runs`` times."""
    emu = EmulatorProcess(name="gpu-01", seconds_per_job=seconds_per_job, base_dir=base / "tunnel-emu")
    emu.start(timeout=60)
    sshd = SshServer(base / "tunnel-sshd")
    try:
        sshd.start()
        servers = {
            "direct": {"name": "gpu-01", "ip": "127.0.0.1", "port": emu.port},
            "tunnel": {"name": "gpu-01", "ip": "192.0.2.10", "port": emu.port, "ssh": sshd.ssh_config()},
        }
        fps: dict[str, list[float]] = {mode: [] for mode in servers}
        for i in range(runs):
            for mode, server in servers.items():   # interleaved, so drift in the machine's load hits both
                pool = _pool(server, base / "tunnel-state")
                try:
                    wall, _cpu, _res = render(pool, frames, base / f"tunnel-out-{mode}-{i}")
                finally:
                    pool.close()
                fps[mode].append(frames / wall)
    finally:
        sshd.stop()
        emu.stop()
    direct, tunnel = (statistics.median(fps[m]) for m in ("direct", "tunnel"))
    return {"frames": frames, "runs": runs, "seconds_per_job": seconds_per_job,
            "direct_fps": round(direct, 2), "tunnel_fps": round(tunnel, 2),
            "tunnel_vs_direct": round(tunnel / direct, 3),
            "overhead_ms_per_frame": round((1 / tunnel - 1 / direct) * 1e3, 2),
            "runs_fps": {m: [round(v, 2) for v in vs] for m, vs in fps.items()}}


def tunnel(base: Path, runs: int, frames: int = 100) -> list[Metric]:
    """Scenario 9 for ``python -m bench``: the tunnel's frames/s and its overhead per frame."""
    r = measure(base, runs, frames)
    fps = r["runs_fps"]
    overhead = [(1 / t - 1 / d) * 1e3 for t, d in zip(fps["tunnel"], fps["direct"])]
    note = (f"{frames} zero-work frames on one emulated server (its own process), a fresh pool per run, direct "
            f"and through `ssh -L` to a real sshd on loopback (tests/sshd.py), interleaved; every request, "
            f"websocket message and download crosses the tunnel")
    return [Metric("9 tunnel", "frames per second through an SSH tunnel", "frames/s", fps["tunnel"], "", None,
                   {"direct": statistics.median(fps["direct"])}, note),
            Metric("9 tunnel", "tunnel / direct", "ratio", [t / d for t, d in zip(fps["tunnel"], fps["direct"])]),
            Metric("9 tunnel", "overhead per frame", "ms", overhead)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds-per-job", type=float, default=0.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp:
        result = measure(Path(tmp), args.runs, args.frames, args.seconds_per_job)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
