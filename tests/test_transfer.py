"""transfer.py: staging inputs (upload / shared), fetching outputs, safe names, atomic writes.

The network tests run against the ComfyUI emulator over loopback.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.errors import TransferError
from comfy_cluster.transfer import (
    INPUT_SUBFOLDER,
    MAX_NAME_BYTES,
    UploadCache,
    atomic_write,
    content_name,
    make_output_fetcher,
    remote_output_dir,
    safe_join,
    safe_output_name,
    stage_inputs,
)
from comfy_cluster.wire import HistoryEntry, OutputImage

HOSTILE = ["../../x.png", "/etc/passwd", "a\x00b.png", "x" * 10_000 + ".png", "..", "C:\\Windows\\x.png",
           "out/../../../x.png", "\\\\server\\share\\x.png", "a\nb.png", ""]


def invert_workflow(image: str = "placeholder.png") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sh010/comp"}},
    }


def write_frame(path: Path, value: int, size: tuple[int, int] = (16, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    pixels[0, 0] = (value ^ 0xFF, 7, 200)
    Image.fromarray(pixels).save(path)
    return path


def run_prompt(client: ComfyClient, workflow: dict, timeout: float = 20.0) -> HistoryEntry:
    """Submit and wait for the history entry, polling with a deadline."""
    prompt_id = uuid.uuid4().hex
    client.submit(workflow, client_id="test-transfer", prompt_id=prompt_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = client.get_history(prompt_id)
        if entry is not None and entry.completed:
            return entry
        if entry is not None and entry.status_str == "error":
            raise AssertionError(f"prompt failed: {entry.messages}")
        time.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def staged_files(emu: EmulatorThread) -> list[Path]:
    folder = emu.base_dir / "input" / INPUT_SUBFOLDER
    return sorted(folder.iterdir()) if folder.is_dir() else []


def upload_config(emu: EmulatorThread, name: str) -> ServerConfig:
    return ServerConfig(name=name, ip="127.0.0.1", port=emu.port)


@pytest.fixture
def emu(emulator_thread_factory) -> EmulatorThread:
    return emulator_thread_factory(name="gpu-01")


@pytest.fixture
def emu2(emulator_thread_factory) -> EmulatorThread:
    return emulator_thread_factory(name="gpu-02")


# --- content names ---

def test_content_name_is_a_streamed_hash_with_lower_case_extension(tmp_path: Path) -> None:
    big = tmp_path / "Plate.1001.EXR"
    data = os.urandom(3 * (1 << 20) + 17)      # bigger than one read chunk
    big.write_bytes(data)
    assert content_name(big) == f"cc_{hashlib.sha256(data).hexdigest()[:24]}.exr"
    same = tmp_path / "other_name.exr"
    same.write_bytes(data)
    assert content_name(same) == content_name(big)
    odd = tmp_path / "frame.p n;g"
    odd.write_bytes(b"x")
    assert content_name(odd) == f"cc_{hashlib.sha256(b'x').hexdigest()[:24]}"
    with pytest.raises(TransferError, match="cannot read input file"):
        content_name(tmp_path / "missing.png")


# --- upload mode ---

def test_upload_once_per_server_even_when_staged_twice(tmp_path: Path, emu: EmulatorThread,
                                                      emu2: EmulatorThread) -> None:
    frame = write_frame(tmp_path / "plates" / "sh010.1001.png", 40)
    name = content_name(frame)
    cache = UploadCache()
    cfg, client = upload_config(emu, "gpu-01"), ComfyClient(emu.url, name="gpu-01")
    workflow = invert_workflow()
    first = stage_inputs(cfg, client, workflow, {("1", "image"): frame}, cache=cache)
    assert first["1"]["inputs"]["image"] == f"{INPUT_SUBFOLDER}/{name}"
    assert workflow == invert_workflow()                       # the caller's workflow is untouched
    assert [p.name for p in staged_files(emu)] == [name]
    assert staged_files(emu)[0].read_bytes() == frame.read_bytes()

    # Remove it on the server: a second staging must not upload again (the cache knows it).
    staged_files(emu)[0].unlink()
    second = stage_inputs(cfg, client, workflow, {("1", "image"): frame}, cache=cache)
    assert second == first and staged_files(emu) == []
    assert (cfg.name, name) in cache

    # Another server gets its own copy; forgetting a server (it restarted) uploads again.
    cfg2, client2 = upload_config(emu2, "gpu-02"), ComfyClient(emu2.url, name="gpu-02")
    stage_inputs(cfg2, client2, workflow, {("1", "image"): frame}, cache=cache)
    assert [p.name for p in staged_files(emu2)] == [name]
    cache.forget("gpu-01")
    assert (cfg.name, name) not in cache and (cfg2.name, name) in cache
    stage_inputs(cfg, client, workflow, {("1", "image"): frame}, cache=cache)
    assert [p.name for p in staged_files(emu)] == [name]
    client.close()
    client2.close()


def test_staged_upload_runs_and_output_downloads(tmp_path: Path, emu: EmulatorThread) -> None:
    frame = write_frame(tmp_path / "plates" / "sh010.1001.png", 40)
    cfg, client = upload_config(emu, "gpu-01"), ComfyClient(emu.url, name="gpu-01")
    staged = stage_inputs(cfg, client, invert_workflow(), {("1", "image"): frame}, cache=UploadCache())
    entry = run_prompt(client, staged)
    (image,) = entry.images
    fetch = make_output_fetcher(cfg, client, image, output_dir_remote=None)
    dest = atomic_write(safe_join(tmp_path / "renders", image.filename), fetch)
    server_file = emu.base_dir / "output" / image.subfolder / image.filename
    assert dest.read_bytes() == server_file.read_bytes()
    with Image.open(dest) as out:
        assert out.size == (16, 8)
        assert np.asarray(out.convert("RGB"))[4, 4].tolist() == [215, 215, 215]
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]    # no temp file left
    client.close()


def test_concurrent_staging_uploads_once(tmp_path: Path, emu: EmulatorThread) -> None:
    frame = write_frame(tmp_path / "still.png", 90)
    real = ComfyClient(emu.url, name="gpu-01")
    calls: list[str] = []

    class CountingClient:
        def upload_image(self, data: Path, name: str, **kw: object) -> object:
            calls.append(name)
            return real.upload_image(data, name, **kw)  # type: ignore[arg-type]

    cache, cfg, start = UploadCache(), upload_config(emu, "gpu-01"), threading.Barrier(8)
    results: list[dict] = []

    def stage() -> None:
        start.wait(timeout=10)
        results.append(stage_inputs(cfg, CountingClient(), invert_workflow(),  # type: ignore[arg-type]
                                    {("1", "image"): frame}, cache=cache))

    threads = [threading.Thread(target=stage) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 8 and len({r["1"]["inputs"]["image"] for r in results}) == 1
    assert calls == [content_name(frame)]
    real.close()


def test_failed_upload_is_not_remembered(tmp_path: Path, emu: EmulatorThread) -> None:
    frame = write_frame(tmp_path / "still.png", 90)
    cfg, client, cache = upload_config(emu, "gpu-01"), ComfyClient(emu.url, name="gpu-01"), UploadCache()
    emu.set_faults(http_500=True)
    with pytest.raises(Exception) as excinfo:
        stage_inputs(cfg, client, invert_workflow(), {("1", "image"): frame}, cache=cache)
    assert getattr(excinfo.value, "server", None) == "gpu-01"
    assert len(cache) == 0
    emu.set_faults(http_500=False)
    stage_inputs(cfg, client, invert_workflow(), {("1", "image"): frame}, cache=cache)
    assert len(cache) == 1 and len(staged_files(emu)) == 1
    client.close()


def test_missing_input_file_or_node_names_node_input_and_path(tmp_path: Path, emu: EmulatorThread) -> None:
    cfg, client = upload_config(emu, "gpu-01"), ComfyClient(emu.url, name="gpu-01")
    missing = tmp_path / "plates" / "sh010.1001.png"
    with pytest.raises(TransferError) as excinfo:
        stage_inputs(cfg, client, invert_workflow(), {("1", "image"): missing}, cache=UploadCache())
    assert str(excinfo.value) == f"server 'gpu-01': node 1 input 'image': input file not found: {str(missing)!r}"
    assert excinfo.value.server == "gpu-01"
    frame = write_frame(tmp_path / "f.png", 1)
    with pytest.raises(TransferError, match=r"node 9 input 'image': the workflow has no node '9'"):
        stage_inputs(cfg, client, invert_workflow(), {("9", "image"): frame}, cache=UploadCache())
    assert staged_files(emu) == []
    client.close()


# --- shared mode ---

@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[EmulatorThread, ServerConfig, Path]]:
    """A server whose ComfyUI folder this machine sees through a mount (a symlink here)."""
    root = (tmp_path / "server" / "ComfyUI").resolve()
    root.mkdir(parents=True)
    mount = tmp_path / "mnt_u"
    mount.symlink_to(root, target_is_directory=True)
    server = EmulatorThread(name="gpu-03", base_dir=root).start()
    cfg = ServerConfig(name="gpu-03", ip="127.0.0.1", port=server.port, transfer="shared",
                       dir_local=str(mount), dir_remote=str(root),
                       path_map=[{"local": "U:\\shots", "remote": str(tmp_path / "shots")}])
    try:
        yield server, cfg, mount
    finally:
        server.stop()


def test_shared_mode_copies_inputs_and_maps_windows_paths(tmp_path: Path,
                                                         shared: tuple[EmulatorThread, ServerConfig, Path]) -> None:
    emu, cfg, mount = shared
    client = ComfyClient(emu.url, name=cfg.name)
    frame = write_frame(tmp_path / "plates" / "sh010.1001.png", 60)
    name = content_name(frame)
    workflow = invert_workflow()
    workflow["4"] = {"class_type": "Note", "inputs": {
        "plate": "U:\\shots\\sh010\\plate.####.exr", "lut": "u:/shots/sh010/grade.cube",
        "nearby": "U:\\shotsX\\sh010", "prompt": "a foggy harbour", "server_side": str(mount / "models")}}
    staged = stage_inputs(cfg, client, workflow, {("1", "image"): frame}, cache=UploadCache())
    assert staged["1"]["inputs"]["image"] == f"{INPUT_SUBFOLDER}/{name}"
    remote_shots = str(tmp_path / "shots")
    assert staged["4"]["inputs"] == {
        "plate": f"{remote_shots}/sh010/plate.####.exr", "lut": f"{remote_shots}/sh010/grade.cube",
        "nearby": "U:\\shotsX\\sh010", "prompt": "a foggy harbour", "server_side": f"{cfg.dir_remote}/models"}
    placed = emu.base_dir / "input" / INPUT_SUBFOLDER / name
    assert placed.read_bytes() == frame.read_bytes()
    assert staged_files(emu) == [placed]

    # Staged again: the file is already there with the same size, so it is not rewritten.
    before = placed.stat()
    stage_inputs(cfg, client, workflow, {("1", "image"): frame}, cache=UploadCache())
    after = placed.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # A partial copy (wrong size) is replaced.
    placed.write_bytes(b"partial")
    stage_inputs(cfg, client, workflow, {("1", "image"): frame}, cache=UploadCache())
    assert placed.read_bytes() == frame.read_bytes()
    assert [p.name for p in placed.parent.iterdir()] == [name]        # no temp files
    client.close()


def test_shared_mode_runs_and_reads_output_through_the_mount(tmp_path: Path,
                                                            shared: tuple[EmulatorThread, ServerConfig, Path]) -> None:
    emu, cfg, _ = shared
    client = ComfyClient(emu.url, name=cfg.name)
    frame = write_frame(tmp_path / "plates" / "sh010.1001.png", 60)
    staged = stage_inputs(cfg, client, invert_workflow(), {("1", "image"): frame}, cache=UploadCache())
    entry = run_prompt(client, staged)
    output_dir = remote_output_dir(cfg, client.get_system_stats().argv)
    assert output_dir == str(emu.base_dir / "output")
    (image,) = entry.images
    fetch = make_output_fetcher(cfg, client, image, output_dir_remote=output_dir)
    emu.set_faults(http_500=True)   # proves the bytes come through the mount, not over HTTP
    dest = atomic_write(tmp_path / "renders" / "comp.1001.png", fetch)
    assert dest.read_bytes() == (emu.base_dir / "output" / image.subfolder / image.filename).read_bytes()
    gone = OutputImage(filename="missing_00001_.png", subfolder="sh010", type="output", node_id="3")
    with pytest.raises(TransferError, match=r"server 'gpu-03': cannot read output .*missing_00001_\.png.* node 3"):
        atomic_write(tmp_path / "renders" / "x.png", make_output_fetcher(cfg, client, gone, output_dir_remote=None))
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["comp.1001.png"]
    client.close()


def test_shared_mode_refuses_hostile_names_and_unmapped_outputs(tmp_path: Path,
                                                               shared: tuple[EmulatorThread, ServerConfig, Path]
                                                               ) -> None:
    emu, cfg, _ = shared
    client = ComfyClient(emu.url, name=cfg.name)
    for name in HOSTILE:
        image = OutputImage(filename=name, subfolder="", type="output", node_id="3")
        with pytest.raises(TransferError):
            make_output_fetcher(cfg, client, image, output_dir_remote=None)
    for subfolder in ("../..", "/etc", "a/../../b", "C:\\x"):
        image = OutputImage(filename="ok.png", subfolder=subfolder, type="output", node_id="3")
        with pytest.raises(TransferError, match="refusing output subfolder"):
            make_output_fetcher(cfg, client, image, output_dir_remote=None)
    image = OutputImage(filename="ok.png", subfolder="", type="output", node_id="3")
    with pytest.raises(TransferError, match=r"output '/srv/elsewhere/ok.png' of node 3 is not under a mapped folder"):
        make_output_fetcher(cfg, client, image, output_dir_remote="/srv/elsewhere")
    client.close()


def test_shared_mode_needs_dir_local_to_place_inputs(tmp_path: Path, emu: EmulatorThread) -> None:
    cfg = ServerConfig(name="gpu-01", ip="127.0.0.1", port=emu.port, transfer="shared",
                       path_map=[{"local": "U:/", "remote": "/srv/comfy"}])
    frame = write_frame(tmp_path / "f.png", 3)
    with pytest.raises(TransferError, match="shared transfer needs dir_local"):
        stage_inputs(cfg, ComfyClient(emu.url), invert_workflow(), {("1", "image"): frame}, cache=UploadCache())


# --- hostile names from a server, end to end ---

def test_hostile_output_name_from_server_cannot_escape(tmp_path: Path, emu: EmulatorThread) -> None:
    frame = write_frame(tmp_path / "f.png", 5)
    cfg, client = upload_config(emu, "gpu-01"), ComfyClient(emu.url, name="gpu-01")
    staged = stage_inputs(cfg, client, invert_workflow(), {("1", "image"): frame}, cache=UploadCache())
    emu.set_faults(output_filename="../../escaped.png")
    (image,) = run_prompt(client, staged).images
    assert image.filename == "../../escaped.png"
    renders = tmp_path / "deep" / "renders"
    dest = safe_join(renders, image.filename)
    assert dest == renders / "escaped.png"
    with pytest.raises(TransferError):     # the server itself refuses to serve that name
        atomic_write(dest, make_output_fetcher(cfg, client, image, output_dir_remote=None))
    assert list(renders.iterdir()) == []
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "deep" / "escaped.png").exists()
    client.close()


# --- names ---

@pytest.mark.parametrize("name, expected", [
    ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
    ("../../x.png", "x.png"),
    ("/etc/passwd", "passwd"),
    ("C:\\Windows\\x.png", "x.png"),
    ("\\\\server\\share\\x.png", "x.png"),
    ("out/../../../x.png", "x.png"),
    ("a:b?.png", "a_b_.png"),
    ("CON.png", "_CON.png"),
    ("lpt1", "_lpt1"),
    ("name. . ", "name"),
    ("été.png", "été.png"),
])
def test_safe_output_name(name: str, expected: str) -> None:
    assert safe_output_name(name) == expected


@pytest.mark.parametrize("name", ["a\x00b.png", "a\nb.png", "\x7f.png", "..", ".", "", "../", "a/..", "...", "x/ . "])
def test_safe_output_name_refuses(name: str) -> None:
    with pytest.raises(TransferError):
        safe_output_name(name)


def test_long_names_are_capped_keeping_the_extension() -> None:
    capped = safe_output_name("x" * 10_000 + ".png")
    assert capped.endswith(".png") and len(capped.encode()) == MAX_NAME_BYTES
    wide = safe_output_name("é" * 5_000 + ".exr")
    assert wide.endswith(".exr") and len(wide.encode()) <= MAX_NAME_BYTES
    wide.encode().decode("utf-8")          # never cut in the middle of a character
    no_ext = safe_output_name("y" * 300 + "." + "z" * 40)
    assert len(no_ext.encode()) == MAX_NAME_BYTES and no_ext.startswith("yyy")


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_join_stays_inside_the_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "renders"
    try:
        path = safe_join(folder, name)
    except TransferError:
        return
    assert path.parent == folder and os.path.abspath(path).startswith(str(folder) + os.sep)
    atomic_write(path, lambda tmp: tmp.write_bytes(b"ok"))
    assert [p.name for p in folder.iterdir()] == [path.name]


# --- atomic writes ---

def test_atomic_write_creates_the_folder_and_replaces(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "comp.1001.png"
    assert atomic_write(dest, lambda tmp: tmp.write_bytes(b"first")) == dest
    atomic_write(dest, lambda tmp: tmp.write_bytes(b"second"))
    assert dest.read_bytes() == b"second"
    assert [p.name for p in dest.parent.iterdir()] == ["comp.1001.png"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert dest.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "comp.1001.png"
    dest.write_bytes(b"previous")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise TransferError("server 'gpu-01': connection reset")

    with pytest.raises(TransferError, match="connection reset"):
        atomic_write(dest, half_then_fail)

    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(TransferError, match=r"cannot write .*comp\.1001\.png.*No space left on device"):
        atomic_write(dest, disk_full)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(dest, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["comp.1001.png"]


# --- the server's output folder ---

@pytest.mark.parametrize("argv, expected", [
    (["main.py", "--output-directory", "/data/out"], "/data/out"),
    (["main.py", "--output-directory=/data/out2", "--listen"], "/data/out2"),
    (["main.py", "--output-directory", "/a", "--output-directory", "/b"], "/b"),
    (["main.py", "--base-directory", "/opt/comfy"], "/opt/comfy/output"),
    (["main.py", "--output-directory", "renders"], "/home/kmmuser/ComfyUI/renders"),
    (["main.py", "--output-directory", "D:\\out"], "D:\\out"),
    (["main.py", "--listen", "0.0.0.0"], "/home/kmmuser/ComfyUI/output"),
    ([], "/home/kmmuser/ComfyUI/output"),
])
def test_remote_output_dir(argv: list[str], expected: str) -> None:
    cfg = ServerConfig(name="gpu", ip="10.0.0.5", port=8188, dir_local="U:/", dir_remote="/home/kmmuser/ComfyUI/")
    assert remote_output_dir(cfg, argv) == expected


def test_remote_output_dir_unknown() -> None:
    with pytest.raises(TransferError, match="cannot tell where it writes outputs"):
        remote_output_dir(ServerConfig(name="gpu", ip="10.0.0.5", port=8188), ["main.py"])
