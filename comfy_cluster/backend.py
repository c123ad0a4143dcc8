"""The one surface every backend offers: a ComfyUI server or a RunPod endpoint.

``run.py`` never knows where a prompt ran. It hands a ``PromptRequest`` to whatever backend
the pool leased, and gets back a ``PromptResult`` whose outputs it can fetch to disk. The
backend owns everything in between: staging inputs (upload, shared path or base64),
submitting, following progress, cancelling, and knowing how to read its outputs back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

#: ``on_event(kind, data)``: "submitted" {backend, prompt_id}, "started" {}, "progress"
#: {value, max, node}, "executing" {node}. Called on the backend's worker threads.
EventCallback = Callable[[str, dict[str, Any]], None]


class ServerState(str, Enum):
    """What a backend can do right now, from its status cache (values are lower-case names)."""

    ONLINE = "online"
    BUSY = "busy"
    BOOTING = "booting"
    OFFLINE = "offline"
    DISABLED = "disabled"


@dataclass
class PromptRequest:
    """One prompt to run: the graph with our overrides applied, and the local files it reads."""

    prompt_id: str
    workflow: dict[str, Any]
    inputs: dict[tuple[str, str], Path] = field(default_factory=dict)
    timeout: float = 600.0
    label: str = ""
    batch_id: str = ""      # groups cost and logs per batch (the RunPod ledger's spend per batch)


@dataclass
class OutputRef:
    """One output file of a finished prompt; ``fetch(dest)`` writes its bytes to ``dest``.

    The caller passes a temporary path and renames it into place, so a half-fetched file is
    never seen under its final name.
    """

    filename: str
    node_id: str
    index: int
    fetch: Callable[[Path], None]


@dataclass
class PromptResult:
    """What a backend returns for a prompt that finished."""

    prompt_id: str
    backend: str
    outputs: list[OutputRef]
    elapsed: float
    cost: float = 0.0


@runtime_checkable
class Backend(Protocol):
    """What the pool and the dispatcher need of a place that runs prompts."""

    name: str
    kind: str

    @property
    def enabled(self) -> bool: ...

    @property
    def priority(self) -> int: ...

    @property
    def max_queue(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def seconds_per_job(self) -> float | None: ...

    def is_available(self, classes: frozenset[str] | None = None) -> bool: ...

    def missing_classes(self, classes: frozenset[str]) -> frozenset[str]: ...

    def predicted_finish(self, extra: int = 0) -> float: ...

    def record_result(self, seconds: float | None, ok: bool) -> None: ...

    def run_prompt(self, request: PromptRequest, *, on_event: EventCallback,
                   cancel: threading.Event) -> PromptResult: ...
