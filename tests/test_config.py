"""config.py and config_load.py: NUKE_COMFYUI_SERVERS, the fallbacks, RunPod policy, and the error lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from comfy_cluster import config_load
from comfy_cluster.config import ClusterConfig, PathMapping, RunPodConfig, ServerConfig
from comfy_cluster.config_load import load_config, load_config_file, parse_servers
from comfy_cluster.errors import ConfigError

STUDIO = [
    {"name": "server1", "ip": "192.168.1.187", "port": 8188, "dir_local": "U:/",
     "dir_remote": "/home/kmmuser/ComfyUI/", "priority": 1, "enabled": True},
    {"name": "server2", "ip": "192.168.1.188", "port": 8188, "dir_local": "U:/",
     "dir_remote": "/home/kmmuser/ComfyUI/", "priority": 2, "enabled": True},
]


def servers_env(servers: list[dict] | str, **extra: str) -> dict[str, str]:
    text = servers if isinstance(servers, str) else json.dumps(servers)
    return {"NUKE_COMFYUI_SERVERS": text, **extra}


def error_lines(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(excinfo.value).splitlines()


def with_server(index: int, **changes: object) -> list[dict]:
    servers = [dict(s) for s in STUDIO]
    servers[index].update(changes)
    return servers


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'say once per source' memory is per process; each test starts with none."""
    monkeypatch.setattr(config_load, "_logged_sources", set())


# --- NUKE_COMFYUI_SERVERS ---

def test_the_plan_example_parses() -> None:
    cfg = load_config(servers_env(STUDIO))
    assert cfg.source == "NUKE_COMFYUI_SERVERS"
    assert [s.name for s in cfg.servers] == ["server1", "server2"]
    first = cfg.servers[0]
    assert (first.ip, first.port, first.priority, first.enabled) == ("192.168.1.187", 8188, 1, True)
    assert first.base_url == "http://192.168.1.187:8188"
    assert first.transfer == "upload" and first.max_queue == 2 and first.scheme == "http"
    assert first.mappings() == [PathMapping(local="U:/", remote="/home/kmmuser/ComfyUI/")]
    assert cfg.runpod is None and cfg.poll_interval == 2.0


def test_optional_fields_and_mappings_order() -> None:
    server = dict(STUDIO[0], scheme="https", headers={"X-Studio": "kmm"}, auth_token_env="GPU_TOKEN",
                  transfer="shared", max_queue=3,
                  path_map=[{"local": "P:/projects", "remote": "/mnt/projects"}])
    cfg = parse_servers(json.dumps([server]))[0]
    assert cfg.base_url == "https://192.168.1.187:8188"
    assert cfg.headers == {"X-Studio": "kmm"}
    assert [m.local for m in cfg.mappings()] == ["U:/", "P:/projects"]


def test_ipv6_and_host_names_build_urls() -> None:
    servers = parse_servers(json.dumps([
        {"name": "v6", "ip": "fe80::1", "port": 8188},
        {"name": "host", "ip": "gpu-01.studio.lan", "port": 80},
        {"name": "v4", "ip": "10.0.0.5", "port": 65535},
    ]))
    assert [s.base_url for s in servers] == ["http://[fe80::1]:8188", "http://gpu-01.studio.lan:80",
                                              "http://10.0.0.5:65535"]


def test_the_example_error_line() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(servers_env(with_server(1, port=70000)))
    assert error_lines(excinfo) == [
        'NUKE_COMFYUI_SERVERS[1] ("server2"): port: must be between 1 and 65535, got 70000']


def test_every_problem_is_reported_one_line_each() -> None:
    servers = with_server(1, port=0, priority="1", enabled="yes", prority=3)
    servers.append({"ip": "10.0.0.9", "port": True})
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(servers))
    assert error_lines(excinfo) == [
        'NUKE_COMFYUI_SERVERS[1] ("server2"): port: must be between 1 and 65535, got 0',
        'NUKE_COMFYUI_SERVERS[1] ("server2"): priority: must be an integer, got string "1"',
        'NUKE_COMFYUI_SERVERS[1] ("server2"): enabled: must be true or false, got string "yes"',
        'NUKE_COMFYUI_SERVERS[1] ("server2"): prority: unknown field (did you mean "priority"?)',
        "NUKE_COMFYUI_SERVERS[2]: name: required",
        "NUKE_COMFYUI_SERVERS[2]: port: must be an integer, got true",
    ]


