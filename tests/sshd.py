"""A real OpenSSH server on a loopback port, for the tunnel tests and the tunnel bench.

Everything it needs is generated in a temporary folder: its host key, a client key pair, an
``authorized_keys`` file and a ``known_hosts`` file that names its host key. ``sshd`` runs in
the foreground (``-D``) with its own config (``UsePAM no``, ``StrictModes no``, keys only),
logging to a file, and is ready when its log says it listens. A missing ``sshd`` or
``ssh-keygen`` is an error that says what to install, never a skip.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "install the Debian packages openssh-server and openssh-client (apt-get install openssh-server openssh-client)"


def missing_programs() -> list[str]:
    """The OpenSSH programs the tunnel tests need that this machine lacks."""
    missing = [] if os.access(SSHD, os.X_OK) else [SSHD]
    return missing + [p for p in ("ssh", "ssh-keygen") if shutil.which(p) is None]


def keygen(path: Path, comment: str = "comfy-cluster-test") -> Path:
    """A new ed25519 key pair without a passphrase at ``path`` (and ``path.pub``)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SshServer:
    """``sshd -D`` on 127.0.0.1:``port`` accepting ``client_key`` for the current user."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host_key = self.folder / "ssh_host_ed25519_key"
        self.client_key = self.folder / "id_client"
        self.authorized_keys = self.folder / "authorized_keys"
        self.known_hosts = self.folder / "known_hosts"
        self.log = self.folder / "sshd.log"
        self.port = 0
        self.user = getpass.getuser()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> SshServer:
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"the tunnel tests need a real OpenSSH: {', '.join(missing)} missing; {INSTALL_HINT}")
        keygen(self.host_key, "comfy-cluster-test-host")
        keygen(self.client_key)
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # privilege separation directory
        for _attempt in range(5):   # a free port can be taken between the probe and sshd's bind
            self.port = free_port()
            if self._launch(timeout):
                self.known_hosts.write_text(self.known_hosts_line())
                return self
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        raise RuntimeError(f"sshd did not start; its log:\n{self.log.read_text(errors='replace')}")

    def restart(self, timeout: float = 20.0) -> SshServer:
        """Start again on the same port with the same keys (after ``stop``)."""
        if not self._launch(timeout):
            raise RuntimeError(f"sshd did not restart; its log:\n{self.log.read_text(errors='replace')}")
        return self

    def _launch(self, timeout: float) -> bool:
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}", f"PidFile {self.folder / 'sshd.pid'}",
            "UsePAM no", "StrictModes no", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "AllowTcpForwarding yes",
            "AllowAgentForwarding no", "X11Forwarding no", "PrintMotd no", "LogLevel VERBOSE",
            "MaxStartups 50", "MaxSessions 50", "",
        ]))
        self.log.write_bytes(b"")
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"Server listening on 127.0.0.1 port {self.port}" in self.log.read_text(errors="replace"):
                return True
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        return False

    def known_hosts_line(self, host_key: Path | None = None) -> str:
        """The ``known_hosts`` line for this server (or for another key, to fake a changed host)."""
        key_type, key = Path(f"{host_key or self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"

    def ssh_config(self, **more: object) -> dict[str, object]:
        """The ``ssh`` block of a server entry that reaches ComfyUI through this sshd."""
        return {"user": self.user, "host": "127.0.0.1", "port": self.port, "identity_file": str(self.client_key),
                "known_hosts_file": str(self.known_hosts), **more}

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A started ``SshServer`` for the module; a machine without OpenSSH fails here, saying what to install."""
    missing = missing_programs()
    if missing:
        pytest.fail(f"the tunnel tests need a real OpenSSH server and client: {', '.join(missing)} not found; "
                    f"{INSTALL_HINT}")
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A state folder of this test's own; every tunnel recorded in it is stopped at the end."""
    from comfy_cluster.tunnel import TunnelRecord, stop_process

    folder = tmp_path / "state"
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(folder))
    yield folder
    for path in (folder / "tunnels").glob("*.json"):
        stop_process(TunnelRecord.from_dict(json.loads(path.read_text())))
