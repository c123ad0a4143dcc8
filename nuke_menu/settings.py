"""What a ComfyUI Render node asks for, as a plain value, and the checks that need no Nuke.

The Render node's knobs are read once into ``RenderSettings`` (see
``render_node.read_settings``); everything after that works on this value, so the rules
below are testable without Nuke. Knob names live here and nowhere else.

Bindings are one line per Nuke input, ``<input number> = <NODE.INPUT>``::

    0 = LoadImage.image
    1 = mask_loader.image

Values are literal workflow overrides, one ``NODE.INPUT=value`` per line (``3.steps=20``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from enum import Enum

from comfy_cluster.frames import FramePattern, FrameSpec

#: Knob names of the ComfyUI Render node.
KNOB_WORKFLOW = "workflow"
KNOB_BINDINGS = "bindings"
KNOB_VALUES = "values"
KNOB_MODE = "mode"
KNOB_USE_INPUT_RANGE = "use_input_range"
KNOB_FIRST = "first"
KNOB_LAST = "last"
KNOB_STEP = "step"
KNOB_ITERATIONS = "iterations"
KNOB_SEED_MODE = "seed_mode"
KNOB_OUTPUT = "output"
KNOB_TARGET = "target"
KNOB_CHUNK = "chunk"
KNOB_WAIT_FOR_SERVER = "wait_for_server"
KNOB_SUBMIT = "submit"
KNOB_STATUS = "status"
#: A hidden knob that marks a Group as a ComfyUI Render node.
KNOB_MARKER = "comfy_cluster_render"

#: How many Nuke inputs a Render node has (each may feed one workflow input).
INPUT_COUNT = 3
#: ``target`` values besides server names.
TARGET_AUTO = "auto"
TARGET_RUNPOD = "runpod"
SEED_MODES = ("random", "increment", "fixed")
#: Seconds a submit waits while no backend can take its work, then fails saying why
#: (``comfy_cluster.batch.WAIT_FOR_SERVER``, ``--wait-for-server`` on the shell).
DEFAULT_WAIT_FOR_SERVER = 300
DEFAULT_BINDINGS = "0 = LoadImage.image"

_BINDING_RE = re.compile(r"^\s*(\d+)\s*[=:]\s*(\S+)\s*$")


class Mode(str, Enum):
    """What one submit renders."""

    SINGLE = "single frame"
    RANGE = "frame range"
    ITERATIONS = "iterations"


@dataclass(frozen=True)
class InputBinding:
    """Nuke input ``index`` feeds the workflow input ``spec`` (``NODE.INPUT``)."""

    index: int
    spec: str


@dataclass(frozen=True)
class RenderSettings:
    """Everything one submit of a Render node needs, read from its knobs."""

    node: str
    workflow: str
    bindings: tuple[InputBinding, ...]
    values: tuple[str, ...]
    mode: Mode
    first: int
    last: int
    step: int
    frame: int
    iterations: int
    seed_mode: str
    output: str
    target: str
    chunk: int
    wait_for_server: float = DEFAULT_WAIT_FOR_SERVER

    @property
    def frames(self) -> FrameSpec:
        """The frames to render: the range, or the one frame of single/iteration mode."""
        if self.mode is Mode.RANGE:
            return FrameSpec.from_range(self.first, self.last, self.step)
        return FrameSpec.from_frames([self.frame])

    @property
    def target_arg(self) -> str | None:
        """``target`` as the core takes it: None for auto."""
        return None if self.target in ("", TARGET_AUTO) else self.target


def parse_bindings(text: str) -> tuple[tuple[InputBinding, ...], list[str]]:
    """Parse the bindings knob: ``(bindings, problems)``; blank lines and ``#`` comments skip.

    >>> parse_bindings("0 = LoadImage.image")[0]
    (InputBinding(index=0, spec='LoadImage.image'),)
    """
    found: list[InputBinding] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _BINDING_RE.match(line)
        if not match:
            problems.append(f"bindings line {number}: {line.strip()!r} is not '<input> = NODE.INPUT'")
            continue
        index, spec = int(match.group(1)), match.group(2)
        if index >= INPUT_COUNT:
            problems.append(f"bindings line {number}: input {index} does not exist (inputs are 0-{INPUT_COUNT - 1})")
        elif any(b.index == index for b in found):
            problems.append(f"bindings line {number}: input {index} is bound twice")
        elif "." not in spec:
            problems.append(f"bindings line {number}: {spec!r} is not NODE.INPUT")
        else:
            found.append(InputBinding(index, spec))
    return tuple(found), problems


def parse_values(text: str) -> tuple[str, ...]:
    """The non-blank, non-comment lines of the values knob."""
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def default_output(script_path: str, node_name: str) -> str:
    """``<script dir>/comfy/<node>/<script>_<node>.####.png``; "" for an unsaved script.

    >>> default_output("/shots/sh010/comp_v003.nk", "ComfyUIRender1")
    '/shots/sh010/comfy/ComfyUIRender1/comp_v003_ComfyUIRender1.####.png'
    """
    if not script_path or script_path == "Root":
        return ""
    script = script_path.replace("\\", "/")  # Nuke paths use forward slashes on every OS
    folder = posixpath.dirname(script)
    stem = posixpath.splitext(posixpath.basename(script))[0]
    return f"{folder}/comfy/{node_name}/{stem}_{node_name}.####.png"


def check(settings: RenderSettings) -> list[str]:
    """Problems that need only the settings themselves (no file, workflow or network)."""
    problems: list[str] = []
    if not settings.workflow.strip():
        problems.append("workflow: no workflow file is set")
    if settings.mode is Mode.RANGE:
        if settings.step < 1:
            problems.append(f"frame range: step must be 1 or more, got {settings.step}")
        if settings.last < settings.first:
            problems.append(f"frame range: last frame {settings.last} is before first frame {settings.first}")
    if settings.mode is Mode.ITERATIONS and settings.iterations < 1:
        problems.append(f"iterations: count must be 1 or more, got {settings.iterations}")
    if settings.seed_mode not in SEED_MODES:
        problems.append(f"seed mode: {settings.seed_mode!r} is not one of {', '.join(SEED_MODES)}")
    if settings.chunk < 1:
        problems.append(f"chunk size: must be 1 or more, got {settings.chunk}")
    if settings.wait_for_server < 0:
        problems.append(f"wait for server: must be 0 or more seconds, got {settings.wait_for_server:g}")
    if not settings.output.strip():
        problems.append("output: no output path is set (save the script first for the default beside it)")
    else:
        try:
            pattern = FramePattern.parse(settings.output)
        except ValueError as err:
            problems.append(f"output: {err}")
        else:
            if settings.mode is not Mode.SINGLE and not pattern.has_token:
                problems.append(f"output: {settings.output!r} needs a frame token such as ####")
    return problems
