"""The ComfyUI Render node: a Group with knobs, and reading those knobs into settings.

The node's own Python (the Submit button) is saved into the script, so it must do
nothing harmful where the plug-in is not installed (a render farm, a colleague's Nuke):
it reports the missing plug-in instead of raising a NameError at load or click time.
"""

from __future__ import annotations

from typing import cast

import nuke

from . import settings as s

NODE_PREFIX = "ComfyUIRender"

#: The Submit button's code, stored in the script: safe without the plug-in.
SUBMIT_COMMAND = (
    "try:\n"
    "    import nuke_menu.submit as _comfy_submit\n"
    "except ImportError as _err:\n"
    "    nuke.message('comfy-cluster is not installed in this Nuke: %s' % _err)\n"
    "else:\n"
    "    _comfy_submit.submit_nodes([nuke.thisNode()])\n"
)


def is_render_node(node: nuke.Node | None) -> bool:
    """True for a Group made by ``create``."""
    return node is not None and node.knob(s.KNOB_MARKER) is not None


def create(target_names: list[str] | None = None) -> nuke.Node:
    """Make a ComfyUI Render node below the selection, its input 0 wired to the selected node."""
    selected = nuke.selectedNodes()
    group = cast(nuke.Group, nuke.createNode("Group", inpanel=False))
    group.setName(f"{NODE_PREFIX}1", uncollide=True)
    with group:
        inputs = []
        for index in range(s.INPUT_COUNT):
            node = nuke.nodes.Input(name=f"in{index}")
            node.setXYpos(index * 110, 0)
            inputs.append(node)
        output = nuke.nodes.Output(inputs=[inputs[0]])
        output.setXYpos(0, 100)
    if selected:  # an empty Group has no input yet when createNode would connect it
        group.setInput(0, selected[-1])
        group.setXYpos(selected[-1].xpos(), selected[-1].ypos() + selected[-1].screenHeight() + 40)
    add_knobs(group, target_names or [s.TARGET_AUTO, s.TARGET_RUNPOD])
    return group


def add_knobs(node: nuke.Node, target_names: list[str]) -> None:
    """Add the Render node's tab and knobs (names from ``settings``)."""
    marker = nuke.Boolean_Knob(s.KNOB_MARKER, "")
    marker.setValue(True)
    marker.setVisible(False)
    node.addKnob(nuke.Tab_Knob("comfyui", "ComfyUI"))
    node.addKnob(marker)
    node.addKnob(nuke.File_Knob(s.KNOB_WORKFLOW, "workflow (API format)"))
    bindings = nuke.Multiline_Eval_String_Knob(s.KNOB_BINDINGS, "inputs")
    bindings.setValue(s.DEFAULT_BINDINGS)
    bindings.setTooltip("One line per Nuke input: '<input number> = NODE.INPUT', e.g. '0 = LoadImage.image'.")
    node.addKnob(bindings)
    values = nuke.Multiline_Eval_String_Knob(s.KNOB_VALUES, "values")
    values.setTooltip("Literal workflow overrides, one per line: 'NODE.INPUT=value', e.g. '3.steps=20'.")
    node.addKnob(values)
    node.addKnob(nuke.Text_Knob("div_frames", "", ""))
    node.addKnob(nuke.Enumeration_Knob(s.KNOB_MODE, "mode", [m.value for m in s.Mode]))
    use_input = nuke.Boolean_Knob(s.KNOB_USE_INPUT_RANGE, "input range")
    use_input.setValue(True)
    use_input.setTooltip("Render the frame range of input 0; off: the first/last/step below.")
    node.addKnob(use_input)
    for name, label, value in ((s.KNOB_FIRST, "first", nuke.root().firstFrame()),
                               (s.KNOB_LAST, "last", nuke.root().lastFrame()), (s.KNOB_STEP, "step", 1)):
        knob = nuke.Int_Knob(name, label)
        knob.setValue(value)
        if name != s.KNOB_FIRST:
            knob.clearFlag(nuke.STARTLINE)
        node.addKnob(knob)
    iterations = nuke.Int_Knob(s.KNOB_ITERATIONS, "iterations")
    iterations.setValue(4)
    node.addKnob(iterations)
    seed_mode = nuke.Enumeration_Knob(s.KNOB_SEED_MODE, "seed", list(s.SEED_MODES))
    seed_mode.clearFlag(nuke.STARTLINE)
    node.addKnob(seed_mode)
    node.addKnob(nuke.Text_Knob("div_output", "", ""))
    output = nuke.File_Knob(s.KNOB_OUTPUT, "output")
    output.setTooltip("A frame pattern such as /renders/sh010/comfy.####.png; empty: beside the script.")
    node.addKnob(output)
    node.addKnob(nuke.Enumeration_Knob(s.KNOB_TARGET, "target", target_names))
    chunk = nuke.Int_Knob(s.KNOB_CHUNK, "chunk size")
    chunk.setValue(1)
    chunk.setTooltip("Frames per prompt; 1 spreads the range over the most GPUs.")
    node.addKnob(chunk)
    wait = nuke.Int_Knob(s.KNOB_WAIT_FOR_SERVER, "wait for server (s)")
    wait.setValue(s.DEFAULT_WAIT_FOR_SERVER)
    wait.setTooltip("While no server (nor RunPod) can take the work, wait this long, then fail saying why.")
    node.addKnob(wait)
    node.addKnob(nuke.PyScript_Knob(s.KNOB_SUBMIT, "Submit", SUBMIT_COMMAND))
    node.addKnob(nuke.Text_Knob(s.KNOB_STATUS, "", ""))


