"""SSH tunnels to servers only SSH can reach, made by the system OpenSSH client and shared per machine.

Model: one tunnel per (user, host, ssh port, remote port), whatever process needs it. A
tunnel is ``ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:REMOTE`` run in its own session (Ctrl-C in
one Nuke does not cut another's tunnel), non-interactive (``BatchMode``), with keep-alives,
and ``ExitOnForwardFailure`` so a local port it cannot bind is an exit, not a tunnel that
silently forwards nothing. Its record is a JSON file in the state folder
(``<state>/tunnels/<key>.json``: pid, local port, command line, users), written under a
file lock, so a second process finds the live tunnel and uses it instead of starting
another. A record whose pid is gone, or whose pid now runs something other than our ssh
command line, is dead and is cleaned up by whoever finds it.

Each process that uses a tunnel adds itself to ``users``; ``release()`` takes it off, and the
last user stops the ssh (``comfy-cluster tunnel start`` pins a tunnel so it stays up with no
users, until ``tunnel stop``). A local port that is taken (by another program) makes ssh
exit with "Address already in use": another free port is picked, and the log and the
status say so. ``ensure()`` re-makes a dead tunnel, with back-off between failed attempts.

ssh's own messages name what went wrong and become errors naming the server and the
``ssh`` field to fix: unknown host, refused key, changed or unknown host key, no ssh. Only
paths ever reach a message; identity files are never read by this module.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .client import ComfyClient
from .config import ServerConfig
from .errors import ServerUnavailable, TunnelError
from .ledger import state_dir
from .locks import file_lock
from .tunnel_config import SSHConfig

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
TUNNELS_DIR = "tunnels"
#: Back-off between failed attempts to (re)make a tunnel: 1, 2, 4 ... seconds, at most this.
MAX_BACKOFF = 30.0
FIRST_BACKOFF = 1.0
#: Seconds allowed after ssh's connect timeout for authentication and the forward to come up.
AUTH_GRACE = 15.0
#: Other ports tried when the wanted local port is taken.
PORT_ATTEMPTS = 4
#: Seconds to wait for ssh to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
INSTALL_HINT = ("install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client; "
                "Windows 10+: the optional feature 'OpenSSH Client'; macOS ships it)")

_children: dict[int, subprocess.Popen[bytes]] = {}   # ssh processes this process started, reaped by poll()
_children_lock = threading.Lock()
_in_use: weakref.WeakSet[Tunnel] = weakref.WeakSet()  # released at exit, so a quitting Nuke frees its share


class TunnelState(str, Enum):
    """What the tunnel of one server is doing, from this process's cache."""

    UP = "up"            # ssh runs and the local port accepts connections
    DOWN = "down"        # it was up and its ssh died; re-made on the next ensure()
    FAILED = "failed"    # the last attempt to open it failed (see ``error``)
    CLOSED = "closed"    # never opened here, or released


@dataclass(frozen=True)
class TunnelRecord:
    """The shared state of one live tunnel, as stored in its JSON file."""

    key: str
    pid: int
    local_port: int
    argv: tuple[str, ...]
    started: float                       # wall time
    users: tuple[str, ...] = ()          # "pid:token" of each Tunnel object using it
    pinned: bool = False                 # kept with no users (``comfy-cluster tunnel start``)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"], data["users"] = list(self.argv), list(self.users)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TunnelRecord:
        return cls(key=str(data["key"]), pid=int(data["pid"]), local_port=int(data["local_port"]),
                   argv=tuple(str(a) for a in data["argv"]), started=float(data["started"]),
                   users=tuple(str(u) for u in data.get("users", ())), pinned=bool(data.get("pinned", False)))


