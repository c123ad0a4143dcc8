"""SSH tunnels against a real OpenSSH server on loopback, with an emulated ComfyUI behind it.

The tunnelled servers' ``ip`` is a TEST-NET address (192.0.2.x, never routed): every byte a
test sees went through ``ssh -L``. Keys, host keys and known_hosts are generated per module.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster import run
from comfy_cluster.backend import ServerState
from comfy_cluster.config import ServerConfig
from comfy_cluster.errors import TunnelError
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.tunnel import Tunnel, TunnelRecord, TunnelState, runs_our_ssh
from comfy_cluster.tunnel_config import SSHConfig, pod_ssh
from tests.helpers import wait_until
from tests.sshd import SshServer, keygen, sshd, state  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
UNROUTED = "192.0.2.10"
INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "comp"}},
}


def _tunnelled(name: str, emu, sshd: SshServer, **ssh: object) -> ServerConfig:
    return ServerConfig.from_dict({"name": name, "ip": UNROUTED, "port": emu.port, "ssh": sshd.ssh_config(**ssh)})


def _plates(folder: Path, frames: range) -> dict[int, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    pixels = {}
    for f in frames:
        arr = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(folder / f"plate.{f:04d}.png")
        pixels[f] = arr
    return pixels


def _render(pool: ComfyUIServerPool, plates: Path, out: Path, frames: str, **kw):
    batch = run.animation_submit(INVERT, pool=pool, frames=frames, inputs={"Plate.image": str(plates / "plate.####.png")},
                                 output=str(out / "sh010.####.png"), job_timeout=30, **kw)
    return batch.result(timeout=120)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _record(folder: Path) -> TunnelRecord:
    (path,) = (folder / "tunnels").glob("*.json")
    return TunnelRecord.from_dict(json.loads(path.read_text()))


def _ready(pool: ComfyUIServerPool, name: str) -> bool:
    return pool.get_server_by_name(name).state in (ServerState.ONLINE, ServerState.BUSY)


def test_a_render_through_the_tunnel_gives_the_same_pixels_as_a_direct_one(sshd, state, emulator_thread_factory,
                                                                            tmp_path):
    emu = emulator_thread_factory(name="behind-ssh")
    _plates(tmp_path / "plates", range(1, 7))
    with ComfyUIServerPool([_tunnelled("gpu-ssh", emu, sshd)], poll_interval=0.2) as pool:
        server = pool.get_server_by_name("gpu-ssh")
        wait_until(lambda: _ready(pool, "gpu-ssh"), 30, "the tunnelled server online")
        record = _record(state)
        assert runs_our_ssh(record) and record.local_port != emu.port
        assert server.client.base_url == f"http://127.0.0.1:{record.local_port}"
        assert f"ssh {sshd.user}@127.0.0.1:{sshd.port} -> 127.0.0.1:{record.local_port} up" in server.get_status().tunnel
        tunnelled = _render(pool, tmp_path / "plates", tmp_path / "via-ssh", "1-6")
    direct_cfg = ServerConfig(name="gpu-direct", ip="127.0.0.1", port=emu.port)
    with ComfyUIServerPool([direct_cfg], poll_interval=0.2) as pool:
        wait_until(lambda: _ready(pool, "gpu-direct"), 30, "the direct server online")
        direct = _render(pool, tmp_path / "plates", tmp_path / "direct", "1-6")
    assert tunnelled.ok and direct.ok, (tunnelled.failed, direct.failed)
    assert tunnelled.by_server == {"gpu-ssh": 6}
    for frame in range(1, 7):
        assert np.array_equal(_pixels(tunnelled.frames[frame][0]), _pixels(direct.frames[frame][0])), frame
    assert not runs_our_ssh(record), "closing the only pool using the tunnel stops its ssh"
    assert not list((state / "tunnels").glob("*.json"))


def test_killing_ssh_mid_batch_loses_no_frame_and_the_tunnel_comes_back(sshd, state, emulator_thread_factory,
                                                                         tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="comfy_cluster")
    behind = emulator_thread_factory(name="behind-ssh", seconds_per_job=0.15)
    local = emulator_thread_factory(name="local", seconds_per_job=0.15)
    plates = _plates(tmp_path / "plates", range(1, 31))
    cfgs = [_tunnelled("gpu-ssh", behind, sshd), ServerConfig(name="gpu-local", ip="127.0.0.1", port=local.port)]
    first_on_ssh = threading.Event()

    def watch(event):
        if event.kind == "completed" and event.data.get("server") == "gpu-ssh":
            first_on_ssh.set()
    with ComfyUIServerPool(cfgs, poll_interval=0.2) as pool:
        wait_until(lambda: _ready(pool, "gpu-ssh") and _ready(pool, "gpu-local"), 30, "both servers online")
        killed = _record(state)
        batch = run.animation_submit(INVERT, pool=pool, frames="1-30", on_event=watch, job_timeout=30,
                                     inputs={"Plate.image": str(tmp_path / "plates" / "plate.####.png")},
                                     output=str(tmp_path / "out" / "sh010.####.png"))
        assert first_on_ssh.wait(30)
        os.kill(killed.pid, signal.SIGKILL)
        res = batch.result(timeout=120)
        back = wait_until(lambda: (list((state / "tunnels").glob("*.json")) and runs_our_ssh(_record(state))
                                   and _record(state).pid != killed.pid and _ready(pool, "gpu-ssh")
                                   and _record(state)), 30, "the tunnel re-made")
        assert f"up (pid {back.pid})" in pool.get_server_by_name("gpu-ssh").get_status().tunnel
    assert res.ok, res.failed
    assert sorted(res.frames) == list(range(1, 31))
    for frame, files in res.frames.items():
        expected = np.clip((1.0 - plates[frame].astype(np.float32) / 255.0) * 255.0, 0, 255).astype(np.uint8)
        assert np.array_equal(_pixels(files[0]), expected), frame
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"sh010.{f:04d}.png" for f in range(1, 31)]
    assert f"the ssh process of the tunnel (pid {killed.pid}) exited" in caplog.text
    assert "server 'gpu-ssh': online -> booting" in caplog.text or "server 'gpu-ssh': busy -> booting" in caplog.text
    assert "server 'gpu-ssh': busy -> offline" not in caplog.text and "'gpu-ssh': online -> offline" not in caplog.text


_CHILD = """
import json, sys
from comfy_cluster.config import ServerConfig
from comfy_cluster.tunnel import Tunnel
import requests
cfg = ServerConfig.from_dict(json.loads(sys.argv[1]))
tunnel = Tunnel.for_server(cfg)
port = tunnel.ensure()
stats = requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=10).json()
print(json.dumps({"port": port, "pid": tunnel.status().pid, "version": stats["system"]["comfyui_version"]}), flush=True)
sys.stdin.readline()
tunnel.release()
"""


def _child(cfg: ServerConfig) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg.to_dict())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def test_two_processes_share_one_tunnel_and_the_last_user_stops_it(sshd, state, emulator_thread_factory):
    emu = emulator_thread_factory(name="behind-ssh")
    cfg = _tunnelled("gpu-ssh", emu, sshd)
    children = [_child(cfg), _child(cfg)]   # started together: the file lock makes one tunnel, not two
    try:
        seen = [json.loads(child.stdout.readline()) for child in children]
        assert seen[0]["pid"] == seen[1]["pid"] and seen[0]["port"] == seen[1]["port"]
        assert seen[0]["version"] == "0.3.64"
        mine = Tunnel.for_server(cfg)
        assert mine.ensure() == seen[0]["port"] and mine.status().pid == seen[0]["pid"]
        record = _record(state)
        assert len(record.users) == 3
        for child in children:
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == 0
        assert runs_our_ssh(record), "the tunnel stays up while this process still uses it"
        assert len(_record(state).users) == 1
        mine.release()
        assert not runs_our_ssh(record)
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=10)


def test_a_taken_local_port_picks_another_and_says_so(sshd, state, emulator_thread_factory, caplog):
    emu = emulator_thread_factory(name="behind-ssh")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        tunnel = Tunnel.for_server(_tunnelled("gpu-ssh", emu, sshd, local_port=taken))
        assert tunnel.local_port == taken
        port = tunnel.ensure()
        try:
            assert port != taken
            message = (f"server 'gpu-ssh': ssh.local_port: port {taken} on 127.0.0.1 is taken (by another program, "
                       f"or by connections of the dead tunnel still closing): the tunnel uses port {port} instead")
            assert message in caplog.text
            status = tunnel.status()
            assert status.note == f"local port {taken} was taken: using {port} (ssh.local_port)"
            assert status.note in status.summary()
            assert requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=10).ok
        finally:
            tunnel.release()


def _failure(tunnel: Tunnel) -> TunnelError:
    with pytest.raises(TunnelError) as info:
        tunnel.ensure()
    assert tunnel.status().state is TunnelState.FAILED
    assert not list((tunnel.folder).glob("*.json")), "a failed attempt leaves no record"
    return info.value


def test_a_wrong_key_is_a_clear_error_and_the_key_never_reaches_a_log(sshd, state, emulator_thread_factory,
                                                                      tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    emu = emulator_thread_factory(name="behind-ssh")
    wrong = keygen(tmp_path / "id_wrong")
    cfg = _tunnelled("gpu-ssh", emu, sshd, identity_file=str(wrong))
    err = _failure(Tunnel.for_server(cfg))
    assert err.field == "ssh.identity_file" and err.server == "gpu-ssh"
    assert str(err).startswith(f"server 'gpu-ssh': ssh.identity_file: {sshd.user}@127.0.0.1:{sshd.port} refused "
                               f"the key '{wrong}'")
    assert "Permission denied (publickey" in str(err)
    with ComfyUIServerPool([cfg], poll_interval=0.2) as pool:
        server = pool.get_server_by_name("gpu-ssh")
        wait_until(lambda: server.last_error and "refused the key" in server.last_error, 30, "the probe's error")
        assert server.state is ServerState.OFFLINE
        assert "refused the key" in server.get_status().tunnel
    secret = "".join(wrong.read_text().splitlines()[1:-1])
    good = "".join(sshd.client_key.read_text().splitlines()[1:-1])
    assert secret[:40] not in caplog.text and good[:40] not in caplog.text
    assert secret[:40] not in str(err)


def test_a_changed_host_key_is_refused_even_with_accept_new(sshd, state, emulator_thread_factory, tmp_path):
    emu = emulator_thread_factory(name="behind-ssh")
    other = keygen(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts_changed"
    for mode in ("yes", "accept-new"):
        known.write_text(sshd.known_hosts_line(other))
        cfg = _tunnelled("gpu-ssh", emu, sshd, known_hosts_file=str(known), strict_host_key_checking=mode)
        err = _failure(Tunnel.for_server(cfg))
        assert err.field == "ssh.known_hosts_file"
        assert "host key mismatch" in str(err) and "REMOTE HOST IDENTIFICATION HAS CHANGED" in str(err)
        assert known.read_text() == sshd.known_hosts_line(other), "the changed key is never written over"


def test_an_unknown_host_key_is_refused_unless_accept_new_is_configured(sshd, state, emulator_thread_factory,
                                                                        tmp_path):
    emu = emulator_thread_factory(name="behind-ssh")
    known = tmp_path / "known_hosts_empty"
    known.write_text("")
    err = _failure(Tunnel.for_server(_tunnelled("gpu-ssh", emu, sshd, known_hosts_file=str(known))))
    assert err.field == "ssh.strict_host_key_checking" and "is not known" in str(err) and "accept-new" in str(err)
    assert known.read_text() == ""
    tunnel = Tunnel.for_server(_tunnelled("gpu-ssh", emu, sshd, known_hosts_file=str(known),
                                          strict_host_key_checking="accept-new"))
    try:
        tunnel.ensure()
        key = Path(f"{sshd.host_key}.pub").read_text().split()[1]
        assert key in known.read_text(), "accept-new records the first key seen"
    finally:
        tunnel.release()


def test_an_unknown_host_names_the_host_field(state):
    cfg = ServerConfig.from_dict({"name": "gpu-ssh", "ip": UNROUTED, "port": 8188,
                                  "ssh": {"host": "no-such-host.invalid", "user": "root"}})
    err = _failure(Tunnel.for_server(cfg))
    assert err.field == "ssh.host"
    assert str(err).startswith("server 'gpu-ssh': ssh.host: unknown host 'no-such-host.invalid'")
    assert "Could not resolve hostname" in str(err)


def test_ssh_missing_from_path_says_what_to_install(state, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    cfg = ServerConfig.from_dict({"name": "gpu-ssh", "ip": UNROUTED, "port": 8188, "ssh": {"host": "box"}})
    err = _failure(Tunnel.for_server(cfg, environ={**os.environ, "PATH": str(empty)}))
    assert err.field == "ssh" and "'ssh' is not installed or not on PATH" in str(err)
    assert "openssh-client" in str(err)


def test_a_failed_attempt_backs_off_before_the_next(state, tmp_path):
    now = [100.0]
    cfg = ServerConfig.from_dict({"name": "gpu-ssh", "ip": UNROUTED, "port": 8188, "ssh": {"host": "box"}})
    tunnel = Tunnel.for_server(cfg, environ={**os.environ, "PATH": str(tmp_path)}, clock=lambda: now[0])
    _failure(tunnel)
    with pytest.raises(TunnelError, match=r"next attempt in 1 s"):
        tunnel.ensure()
    now[0] += 1.0
    _failure(tunnel)
    with pytest.raises(TunnelError, match=r"next attempt in 2 s"):
        tunnel.ensure()


def test_an_ssh_config_alias_is_passed_to_ssh_as_it_is(sshd, state, emulator_thread_factory, tmp_path):
    emu = emulator_thread_factory(name="behind-ssh")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host comfy-box\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                      f"  IdentityFile {sshd.client_key}\n  UserKnownHostsFile {sshd.known_hosts}\n")
    cfg = ServerConfig.from_dict({"name": "gpu-alias", "ip": UNROUTED, "port": emu.port,
                                  "ssh": {"host": "comfy-box", "config_file": str(config)}})
    tunnel = Tunnel.for_server(cfg)
    try:
        port = tunnel.ensure()
        assert _record(state).argv[-1] == "comfy-box"
        assert requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=10).ok
    finally:
        tunnel.release()


def test_a_pod_is_reached_by_its_public_ip_and_mapped_ssh_port(sshd, state, emulator_thread_factory):
    emu = emulator_thread_factory(name="pod")
    ssh = pod_ssh("127.0.0.1", sshd.port, identity_file=str(sshd.client_key), user=sshd.user,
                  known_hosts_file=str(sshd.known_hosts))
    assert isinstance(ssh, SSHConfig) and ssh.label == f"{sshd.user}@127.0.0.1:{sshd.port}"
    cfg = ServerConfig(name="pod-a", ip="127.0.0.1", port=emu.port, ssh=ssh)
    with ComfyUIServerPool([cfg], poll_interval=0.2) as pool:
        wait_until(lambda: _ready(pool, "pod-a"), 30, "the pod online through its tunnel")


def test_a_dead_record_is_cleaned_up_and_not_reused(sshd, state, emulator_thread_factory):
    emu = emulator_thread_factory(name="behind-ssh")
    tunnel = Tunnel.for_server(_tunnelled("gpu-ssh", emu, sshd))
    tunnel.folder.mkdir(parents=True)
    # A record whose pid is alive but runs something else (this test process): not our ssh.
    stale = TunnelRecord(key=tunnel.key, pid=os.getpid(), local_port=1, argv=("ssh", "-N"), started=0.0)
    tunnel.record_path.write_text(json.dumps(stale.to_dict()))
    try:
        port = tunnel.ensure()
        record = _record(state)
        assert record.pid != os.getpid() and record.local_port == port != 1 and runs_our_ssh(record)
    finally:
        tunnel.release()


def test_a_server_follows_the_tunnel_to_the_port_another_user_opened_it_on(sshd, state, emulator_thread_factory,
                                                                          tmp_path):
    emu = emulator_thread_factory(name="behind-ssh")
    _plates(tmp_path / "plates", range(1, 3))
    cfg = _tunnelled("gpu-ssh", emu, sshd)
    pool = ComfyUIServerPool([cfg], poll_interval=0.2)   # built first: it plans a port of its own
    planned = pool.get_server_by_name("gpu-ssh").client.base_url
    other = Tunnel.for_server(_tunnelled("gpu-ssh", emu, sshd, local_port=_free_port_other_than(planned)))
    try:
        port = other.ensure()
        assert planned != f"http://127.0.0.1:{port}"
        with pool:
            server = pool.get_server_by_name("gpu-ssh")
            wait_until(lambda: _ready(pool, "gpu-ssh"), 30, "the server online through the shared tunnel")
            assert server.client.base_url == f"http://127.0.0.1:{port}"
            res = _render(pool, tmp_path / "plates", tmp_path / "out", "1-2")
            assert res.ok and res.by_server == {"gpu-ssh": 2}, res.failed
        assert runs_our_ssh(_record(state)), "the other user still holds the tunnel"
    finally:
        other.release()


def _free_port_other_than(url: str) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not url.endswith(f":{port}"):
            return port


def test_while_the_tunnel_cannot_be_remade_frames_go_elsewhere_then_it_comes_back(state, emulator_thread_factory,
                                                                                  tmp_path):
    own = SshServer(tmp_path / "own-sshd").start()   # this test stops its sshd: not the module's
    try:
        behind = emulator_thread_factory(name="behind-ssh")
        local = emulator_thread_factory(name="local", seconds_per_job=0.05)
        _plates(tmp_path / "plates", range(1, 9))
        cfgs = [_tunnelled("gpu-ssh", behind, own), ServerConfig(name="gpu-local", ip="127.0.0.1", port=local.port)]
        with ComfyUIServerPool(cfgs, poll_interval=0.2, max_backoff=1.0) as pool:
            server = pool.get_server_by_name("gpu-ssh")
            wait_until(lambda: _ready(pool, "gpu-ssh") and _ready(pool, "gpu-local"), 30, "both servers online")
            first = _record(state)
            own.stop()                        # the SSH host goes away, and with it the tunnel
            os.kill(first.pid, signal.SIGKILL)
            wait_until(lambda: server.last_error and "nothing accepts SSH connections" in server.last_error, 30,
                       "a failed re-make")
            assert server.state is ServerState.BOOTING
            assert "failed: server 'gpu-ssh': ssh.port: nothing accepts SSH" in server.get_status().tunnel
            res = _render(pool, tmp_path / "plates", tmp_path / "out", "1-8")
            assert res.ok and res.by_server == {"gpu-local": 8}, (res.failed, res.by_server)
            own.restart()
            wait_until(lambda: _ready(pool, "gpu-ssh"), 30, "the tunnel re-made once the SSH host is back")
            assert _record(state).pid != first.pid
    finally:
        own.stop()


def test_a_tunnel_outlives_a_crashed_creator_and_is_adopted(sshd, state, emulator_thread_factory):
    emu = emulator_thread_factory(name="behind-ssh")
    cfg = _tunnelled("gpu-ssh", emu, sshd)
    child = _child(cfg)
    try:
        made = json.loads(child.stdout.readline())
        child.send_signal(signal.SIGKILL)    # no release, no atexit: a Nuke that crashed
        child.wait(timeout=10)
    finally:
        child.kill()
    record = _record(state)
    assert record.pid == made["pid"] and runs_our_ssh(record), "ssh runs in its own session: it survives"
    mine = Tunnel.for_server(cfg)
    assert mine.ensure() == made["port"] and mine.status().pid == made["pid"]
    assert len(_record(state).users) == 1, "the dead creator is pruned from the users"
    mine.release()
    assert not runs_our_ssh(record), "the last live user stops it"
