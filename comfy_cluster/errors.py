"""The one exception hierarchy of comfy-cluster.

Retry policy lives in the hierarchy, the way requests marks ``ConnectTimeout`` as safe to
retry:

- ``ServerUnavailable`` and its subclasses: the backend failed, not the work. Safe to
  resubmit the same prompt elsewhere.
- ``WorkflowError`` and its subclasses: the work itself is wrong. Never retried blindly;
  only an error that is specific to one server (``server_specific``: a missing node class,
  out of memory) moves the work to another backend.

Every error carries ``server`` (a backend name) and, where known, ``prompt_id``. Messages
never contain secrets: tokens and API keys are not known to the code that builds them.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

#: How many items of a list an error message shows before "... and N more".
LIST_LIMIT = 10


def capped(items: Iterable[str], limit: int = LIST_LIMIT) -> list[str]:
    """The first ``limit`` items, then one ``... and N more`` line: an error stays readable at scale.

    >>> capped(["a", "b", "c"], limit=2)
    ['a', 'b', '... and 1 more']
    """
    items = list(items)
    if len(items) <= limit:
        return items
    return [*items[:limit], f"... and {len(items) - limit} more"]


class ComfyClusterError(Exception):
    """Base of every error raised by comfy-cluster."""

    def __init__(self, message: str, *, server: str | None = None, prompt_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.server = server
        self.prompt_id = prompt_id

    def __str__(self) -> str:
        return self.message


class ConfigError(ComfyClusterError, ValueError):
    """The configuration is invalid. The message names the source, the server and the field."""


class ServerUnavailable(ComfyClusterError):
    """The server refused, reset, failed (5xx) or vanished. Safe to resubmit elsewhere."""


class ServerTimeout(ServerUnavailable):
    """A call to the server timed out. Safe to resubmit elsewhere."""


class ProtocolError(ServerUnavailable):
    """The server answered with something that is not the protocol (bad JSON, huge body)."""


class JobTimeout(ServerUnavailable):
    """A prompt did not finish in time (a hung server). Safe to resubmit elsewhere."""


class NoBackendAvailable(ComfyClusterError):
    """No enabled backend is online, so there is nowhere to send the work right now."""


class WorkflowError(ComfyClusterError):
    """The workflow is wrong. Never retried blindly.

    ``server_specific`` is True when another server could still run it (a node class
    missing on this server, out of memory on this GPU).
    """

    server_specific: bool = False


class BindingError(WorkflowError, ValueError):
    """A ``NODE.INPUT`` binding names no node, or more than one. The message lists candidates."""


class WorkflowRejected(WorkflowError):
    """ComfyUI refused the prompt (HTTP 400, or 200 carrying ``node_errors``).

    ``node_errors`` is ComfyUI's own dict; ``str(err)`` is a readable line per node and input.
    """

    def __init__(
        self,
        message: str,
        *,
        node_errors: Mapping[str, Any] | None = None,
        error_type: str | None = None,
        server: str | None = None,
        prompt_id: str | None = None,
    ) -> None:
        super().__init__(message, server=server, prompt_id=prompt_id)
        self.node_errors = dict(node_errors or {})
        self.error_type = error_type


class MissingNodes(WorkflowError):
    """The workflow uses node classes a server does not have.

    Raised by one server, it is specific to that server (``server_specific``); raised by
    the pool, it means no server can run the workflow and ``missing`` says what is absent.
    """

    server_specific = True

    def __init__(self, message: str, *, missing: set[str] | frozenset[str], server: str | None = None,
                 prompt_id: str | None = None) -> None:
        super().__init__(message, server=server, prompt_id=prompt_id)
        self.missing = frozenset(missing)


class ExecutionFailed(WorkflowError):
    """A node raised while the prompt ran (ComfyUI ``execution_error``)."""

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
        server: str | None = None,
        prompt_id: str | None = None,
    ) -> None:
        super().__init__(message, server=server, prompt_id=prompt_id)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message

    @property
    def server_specific(self) -> bool:  # type: ignore[override]
        """Out of memory is a property of the GPU, not of the workflow."""
        text = f"{self.exception_type or ''} {self.exception_message or ''}".lower()
        return "outofmemory" in text.replace(" ", "") or "out of memory" in text


class Interrupted(ComfyClusterError):
    """The prompt was interrupted on the server (by us on cancel, or by someone else)."""


class Cancelled(ComfyClusterError):
    """The job or batch was cancelled by the caller."""


class TransferError(ComfyClusterError):
    """An input could not be staged or an output could not be written (path, disk, name)."""


class MissingInputs(TransferError, ValueError):
    """Local input files are missing, unreadable or folders; found before anything was sent.

    ``problems`` holds one line per file; the message lists the first few.
    """

    def __init__(self, message: str, *, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


class TunnelError(ServerUnavailable):
    """An SSH tunnel to a server could not be opened or died. ``field`` names the ``ssh`` setting to fix.

    The server is unreachable, not the work wrong: safe to resubmit elsewhere.
    """

    def __init__(self, message: str, *, field: str | None = None, server: str | None = None) -> None:
        super().__init__(message, server=server)
        self.field = field


class Throttled(ServerUnavailable):
    """A RunPod endpoint answered 429 or has no worker capacity: send the job to the next endpoint."""


class BudgetExceeded(ServerUnavailable):
    """The next RunPod job would pass the daily budget. Nothing was sent: the work runs locally or waits."""


__all__ = [
    "BindingError",
    "BudgetExceeded",
    "Cancelled",
    "ComfyClusterError",
    "ConfigError",
    "ExecutionFailed",
    "Interrupted",
    "JobTimeout",
    "MissingInputs",
    "MissingNodes",
    "NoBackendAvailable",
    "ProtocolError",
    "ServerTimeout",
    "ServerUnavailable",
    "Throttled",
    "TransferError",
    "TunnelError",
    "WorkflowError",
    "WorkflowRejected",
    "capped",
]
