"""Submit Render nodes from ``nuke -t``: the same checks and steps, progress to the log.

    nuke -t /path/to/comfy-cluster/nuke_menu/comfy_cluster_render.py shot.nk ComfyUIRender1 --save

``menu.py`` never runs in terminal mode, so this module needs nothing from it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import nuke

from comfy_cluster.errors import ComfyClusterError

from . import render_node
from .submit import Submission, submit_nodes

log = logging.getLogger(__name__)


def submit(names: list[str], *, pool: Any = None) -> list[Submission]:
    """Submit the named Render nodes and wait; ComfyClusterError if a name is not a Render node."""
    nodes = []
    for name in names:
        node = nuke.toNode(name)
        if node is None or not render_node.is_render_node(node):
            raise ComfyClusterError(f"{name!r} is not a ComfyUI Render node in this script")
        nodes.append(node)
    return submit_nodes(nodes, pool=pool, wait=True)


def main(argv: list[str] | None = None, *, pool: Any = None) -> int:
    """Command line: exit 0 when every node rendered every frame, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="nuke -t headless.py", description=__doc__.splitlines()[0])
    parser.add_argument("script", nargs="?", help="the .nk script to open (default: the open one)")
    parser.add_argument("nodes", nargs="+", help="ComfyUI Render node names")
    parser.add_argument("--save", action="store_true", help="save the script with the new Read nodes")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.script:
        nuke.scriptOpen(args.script)
    try:
        submissions = submit(args.nodes, pool=pool)
    except ComfyClusterError as err:
        log.error("%s", err)
        return 1
    if args.save:
        nuke.scriptSave()
    ok = len(submissions) == len(args.nodes) and all(
        s.outcome is not None and not s.outcome.error and not s.outcome.failed and not s.outcome.cancelled
        for s in submissions)
    return 0 if ok else 1
