"""The hand-written fake ``nuke``/``nukescripts`` packages; ``install()`` puts them on sys.path."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def install() -> None:
    """Make ``import nuke`` find the fake (idempotent)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
