"""Bucket outputs: worker-comfyui with BUCKET_ENDPOINT_URL answers ``{"type": "s3_url", "data": url}``
(handler.py 5.8.5); the emulated RunPod serves such presigned URLs on loopback. They come back
as files, streamed and size-capped, and no signature reaches a message or a log line."""

from __future__ import annotations

import logging
import threading

import pytest
import requests

from comfy_cluster import run
from comfy_cluster.backend import PromptRequest
from comfy_cluster.config import RunPodConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import TransferError
from comfy_cluster.ledger import CostLedger
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.bucket import download_url, redact_url
from comfy_cluster.runpod import RunPodEndpoint

KEY = "rpa_BUCKET_T3ST_9f8e7d6c"
EID = "ep-bucket"
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": 0x3366}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bk"}}}


@pytest.fixture
def emu():
    worker = EmulatorThread(name="rp-bucket-worker").start()
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[worker.url]).start()
    try:
        yield emu
    finally:
        emu.stop()
        worker.stop()


def endpoint(emu, tmp_path) -> RunPodEndpoint:
    cfg = RunPodConfig(endpoint_id=EID, base_url=emu.base_url, status_poll_min=0.05, status_poll_max=0.3)
    return RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": KEY}, ledger=CostLedger(tmp_path / "state"))


def run_one(ep: RunPodEndpoint):
    return ep.run_prompt(PromptRequest("p-bucket", WORKFLOW, timeout=30), on_event=lambda *a: None,
                         cancel=threading.Event())


def test_bucket_urls_come_back_as_the_same_files_as_base64(emu, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ep = endpoint(emu, tmp_path)
    inline = run_one(ep).outputs
    inline[0].fetch(tmp_path / "inline.png")
    emu.set(s3_outputs=True)
    bucket = ep.run_prompt(PromptRequest("p-bucket-2", WORKFLOW, timeout=30), on_event=lambda *a: None,
                           cancel=threading.Event()).outputs
    assert len(bucket) == 1 and bucket[0].filename.endswith(".png")
    bucket[0].fetch(tmp_path / "bucket.png")
    assert (tmp_path / "bucket.png").read_bytes() == (tmp_path / "inline.png").read_bytes()
    assert sum(1 for m, p in emu.requests if m == "GET" and p.startswith("/_s3/")) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "X-Amz-Signature" not in logged and "X-Amz-Credential" not in logged and KEY not in logged


def test_a_render_with_bucket_outputs_writes_the_frames(emu, tmp_path):
    emu.set(s3_outputs=True)
    pool = ComfyUIServerPool([], runpod=endpoint(emu, tmp_path), poll_interval=0.2).start()
    try:
        result = run.animation_submit(WORKFLOW, pool=pool, frames="1-3", output=str(tmp_path / "out/b.####.png"),
                                      target="runpod").result(timeout=60)
    finally:
        pool.close()
    assert result.ok and result.by_server == {"runpod": 3}
    files = [p for paths in result.frames.values() for p in paths]
    assert len(files) == 3 and all(p.read_bytes().startswith(b"\x89PNG") for p in files)


def test_the_size_cap_stops_a_download_without_leaking_the_signature(emu, tmp_path):
    emu.set(s3_outputs=True)
    ep = endpoint(emu, tmp_path)
    ep.max_output_bytes = 20
    ref = run_one(ep).outputs[0]
    with pytest.raises(TransferError) as caught:
        ref.fetch(tmp_path / "capped.png")
    assert "20-byte limit" in str(caught.value) and "X-Amz-Signature" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_an_expired_url_is_a_clear_error(emu, tmp_path):
    url = f"{emu.url}/_s3/job-gone.png?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    assert requests.get(url, timeout=5).status_code == 404
    with pytest.raises(TransferError, match=r"GET http://127\.0\.0\.1:\d+/_s3/job-gone\.png answered HTTP 404") as caught:
        download_url(url, tmp_path / "x.png", what="job j1: output x.png", limit=1 << 20, server="runpod")
    assert "deadbeef" not in str(caught.value) and "AKIA" not in str(caught.value)
    assert not (tmp_path / "x.png").exists()
    assert redact_url("https://user:pw@bucket.example:9000/a/b.png?sig=1") == "https://bucket.example:9000/a/b.png"


def test_a_dripping_url_is_stopped_by_the_whole_body_deadline(tmp_path):
    """Each byte arrives well inside the read timeout; only the deadline for the whole body stops it."""
    import http.server
    import time

    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not stop.is_set():
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.02)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/drip.png?X-Amz-Signature=deadbeef"
    try:
        with pytest.raises(TransferError, match="still arriving after 0.5 s") as caught:
            download_url(url, tmp_path / "d.png", what="job j2: output d.png", limit=1 << 20, server="runpod",
                         timeout=5, total=0.5)
        assert "deadbeef" not in str(caught.value)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