@pytest.mark.parametrize("field, value, message", [
    ("name", "gpu 01", "name: must be 1-64 characters"),
    ("name", "-gpu", "name: must be 1-64 characters"),
    ("name", "a" * 65, "name: must be 1-64 characters"),
    ("name", "../gpu", "name: must be 1-64 characters"),
    ("ip", "http://10.0.0.5", 'without a scheme (use "scheme")'),
    ("ip", "10.0.0.5:8188", 'without a port (use "port")'),
    ("ip", "10.0.0.5/comfy", "without a path"),
    ("ip", "admin@10.0.0.5", "without user@ credentials"),
    ("ip", "gpu 01", "must not contain spaces"),
    ("ip", "gpu01\r\nX-Injected: 1", "must not contain spaces"),
    ("ip", "", "must not be empty"),
    ("ip", "256.1.1.1", "is not a valid IPv4 address"),
    ("ip", "gpu_01.lan", "valid host name (RFC 1123)"),
    ("ip", "-gpu.lan", "valid host name (RFC 1123)"),
    ("ip", "[::1]", "without brackets"),
    ("port", 70000, "must be between 1 and 65535, got 70000"),
    ("port", "8188", 'must be an integer, got string "8188"'),
    ("port", 8188.0, "must be an integer, got number 8188.0"),
    ("priority", True, "must be an integer, got true"),
    ("enabled", 1, "must be true or false, got number 1"),
    ("scheme", "ftp", "must be one of 'http' or 'https'"),
    ("transfer", "nfs", "must be one of 'upload' or 'shared'"),
    ("max_queue", 0, "must be at least 1, got 0"),
    ("auth_token_env", "MY-TOKEN", "must be an environment variable name"),
    ("headers", ["X-A"], "must be a JSON object"),
    ("dir_local", "shots/sh010", "must be an absolute path"),
    ("path_map", [{"local": "", "remote": "/mnt/p"}], "path_map[0].local: must be an absolute path"),
    ("path_map", [{"local": "P:/", "remote": "/mnt/\x00p"}], "path_map[0].remote: must not contain NUL"),
    ("path_map", [{"local": "P:/"}], "path_map[0].remote: required"),
])
def test_field_errors_name_server_and_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(with_server(0, **{field: value})))
    lines = error_lines(excinfo)
    assert len(lines) == 1, lines
    label = 'NUKE_COMFYUI_SERVERS[0]' + ("" if field == "name" else ' ("server1")')
    assert lines[0].startswith(label), lines[0]
    assert message in lines[0]
    assert (field if field != "path_map" else "path_map[0]") in lines[0]


def test_user_credentials_in_ip_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(with_server(0, ip="admin:hunter2@10.0.0.5")))
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize("header", ["Authorization", "authorization", "Proxy-Authorization", "Cookie"])
def test_secret_headers_are_refused(header: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(with_server(0, headers={header: "Bearer s3cret-value"})))
    text = str(excinfo.value)
    assert f'NUKE_COMFYUI_SERVERS[0] ("server1"): headers: {header}: refused' in text
    assert "put the token in an environment variable and name it in auth_token_env" in text
    assert "s3cret-value" not in text


def test_bad_headers_each_get_a_line_and_values_stay_hidden() -> None:
    headers = {"bad name": "x", "X-Split": "a\r\nX-Evil: 1", "X-Null": "a\x00b", "X-Num": 5, "X-Fine": "ok"}
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(with_server(0, headers=headers)))
    lines = error_lines(excinfo)
    prefix = 'NUKE_COMFYUI_SERVERS[0] ("server1"): headers: '
    assert lines == [prefix + '"bad name" is not a valid header name',
                     prefix + "X-Split: the value must not contain CR, LF or NUL",
                     prefix + "X-Null: the value must not contain CR, LF or NUL",
                     prefix + "X-Num: the value must be a string, got number 5"]
    assert "X-Evil" not in str(excinfo.value)