@dataclass(frozen=True)
class TunnelStatus:
    """One tunnel as the status table and the panel show it."""

    server: str
    ssh: str                  # user@host:port
    state: TunnelState
    local_port: int | None
    pid: int | None = None
    users: int = 0
    pinned: bool = False
    note: str | None = None   # e.g. "port 8188 was taken: using 40123"
    error: str | None = None

    def summary(self) -> str:
        """One line: ``ssh root@host:22 -> 127.0.0.1:40123 up (pid 812)``."""
        where = f"ssh {self.ssh}" + (f" -> {LOCAL_HOST}:{self.local_port}" if self.local_port else "")
        text = f"{where} {self.state.value}" + (f" (pid {self.pid})" if self.state is TunnelState.UP else "")
        if self.note:
            text += f"; {self.note}"
        if self.error and self.state is not TunnelState.UP:
            text += f": {self.error}"
        return text


# --- processes -----------------------------------------------------------------------------

def _reap() -> None:
    """Collect our ssh children that have exited (no zombies, and ``poll`` keeps them honest)."""
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, or None when no process (or a zombie) has ``pid``."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None
    if sys.platform == "win32":
        result = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/FO", "CSV", "/NH"], capture_output=True,
                                text=True, timeout=10, check=False)
        image = result.stdout.strip().split(",")[0].strip('"') if result.stdout.strip().startswith('"') else ""
        return [image] if image else None
    result = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True,
                            timeout=10, check=False)
    return result.stdout.split() or None


def runs_our_ssh(record: TunnelRecord) -> bool:
    """True while ``record.pid`` is alive and still runs the ssh command line we recorded."""
    _reap()
    line = _cmdline(record.pid)
    if line is None:
        return False
    if sys.platform == "win32":   # tasklist knows only the image name
        return Path(line[0]).stem.lower() == Path(record.argv[0]).stem.lower()
    if sys.platform.startswith("linux"):
        return line == list(record.argv)
    return line == " ".join(record.argv).split()   # ps joins the arguments with spaces


def _pid_alive(pid: int) -> bool:
    return _cmdline(pid) is not None


