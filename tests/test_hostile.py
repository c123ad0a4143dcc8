"""Hostile and bad input: malicious output names, broken JSON and websocket frames, huge and
truncated answers, smuggled config values, and secrets that must never reach a log.

Servers are the project's emulator on loopback. Where the emulator has no knob for the bad
answer, ``HostileEmulator`` puts a middleware in front of the real emulator that answers the
chosen routes with the chosen bad response; everything else is the faithful emulator. Each
case must end with a clear error for that frame (or the frame rendered elsewhere), within a
bounded time: never a hang, never a crashed batch.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from comfy_cluster import run
from comfy_cluster.config import ServerConfig
from comfy_cluster.config_load import parse_servers
from comfy_cluster.emulator.comfyui import ComfyEmulator
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.errors import ComfyClusterError, ConfigError, ProtocolError, ServerUnavailable, TransferError
from comfy_cluster.jobs import journal_path
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.batch import BatchResult
from tests.helpers import wait_until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: One frame's graph: a coloured 8x6 image, saved. 0x336699 -> pixels (51, 102, 153).
EMPTY = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0x336699}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hostile"}},
}
COLOUR = (51, 102, 153)
#: Long enough to prove a bounded wait, short enough for a fast test file.
JOB_TIMEOUT = 4.0
#: A batch or job that has not ended by then is hung.
HANG_LIMIT = 45.0


class HostileEmulator(ComfyEmulator):
    """The emulator, with the routes in ``overrides`` (path prefix -> handler) answered badly."""

    def __init__(self, *args, overrides: dict[str, Handler], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.overrides = overrides

    def make_app(self) -> web.Application:
        app = super().make_app()

        @web.middleware
        async def override(request: web.Request, handler: Handler) -> web.StreamResponse:
            for prefix, bad in self.overrides.items():
                if request.path.startswith(prefix):
                    return await bad(request)
            return await handler(request)

        app.middlewares.insert(0, override)
        return app


@pytest.fixture
def servers():
    """Start emulators with ``make(name, overrides=None, **faults)``; all stopped at the end."""
    started: list[EmulatorThread] = []

    def make(name: str, overrides: dict[str, Handler] | None = None, **faults) -> EmulatorThread:
        emu = EmulatorThread(name=name)
        if overrides:
            emu.emulator = HostileEmulator(emu.base_dir, name=name, overrides=overrides)
        started.append(emu)
        emu.start()
        if faults:
            emu.set_faults(**faults)
        return emu

    yield make
    for emu in started:
        emu.stop()


@contextmanager
def cluster(*emus: EmulatorThread, environ: dict[str, str] | None = None, **server_kw) -> Iterator[ComfyUIServerPool]:
    configs = [ServerConfig(name=e.name, ip="127.0.0.1", port=e.port, **server_kw) for e in emus]
    pool = ComfyUIServerPool(configs, poll_interval=0.3, max_backoff=1.0, environ=environ or {})
    try:
        yield pool.start()
    finally:
        pool.close()


def png_bytes(colour: tuple[int, int, int] = COLOUR) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def assert_colour(path: Path, colour: tuple[int, int, int] = COLOUR) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (6, 8, 3)
    assert (pixels == np.array(colour, dtype=np.uint8)).all(), path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- bad answers


async def serve_any_view(request: web.Request) -> web.Response:
    """/view that hands out an image for whatever file name is asked (a malicious server)."""
    return web.Response(body=png_bytes(), content_type="image/png")


async def no_websocket(request: web.Request) -> web.Response:
    """No websocket: the client must follow the prompt through /history."""
    return web.Response(status=404)


async def huge_undeclared(request: web.Request) -> web.StreamResponse:
    """A chunked JSON body that never stops growing (past any sane cap)."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"x": "')
    chunk = b"a" * (1 << 20)
    for _ in range(64):
        await resp.write(chunk)
    await resp.write(b'"}')
    return resp


