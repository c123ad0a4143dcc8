"""Start emulated ComfyUI servers for tests and the demo: in a thread, or as a real process.

``EmulatorThread`` is cheap (its own event loop in a daemon thread, port 0).
``EmulatorProcess`` is a separate OS process that a test can SIGKILL and bring back on the
same port and base directory, which is what failover tests need. Both talk to the fault
knobs over HTTP (``/_emulator/*``), the same way for either kind.
"""

from __future__ import annotations

import asyncio
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import requests
from aiohttp import web

from .comfyui import ComfyEmulator

READY_PREFIX = "COMFY_EMULATOR_READY"
_READY = re.compile(READY_PREFIX + r" port=(\d+)")
CONTROL_TIMEOUT = 10.0
#: Longest wait for an emulator to come up. A healthy start returns as soon as it is ready;
#: the deadline only bounds a broken one, so it is generous: a loaded 2-core machine can take
#: tens of seconds to import aiohttp and numpy in a fresh child.
START_TIMEOUT = 120.0


class _Controlled:
    """HTTP control shared by both kinds: fault knobs and websocket drops."""

    host = "127.0.0.1"
    port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_faults(self, **knobs: Any) -> dict:
        """Set fault knobs (only the ones given); returns the full knob set now in force."""
        response = requests.post(f"{self.url}/_emulator/faults", json=knobs, timeout=CONTROL_TIMEOUT)
        if response.status_code != 200:
            raise ValueError(f"emulator {self.url}: faults {knobs} refused: {response.text}")
        return response.json()

    def get_faults(self) -> dict:
        response = requests.get(f"{self.url}/_emulator/faults", timeout=CONTROL_TIMEOUT)
        response.raise_for_status()
        return response.json()

    def drop_websockets(self) -> int:
        """Cut every websocket connection; returns how many were dropped."""
        response = requests.post(f"{self.url}/_emulator/drop_ws", timeout=CONTROL_TIMEOUT)
        response.raise_for_status()
        return int(response.json()["dropped"])


class EmulatorThread(_Controlled):
    """An emulated server on its own event loop in a daemon thread of this process."""

    def __init__(self, *, seconds_per_job: float = 0.0, seconds_per_node: float = 0.0, base_dir: str | Path | None = None,
                 node_classes: Iterable[str] | None = None, name: str = "emu", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._owns_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"comfy-emu-{name}-")) if base_dir is None else Path(base_dir)
        self.emulator = ComfyEmulator(self.base_dir, seconds_per_job=seconds_per_job, seconds_per_node=seconds_per_node,
                                      node_classes=node_classes, name=name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = START_TIMEOUT) -> EmulatorThread:
        self._thread = threading.Thread(target=self._run, name=f"emulator-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"emulator {self.name!r} did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"emulator {self.name!r} failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._runner = web.AppRunner(self.emulator.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as exc:  # noqa: BLE001 - handed to start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        """Close sockets and the worker, stop the loop, and remove a base dir we made."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.emulator.close()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmulatorThread:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmulatorThread(name={self.name!r}, url={self.url!r})"


class EmulatorProcess(_Controlled):
    """Emulated server(s) in a child process (``python -m comfy_cluster.emulator``).

    With ``count`` > 1 the child serves that many servers on consecutive ports, each with its
    own queue, worker and base-dir subfolder (``ports`` / ``urls`` list them).
    """

    def __init__(self, *, port: int = 0, seconds_per_job: float = 0.0, seconds_per_node: float = 0.0,
                 base_dir: str | Path | None = None, node_classes: Iterable[str] | None = None, name: str = "emu",
                 count: int = 1, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = port
        self.ports: list[int] = []
        self.count = count
        self.seconds_per_job = seconds_per_job
        self.seconds_per_node = seconds_per_node
        self.node_classes = list(node_classes) if node_classes is not None else None
        self._owns_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"comfy-emu-{name}-")) if base_dir is None else Path(base_dir)
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{p}" for p in self.ports]

    def _command(self) -> list[str]:
        ports = ["--ports", ",".join(map(str, self.ports))] if self.ports else ["--port", str(self.port)]
        cmd = [sys.executable, "-m", "comfy_cluster.emulator", *ports, "--host", self.host,
               "--count", str(self.count), "--name", self.name, "--base-directory", str(self.base_dir),
               "--seconds-per-job", repr(self.seconds_per_job), "--seconds-per-node", repr(self.seconds_per_node)]
        if self.node_classes is not None:
            cmd += ["--node-classes", ",".join(self.node_classes)]
        return cmd

    def start(self, timeout: float = START_TIMEOUT) -> EmulatorProcess:
        """Spawn the child, wait for its ready lines, then for ``/system_stats`` to answer."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.base_dir / "emulator.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=log_file,
                                          stdin=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[2]))
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout
        try:
            self.ports = self._read_ports(deadline)
            self.port = self.ports[0]
            self._wait_http(deadline)
        except BaseException:
            self.kill()
            raise
        return self

    def _read_ports(self, deadline: float) -> list[int]:
        """The ports of the child's ready lines. The pipe is read unbuffered: a buffered
        ``readline`` would swallow lines that arrived together, and ``select`` would then
        wait for data already read."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        ports: list[int] = []
        pending = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(ports) < self.count:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"emulator {self.name!r}: no ready line within the start timeout "
                                       f"(log: {self.base_dir / 'emulator.log'})")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"emulator {self.name!r} exited with {self._proc.wait()} before it was ready "
                                       f"(log: {self.base_dir / 'emulator.log'})")
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    match = _READY.match(line.decode(errors="replace"))
                    if match:
                        ports.append(int(match.group(1)))
        return ports

    def _wait_http(self, deadline: float) -> None:
        for url in self.urls:
            while True:
                try:
                    if requests.get(f"{url}/system_stats", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"emulator {self.name!r}: {url}/system_stats did not answer in time")
                time.sleep(0.05)

    def _end(self, sig: int, timeout: float) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, like a crashed GPU box."""
        self._end(signal.SIGKILL, 5)

    def stop(self) -> None:
        """SIGTERM and wait; then remove a base dir we made."""
        self._end(signal.SIGTERM, 10)
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, timeout: float = START_TIMEOUT) -> EmulatorProcess:
        """Kill if running, then start again on the same port(s) and base directory."""
        self.kill()
        return self.start(timeout)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmulatorProcess:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmulatorProcess(name={self.name!r}, url={self.url!r}, pid={self.pid})"