def stop_process(record: TunnelRecord) -> bool:
    """Stop the ssh of ``record`` (SIGTERM, then SIGKILL); False when it was not running."""
    if not runs_our_ssh(record):
        return False
    try:
        os.kill(record.pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + STOP_TIMEOUT
    while runs_our_ssh(record):
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                os.kill(record.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            break
        time.sleep(0.02)
    _reap()
    return True


def _detach() -> dict[str, Any]:
    """Popen options that keep the tunnel out of our terminal's process group (Ctrl-C, hang-up)."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCAL_HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    """True when ssh could bind ``port`` now (it binds with SO_REUSEADDR, so a TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOCAL_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- ssh's messages -> our errors -------------------------------------------------------------

class _PortTaken(Exception):
    """ssh could not bind the local port (ExitOnForwardFailure)."""


def _ssh_lines(text: str) -> list[str]:
    """ssh's stderr without its warning banner and blank lines, printable only."""
    lines = []
    for line in text.splitlines():
        line = "".join(c for c in line.strip() if c.isprintable())
        if line and not line.startswith("@") and "SOMETHING NASTY" not in line and "eavesdropping" not in line:
            lines.append(line)
    return lines[-6:]


@contextlib.contextmanager
def _lock(path: Path, timeout: float, server: str) -> Iterator[None]:
    """The project's cross-process file lock, with a message about the tunnel when it times out."""
    try:
        with file_lock(path, timeout, owner=f"server {server!r}: ssh", server=server):
            yield
    except TunnelError:
        raise
    except ServerUnavailable as err:
        raise TunnelError(f"server {server!r}: ssh: the tunnel lock {path} is still held by another process "
                          f"after {timeout:g} s", field="ssh", server=server) from err


class Tunnel:
    """The tunnel of one server: opened, shared, watched and re-made on demand.

    Thread-safe. ``ensure()`` is the only call that may start a process or wait for the
    network; ``status()`` and ``local_port`` read the cache.
    """

    def __init__(self, server: str, ssh: SSHConfig, remote_port: int, *, environ: Mapping[str, str] = os.environ,
                 folder: Path | None = None, clock: Callable[[], float] = time.monotonic,
                 max_backoff: float = MAX_BACKOFF) -> None:
        self.server = server
        self.ssh = ssh
        self.remote_port = remote_port
        self._environ = environ
        self.folder = Path(folder) if folder is not None else state_dir(environ) / TUNNELS_DIR
        self._clock = clock
        self.max_backoff = max_backoff
        ident = json.dumps([ssh.user or "", ssh.host, ssh.port, remote_port])
        safe_host = re.sub(r"[^A-Za-z0-9.-]", "_", ssh.host)[:40]
        self.key = f"{safe_host}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"
        self._token = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._lock = threading.RLock()
        self._record: TunnelRecord | None = None
        self._state = TunnelState.CLOSED
        self._note: str | None = None
        self._error: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.was_up = False
        stored = self._read()
        self._port = (stored.local_port if stored is not None and runs_our_ssh(stored)
                      else ssh.local_port or _free_port())

    @classmethod
    def for_server(cls, cfg: ServerConfig, *, environ: Mapping[str, str] = os.environ, **kw: Any) -> Tunnel:
        """The tunnel of a configured server (``cfg.ssh`` must be set); remote port defaults to ``cfg.port``."""
        if cfg.ssh is None:
            raise ValueError(f"server {cfg.name!r} has no ssh settings")
        return cls(cfg.name, cfg.ssh, cfg.ssh.remote_port or cfg.port, environ=environ, **kw)

    def __repr__(self) -> str:
        return f"Tunnel({self.server!r}, {self.ssh.label!r}, local_port={self._port}, state={self._state.value!r})"

    # -- paths and records ---------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def log_path(self) -> Path:
        """ssh's stderr for the current process of this tunnel."""
        return self.folder / f"{self.key}.log"

    def _read(self) -> TunnelRecord | None:
        try:
            return TunnelRecord.from_dict(json.loads(self.record_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("server %r: ignoring an unreadable tunnel record %s: %s", self.server, self.record_path, err)
            return None

    def _write(self, record: TunnelRecord) -> None:
        tmp = self.record_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record.to_dict()), encoding="utf-8")
        os.replace(tmp, self.record_path)

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()

    def _file_lock(self) -> contextlib.AbstractContextManager[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return _lock(self.folder / f"{self.key}.lock", self.ssh.connect_timeout + AUTH_GRACE + 10, self.server)

    # -- reading the cache ---------------------------------------------------------------------------

    @property
    def local_port(self) -> int:
        """The local port clients talk to: the live tunnel's, or the one it will be opened on."""
        return self._port

    def client_config(self, cfg: ServerConfig) -> ServerConfig:
        """``cfg`` pointed at the local end of the tunnel (what the HTTP clients are built from)."""
        return cfg.model_copy(update={"ip": LOCAL_HOST, "port": self._port})

    def status(self) -> TunnelStatus:
        """The cache, read without the lock: the status panel never waits behind an ssh connect."""
        record = self._record
        return TunnelStatus(server=self.server, ssh=self.ssh.label, state=self._state, local_port=self._port,
                            pid=record.pid if record is not None else None,
                            users=len(record.users) if record is not None else 0,
                            pinned=record.pinned if record is not None else False,
                            note=self._note, error=self._error)

    # -- opening --------------------------------------------------------------------------------------

    def ensure(self, on_down: Callable[[str], None] | None = None) -> int:
        """The local port of a live tunnel: the current one, another process's, or a new one.

        A tunnel found dead is reported to ``on_down(reason)`` first, then re-made at once;
        after a failed attempt the next waits 1, 2, 4 ... up to ``max_backoff`` seconds, and
        calls in between raise ``TunnelError`` saying when. Errors name the server and the
        ``ssh`` field to fix.
        """
        with self._lock:
            record = self._record
            if record is not None:
                if runs_our_ssh(record):
                    return self._port
                reason = f"the ssh process of the tunnel (pid {record.pid}) exited{self._exit_detail()}"
                log.warning("server %r: %s: re-making the tunnel", self.server, reason)
                self._record, self._state, self._error = None, TunnelState.DOWN, reason
                self._retry_at = 0.0
                if on_down is not None:
                    on_down(reason)
            now = self._clock()
            if now < self._retry_at:
                raise TunnelError(f"server {self.server!r}: tunnel down ({self._error}); next attempt in "
                                  f"{self._retry_at - now:.0f} s", field="ssh", server=self.server)
            try:
                port = self._open()
            except TunnelError as err:
                self._failures += 1
                self._retry_at = now + min(self.max_backoff, FIRST_BACKOFF * 2 ** (self._failures - 1))
                self._state, self._error = TunnelState.FAILED, str(err)
                raise
            self._failures = 0
            self._state, self._error, self.was_up = TunnelState.UP, None, True
            _in_use.add(self)
            return port

    def _exit_detail(self) -> str:
        lines = _ssh_lines(self.log_path.read_text(errors="replace")) if self.log_path.exists() else []
        return f" ({lines[-1]})" if lines else ""

    def _open(self) -> int:
        with self._file_lock():
            record = self._read()
            if record is not None:
                if runs_our_ssh(record):
                    live = tuple(u for u in record.users if u != self._token and _pid_alive(int(u.split(":")[0])))
                    record = replace(record, users=(*live, self._token))
                    self._write(record)
                    self._record, self._port = record, record.local_port
                    log.info("server %r: using the running ssh tunnel %s -> %s:%d (pid %d)", self.server,
                             self.ssh.label, LOCAL_HOST, record.local_port, record.pid)
                    return record.local_port
                log.info("server %r: removing the record of a dead tunnel (pid %d)", self.server, record.pid)
                self._remove()
            program = self._program()
            self._check_files()
            wanted, taken = self._port, []
            for attempt in range(PORT_ATTEMPTS):
                port = wanted if attempt == 0 else _free_port()
                if not _port_free(port):   # else our readiness check would connect to the other program
                    taken.append(port)
                    continue
                try:
                    proc, argv = self._launch(program, port)
                    break
                except _PortTaken:
                    taken.append(port)
            else:
                raise TunnelError(f"server {self.server!r}: ssh.local_port: ssh could not bind any of the local "
                                  f"ports {', '.join(map(str, taken))} (Address already in use)",
                                  field="ssh.local_port", server=self.server)
            # Say so when the user asked for the port, or clients already knew the old one.
            self._note = None
            if taken and (taken[0] == self.ssh.local_port or self.was_up):
                self._note = f"local port {taken[0]} was taken: using {port} (ssh.local_port)"
                log.warning("server %r: ssh.local_port: port %d on %s is taken (by another program, or by "
                            "connections of the dead tunnel still closing): the tunnel uses port %d instead",
                            self.server, taken[0], LOCAL_HOST, port)
            record = TunnelRecord(key=self.key, pid=proc.pid, local_port=port, argv=tuple(argv),
                                  started=time.time(), users=(self._token,))
            self._write(record)
            self._record, self._port = record, port
            log.info("server %r: opened the ssh tunnel %s -> %s:%d (pid %d)", self.server, self.ssh.label,
                     LOCAL_HOST, port, proc.pid)
            return port

    def _program(self) -> str:
        program = shutil.which("ssh", path=self._environ.get("PATH"))
        if program is None:
            raise TunnelError(f"server {self.server!r}: ssh: the OpenSSH client 'ssh' is not installed or not on "
                              f"PATH; {INSTALL_HINT}", field="ssh", server=self.server)
        return program

    def _check_files(self) -> None:
        for name in ("identity_file", "known_hosts_file", "config_file"):
            value = getattr(self.ssh, name)
            if value is None:
                continue
            path = Path(value).expanduser()
            if name == "known_hosts_file" and self.ssh.strict_host_key_checking == "accept-new":
                if not path.parent.is_dir():
                    raise TunnelError(f"server {self.server!r}: ssh.{name}: the folder of {str(path)!r} does not "
                                      "exist", field=f"ssh.{name}", server=self.server)
            elif not path.is_file():
                raise TunnelError(f"server {self.server!r}: ssh.{name}: no such file: {str(path)!r}",
                                  field=f"ssh.{name}", server=self.server)

    def command(self, program: str, local_port: int) -> list[str]:
        """The ssh command line of this tunnel on ``local_port``."""
        ssh = self.ssh
        argv = [program, "-N", "-T", "-L", f"{LOCAL_HOST}:{local_port}:{LOCAL_HOST}:{self.remote_port}",
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-o", f"ServerAliveInterval={ssh.alive_interval}", "-o", f"ServerAliveCountMax={ssh.alive_count_max}",
                "-o", f"ConnectTimeout={ssh.connect_timeout}",
                "-o", f"StrictHostKeyChecking={ssh.strict_host_key_checking}",
                "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "PermitLocalCommand=no"]
        if ssh.config_file is not None:
            argv += ["-F", str(Path(ssh.config_file).expanduser())]
        if ssh.identity_file is not None:
            argv += ["-i", str(Path(ssh.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        if ssh.known_hosts_file is not None:
            argv += ["-o", f"UserKnownHostsFile={Path(ssh.known_hosts_file).expanduser()}"]
        if ssh.port is not None:
            argv += ["-p", str(ssh.port)]
        return [*argv, "--", ssh.destination]

    def _launch(self, program: str, port: int) -> tuple[subprocess.Popen[bytes], list[str]]:
        """Start ssh on ``port`` and wait until the port accepts connections or ssh exits."""
        argv = self.command(program, port)
        with open(self.log_path, "wb") as stderr:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                        env=dict(self._environ), close_fds=True, **_detach())
            except OSError as err:
                raise TunnelError(f"server {self.server!r}: ssh: cannot run {program!r}: {err.strerror or err}; "
                                  f"{INSTALL_HINT}", field="ssh", server=self.server) from err
        with _children_lock:
            _children[proc.pid] = proc
        limit = self.ssh.connect_timeout + AUTH_GRACE
        deadline = time.monotonic() + limit
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(self.log_path.read_text(errors="replace"), code, port)
            if _accepts(port):
                if proc.poll() is None:
                    return proc, argv
                continue
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
                raise TunnelError(f"server {self.server!r}: ssh: {self.ssh.label} did not open the forward within "
                                  f"{limit:g} s (ssh.connect_timeout {self.ssh.connect_timeout} s)",
                                  field="ssh.connect_timeout", server=self.server)
            time.sleep(0.02)

    def _failure(self, text: str, code: int, port: int) -> Exception:
        """ssh's stderr as the error that names the field to fix."""
        lines = _ssh_lines(text)
        said = "; ".join(lines) or f"ssh exited with status {code} and said nothing"
        where, name = self.ssh.label, self.server

        def err(field: str, message: str) -> TunnelError:
            return TunnelError(f"server {name!r}: {field}: {message}", field=field, server=name)

        if "Address already in use" in text or "cannot listen to port" in text:
            return _PortTaken(port)
        if "Could not resolve hostname" in text:
            return err("ssh.host", f"unknown host {self.ssh.host!r}: {said}")
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have requested strict" in text:
            known = self.ssh.known_hosts_file or "~/.ssh/known_hosts"
            return err("ssh.known_hosts_file", f"host key mismatch for {where}: the key the host sent is not the one "
                       f"in {known} (REMOTE HOST IDENTIFICATION HAS CHANGED). Refused: if the host was really "
                       "re-installed, remove the old key with ssh-keygen -R and connect again")
        if "Host key verification failed" in text:
            return err("ssh.strict_host_key_checking", f"the host key of {where} is not known: add it to "
                       f"{self.ssh.known_hosts_file or '~/.ssh/known_hosts'} (ssh-keyscan, or one interactive ssh) "
                       'or set "strict_host_key_checking": "accept-new" to record the first key seen; ' + said)
        if "Permission denied" in text:
            field = "ssh.identity_file" if self.ssh.identity_file else "ssh.user"
            key = f"the key {self.ssh.identity_file!r}" if self.ssh.identity_file else "every key offered"
            return err(field, f"{where} refused {key} for user {self.ssh.user or '(from ssh config)'}: {said}")
        if "Connection refused" in text:
            return err("ssh.port", f"nothing accepts SSH connections at {where}: {said}")
        if "timed out" in text:
            return err("ssh.host", f"{where} did not answer within {self.ssh.connect_timeout} s: {said}")
        return err("ssh", f"ssh to {where} failed: {said}")

    # -- sharing and stopping ------------------------------------------------------------------------

    def pin(self, pinned: bool = True) -> None:
        """Keep the live tunnel up even with no users (``comfy-cluster tunnel start``)."""
        with self._lock, self._file_lock():
            record = self._read()
            if record is not None and runs_our_ssh(record):
                record = replace(record, pinned=pinned)
                self._write(record)
                if self._record is not None and self._record.pid == record.pid:
                    self._record = record

    def release(self) -> None:
        """This user is done: the last user of an unpinned tunnel stops its ssh."""
        with self._lock:
            mine, self._record = self._record, None
            self._state = TunnelState.CLOSED
            if mine is None:
                return
            with self._file_lock():
                record = self._read()
                if record is None or record.pid != mine.pid:
                    return
                users = tuple(u for u in record.users if u != self._token and _pid_alive(int(u.split(":")[0])))
                if users or record.pinned:
                    self._write(replace(record, users=users))
                    return
                stop_process(record)
                self._remove()
                log.info("server %r: closed the ssh tunnel %s (pid %d)", self.server, self.ssh.label, record.pid)

    def stop(self) -> TunnelRecord | None:
        """Stop the machine's tunnel for this key whoever uses it (``comfy-cluster tunnel stop``)."""
        with self._lock, self._file_lock():
            record = self._read()
            self._record, self._state = None, TunnelState.CLOSED
            if record is None:
                return None
            stop_process(record)
            self._remove()
            return record

    def shared_record(self) -> TunnelRecord | None:
        """The machine's live record for this key, if any (no network; cleans up a dead one)."""
        with self._file_lock():
            record = self._read()
            if record is not None and not runs_our_ssh(record):
                self._remove()
                return None
            return record


@contextlib.contextmanager
def open_client(cfg: ServerConfig, environ: Mapping[str, str] = os.environ) -> Iterator[ComfyClient]:
    """A one-off client for ``cfg``: through its tunnel (opened or reused, released after) when it has ``ssh``."""
    if cfg.ssh is None:
        with ComfyClient.from_config(cfg, environ) as client:
            yield client
        return
    tunnel = Tunnel.for_server(cfg, environ=environ)
    try:
        tunnel.ensure()
        with ComfyClient.from_config(tunnel.client_config(cfg), environ) as client:
            yield client
    finally:
        tunnel.release()


@atexit.register
def _release_all() -> None:
    for tunnel in list(_in_use):
        try:
            tunnel.release()
        except (OSError, TunnelError) as err:
            log.warning("server %r: could not release the tunnel at exit: %s", tunnel.server, err)


__all__ = ["Tunnel", "TunnelRecord", "open_client", "TunnelState", "TunnelStatus", "runs_our_ssh", "stop_process"]
