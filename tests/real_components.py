"""The real ComfyUI 0.3.64 and worker-comfyui 5.8.5 for tests: where they are, and how a server starts.

``scripts/setup_real_components.py`` installs them (README's test command runs it); this module only finds
that install and starts servers from it. A missing install fails the test loudly with the setup
command to run; only an explicit ``COMFY_CLUSTER_SKIP_REAL=1`` (never in CI) turns that into a skip.

Every server gets its own base, input, output, temp and user directories and its own sqlite
database under ``base_dir``; custom node packages are symlinked into that server's own
``custom_nodes`` directory, so no test writes into a shared source tree.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Mapping, Sequence

import pytest
import requests

SKIP_ENV = "COMFY_CLUSTER_SKIP_REAL"
HOME_ENV = "COMFY_CLUSTER_REAL_HOME"
SETUP_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_real_components.py"
CONTRACT_NODES = Path(__file__).resolve().parent / "contract" / "comfy_nodes" / "contract_hold"
HANDLER_LAUNCHER = Path(__file__).resolve().parent / "contract" / "run_worker_comfyui.py"
START_TIMEOUT = 180.0  # torch import on 2 shared cores; a healthy start takes ~10 s
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 40
PR_SET_PDEATHSIG = 1


class RealComponentsMissing(RuntimeError):
    """The real ComfyUI / handler install is absent or incomplete."""


class RealComfyUIFailed(RuntimeError):
    """A real ComfyUI server did not come up; the message carries the tail of its log."""


def _setup_module() -> ModuleType:
    """The setup script is the one place that knows the layout and the stamp; share it."""
    spec = importlib.util.spec_from_file_location("setup_real_components", SETUP_SCRIPT)
    if spec is None or spec.loader is None:
        raise RealComponentsMissing(f"cannot load {SETUP_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


_setup = _setup_module()
Layout = _setup.Layout


def setup_command() -> str:
    return f"{sys.executable} {SETUP_SCRIPT}"


def real_layout() -> Layout:
    """The install under ``real_home()``, checked: its stamp matches and every entry point exists."""
    layout = Layout.from_env(os.environ.get(HOME_ENV))
    problem = layout.problem()
    if problem:
        raise RealComponentsMissing(
            f"the real ComfyUI/worker-comfyui install at {layout.home} is not usable ({problem}); "
            f"run `{setup_command()}` (or set {HOME_ENV} to an installed home)")
    return layout


def real_home() -> Path:
    """Where the real components are installed (``$COMFY_CLUSTER_REAL_HOME``, default ``~/.cache/comfy-cluster-real``)."""
    return real_layout().home


def require_real() -> Layout:
    """For fixtures: the install, or pytest.fail (pytest.skip only with ``COMFY_CLUSTER_SKIP_REAL=1``)."""
    try:
        return real_layout()
    except RealComponentsMissing as exc:
        missing = str(exc)
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: {missing}")
    pytest.fail(missing, pytrace=False)


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the test process dies, so no server outlives a killed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PRE_EXEC = _die_with_parent if sys.platform.startswith("linux") else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class RealComfyUI:
    """One running real ComfyUI process with its own directories."""

    name: str
    port: int
    base_dir: Path
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    user_dir: Path
    log_path: Path
    proc: subprocess.Popen = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def _end(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, like a crashed GPU box."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after STOP_TIMEOUT)."""
        self._end(signal.SIGTERM)


def _link_custom_nodes(custom_nodes: Sequence[Path], target_dir: Path) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for package in custom_nodes:
        package = Path(package).resolve()
        if not package.exists():
            raise FileNotFoundError(f"custom node package {package} does not exist")
        link = target_dir / package.name
        if link.is_symlink() or link.exists():
            if link.resolve() == package:
                continue
            raise FileExistsError(f"{link} already exists and is not a link to {package}")
        link.symlink_to(package, target_is_directory=package.is_dir())


