"""comfy-cluster: ComfyUI workflows from Nuke and the shell, spread over a cluster of servers.

Importing the package only adds a ``NullHandler`` to its logger.
"""

from __future__ import annotations

import logging

from .errors import (
    BindingError,
    BudgetExceeded,
    Cancelled,
    ComfyClusterError,
    ConfigError,
    ExecutionFailed,
    JobTimeout,
    MissingNodes,
    ServerTimeout,
    ServerUnavailable,
    TransferError,
    WorkflowError,
    WorkflowRejected,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BindingError",
    "BudgetExceeded",
    "Cancelled",
    "ComfyClusterError",
    "ConfigError",
    "ExecutionFailed",
    "JobTimeout",
    "MissingNodes",
    "ServerTimeout",
    "ServerUnavailable",
    "TransferError",
    "WorkflowError",
    "WorkflowRejected",
    "__version__",
]