async def huge_declared(request: web.Request) -> web.StreamResponse:
    """A Content-Length of 10 GB, then a trickle."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 10 * 1024**3
    await resp.prepare(request)
    for _ in range(600):
        await resp.write(b"{" * 1024)
        await asyncio.sleep(0.1)
    return resp


async def truncated(request: web.Request) -> web.StreamResponse:
    """Declares 1000 bytes, sends 14, and hangs up."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 1000
    await resp.prepare(request)
    await resp.write(b'{"abc": [1, 2,')
    assert request.transport is not None
    request.transport.close()
    return resp


async def malformed(request: web.Request) -> web.Response:
    return web.Response(text='{"a": [1, 2', content_type="application/json")


async def not_json(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>Bad Gateway</body></html>", content_type="application/json")


async def json_array(request: web.Request) -> web.Response:
    return web.Response(text="[1, 2, 3]", content_type="application/json")


async def slow_drip(request: web.Request) -> web.StreamResponse:
    """A body that never ends, one byte every half second (never trips a read timeout)."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"')
    for _ in range(600):
        await asyncio.sleep(0.5)
        await resp.write(b"a")
    return resp


async def garbage_websocket(request: web.Request) -> web.WebSocketResponse:
    """A websocket that sends only junk: a huge text frame, broken JSON, unknown binary types."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str('{"type": "executing", "data": {')
    await ws.send_str("[" * 100_000)
    await ws.send_str('{"type": 42, "data": "not a dict"}')
    await ws.send_str('{"type": "executed", "data": {"node": "2", "output": {"images": "nope"}, "prompt_id": 7}}')
    await ws.send_bytes(b"\x00\x00")
    await ws.send_bytes((99).to_bytes(4, "big") + b"\xff" * 64)
    await ws.send_str("x" * (4 << 20))
    async for _ in ws:
        pass
    return ws


# --------------------------------------------------------------------------- output names

HOSTILE_NAMES = {
    "traversal": "../../x.png",
    "absolute": "/tmp/comfy-hostile-abs.png",
    "windows": "..\\..\\evil\\x.png",
    "device": "CON.png",
    "nul": "a\x00b.png",
    "newline": "a\nb.png",
    "long": "A" * 5000 + ".png",
    "dots": "..",
}


@pytest.mark.parametrize("name", list(HOSTILE_NAMES.values()), ids=list(HOSTILE_NAMES))
def test_malicious_output_names_stay_inside_the_output_folder(servers, tmp_path, name):
    """A server that reports any name and serves bytes for it: the file lands inside the
    output folder under a safe name, or the job fails saying the name was refused."""
    emu = servers("evil", overrides={"/view": serve_any_view}, output_filename=name)
    out = tmp_path / "out"
    out.mkdir()
    before = files_under(tmp_path) - files_under(out)
    with cluster(emu) as pool:
        job = run.submit(EMPTY, pool=pool, output_dir=out, timeout=JOB_TIMEOUT, retries=0)
        try:
            outputs = job.result(timeout=HANG_LIMIT).outputs
        except TransferError as err:
            assert "name" in str(err) and "refus" in str(err), err
            outputs = []
    for path in outputs:
        assert path.resolve().parent == out.resolve(), path
        assert len(path.name.encode()) <= 255
        assert_colour(path)
    assert outputs or name in ("a\x00b.png", "a\nb.png", "..")
    assert files_under(tmp_path) - files_under(out) == before, "a file was written outside the output folder"
    assert not Path("/tmp/comfy-hostile-abs.png").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_shared_transfer_refuses_an_unsafe_output_name(servers, tmp_path):
    """Through a shared mount a traversal name would read any file: the frame fails clearly."""
    emu = servers("evil-shared", output_filename="../../../etc/passwd")
    base = str(emu.base_dir.resolve())
    with cluster(emu, transfer="shared", dir_local=base, dir_remote=base) as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1-2", output=tmp_path / "sh.####.png",
                                     retries=1, job_timeout=JOB_TIMEOUT)
        result = batch.result(timeout=HANG_LIMIT)
    assert sorted(result.failed) == [1, 2]
    for err in result.failed.values():
        assert isinstance(err, TransferError)
        assert "evil-shared" in str(err) and "unsafe output file name" in str(err)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


# --------------------------------------------------------------------------- broken answers


