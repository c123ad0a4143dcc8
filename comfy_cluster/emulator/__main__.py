"""``python -m comfy_cluster.emulator``: run N emulated ComfyUI servers in one process.

Each server gets its own queue, worker and base-dir subfolder; ports are consecutive from
``--port`` (or each chosen by the OS with ``--port 0``). One ready line per server goes to
stdout: ``COMFY_EMULATOR_READY port=8188 name=gpu-01 base=/path``; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .comfyui import ComfyEmulator
from .process import READY_PREFIX

def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m comfy_cluster.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188, help="first port (0: let the OS choose each)")
    parser.add_argument("--ports", default=None, help="explicit comma-separated ports (overrides --port/--count)")
    parser.add_argument("--count", type=int, default=1, help="servers to run in this process")
    parser.add_argument("--seconds-per-job", type=float, default=0.0)
    parser.add_argument("--seconds-per-node", type=float, default=0.0)
    parser.add_argument("--base-directory", default=None, help="default: ./comfy-emulator")
    parser.add_argument("--name", default="emu")
    parser.add_argument("--node-classes", default=None, help="comma-separated classes to offer (default: all)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.ports:
        args.port_list = [int(p) for p in args.ports.split(",")]
    elif args.port == 0:
        args.port_list = [0] * args.count
    else:
        args.port_list = [args.port + i for i in range(args.count)]
    return args


def _die() -> None:
    """The ``die_mid_job`` fault: vanish without cleanup, like a crashed machine."""
    os._exit(3)


async def _serve(args: argparse.Namespace) -> None:
    base = Path(args.base_directory or "comfy-emulator").resolve()
    classes = args.node_classes.split(",") if args.node_classes else None
    several = len(args.port_list) > 1
    runners = []
    for i, port in enumerate(args.port_list):
        name = f"{args.name}-{i + 1:03d}" if several else args.name
        server_dir = base / name if several else base
        emulator = ComfyEmulator(server_dir, seconds_per_job=args.seconds_per_job, seconds_per_node=args.seconds_per_node,
                                 node_classes=classes, name=name, die=_die,
                                 argv=[sys.argv[0], "--port", str(port), "--output-directory", str(server_dir / "output"),
                                       "--input-directory", str(server_dir / "input")])
        runner = web.AppRunner(emulator.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, args.host, port).start()
        runners.append(runner)
        bound = runner.addresses[0][1]
        emulator.argv[2] = str(bound)
        print(f"{READY_PREFIX} port={bound} name={name} base={server_dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