def read_settings(node: nuke.Node) -> s.RenderSettings:
    """The node's knobs as ``RenderSettings``; the range follows input 0 when asked to."""
    bindings, _ = s.parse_bindings(str(node[s.KNOB_BINDINGS].value()))
    first, last = int(node[s.KNOB_FIRST].value()), int(node[s.KNOB_LAST].value())
    if node[s.KNOB_USE_INPUT_RANGE].value():
        first, last = node.firstFrame(), node.lastFrame()
    mode = s.Mode(str(node[s.KNOB_MODE].value()))
    frame = nuke.frame()
    if mode is s.Mode.RANGE or not first <= frame <= last:
        frame = first  # the current frame, unless it lies outside what the input has
    output = str(node[s.KNOB_OUTPUT].value()).strip() or s.default_output(nuke.root().name(), node.name())
    return s.RenderSettings(
        node=node.name(),
        workflow=str(node[s.KNOB_WORKFLOW].value()).strip(),
        bindings=bindings,
        values=s.parse_values(str(node[s.KNOB_VALUES].value())),
        mode=mode,
        first=first,
        last=last,
        step=int(node[s.KNOB_STEP].value()),
        frame=int(frame),
        iterations=int(node[s.KNOB_ITERATIONS].value()),
        seed_mode=str(node[s.KNOB_SEED_MODE].value()),
        output=output,
        target=str(node[s.KNOB_TARGET].value()),
        chunk=int(node[s.KNOB_CHUNK].value()),
        wait_for_server=_wait_for_server(node),
    )


def _wait_for_server(node: nuke.Node) -> float:
    """The knob's value; a node made before the knob existed gets the default."""
    knob = node.knob(s.KNOB_WAIT_FOR_SERVER)
    return float(knob.value()) if knob is not None else float(s.DEFAULT_WAIT_FOR_SERVER)


def binding_problems(node: nuke.Node) -> list[str]:
    """Problems in the bindings text and with the Nuke inputs it names (not connected)."""
    bindings, problems = s.parse_bindings(str(node[s.KNOB_BINDINGS].value()))
    for binding in bindings:
        if node.input(binding.index) is None:
            problems.append(f"input {binding.index} ({binding.spec}) is not connected")
    return problems
