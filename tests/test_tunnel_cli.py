"""The ``ssh`` block of a server entry, and ``comfy-cluster tunnel start|stop|status`` against a real sshd."""

from __future__ import annotations

import io
import json

import pytest

from comfy_cluster import cli
from comfy_cluster.config_load import parse_servers
from comfy_cluster.errors import ConfigError
from comfy_cluster.tunnel import TunnelRecord, runs_our_ssh
from tests.sshd import sshd, state  # noqa: F401 - fixtures

UNROUTED = "192.0.2.10"


def _entry(**ssh: object) -> str:
    return json.dumps([{"name": "gpu-ssh", "ip": UNROUTED, "port": 8188, "ssh": ssh}])


@pytest.mark.parametrize("ssh, message", [
    ({"host": "-oProxyCommand=touch /tmp/x"}, "ssh.host: must not start with '-'"),
    ({"host": "box", "user": "root@box"}, "ssh.user: must be a user name only, without '@'"),
    ({"host": "root@box"}, "ssh.host: must be a host name, address or ~/.ssh/config alias only"),
    ({"host": "box", "port": 70000}, "ssh.port: must be between 1 and 65535, got 70000"),
    ({"host": "box", "local_port": 0}, "ssh.local_port: must be between 1 and 65535, got 0"),
    ({"host": "box", "strict_host_key_checking": "no"}, "ssh.strict_host_key_checking: must be one of"),
    ({"host": "box", "identity": "~/.ssh/id"}, "ssh: unknown field 'identity' (did you mean \"identity_file\"?)"),
    ({"user": "root"}, "ssh.host: required"),
    ({"host": "box", "identity_file": "a\nb"}, "ssh.identity_file: must not contain NUL or line breaks"),
])
def test_a_bad_ssh_block_names_the_server_and_the_field(ssh, message):
    with pytest.raises(ConfigError) as info:
        parse_servers(_entry(**ssh))
    assert str(info.value).startswith('NUKE_COMFYUI_SERVERS[0] ("gpu-ssh"): ')
    assert message in str(info.value)


def test_a_good_ssh_block_keeps_unset_fields_for_the_users_ssh_config():
    (server,) = parse_servers(_entry(host="comfy-box"))
    assert server.ssh is not None
    assert (server.ssh.user, server.ssh.port, server.ssh.identity_file) == (None, None, None)
    assert server.ssh.destination == "comfy-box" and server.ssh.strict_host_key_checking == "yes"
    assert parse_servers(json.dumps([server.to_dict()])) == [server]


def _run(argv, capsys) -> tuple[int, str, str]:
    out = io.StringIO()
    code = cli.main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_tunnel_start_status_stop(sshd, state, emulator, tmp_path, capsys):
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps([
        {"name": "gpu-ssh", "ip": UNROUTED, "port": emulator.port, "ssh": sshd.ssh_config()},
        {"name": "gpu-direct", "ip": "127.0.0.1", "port": emulator.port},
    ]))
    code, out, err = _run(["--servers", str(servers), "tunnel", "status"], capsys)
    assert code == 1 and "gpu-ssh" in out and "down" in out and "gpu-direct" not in out, err

    code, out, err = _run(["--servers", str(servers), "info", "gpu-ssh"], capsys)
    assert code == 0 and "ComfyUI 0.3.64" in out, err
    assert not list((state / "tunnels").glob("*.json")), "info opened a tunnel of its own and closed it"

    code, out, err = _run(["--servers", str(servers), "tunnel", "start"], capsys)
    assert code == 0, (out, err)
    (path,) = (state / "tunnels").glob("*.json")
    record = TunnelRecord.from_dict(json.loads(path.read_text()))
    assert record.pinned and runs_our_ssh(record), "start leaves a pinned tunnel behind when it exits"
    assert f"127.0.0.1:{record.local_port}" in out and "ComfyUI 0.3.64 answers" in out

    code, out, err = _run(["--servers", str(servers), "tunnel", "status", "gpu-ssh"], capsys)
    assert code == 0 and f"{record.pid}" in out and "up" in out and "pinned" in out, (out, err)

    code, out, err = _run(["--servers", str(servers), "status"], capsys)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("gpu-ssh"))
    assert f"via ssh {sshd.user}@127.0.0.1:{sshd.port} -> 127.0.0.1:{record.local_port} up" in line
    assert runs_our_ssh(record), "a process that used the pinned tunnel leaves it up"

    code, out, err = _run(["--servers", str(servers), "tunnel", "stop"], capsys)
    assert code == 0 and "stopped" in out and not runs_our_ssh(record)
    assert not list((state / "tunnels").glob("*.json"))

    code, out, err = _run(["--servers", str(servers), "tunnel", "status", "gpu-direct"], capsys)
    assert code == 2 and "server 'gpu-direct' is not reached through SSH" in err