def _wait_ready(server: RealComfyUI, deadline: float, timeout: float) -> None:
    while True:
        if not server.alive:
            raise RealComfyUIFailed(f"real ComfyUI {server.name!r} exited with {server.proc.returncode} before "
                                    f"{server.url}/system_stats answered; log {server.log_path}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/system_stats", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RealComfyUIFailed(f"real ComfyUI {server.name!r}: {server.url}/system_stats did not answer within "
                                    f"{timeout:.0f} s; log {server.log_path}:\n{server.log_tail()}")
        time.sleep(0.2)


def start_real_comfyui(base_dir: Path, *, port: int | None = None, custom_nodes: Sequence[Path] = (),
                       env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                       name: str | None = None, layout: Layout | None = None,
                       timeout: float = START_TIMEOUT) -> RealComfyUI:
    """Start ``main.py --cpu --listen 127.0.0.1 --port N`` with directories under ``base_dir``; wait until it answers.

    ``port`` None picks a free one. ``env`` is added to this process's environment. Raises
    RealComponentsMissing without an install, RealComfyUIFailed (with the log's tail) when the
    server exits or stays silent past ``timeout``.
    """
    layout = layout or real_layout()
    retries = 1 if port is None else 0
    while True:
        try:
            return _start(layout, Path(base_dir).resolve(), port or free_port(), custom_nodes, env, extra_args,
                          name, timeout)
        except RealComfyUIFailed as exc:
            # A free port picked here can be taken by another process before ComfyUI binds it.
            if not retries or "address already in use" not in str(exc).lower():
                raise
            retries -= 1


def _start(layout: Layout, base_dir: Path, port: int, custom_nodes: Sequence[Path], env: Mapping[str, str] | None,
           extra_args: Sequence[str], name: str | None, timeout: float) -> RealComfyUI:
    dirs = {key: base_dir / key for key in ("input", "output", "temp", "user", "custom_nodes", "models")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    _link_custom_nodes(custom_nodes, dirs["custom_nodes"])
    log_path = base_dir / "comfyui.log"
    cmd = [str(layout.comfyui_python), str(layout.comfyui_src / "main.py"), "--cpu", "--listen", "127.0.0.1",
           "--port", str(port), "--base-directory", str(base_dir), "--output-directory", str(dirs["output"]),
           "--input-directory", str(dirs["input"]), "--temp-directory", str(dirs["temp"]),
           "--user-directory", str(dirs["user"]), "--database-url", f"sqlite:///{base_dir / 'comfyui.db'}",
           "--disable-auto-launch", *extra_args]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(base_dir), env=child_env, start_new_session=True, preexec_fn=PRE_EXEC)
    server = RealComfyUI(name=name or base_dir.name, port=port, base_dir=base_dir, input_dir=dirs["input"],
                         output_dir=dirs["output"], temp_dir=dirs["temp"], user_dir=dirs["user"],
                         log_path=log_path, proc=proc)
    try:
        _wait_ready(server, time.monotonic() + timeout, timeout)
    except BaseException:
        server.kill()
        raise
    return server


@dataclass
class RealHandler:
    """The real worker-comfyui handler process: the runpod SDK's loop taking jobs from an emulated endpoint."""

    worker_id: str
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGTERM the whole process group (the SDK forks a heartbeat process), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a heartbeat child that outlived the loop
        except ProcessLookupError:
            pass


def start_real_handler(comfy: RealComfyUI, runpod_env: Mapping[str, str], work_dir: Path, *,
                       layout: Layout | None = None) -> RealHandler:
    """Start worker-comfyui 5.8.5's handler against ``comfy``, taking jobs as ``runpod_env`` says.

    ``runpod_env`` is what RunPod sets in a worker container (``RunPodEmulator.worker_env``).
    The handler gets a fresh pid file holding ``comfy``'s pid (a stale one would make it report
    ComfyUI as dead) and a HOME of its own (the SDK would read ``~/.runpod`` credentials).
    """
    layout = layout or real_layout()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    pid_file = work_dir / "comfyui.pid"
    pid_file.write_text(str(comfy.proc.pid))
    log_path = work_dir / "handler.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work_dir), "PYTHONUNBUFFERED": "1",
           "RUNPOD_LOG_LEVEL": "INFO", **runpod_env}
    cmd = [str(layout.handler_python), str(HANDLER_LAUNCHER), str(layout.handler_src), f"127.0.0.1:{comfy.port}",
           str(pid_file)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(work_dir), env=env, start_new_session=True, preexec_fn=PRE_EXEC)
    return RealHandler(worker_id=runpod_env["RUNPOD_POD_ID"], log_path=log_path, proc=proc)


RealComfyUIFactory = Callable[..., RealComfyUI]


@pytest.fixture(scope="session")
def real_install() -> Layout:
    """The checked real install (session scope: read before the per-test environment scrub)."""
    return require_real()


@pytest.fixture
def real_comfyui_factory(real_install: Layout, tmp_path: Path) -> Iterator[RealComfyUIFactory]:
    """Start real ComfyUI servers: ``real_comfyui_factory(custom_nodes=[pkg])``; every one stopped at teardown.

    Without ``base_dir`` each server gets a fresh directory under the test's tmp_path.
    """
    started: list[RealComfyUI] = []

    def make(base_dir: Path | None = None, **kwargs: object) -> RealComfyUI:
        base = Path(base_dir) if base_dir is not None else tmp_path / f"comfyui-{len(started) + 1}"
        server = start_real_comfyui(base, layout=real_install, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def real_comfyui(real_install: Layout) -> Iterator[RealComfyUI]:
    """One real ComfyUI shared by the whole session (start-up costs seconds): tests must not assume it is idle-fresh.

    It carries the test-only ContractHold node (tests/contract/comfy_nodes), which keeps a prompt
    running until interrupted.
    """
    base = Path(tempfile.mkdtemp(prefix="comfy-real-shared-"))
    server = start_real_comfyui(base, layout=real_install, name="real-shared", custom_nodes=[CONTRACT_NODES])
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