def test_bad_json_and_websocket_garbage_from_one_server_never_break_the_batch(servers, tmp_path):
    """One server answers truncated /history and /queue JSON and spits junk on its websocket;
    the batch still renders every frame correctly (there or on the healthy server)."""
    good = servers("good")
    bad = servers("bad", bad_json=True, ws_garbage=True)
    with cluster(good, bad) as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1-12", output=tmp_path / "f.####.png",
                                     retries=3, job_timeout=JOB_TIMEOUT)
        result = batch.result(timeout=HANG_LIMIT)
    assert result.failed == {}
    assert sorted(result.frames) == list(range(1, 13))
    for files in result.frames.values():
        assert len(files) == 1
        assert_colour(files[0])


BROKEN_HISTORY = {
    "huge-chunked": huge_undeclared,
    "huge-declared": huge_declared,
    "truncated": truncated,
    "malformed": malformed,
    "array": json_array,
}
#: The per-frame timeout of the broken-answer cases.
SHORT_TIMEOUT = 2.0


def render_one_frame_from(emu: EmulatorThread, tmp_path: Path, limit: float = HANG_LIMIT) -> BatchResult:
    """Render one frame; ``result(timeout=limit)`` raises if the batch does not end by itself."""
    with cluster(emu) as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1", output=tmp_path / "b.####.png",
                                     retries=0, job_timeout=SHORT_TIMEOUT)
        try:
            result = batch.result(timeout=limit)
        finally:
            batch.cancel()
    return result


@pytest.mark.parametrize("bad", list(BROKEN_HISTORY.values()), ids=list(BROKEN_HISTORY))
def test_a_broken_history_answer_fails_that_frame_within_the_job_timeout(servers, tmp_path, bad):
    """With no websocket the client must read /history; a huge, truncated or malformed
    answer there fails that frame, naming the server, within the job timeout."""
    emu = servers("broken", overrides={"/ws": no_websocket, "/history": bad})
    result = render_one_frame_from(emu, tmp_path)
    assert list(result.failed) == [1]
    err = result.failed[1]
    assert isinstance(err, ServerUnavailable) and err.server == "broken"
    assert "'broken'" in str(err)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_the_frame_error_names_the_broken_history_answer(servers, tmp_path):
    emu = servers("broken", overrides={"/ws": no_websocket, "/history": malformed})
    result = render_one_frame_from(emu, tmp_path)
    assert "invalid JSON" in str(result.failed[1])


def test_a_garbage_answer_to_post_prompt_is_a_clear_error_and_the_frame_goes_elsewhere(servers, tmp_path):
    good = servers("good")
    bad = servers("liar", overrides={"/prompt": not_json})
    with cluster(bad, good) as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1-6", output=tmp_path / "p.####.png",
                                     retries=2, job_timeout=JOB_TIMEOUT)
        result = batch.result(timeout=HANG_LIMIT)
    assert result.failed == {}
    assert result.by_server == {"good": 6}
    reasons = [r for rs in result.retries.values() for r in rs]
    assert reasons and all(r.startswith("liar:") and "POST /prompt" in r and "invalid JSON" in r for r in reasons)


def test_a_websocket_of_pure_junk_falls_back_to_history(servers, tmp_path):
    """Broken JSON, a 4 MB text frame, wrong types and unknown binary frames on the socket:
    the tracker survives them and the prompt is still followed to its end."""
    emu = servers("junk-ws", overrides={"/ws": garbage_websocket})
    with cluster(emu) as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1-3", output=tmp_path / "w.####.png",
                                     retries=0, job_timeout=15.0)
        result = batch.result(timeout=HANG_LIMIT)
    assert result.failed == {}
    for files in result.frames.values():
        assert_colour(files[0])


def test_a_body_that_drips_forever_is_bounded_by_the_job_timeout(servers, tmp_path):
    """One byte every half second never trips a socket read timeout; the frame must still end."""
    emu = servers("drip", overrides={"/ws": no_websocket, "/history": slow_drip})
    result = render_one_frame_from(emu, tmp_path)   # the drip lasts 300 s: ending at all is the point
    assert list(result.failed) == [1] and "'drip'" in str(result.failed[1])


# --------------------------------------------------------------------------- config smuggling