def test_dirs_both_or_neither_reported_with_other_errors() -> None:
    server = dict(name="gpu", ip="10.0.0.5", port=0, dir_local="U:/")
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps([server]))
    assert error_lines(excinfo) == [
        'NUKE_COMFYUI_SERVERS[0] ("gpu"): port: must be between 1 and 65535, got 0',
        'NUKE_COMFYUI_SERVERS[0] ("gpu"): dir_remote: required when dir_local is set (give both or neither)',
    ]
    with pytest.raises(ConfigError, match=r"dir_local: required when dir_remote is set"):
        parse_servers(json.dumps([dict(name="gpu", ip="10.0.0.5", port=1, dir_remote="/srv/comfy")]))


def test_shared_transfer_needs_a_mapping() -> None:
    server = dict(name="gpu", ip="10.0.0.5", port=8188, transfer="shared")
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps([server]))
    assert error_lines(excinfo) == [
        'NUKE_COMFYUI_SERVERS[0] ("gpu"): transfer: "shared" needs dir_local/dir_remote or path_map']
    server["path_map"] = [{"local": "//nas/projects", "remote": "/mnt/projects"}]
    assert parse_servers(json.dumps([server]))[0].transfer == "shared"


def test_duplicate_names_regardless_of_case() -> None:
    servers = [dict(STUDIO[0]), dict(STUDIO[1], name="Server1")]
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(servers))
    assert error_lines(excinfo) == ['NUKE_COMFYUI_SERVERS[1] ("Server1"): name: duplicate of '
                                    'NUKE_COMFYUI_SERVERS[0] (names must be unique, regardless of case)']


@pytest.mark.parametrize("text, message", [
    ('[{"name": "a", "ip": "10.0.0.1", "port": 8188},\n  {"name": "b",}]',
     "NUKE_COMFYUI_SERVERS: invalid JSON: Expecting property name enclosed in double quotes at line 2 column 16"),
    ('{"name": "a"}', "NUKE_COMFYUI_SERVERS: must be a JSON array of server objects, got object"),
    ("[]", "NUKE_COMFYUI_SERVERS: the array is empty: list at least one server"),
    ('["gpu-01"]', 'NUKE_COMFYUI_SERVERS[0]: must be a JSON object, got string "gpu-01"'),
])
def test_bad_json_is_an_error_never_a_fallback(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(servers_env(text, NUKE_COMFYUI_IP="10.0.0.1"))
    assert str(excinfo.value) == message


def test_server_config_is_frozen_and_from_dict_names_the_source() -> None:
    server = ServerConfig.from_dict(STUDIO[0])
    with pytest.raises(Exception):
        server.port = 1  # type: ignore[misc]
    assert ServerConfig.from_dict(server.to_dict()) == server
    with pytest.raises(ConfigError, match=r'^servers.json\[3\] \("server1"\): port: must be between'):
        ServerConfig.from_dict(dict(STUDIO[0], port=-1), source="servers.json[3]")


# --- @file and load_config_file ---

def test_at_file_source_and_error_prefix(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps(STUDIO), encoding="utf-8")
    cfg = load_config(servers_env(f"@{path}"))
    assert cfg.source == f"@{path}" and len(cfg.servers) == 2
    path.write_text(json.dumps(with_server(1, port=70000)), encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(servers_env(f"@{path}"))
    assert error_lines(excinfo) == [f'@{path}[1] ("server2"): port: must be between 1 and 65535, got 70000']


def test_at_file_missing_unreadable_or_invalid(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"^NUKE_COMFYUI_SERVERS=@.*nope\.json: file not found$"):
        load_config(servers_env(f"@{missing}"))
    with pytest.raises(ConfigError, match=r"^NUKE_COMFYUI_SERVERS=@.*: cannot read the file: IsADirectoryError"):
        load_config(servers_env(f"@{tmp_path}"))
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"name": "a", "ip": "10.0.0.1", "port": 8188\n]', encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(servers_env(f"@{bad}"))
    assert str(excinfo.value).startswith(f"NUKE_COMFYUI_SERVERS=@{bad}: invalid JSON: ")
    assert str(excinfo.value).endswith("at line 3 column 1")
    with pytest.raises(ConfigError, match=r"'@' must be followed by the path"):
        load_config(servers_env("@  "))


def test_load_config_file_object_form(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"servers": STUDIO, "poll_interval": 0.5,
                                "runpod": {"endpoint_id": "ep-123", "daily_budget": 25.0}}), encoding="utf-8")
    cfg = load_config_file(path)
    assert cfg.source == f"@{path}" and cfg.poll_interval == 0.5
    assert cfg.runpod is not None and cfg.runpod.endpoint_id == "ep-123"
    assert cfg.runpod.base_url == "https://api.runpod.ai/v2/ep-123" and cfg.runpod.daily_budget == 25.0
    # The environment applies on top when given.
    cfg = load_config_file(path, environ={"RUNPOD_ENDPOINT_ID": "other", "NUKE_COMFYUI_POLL_INTERVAL": "3"})
    assert cfg.runpod is not None and cfg.runpod.endpoint_id == "other" and cfg.poll_interval == 3.0
    # The plain array form works too.
    path.write_text(json.dumps(STUDIO), encoding="utf-8")
    assert [s.name for s in load_config_file(path).servers] == ["server1", "server2"]


