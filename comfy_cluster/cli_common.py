"""What every ``comfy-cluster`` command module shares: exit codes, the usage error, the
parser that raises it, the configuration every command loads, and plain-text tables.

Kept apart from ``cli.py`` so the command groups in ``cli_pods.py``, ``cli_tunnel.py`` and
``cli_config.py`` import it without importing the command line that registers them.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad command line; shown as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are ``UsageError`` (one line, exit 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def cluster_config(args: argparse.Namespace) -> Any:
    """The one loading path of every command: ``--servers FILE`` replaces ``NUKE_COMFYUI_SERVERS`` only."""
    from .config_load import load_config

    return load_config(os.environ, servers_file=args.servers)


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.1f}G"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    minutes, sec = divmod(int(s), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Parser", "UsageError", "cluster_config",
           "fmt_bytes", "fmt_seconds", "table"]
