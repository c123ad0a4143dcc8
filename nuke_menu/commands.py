"""The ComfyUI Cluster menu: its commands, and ``install`` that adds them (GUI only).

Each command turns a ``ComfyClusterError`` into a dialog that says what went wrong, and
any other error into a dialog plus a traceback in the log, so a click never fails silently.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any, Callable, TypeVar

import nuke

from comfy_cluster.errors import ComfyClusterError
from comfy_cluster.frames import FrameSpec

from . import core, render_node, submit
from . import settings as s

log = logging.getLogger(__name__)

MENU_NAME = "ComfyUI Cluster"
PANEL_ID = "uk.co.comfy_cluster.status"
PANEL_TITLE = "ComfyUI Cluster"
#: The widget, as the string of code Nuke evaluates in its own namespace (not ours).
PANEL_WIDGET = "__import__('nuke_menu.panel', fromlist=['StatusPanel']).StatusPanel"
ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icons", "comfy_cluster.png")

F = TypeVar("F", bound=Callable[..., Any])


def gui_action(title: str) -> Callable[[F], F]:
    """Show errors of a menu command as a dialog titled ``title``."""
    def wrap(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except ComfyClusterError as err:
                nuke.message(f"{title}: {err}")
            except Exception as err:
                log.exception("%s failed", title)
                nuke.message(f"{title} failed: {type(err).__name__}: {err}")
            return None
        return run  # type: ignore[return-value]
    return wrap


def _selected_render_nodes() -> list[nuke.Node]:
    found = [n for n in nuke.selectedNodes() if render_node.is_render_node(n)]
    if not found:
        raise ComfyClusterError("select one or more ComfyUI Render nodes first")
    return found


def _target_names() -> list[str]:
    pool = core.current_pool()
    try:
        return core.target_names(pool) if pool is not None else [s.TARGET_AUTO, s.TARGET_RUNPOD]
    except ComfyClusterError:
        return [s.TARGET_AUTO, s.TARGET_RUNPOD]


@gui_action("Create ComfyUI Render")
def create_render_node() -> nuke.Node:
    return render_node.create(_target_names())


@gui_action("Submit to ComfyUI Cluster")
def submit_selected() -> list[submit.Submission]:
    return submit.submit_nodes(_selected_render_nodes())


@gui_action("Render frame range")
def render_range() -> list[submit.Submission]:
    nodes = _selected_render_nodes()
    first = nodes[0]
    default = f"{first[s.KNOB_FIRST].value()}-{first[s.KNOB_LAST].value()}"
    text = nuke.getInput("Frame range to render (e.g. 1001-1100 or 1001-1100x2)", default)
    if text is None:
        return []
    try:
        spec = FrameSpec.parse(text)
    except ValueError as err:
        raise ComfyClusterError(f"frame range {text!r}: {err}") from err
    step = spec.frames[1] - spec.frames[0] if len(spec) > 1 else 1
    if FrameSpec.from_range(spec.first, spec.last, step) != spec:
        raise ComfyClusterError(f"frame range {text!r}: give one range, first-last or first-lastxstep")
    for node in nodes:
        node[s.KNOB_MODE].setValue(s.Mode.RANGE.value)
        node[s.KNOB_USE_INPUT_RANGE].setValue(False)
        node[s.KNOB_FIRST].setValue(spec.first)
        node[s.KNOB_LAST].setValue(spec.last)
        node[s.KNOB_STEP].setValue(step)
    return submit.submit_nodes(nodes)


@gui_action("Iterate")
def iterate() -> list[submit.Submission]:
    nodes = _selected_render_nodes()
    text = nuke.getInput("How many variations?", str(nodes[0][s.KNOB_ITERATIONS].value()))
    if text is None:
        return []
    if not text.strip().isdigit() or int(text) < 1:
        raise ComfyClusterError(f"iterations: {text!r} is not a whole number of 1 or more")
    for node in nodes:
        node[s.KNOB_MODE].setValue(s.Mode.ITERATIONS.value)
        node[s.KNOB_ITERATIONS].setValue(int(text))
    return submit.submit_nodes(nodes)


@gui_action("Server status")
def show_status_panel() -> Any:
    import nukescripts

    panel = nukescripts.panels.registerWidgetAsPanel(PANEL_WIDGET, PANEL_TITLE, PANEL_ID, True)
    panel.addToPane(nuke.getPaneFor("Properties.1"))
    return panel


@gui_action("RunPod always-on worker")
def toggle_always_on() -> threading.Thread:
    """Flip the always-on worker on a background thread; the answer comes back as a dialog."""
    pool = core.shared_pool()
    runpod = pool.snapshot().runpod
    if runpod is None or core.runpod_admin(pool) is None:
        raise ComfyClusterError("RunPod is not configured (RUNPOD_ENDPOINT_ID, RUNPOD_API_KEY)")
    turn_on = not (runpod.get("workers_min") or 0) >= 1

    def flip() -> None:
        try:
            text = f"RunPod always-on worker: {core.set_always_on(pool, turn_on)}"
        except ComfyClusterError as err:
            text = f"RunPod always-on worker: {err}"
        nuke.executeInMainThread(nuke.message, (text,))

    thread = threading.Thread(target=flip, name="comfy-cluster always-on", daemon=True)
    thread.start()
    return thread


COMMANDS: tuple[tuple[str, Callable[[], Any], str], ...] = (
    ("Create ComfyUI Render", create_render_node, ""),
    ("Submit selected", submit_selected, "ctrl+alt+r"),
    ("Render frame range...", render_range, ""),
    ("Iterate...", iterate, ""),
    ("Server status", show_status_panel, ""),
    ("Toggle RunPod always-on worker", toggle_always_on, ""),
)


def install() -> None:
    """Add the menu to the Nodes toolbar and the menu bar, and register the dockable panel."""
    if not nuke.GUI:
        return
    import nukescripts

    icon = ICON if os.path.isfile(ICON) else ""
    toolbar = nuke.menu("Nodes").addMenu(MENU_NAME, icon=icon)
    menubar = nuke.menu("Nuke").addMenu(MENU_NAME)
    for name, command, shortcut in COMMANDS:
        toolbar.addCommand(name, command, "")
        menubar.addCommand(name, command, shortcut)  # a shortcut once: a second one would override it
    nukescripts.panels.registerWidgetAsPanel(PANEL_WIDGET, PANEL_TITLE, PANEL_ID)