SMUGGLED = {
    "ip-path": ({"ip": "127.0.0.1/../admin"}, "ip"),
    "ip-port": ({"ip": "127.0.0.1:9999"}, "ip"),
    "ip-userinfo": ({"ip": "user:pw@127.0.0.1"}, "ip"),
    "ip-scheme": ({"ip": "http://127.0.0.1"}, "ip"),
    "ip-crlf": ({"ip": "127.0.0.1\r\nX-Evil: 1"}, "ip"),
    "ip-query": ({"ip": "127.0.0.1?x=1"}, "ip"),
    "name-traversal": ({"name": "../../etc/cron.d/x"}, "name"),
    "name-nul": ({"name": "gpu\x0001"}, "name"),
    "port-text": ({"port": "8188/../x"}, "port"),
    "scheme-file": ({"scheme": "file"}, "scheme"),
    "header-name-crlf": ({"headers": {"X-A\r\nX-B": "1"}}, "headers"),
    "header-value-crlf": ({"headers": {"X-A": "1\r\nAuthorization: Bearer stolen"}}, "headers"),
    "header-value-nul": ({"headers": {"X-A": "1\x00"}}, "headers"),
    "header-authorization": ({"headers": {"Authorization": "Bearer inline"}}, "headers"),
    "header-cookie": ({"headers": {"Cookie": "session=1"}}, "headers"),
    "token-env-expr": ({"auth_token_env": "$(cat /etc/passwd)"}, "auth_token_env"),
    "dir-nul": ({"dir_local": "/mnt/a\x00b", "dir_remote": "/srv/x"}, "dir_local"),
}


@pytest.mark.parametrize("fields, field", list(SMUGGLED.values()), ids=list(SMUGGLED))
def test_config_values_that_smuggle_paths_or_headers_are_rejected(fields, field):
    entry = {"name": "gpu-01", "ip": "127.0.0.1", "port": 8188, **fields}
    with pytest.raises(ConfigError) as caught:
        parse_servers(json.dumps([entry]))
    text = str(caught.value)
    assert text.startswith("NUKE_COMFYUI_SERVERS[0]") and f"{field}:" in text, text
    assert "stolen" not in text and "inline" not in text and "session=1" not in text


@pytest.mark.parametrize("header", ["Host", "Content-Length", "Transfer-Encoding", "Connection"])
def test_headers_that_rewrite_the_request_framing_are_refused(header):
    entry = {"name": "gpu-01", "ip": "127.0.0.1", "port": 8188, "headers": {header: "evil.example"}}
    with pytest.raises(ConfigError, match=header):
        parse_servers(json.dumps([entry]))


# --------------------------------------------------------------------------- secrets


async def unauthorized(request: web.Request) -> web.Response:
    return web.Response(status=401, text="401: token " + request.headers.get("Authorization", ""))


def test_bearer_token_never_reaches_logs_errors_status_or_files(servers, tmp_path, caplog):
    """A token used on every request, through an auth failure, a failing node and a server
    error: it appears in no log record, error, repr, status snapshot, journal or output."""
    secret = "s3cr3t-TOKEN-4f9d2b77e1"
    caplog.set_level(logging.DEBUG)
    good = servers("good")
    denied = servers("denied", overrides={"/prompt": unauthorized})
    failing = servers("failing", fail_node="SaveImage", fail_message="boom")
    environ = {"STUDIO_COMFY_TOKEN": secret}
    out = tmp_path / "out"
    with cluster(good, denied, failing, environ=environ, auth_token_env="STUDIO_COMFY_TOKEN") as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1-8", output=out / "s.####.png", retries=3,
                                     job_timeout=JOB_TIMEOUT)
        result = batch.result(timeout=HANG_LIMIT)
        snapshot = json.dumps(pool.snapshot().to_dict())
        reprs = " ".join(repr(x) for x in (pool, *pool.servers, *(s.config for s in pool.servers)))
        dumps = " ".join(json.dumps(s.config.model_dump()) for s in pool.servers)
        errors = " ".join(f"{e!s} {e!r}" for e in result.failed.values())
        reasons = json.dumps(result.retries)
    assert any("denied" in r for rs in result.retries.values() for r in rs), "the 401 path was not exercised"
    haystacks = {
        "logs": "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records) + caplog.text,
        "snapshot": snapshot, "reprs": reprs, "config dumps": dumps, "errors": errors, "retry reasons": reasons,
        "journal": journal_path(out / "s.####.png").read_text(),
    }
    for where, text in haystacks.items():
        assert secret not in text, f"the token leaked into the {where}"
    for path in files_under(out):
        assert secret.encode() not in path.read_bytes(), f"the token leaked into {path}"
    # and it really was sent (the denied server echoed it back in its 401 body)
    assert any("denied" in r and "401" in r for rs in result.retries.values() for r in rs)


