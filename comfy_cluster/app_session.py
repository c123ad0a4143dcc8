"""One cluster session inside a long-lived app (ComfyUI's server): the pool and RunPod admin
built once from the environment, and the three status answers its routes serve.

Every method here may touch the network: callers on an event loop run them in an executor.
Answers are plain JSON-able dicts; error messages pass through ``redact`` so neither the API
key nor the endpoint id reaches a browser.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Mapping

from .errors import ComfyClusterError, ConfigError
from .remote_render import RUNPOD_SETUP

log = logging.getLogger(__name__)

#: Fields that change on every probe; a pushed snapshot ignores them when deciding "changed".
_VOLATILE = ("last_status_check",)
#: Shorter "secrets" are not redacted (see ``AppSession._secrets``).
MIN_SECRET_LEN = 6


class AppSession:
    """The pool (started on first use) and the RunPod admin of this process's environment."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        self._lock = threading.Lock()
        self._pool: Any = None
        self._admin: Any = None

    def pool(self) -> Any:
        """The started ``ComfyUIServerPool``; ``ConfigError`` (names the variable) on a bad setup."""
        from .config_load import load_config
        from .pool import ComfyUIServerPool

        with self._lock:
            if self._pool is None:
                cfg = load_config(self._environ)
                pool = ComfyUIServerPool.from_config(cfg, environ=self._environ,
                                                     reload=lambda: load_config(self._environ))
                if cfg.runpod is not None and cfg.runpod.enabled:
                    from .runpod_admin import RunPodAdmin

                    self._admin = RunPodAdmin(cfg.runpod, environ=self._environ)
                self._pool = pool.start()
            return self._pool

    def admin(self) -> Any:
        self.pool()
        if self._admin is None:
            raise ConfigError(RUNPOD_SETUP, server="runpod")
        return self._admin

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._admin = self._pool, None, None
        if pool is not None:
            pool.close()

    # ------------------------------------------------------------------ answers
    def cluster_status(self) -> dict[str, Any]:
        """The pool snapshot: every server (state, queue, GPU, s/job) and the RunPod row."""
        return self._scrub({"status": "ok", **self.pool().snapshot().to_dict()})

    def worker_status(self) -> dict[str, Any]:
        """workersMin/Max from the admin API and running/idle workers from ``/health``."""
        admin = self.admin()
        settings = admin.status()
        endpoint = self.pool().runpod
        endpoint.set_endpoint_settings(settings)
        health = endpoint.update_status()
        return self._scrub({"status": "ok", "workersMin": settings.workers_min, "workersMax": settings.workers_max,
                            "idleTimeout": settings.idle_timeout, "workers": dict(health.workers),
                            "running": health.workers.get("running", 0), "idle": health.workers.get("idle", 0),
                            "state": health.state, "error": health.last_error})

    def set_min_workers(self, n: int) -> dict[str, Any]:
        """Set workersMin (0 or 1 from the button); "already" is an answer, not an error."""
        result = self.admin().set_min_workers(n)
        self.pool().runpod.set_endpoint_settings(result.after)
        before, after = result.before.workers_min, result.after.workers_min
        message = (f"Min workers {before} -> {after}" if result.changed
                   else f"Min workers already {after}: nothing to change")
        return {"status": "ok", "changed": result.changed, "workersMin": after,
                "workersMax": result.after.workers_max, "message": message}

    # ------------------------------------------------------------------ errors
    def error_answer(self, err: BaseException) -> dict[str, Any]:
        """``{"status": "error", "message": ...}`` with no secret in the message."""
        text = str(err) if isinstance(err, ComfyClusterError) else f"unexpected error: {type(err).__name__}"
        if not isinstance(err, ComfyClusterError):
            log.error("cluster route failed", exc_info=err)
        return {"status": "error", "message": self.redact(text)}

    def redact(self, text: str) -> str:
        """``text`` without the RunPod key, server tokens or the endpoint id (named by variable instead)."""
        return redact(text, self._secrets())

    def secret_in(self, *documents: Any) -> str | None:
        """The variable whose key or token appears in any of ``documents`` (JSON-able), else None.

        A key pasted into a widget would travel in every saved workflow and PNG. (The endpoint
        id is kept from browsers but is no credential: a workflow may name it.)
        """
        text = "\n".join(json.dumps(d, default=str) for d in documents if d is not None)
        for value, label in self._secrets().items():
            if value in text and label != "(RUNPOD_ENDPOINT_ID)":
                return label.strip("()")
        return None

    def _scrub(self, answer: Any) -> Any:
        """An answer for a browser: no ``endpoint_id`` field, no secret inside any string."""
        secrets = self._secrets()

        def scrub(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: scrub(v) for k, v in value.items() if k != "endpoint_id"}
            if isinstance(value, (list, tuple)):
                return [scrub(v) for v in value]
            return redact(value, secrets) if isinstance(value, str) else value
        return scrub(answer)

    def _secrets(self) -> dict[str, str]:
        """The values that must never leave the server, each with what to show instead.

        Values under ``MIN_SECRET_LEN`` are left out: replacing "1" everywhere would garble
        every message, and such a value protects nothing anyway.
        """
        secrets = {}
        endpoint_id = (self._environ.get("RUNPOD_ENDPOINT_ID") or "").strip()
        if len(endpoint_id) >= MIN_SECRET_LEN:
            secrets[endpoint_id] = "(RUNPOD_ENDPOINT_ID)"
        for name, value in self._environ.items():
            if name.endswith(("_API_KEY", "_TOKEN")) and len(value.strip()) >= MIN_SECRET_LEN:
                secrets[value.strip()] = f"({name})"
        return secrets


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value replaced by its label; longest values first."""
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, secrets[value])
    return text


def comparable(snapshot: Mapping[str, Any]) -> Any:
    """The snapshot without its per-probe timestamps, to tell a real change from a re-probe."""
    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(snapshot)
