"""Editing the servers file: every command round-trips, a bad edit changes nothing, a running
pool takes the change without restart."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from comfy_cluster.cli import main
from comfy_cluster.config_edit import ServersFile, servers_file
from comfy_cluster.config_load import load_config_file
from comfy_cluster.errors import ConfigError
from comfy_cluster.pool import ComfyUIServerPool
from tests.helpers import wait_until


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def servers_json(tmp_path, state):
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({
        "servers": [{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188, "priority": 1},
                    {"name": "gpu-02", "ip": "10.0.0.12", "port": 8188, "priority": 2}],
        "runpod": {"endpoint_id": "ep1", "daily_budget": 5.0},
        "pods": {"kept": ["as", "is"]},
    }, indent=2))
    return path


def cli(path: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--servers", str(path), "config", *args], out=out)
    return code, out.getvalue()


def doc(path: Path) -> dict:
    return json.loads(path.read_text())


def backups_of(path: Path) -> list[Path]:
    return ServersFile(path).backups()


def test_add_set_disable_enable_remove_round_trip(servers_json):
    # "pods" is unknown to today's loader, so validate only the part it knows about here
    data = doc(servers_json)
    pods = data.pop("pods")
    servers_json.write_text(json.dumps(data))
    code, out = cli(servers_json, "add", "gpu-05", "--ip", "10.0.0.15", "--port", "8188", "--priority", "3")
    assert code == 0 and "added server 'gpu-05'" in out and "previous version saved as" in out
    cfg = load_config_file(servers_json)
    gpu5 = next(s for s in cfg.servers if s.name == "gpu-05")
    assert (gpu5.ip, gpu5.port, gpu5.priority, gpu5.enabled) == ("10.0.0.15", 8188, 3, True)
    assert cfg.runpod is not None and cfg.runpod.daily_budget == 5.0     # other keys untouched

    assert cli(servers_json, "set", "gpu-05", "priority=2", "max_queue=3")[0] == 0
    gpu5 = next(s for s in load_config_file(servers_json).servers if s.name == "gpu-05")
    assert (gpu5.priority, gpu5.max_queue) == (2, 3)

    assert cli(servers_json, "disable", "gpu-05")[0] == 0
    assert not next(s for s in load_config_file(servers_json).servers if s.name == "gpu-05").enabled
    assert cli(servers_json, "enable", "gpu-05")[0] == 0
    assert next(s for s in load_config_file(servers_json).servers if s.name == "gpu-05").enabled

    assert cli(servers_json, "remove", "gpu-05")[0] == 0
    assert [s.name for s in load_config_file(servers_json).servers] == ["gpu-01", "gpu-02"]
    assert len(backups_of(servers_json)) == 5    # one per change
    assert pods == {"kept": ["as", "is"]}


def test_other_top_level_keys_survive_an_edit(servers_json):
    before = doc(servers_json)
    try:
        load_config_file(servers_json)
        loads = True
    except ConfigError:
        loads = False                       # a key the loader does not know yet ("pods")
    raw = servers_json.read_bytes()
    if loads:
        ServersFile(servers_json).set("gpu-01", {"priority": 4})
        assert {k: v for k, v in doc(servers_json).items() if k != "servers"} == \
            {k: v for k, v in before.items() if k != "servers"}
    else:                                   # what would not load is never written
        with pytest.raises(ConfigError, match="pods"):
            ServersFile(servers_json).set("gpu-01", {"priority": 4})
        assert servers_json.read_bytes() == raw
    before.pop("pods")
    servers_json.write_text(json.dumps(before))
    ServersFile(servers_json).set("gpu-01", {"priority": 4})
    after = doc(servers_json)
    assert list(after) == ["servers", "runpod"] and after["runpod"] == before["runpod"]
    assert after["servers"][0]["priority"] == 4


def test_a_bad_runpod_policy_is_caught_at_edit_time(tmp_path, state):
    path = tmp_path / "servers.json"
    path.write_text('{"servers": [{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}], "runpod": {}}')
    data = doc(path)
    data["runpod"] = {"daily_budget": "lots"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    raw = path.read_bytes()
    with pytest.raises(ConfigError, match=r"runpod: daily_budget: must be a number"):
        ServersFile(path).import_from(other)
    assert path.read_bytes() == raw


@pytest.mark.parametrize("args, message", [
    (("add", "gpu-06", "--ip", "10.0.0.16", "--port", "70000"), "port: must be between 1 and 65535, got 70000"),
    (("add", "GPU-01", "--ip", "10.0.0.16"), "already exists"),
    (("set", "gpu-01", "port=abc"), 'port: must be an integer, got string "abc"'),
    (("set", "gpu-01", "prority=2"), 'prority: unknown field (did you mean "priority"?)'),
    (("set", "gpu-01", "ip=http://x"), "ip: must be a host name or address only, without a scheme"),
    (("remove", "gpu-09"), "no server named 'gpu-09'; servers: gpu-01, gpu-02"),
    (("set", "gpu-01", "dir_local=U:/"), "dir_remote: required when dir_local is set"),
])
def test_a_bad_edit_leaves_the_file_untouched(servers_json, capsys, args, message):
    data = doc(servers_json)
    data.pop("pods")
    servers_json.write_text(json.dumps(data))
    raw = servers_json.read_bytes()
    code, _ = cli(servers_json, *args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert servers_json.read_bytes() == raw
    assert backups_of(servers_json) == []


def test_removing_the_last_server_is_refused(tmp_path, state):
    path = tmp_path / "one.json"
    path.write_text('[{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}]')
    with pytest.raises(ConfigError, match="the array is empty"):
        ServersFile(path).remove("gpu-01")
    assert json.loads(path.read_text())[0]["name"] == "gpu-01"


def test_array_form_stays_an_array_and_a_new_file_can_be_created(tmp_path, state):
    path = tmp_path / "new.json"
    assert cli(path, "add", "gpu-01", "--ip", "10.0.0.11")[0] == 0
    assert isinstance(doc(path), list) and doc(path)[0] == {"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}
    assert cli(path, "disable", "gpu-01")[0] == 0
    assert doc(path) == [{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188, "enabled": False}]


def test_export_import_round_trip(tmp_path, state):
    path = tmp_path / "servers.json"
    path.write_text('{"servers": [{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}], "poll_interval": 1.5}')
    exported = tmp_path / "exported.json"
    assert cli(path, "export", str(exported))[0] == 0
    assert doc(exported) == doc(path)
    code, out = cli(path, "export")
    assert code == 0 and json.loads(out) == doc(path)

    other = tmp_path / "other.json"
    other.write_text('[{"name": "gpu-07", "ip": "10.0.0.17", "port": 8190, "priority": 5}]')
    assert cli(path, "import", str(other), "--merge")[0] == 0
    assert [s.name for s in load_config_file(path).servers] == ["gpu-01", "gpu-07"]
    assert doc(path)["poll_interval"] == 1.5
    assert cli(path, "import", str(other))[0] == 0
    assert [s.name for s in load_config_file(path).servers] == ["gpu-07"]
    assert cli(path, "import", str(exported))[0] == 0
    assert doc(path) == doc(exported)

    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "gpu-08", "ip": "10.0.0.18", "port": 0}]')
    raw = path.read_bytes()
    assert cli(path, "import", str(bad))[0] == 2
    assert path.read_bytes() == raw


def test_backup_and_restore(tmp_path, state, capsys):
    path = tmp_path / "servers.json"
    path.write_text('[{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}]')
    original = path.read_bytes()
    code, out = cli(path, "backup")
    assert code == 0 and str(state / "config-backups") in out
    assert cli(path, "set", "gpu-01", "priority=9")[0] == 0
    assert cli(path, "restore")[0] == 0                  # the newest backup: just before the set
    assert path.read_bytes() == original
    listed = cli(path, "backup", "--list")[1].split()
    assert len(listed) == 3                               # explicit, before set, before restore
    assert cli(path, "restore", listed[-1])[0] == 0       # undo the restore
    assert doc(path)[0]["priority"] == 9

    broken = Path(listed[0]).with_name("servers.20000101T000000.000000.json")
    broken.write_text("[{]")
    raw = path.read_bytes()
    assert cli(path, "restore", str(broken))[0] == 2
    assert "invalid JSON" in capsys.readouterr().err
    assert path.read_bytes() == raw


def test_backups_are_bounded(tmp_path, state):
    path = tmp_path / "servers.json"
    path.write_text('[{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}]')
    edits = ServersFile(path, keep=3)
    for priority in range(1, 8):
        edits.set("gpu-01", {"priority": priority})
    assert len(edits.backups()) == 3
    assert json.loads(edits.backups()[-1].read_text())[0]["priority"] == 6


def test_environment_only_configuration_is_refused_with_how_to_move_it(monkeypatch, capsys):
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", '[{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}]')
    with pytest.raises(ConfigError, match=r"config export servers.json.*NUKE_COMFYUI_SERVERS=@"):
        servers_file(None)
    assert main(["config", "disable", "gpu-01"], out=io.StringIO()) == 2
    assert "cannot be edited in place" in capsys.readouterr().err


def test_at_file_in_the_environment_is_the_file_edited(tmp_path, state, monkeypatch):
    path = tmp_path / "servers.json"
    path.write_text('[{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}]')
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", f"@{path}")
    assert main(["config", "set", "gpu-01", "priority=4"], out=io.StringIO()) == 0
    assert doc(path)[0]["priority"] == 4


def test_a_running_pool_takes_edits_without_restart(tmp_path, state, emulator_thread_factory):
    first, second = emulator_thread_factory(name="gpu-01"), emulator_thread_factory(name="gpu-02")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps([{"name": "gpu-01", "ip": "127.0.0.1", "port": first.port}]))
    pool = ComfyUIServerPool.from_file(path, poll_interval=0.1).start()
    try:
        wait_until(lambda: pool.get_server_by_name("gpu-01").state.value == "online", what="gpu-01 online")
        assert cli(path, "add", "gpu-02", "--ip", "127.0.0.1", "--port", str(second.port), "--priority", "2")[0] == 0
        wait_until(lambda: pool.get_server_by_name("gpu-02") is not None
                   and pool.get_server_by_name("gpu-02").state.value == "online", what="gpu-02 added and online")
        assert cli(path, "disable", "gpu-01")[0] == 0
        wait_until(lambda: not pool.get_server_by_name("gpu-01").enabled, what="gpu-01 disabled in the pool")
        assert pool.get_available_server().name == "gpu-02"
        assert cli(path, "set", "gpu-02", "priority=7")[0] == 0
        wait_until(lambda: pool.get_server_by_name("gpu-02").priority == 7, what="priority 7 in the pool")
        path.write_text("[{]")                           # a broken hand edit keeps the running servers
        assert cli(path, "remove", "gpu-01")[0] == 2
        path.write_text(json.dumps([{"name": "gpu-02", "ip": "127.0.0.1", "port": second.port}]))
        wait_until(lambda: [s.name for s in pool.servers] == ["gpu-02"], what="gpu-01 removed from the pool")
    finally:
        pool.close()


def test_a_pool_built_from_a_file_config_re_reads_that_file(tmp_path, state):
    from comfy_cluster.config_load import load_config_file as load

    path = tmp_path / "servers.json"
    path.write_text('[{"name": "gpu-01", "ip": "127.0.0.1", "port": 9}]')
    pool = ComfyUIServerPool.from_config(load(path), poll_interval=0.1).start()
    try:
        assert pool.config_path == str(path)
        ServersFile(path).add("gpu-02", ip="127.0.0.1", port=10)
        wait_until(lambda: sorted(s.name for s in pool.servers) == ["gpu-01", "gpu-02"], what="gpu-02 added")
    finally:
        pool.close()


def test_header_values_never_reach_the_output_or_the_log(tmp_path, state, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    path = tmp_path / "servers.json"
    path.write_text('[{"name": "gpu-01", "ip": "10.0.0.11", "port": 8188}]')
    code, out = cli(path, "set", "gpu-01", 'headers={"X-Studio-Key": "s3cr3t-v4lue"}')
    assert code == 0 and "<1 header(s)>" in out
    assert doc(path)[0]["headers"] == {"X-Studio-Key": "s3cr3t-v4lue"}
    assert "s3cr3t-v4lue" not in out and "s3cr3t-v4lue" not in caplog.text