def test_load_config_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"servers": with_server(0, port="x"), "pollinterval": 1,
                                "runpod": {"endpoint_id": "ep", "max_concurrent": 0}}), encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config_file(path)
    assert error_lines(excinfo) == [f'@{path}: pollinterval: unknown field (did you mean "poll_interval"?)']
    path.write_text(json.dumps({"servers": with_server(0, port="x"),
                                "runpod": {"endpoint_id": "ep", "max_concurrent": 0}}), encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config_file(path)
    assert error_lines(excinfo) == [f'@{path}: servers[0] ("server1"): port: must be an integer, got string "x"']
    path.write_text(json.dumps({"servers": STUDIO, "runpod": {"endpoint_id": "ep", "max_concurrent": 0}}),
                    encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config_file(path)
    assert error_lines(excinfo) == [f"@{path}: runpod: max_concurrent: must be at least 1, got 0"]


# --- fallbacks ---

@pytest.mark.parametrize("value", [None, "", "   ", "\n\t"])
def test_missing_or_blank_servers_fall_back_to_single_server_vars(value: str | None) -> None:
    environ = {"NUKE_COMFYUI_IP": "10.10.10.10", "NUKE_COMFYUI_PORT": " 8189 ",
               "NUKE_COMFYUI_DIR_LOCAL": "//10.10.10.10/shares/ComfyUI", "NUKE_COMFYUI_DIR_REMOTE": "/home/user/ComfyUI/"}
    if value is not None:
        environ["NUKE_COMFYUI_SERVERS"] = value
    cfg = load_config(environ)
    assert cfg.source == "NUKE_COMFYUI_IP/PORT"
    (server,) = cfg.servers
    assert (server.name, server.ip, server.port) == ("default", "10.10.10.10", 8189)
    assert (server.dir_local, server.dir_remote) == ("//10.10.10.10/shares/ComfyUI", "/home/user/ComfyUI/")


def test_default_server_when_nothing_is_set() -> None:
    cfg = load_config({"NUKE_COMFYUI_SERVERS": " "})
    assert cfg.source == "default"
    assert [(s.ip, s.port, s.dir_local) for s in cfg.servers] == [("127.0.0.1", 8188, None)]


def test_only_a_port_keeps_the_default_host() -> None:
    cfg = load_config({"NUKE_COMFYUI_PORT": "8190"})
    assert cfg.servers[0].base_url == "http://127.0.0.1:8190"


@pytest.mark.parametrize("environ, lines", [
    ({"NUKE_COMFYUI_PORT": "abc"}, ['NUKE_COMFYUI_PORT: must be an integer between 1 and 65535, got "abc"']),
    ({"NUKE_COMFYUI_PORT": "70000"}, ["NUKE_COMFYUI_PORT: must be between 1 and 65535, got 70000"]),
    ({"NUKE_COMFYUI_IP": "http://gpu"}, ['NUKE_COMFYUI_IP: must be a host name or address only, without a '
                                         'scheme (use "scheme"), got "http://gpu"']),
    ({"NUKE_COMFYUI_DIR_LOCAL": "U:/"},
     ["NUKE_COMFYUI_DIR_REMOTE: required when dir_local is set (give both or neither)"]),
    ({"NUKE_COMFYUI_PORT": "x", "NUKE_COMFYUI_IP": "a b", "NUKE_COMFYUI_DIR_REMOTE": "rel/dir"},
     ['NUKE_COMFYUI_PORT: must be an integer between 1 and 65535, got "x"',
      'NUKE_COMFYUI_IP: must not contain spaces, line breaks or control characters, got "a b"',
      'NUKE_COMFYUI_DIR_REMOTE: must be an absolute path (U:/..., //server/share/... or /...), got "rel/dir"',
      "NUKE_COMFYUI_DIR_LOCAL: required when dir_remote is set (give both or neither)"]),
])
def test_single_server_vars_are_validated_and_named(environ: dict[str, str], lines: list[str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(environ)
    assert error_lines(excinfo) == lines


def test_the_source_is_logged_once_per_source(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="comfy_cluster.config_load")
    for _ in range(3):
        load_config({})
    load_config({"NUKE_COMFYUI_IP": "10.0.0.2"})
    load_config({"NUKE_COMFYUI_IP": "10.0.0.3"})
    load_config(servers_env(STUDIO))
    messages = [r.getMessage() for r in caplog.records if r.name == "comfy_cluster.config_load"]
    assert messages == [
        "NUKE_COMFYUI_SERVERS and NUKE_COMFYUI_IP are not set: using the default server 127.0.0.1:8188",
        "NUKE_COMFYUI_SERVERS is not set: using the single server 10.0.0.2:8188 from "
        "NUKE_COMFYUI_IP/NUKE_COMFYUI_PORT",
        "using 2 server(s) from NUKE_COMFYUI_SERVERS: server1, server2",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)


# --- poll interval ---

@pytest.mark.parametrize("text, expected", [("0.5", 0.5), (" 10 ", 10.0), ("", 2.0)])
def test_poll_interval(text: str, expected: float) -> None:
    assert load_config({"NUKE_COMFYUI_POLL_INTERVAL": text}).poll_interval == expected


@pytest.mark.parametrize("text", ["0", "-1", "fast", "nan", "inf"])
def test_bad_poll_interval(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^NUKE_COMFYUI_POLL_INTERVAL: must be a number greater than 0"):
        load_config({"NUKE_COMFYUI_POLL_INTERVAL": text})


# --- RunPod ---

def test_runpod_is_none_without_endpoint_id(caplog: pytest.LogCaptureFixture) -> None:
    assert load_config({}).runpod is None
    with caplog.at_level(logging.WARNING, logger="comfy_cluster.config_load"):
        assert load_config({"NUKE_COMFYUI_RUNPOD": '{"max_concurrent": 2}'}).runpod is None
    assert "RUNPOD_ENDPOINT_ID is not" in caplog.text


def test_runpod_defaults_and_policy() -> None:
    cfg = load_config({"RUNPOD_ENDPOINT_ID": "abc123_x-y"}).runpod
    assert cfg == RunPodConfig(endpoint_id="abc123_x-y")
    assert cfg.base_url == "https://api.runpod.ai/v2/abc123_x-y"
    assert (cfg.admin_url, cfg.graphql_url) == ("https://rest.runpod.io/v1", "https://api.runpod.io/graphql")
    assert (cfg.enabled, cfg.max_concurrent, cfg.price_per_second, cfg.daily_budget, cfg.overflow_after_s) == \
        (True, 4, 0.00044, None, 120.0)
    policy = {"enabled": False, "max_concurrent": 2, "price_per_second": 0, "daily_budget": 40,
              "overflow_after_s": 0, "base_url": "http://127.0.0.1:9000/v2/{endpoint_id}",
              "admin_url": "http://127.0.0.1:9000/admin", "api_key_env": "STUDIO_RUNPOD_KEY"}
    cfg = load_config({"RUNPOD_ENDPOINT_ID": "ep1", "NUKE_COMFYUI_RUNPOD": json.dumps(policy)}).runpod
    assert cfg is not None
    assert cfg.base_url == "http://127.0.0.1:9000/v2/ep1" and cfg.admin_url == "http://127.0.0.1:9000/admin"
    assert (cfg.enabled, cfg.max_concurrent, cfg.price_per_second, cfg.daily_budget) == (False, 2, 0.0, 40.0)
    assert cfg.api_key_env == "STUDIO_RUNPOD_KEY"


def test_runpod_policy_errors_are_all_named() -> None:
    policy = {"daily_budget": -1, "max_concurrent": 0, "price_per_second": "cheap", "overflow_after_s": -5,
              "base_url": "ftp://runpod", "graphql_url": "https://user:pw@api.runpod.io/graphql", "enabled": "no"}
    with pytest.raises(ConfigError) as excinfo:
        load_config({"RUNPOD_ENDPOINT_ID": "ep1", "NUKE_COMFYUI_RUNPOD": json.dumps(policy)})
    assert error_lines(excinfo) == [
        'NUKE_COMFYUI_RUNPOD: base_url: must be an http(s) URL, got "ftp://runpod"',
        "NUKE_COMFYUI_RUNPOD: graphql_url: must not carry user@ credentials",
        'NUKE_COMFYUI_RUNPOD: enabled: must be true or false, got string "no"',
        "NUKE_COMFYUI_RUNPOD: max_concurrent: must be at least 1, got 0",
        'NUKE_COMFYUI_RUNPOD: price_per_second: must be a number, got string "cheap"',
        "NUKE_COMFYUI_RUNPOD: daily_budget: must be at least 0, got -1.0",
        "NUKE_COMFYUI_RUNPOD: overflow_after_s: must be at least 0, got -5.0",
    ]
    assert "pw@" not in str(excinfo.value)


@pytest.mark.parametrize("environ, message", [
    ({"RUNPOD_ENDPOINT_ID": "ep/1"}, "RUNPOD_ENDPOINT_ID: must be letters, digits, '_' or '-', got \"ep/1\""),
    ({"RUNPOD_ENDPOINT_ID": "ep", "NUKE_COMFYUI_RUNPOD": "[1]"}, "NUKE_COMFYUI_RUNPOD: must be a JSON object, got array"),
    ({"RUNPOD_ENDPOINT_ID": "ep", "NUKE_COMFYUI_RUNPOD": "{"},
     "NUKE_COMFYUI_RUNPOD: invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ({"RUNPOD_ENDPOINT_ID": "ep", "NUKE_COMFYUI_RUNPOD": '{"endpoint_id": "x"}'},
     "NUKE_COMFYUI_RUNPOD: endpoint_id: unknown field (set RUNPOD_ENDPOINT_ID instead)"),
    ({"RUNPOD_ENDPOINT_ID": "ep", "NUKE_COMFYUI_RUNPOD": '{"api_key": "rp_live_secret"}'},
     "NUKE_COMFYUI_RUNPOD: api_key: refused: put the key in an environment variable and name it in "
     "api_key_env (default RUNPOD_API_KEY)"),
    ({"RUNPOD_ENDPOINT_ID": "ep", "NUKE_COMFYUI_RUNPOD": '{"status_poll_min": 2, "status_poll_max": 1}'},
     "NUKE_COMFYUI_RUNPOD: status_poll_max: must be at least status_poll_min"),
])
def test_runpod_config_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(environ)
    assert str(excinfo.value) == message


def test_runpod_api_key_is_read_at_the_edge_only() -> None:
    cfg = load_config({"RUNPOD_ENDPOINT_ID": "ep", "RUNPOD_API_KEY": "rp_live_abcdef"}).runpod
    assert cfg is not None
    assert "rp_live_abcdef" not in repr(cfg) and "rp_live_abcdef" not in cfg.model_dump_json()
    assert cfg.api_key({"RUNPOD_API_KEY": "rp_live_abcdef"}) == "rp_live_abcdef"
    with pytest.raises(ConfigError, match="RUNPOD_API_KEY is not set"):
        cfg.api_key({})


# --- secrets ---

def test_bearer_token_never_appears_in_config_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-9f8e7d6c5b4a-SECRET"
    caplog.set_level(logging.DEBUG)
    servers = [dict(STUDIO[0], auth_token_env="GPU_TOKEN", headers={"X-Studio-Key": "hdr-SECRET-42"})]
    environ = servers_env(servers, GPU_TOKEN=token, RUNPOD_ENDPOINT_ID="ep", RUNPOD_API_KEY=token)
    cfg = load_config(environ)
    server = cfg.servers[0]
    assert server.auth_header(environ) == {"Authorization": f"Bearer {token}"}
    assert server.auth_header({"GPU_TOKEN": f"  {token}\n"}) == {"Authorization": f"Bearer {token}"}
    for text in (repr(cfg), str(cfg), repr(server), str(server), cfg.model_dump_json()):
        assert token not in text
    assert "hdr-SECRET-42" not in repr(cfg) and "hdr-SECRET-42" not in repr(server)
    assert "'X-Studio-Key': '***'" in repr(server)
    errors = []
    for bad_env in ({}, {"GPU_TOKEN": ""}, {"GPU_TOKEN": token + "\r\nX-Evil: 1"}):
        with pytest.raises(ConfigError) as excinfo:
            server.auth_header(bad_env)
        errors.append(str(excinfo.value))
        assert excinfo.value.server == "server1"
    assert errors[0] == ("server 'server1': auth_token_env: the environment variable GPU_TOKEN is not set "
                         "or empty")
    with pytest.raises(ConfigError) as excinfo:  # a bad config next to a set token
        load_config(servers_env([dict(servers[0], port=0)], GPU_TOKEN=token))
    errors.append(str(excinfo.value))
    assert all(token not in e for e in errors)
    assert token not in caplog.text and "hdr-SECRET-42" not in caplog.text


def test_no_auth_token_env_means_no_header() -> None:
    assert parse_servers(json.dumps(STUDIO))[0].auth_header({"GPU_TOKEN": "x"}) == {}


def test_cluster_config_refuses_duplicate_names_when_built_directly() -> None:
    server = ServerConfig(name="gpu", ip="10.0.0.5", port=8188)
    with pytest.raises(ValueError, match="duplicate"):
        ClusterConfig(servers=[server, server], source="test")


def test_enabled_servers_by_priority_keep_configured_order_on_ties() -> None:
    servers = parse_servers(json.dumps([
        {"name": "c", "ip": "10.0.0.3", "port": 1, "priority": 2},
        {"name": "a", "ip": "10.0.0.1", "port": 1, "priority": 1, "enabled": False},
        {"name": "b", "ip": "10.0.0.2", "port": 1, "priority": 2},
        {"name": "d", "ip": "10.0.0.4", "port": 1, "priority": 0},
    ]))
    cfg = ClusterConfig(servers=servers, source="test")
    assert [s.name for s in cfg.enabled_servers] == ["d", "c", "b"]


def test_an_odd_unknown_key_stays_on_one_line() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(with_server(0, **{"evil\nkey": 1})))
    assert error_lines(excinfo) == ['NUKE_COMFYUI_SERVERS[0] ("server1"): "evil\\nkey": unknown field '
                                    '(known fields: name, ip, port, dir_local, dir_remote, priority, enabled, '
                                    'scheme, headers, auth_token_env, transfer, max_queue, path_map, ssh, base_path)']


def test_ten_thousand_servers_sharing_one_name_give_a_short_error() -> None:
    """A long list of problems shows the first few, then how many more: never a megabyte line."""
    servers = [{"name": "gpu", "ip": "10.0.0.1", "port": 8188 + i % 1000} for i in range(10_000)]
    with pytest.raises(ConfigError) as excinfo:
        parse_servers(json.dumps(servers))
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 11 and len(str(excinfo.value)) < 2000
    assert lines[0].startswith('NUKE_COMFYUI_SERVERS[1] ("gpu"): name: duplicate of NUKE_COMFYUI_SERVERS[0]')
    assert lines[-1] == "... and 9989 more"
