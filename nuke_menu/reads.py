"""Result Read nodes: one below the Render node, created or updated in place.

A range becomes one Read of the output sequence with its first and last frame; iterations
become a row of Reads, one per variation, each labelled with its seed. Reads are found
again by name, so a second submit updates them instead of stacking new ones.
"""

from __future__ import annotations

from typing import Any, cast

import nuke

#: Vertical gap between the Render node and its Read, in node-graph units.
GAP = 60
#: Horizontal gap between iteration Reads.
ROW_GAP = 30
#: ``tile_color`` of a Render node with failed frames (0xRRGGBBAA); 0 is Nuke's default.
FAILED_COLOR = 0xC8282DFF


def read_name(render: nuke.Node, variation: int | None = None) -> str:
    """``ComfyUIRender1_Read``, or ``ComfyUIRender1_Read_v3`` for variation 3."""
    base = f"{render.name()}_Read"
    return base if variation is None else f"{base}_v{variation}"


def place_read(render: nuke.Node, text: str, *, variation: int | None = None, column: int = 0,
               label: str = "") -> nuke.Node:
    """Create or update the Read named for ``render``/``variation`` from ``fromUserText`` text.

    ``text`` is ``"/p/name.####.png 1001-1100"`` for a sequence or a plain path for a still.
    """
    name = read_name(render, variation)
    with nuke.root():
        read = nuke.toNode(name)
        if read is None or read.Class() != "Read":
            read = nuke.nodes.Read(name=name)
    cast(nuke.File_Knob, read["file"]).fromUserText(text)
    read["label"].setValue(label)
    x = render.xpos() + column * (read.screenWidth() + ROW_GAP)
    read.setXYpos(x, render.ypos() + render.screenHeight() + GAP)
    reload_knob: Any = read.knob("reload")
    if reload_knob is not None and hasattr(reload_knob, "execute"):
        reload_knob.execute()  # drop Nuke's cached frames of a re-rendered sequence
    return read


def mark(render: nuke.Node, failed: bool, status: str) -> None:
    """Colour the Render node red when frames failed (default colour otherwise), set its status line."""
    render["tile_color"].setValue(FAILED_COLOR if failed else 0)
    status_knob = render.knob("status")
    if status_knob is not None:
        status_knob.setValue(status)
