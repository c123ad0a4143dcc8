"""``python -m comfy_cluster``: the same as the ``comfy-cluster`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
