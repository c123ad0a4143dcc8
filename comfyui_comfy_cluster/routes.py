"""The cluster routes on ComfyUI's server, and the pushed ``comfy_cluster.status`` event.

Handlers run on ComfyUI's event loop, so every core call (network) goes through
``run_in_executor``. Registered at import time on ``PromptServer.instance.routes``, so each
route also answers under ``/api`` (what the frontend's ``api.fetchApi`` calls).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiohttp import web
from server import PromptServer

from comfy_cluster.app_session import comparable

from .session import SESSION

log = logging.getLogger(__name__)

STATUS_EVENT = "comfy_cluster.status"
#: The longest a pushed status may lag a change the pool did not announce (queue depth).
PUSH_INTERVAL_S = 2.0

_toggle_lock = asyncio.Lock()


async def _answer(call: Callable[[], dict[str, Any]]) -> web.Response:
    loop = asyncio.get_running_loop()
    try:
        body = await loop.run_in_executor(None, call)
    except Exception as err:  # every failure is an answer the page can show
        return web.json_response(SESSION.error_answer(err))
    return web.json_response(body)


async def cluster_status(request: web.Request) -> web.Response:
    return await _answer(SESSION.cluster_status)


async def worker_status(request: web.Request) -> web.Response:
    return await _answer(SESSION.worker_status)


async def set_min_workers(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        n = body["workersMin"]
        if not isinstance(n, int) or isinstance(n, bool) or n not in (0, 1):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return web.json_response({"status": "error", "message": 'body must be {"workersMin": 0} or {"workersMin": 1}'},
                                 status=400)
    async with _toggle_lock:  # rapid clicks queue up here; each one reads the state back
        return await _answer(lambda: SESSION.set_min_workers(n))


async def _push_status() -> None:
    """Send the pool snapshot to every page when it changes (checked on pool events and every few s)."""
    loop = asyncio.get_running_loop()
    last: Any = None
    while True:
        try:
            pool = await loop.run_in_executor(None, SESSION.pool)
            await loop.run_in_executor(None, pool.wait_for_change, PUSH_INTERVAL_S)
            snapshot = await loop.run_in_executor(None, SESSION.cluster_status)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            snapshot = SESSION.error_answer(err)
            await asyncio.sleep(PUSH_INTERVAL_S)
        if comparable(snapshot) != last:
            last = comparable(snapshot)
            PromptServer.instance.send_sync(STATUS_EVENT, snapshot)


def register() -> None:
    """Add the routes (import time: before ComfyUI copies them under /api) and start the pusher."""
    server = PromptServer.instance
    routes = server.routes
    routes.get("/comfy_cluster/status")(cluster_status)
    routes.get("/comfy_cluster/workers")(worker_status)
    routes.post("/comfy_cluster/workers/min")(set_min_workers)
    server.loop.create_task(_push_status())
    log.info("comfy_cluster: routes /comfy_cluster/{status,workers,workers/min} registered")
