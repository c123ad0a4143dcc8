"""The RunPod HTTP proxy of the pods emulator: ``/{podId}-{port}/...`` to the pod's ComfyUI.

RunPod's proxy (runpod_pods.md §4) is Cloudflare in front of the pod: it answers 502 while
nothing listens on the port (or the port is not exposed as ``N/http``), and 524 when one
answer takes longer than 100 s. Websockets pass through. Production routes on the host
name (``{podId}-{port}.proxy.runpod.net``); on loopback the pod and port are the first path
segment, which ``ServerConfig.base_path`` carries.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

from aiohttp import ClientSession, ClientTimeout, WSMsgType, web

_HOP = ("host", "content-length", "transfer-encoding", "connection")


def _bad_gateway() -> web.Response:
    return web.Response(status=502, text="502 Bad Gateway", content_type="text/html")


class PodProxy:
    """``upstream(pod_id, port)`` gives the pod's ComfyUI URL or None; ``timeout()`` the per-answer limit."""

    def __init__(self, upstream: Callable[[str, int], str | None], timeout: Callable[[], float]) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._http: ClientSession | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{target}/{tail:.*}", self._handle)
        return app

    async def open(self) -> None:
        self._http = ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = re.fullmatch(r"([a-z0-9]+)-(\d+)", request.match_info["target"])
        upstream = self._upstream(match.group(1), int(match.group(2))) if match else None
        if upstream is None or self._http is None:
            return _bad_gateway()
        target = f"{upstream}/{request.match_info['tail']}"
        if request.query_string:
            target += "?" + request.query_string
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, target.replace("http://", "ws://", 1))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            async with self._http.request(request.method, target, headers=headers, data=await request.read(),
                                          timeout=ClientTimeout(total=self._timeout())) as resp:
                body = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in (*_HOP, "content-encoding")}
                return web.Response(status=resp.status, body=body, headers=out)
        except asyncio.TimeoutError:
            return web.Response(status=524, text="524: A timeout occurred", content_type="text/html")
        except OSError:
            return _bad_gateway()

    async def _websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._http is not None
        try:
            upstream = await self._http.ws_connect(target)
        except (OSError, asyncio.TimeoutError):
            return _bad_gateway()
        client = web.WebSocketResponse()
        await client.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break

        tasks = [asyncio.ensure_future(pump(upstream, client)), asyncio.ensure_future(pump(client, upstream))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await upstream.close()
        await client.close()
        return client


__all__ = ["PodProxy"]
