"""comfy-cluster: ComfyUI workflows from Nuke and the shell, spread over a cluster of servers.

Importing the package only adds a ``NullHandler`` to its logger.
"""

from __future__ import annotations

import logging

from . import run
from .config_load import load_config
from .errors import (
    BindingError,
    BudgetExceeded,
    Cancelled,
    ComfyClusterError,
    ConfigError,
    ExecutionFailed,
    JobTimeout,
    MissingInputs,
    MissingNodes,
    ServerTimeout,
    ServerUnavailable,
    TransferError,
    WorkflowError,
    WorkflowRejected,
)
from .jobs import JobState
from .pool import ComfyUIServerPool
from .batch import Batch
from .run import Job, animation_submit, iteration_submit, submit

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Batch",
    "BindingError",
    "BudgetExceeded",
    "Cancelled",
    "ComfyClusterError",
    "ComfyUIServerPool",
    "ConfigError",
    "ExecutionFailed",
    "Job",
    "JobState",
    "JobTimeout",
    "MissingInputs",
    "MissingNodes",
    "ServerTimeout",
    "ServerUnavailable",
    "TransferError",
    "WorkflowError",
    "WorkflowRejected",
    "__version__",
    "animation_submit",
    "iteration_submit",
    "load_config",
    "run",
    "submit",
]