def test_submit_errors_are_comfy_cluster_errors(servers, tmp_path):
    """Whatever a hostile server does, the caller only ever sees our error hierarchy."""
    emu = servers("evil", overrides={"/prompt": json_array})
    with cluster(emu) as pool:
        job = run.submit(EMPTY, pool=pool, output_dir=tmp_path, timeout=JOB_TIMEOUT, retries=0)
        with pytest.raises(ComfyClusterError) as caught:
            job.result(timeout=HANG_LIMIT)
    assert isinstance(caught.value, (ProtocolError, ServerUnavailable))
    assert "'evil'" in str(caught.value) and "POST /prompt" in str(caught.value)


# --------------------------------------------------------------------------- outputs that are not what they say

def _view_answering(body: bytes, content_type: str = "image/png") -> Handler:
    async def view(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)
    return view


BAD_VIEWS = {
    "random-bytes": (bytes(range(256)) * 40, "image/png"),
    "cut-off-png": (png_bytes()[:-20], "image/png"),
    "cut-in-pixels": (png_bytes()[:60], "image/png"),
    "html-page": (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "raw-pixels": (Image.new("RGB", (8, 6)).tobytes(), "image/png"),
    "empty": (b"", "image/png"),
}


@pytest.mark.parametrize("bad", list(BAD_VIEWS), ids=list(BAD_VIEWS))
def test_an_output_that_is_not_a_whole_image_is_never_counted_as_rendered(servers, tmp_path, bad):
    """A 200 from /view is not an image: the attempt fails with the reason, and the frame is
    rendered elsewhere; alone on the bad server it fails and nothing takes the frame's name."""
    body, content_type = BAD_VIEWS[bad]
    liar = servers("liar", overrides={"/view": _view_answering(body, content_type)})
    with cluster(liar) as pool:
        result = run.animation_submit(EMPTY, pool=pool, frames="1-3", output=tmp_path / "alone" / "f.####.png",
                                      retries=0, job_timeout=JOB_TIMEOUT).result(timeout=HANG_LIMIT)
    assert sorted(result.failed) == [1, 2, 3] and not result.frames
    assert "delivered output" in str(result.failed[1]) and "liar" in str(result.failed[1])
    assert not [p for p in (tmp_path / "alone").glob("*") if p.name.startswith("f.")]
    honest = servers("honest")
    with cluster(liar, honest) as pool:
        result = run.animation_submit(EMPTY, pool=pool, frames="1-6", output=tmp_path / "both" / "f.####.png",
                                      retries=2, job_timeout=JOB_TIMEOUT).result(timeout=HANG_LIMIT)
    assert result.ok and result.by_server == {"honest": 6}, (result.by_server, result.retries)
    for frame in range(1, 7):
        assert_colour(tmp_path / "both" / f"f.{frame:04d}.png")
    assert any("liar" in reason for reasons in result.retries.values() for reason in reasons)


async def history_without_outputs(request: web.Request) -> web.Response:
    """/history/{id} says the prompt succeeded and lists no output at all."""
    pid = request.path.rsplit("/", 1)[-1]
    entry = {"prompt": [0, pid, {}, {}, []], "outputs": {},
             "status": {"status_str": "success", "completed": True, "messages": []}, "meta": {}}
    return web.json_response({pid: entry})


def test_a_finished_prompt_without_outputs_is_a_failed_attempt(servers, tmp_path):
    empty = servers("empty", overrides={"/history/": history_without_outputs, "/ws": no_websocket})
    with cluster(empty) as pool:
        result = run.animation_submit(EMPTY, pool=pool, frames="1-2", output=tmp_path / "f.####.png",
                                      retries=0, job_timeout=JOB_TIMEOUT).result(timeout=HANG_LIMIT)
    assert sorted(result.failed) == [1, 2] and not result.frames
    assert "reported no output file" in str(result.failed[1]), result.failed[1]


class ResetAfterSubmit(ComfyEmulator):
    """Queues every POST /prompt, then resets the connection instead of answering."""

    def make_app(self) -> web.Application:
        app = super().make_app()

        @web.middleware
        async def reset(request: web.Request, handler: Handler) -> web.StreamResponse:
            response = await handler(request)
            if request.method == "POST" and request.path == "/prompt" and request.transport is not None:
                request.transport.abort()
            return response

        app.middlewares.insert(0, reset)
        return app


def test_a_reset_during_submit_asks_the_server_before_sending_the_frame_elsewhere(servers, tmp_path):
    """The prompt landed although the answer was lost: it is followed there, never rendered twice."""
    resetting = EmulatorThread(name="resetting")
    resetting.emulator = ResetAfterSubmit(resetting.base_dir, name="resetting")
    resetting.start()
    try:
        honest = servers("honest")
        with cluster(resetting, honest) as pool:
            result = run.animation_submit(EMPTY, pool=pool, frames="1-6", output=tmp_path / "f.####.png",
                                          retries=2, job_timeout=JOB_TIMEOUT).result(timeout=HANG_LIMIT)
        assert result.ok, result.failed
        executed = [len(requests_history(emu)) for emu in (resetting, honest)]
    finally:
        resetting.stop()
    assert result.by_server.get("resetting"), result.by_server
    assert sum(executed) == 6, f"prompts run per server {executed}: a frame was rendered twice"
    assert not result.retries


def requests_history(emu: EmulatorThread) -> dict:
    import requests

    return requests.get(f"{emu.url}/history", timeout=10).json()


async def other_prompt_id(request: web.Request) -> web.Response:
    """POST /prompt answers 200 with an id that is not the one we sent."""
    if request.method != "POST":
        return web.json_response({"exec_info": {"queue_remaining": 0}})
    return web.json_response({"prompt_id": "not-yours-0000", "number": 1, "node_errors": {}})


def test_a_different_prompt_id_in_the_submit_answer_fails_the_attempt_at_once(servers, tmp_path):
    liar = servers("renamer", overrides={"/prompt": other_prompt_id})
    with cluster(liar) as pool:
        batch = run.animation_submit(EMPTY, pool=pool, frames="1", output=tmp_path / "f.####.png", retries=0,
                                     job_timeout=HANG_LIMIT * 4)
        result = batch.result(timeout=HANG_LIMIT)   # far sooner than the job timeout
    assert sorted(result.failed) == [1]
    assert "queued prompt 'not-yours-0000' instead of ours" in str(result.failed[1]), result.failed[1]


async def hang_forever(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response(status=500)


def test_a_half_alive_server_is_taken_out_of_rotation_and_the_progress_line_names_it(servers, tmp_path):
    """/queue and /system_stats answer, /history never does (and no websocket): its attempts
    time out, it leaves the rotation for the batch, and every frame is rendered elsewhere."""
    from comfy_cluster.cli import Progress

    half = servers("half", overrides={"/history/": hang_forever, "/ws": no_websocket})
    honest = servers("honest", seconds_per_job=0.2)
    with cluster(half, honest) as pool:
        assert wait_until(lambda: all(s.is_available() for s in pool.servers), what="both servers look online")
        batch = run.animation_submit(EMPTY, pool=pool, frames="1-8", output=tmp_path / "f.####.png",
                                     retries=3, job_timeout=JOB_TIMEOUT)
        progress = Progress(8, io.StringIO(), batch=batch)
        assert wait_until(lambda: batch.benched or batch.done, timeout=HANG_LIMIT, what="half benched")
        line = progress.line()
        result = batch.result(timeout=HANG_LIMIT)
    assert result.ok and result.by_server == {"honest": 8}, (result.by_server, result.failed)
    assert list(batch.benched) == ["half"] and "did not finish within" in batch.benched["half"]
    assert "out of rotation: half" in line
