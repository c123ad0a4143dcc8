"""A prompt's outputs: which local file each image a server delivers goes to, and whether
what arrived is what the workflow promised.

An animation writes frame ``f``'s k-th image to its ``FramePattern`` name, an iteration batch
formats ``{iteration}`` in, a single job keeps the server's file name inside a folder. A
chunk of frames (one prompt renders several) hands each output node's j-th image to the
chunk's j-th frame. A finished prompt must deliver a file from every file output node, and
each file is checked to be what its name says before it takes that name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from .backend import OutputRef, PromptResult
from .errors import ProtocolError, WorkflowError, capped
from .frames import FramePattern
from .jobs import FrameTask
from .transfer import output_problem, safe_output_name
from .workflow import Workflow

_ITERATION_RE = re.compile(r"\{iteration(?::([^{}]*))?\}")


class OutputNames(Protocol):
    """Where the ``index``-th image of ``frame`` goes."""

    def path(self, frame: int, index: int, ref: OutputRef) -> Path: ...


@dataclass(frozen=True)
class PatternNames:
    """Frame ``f``'s k-th image goes to ``pattern.with_index(k).format(f)``."""

    pattern: FramePattern

    def path(self, frame: int, index: int, ref: OutputRef) -> Path:
        return Path(self.pattern.with_index(index).format(frame))


@dataclass(frozen=True)
class IterationNames:
    """``look_v{iteration:02d}.png``: the iteration number formatted in, the index as in FramePattern."""

    text: str

    def path(self, frame: int, index: int, ref: OutputRef) -> Path:
        name = _ITERATION_RE.sub(lambda m: format(frame, m.group(1) or ""), self.text)
        return Path(FramePattern.parse(name).with_index(index).format(frame))


@dataclass(frozen=True)
class FolderNames:
    """A single job: the server's own file name, made safe, inside ``folder``."""

    folder: Path

    def path(self, frame: int, index: int, ref: OutputRef) -> Path:
        return self.folder / safe_output_name(ref.filename)


def iteration_names(text: str, count: int) -> OutputNames:
    """The names for ``count`` iterations written to ``text``: ``{iteration}`` or a frame token,
    so that no two variations share a file."""
    if _ITERATION_RE.search(text):
        return IterationNames(text)
    pattern = FramePattern.parse(text)
    if not pattern.has_token and count > 1:
        raise ValueError(f"output {text!r} needs {{iteration}} or a frame token, so that the {count} "
                         "variations get different file names")
    return PatternNames(pattern)


def assign_outputs(task: FrameTask, result: PromptResult) -> list[tuple[int, int, OutputRef]]:
    """(frame, index, ref) for every output. One frame: all its images in order. A chunk of
    N frames: each output node must give N images, the j-th going to the j-th frame."""
    if len(task.frames) == 1:
        return [(task.key, k, ref) for k, ref in enumerate(result.outputs)]
    by_node: dict[str, list[OutputRef]] = {}
    for ref in result.outputs:
        by_node.setdefault(ref.node_id, []).append(ref)
    out: list[tuple[int, int, OutputRef]] = []
    for index, (node, refs) in enumerate(by_node.items()):
        if len(refs) != len(task.frames):
            raise WorkflowError(f"{task.label}: output node {node} gave {len(refs)} images for {len(task.frames)} "
                                "frames; with chunk > 1 the workflow must render one image per frame",
                                server=result.backend, prompt_id=result.prompt_id)
        out.extend((frame, index, ref) for frame, ref in zip(task.frames, refs))
    return out


def check_delivered(label: str, result: PromptResult, file_outputs: Sequence[str], workflow: Workflow, *,
                    files_required: bool) -> None:
    """A finished prompt delivers a file from every file output node (where the backend names
    the node), and at least one file when ``files_required`` (a frame; a single job may have
    no file output at all)."""
    where = f"{label}: server {result.backend!r} finished prompt {result.prompt_id}"
    if not result.outputs:
        if files_required or file_outputs:
            raise ProtocolError(f"{where} but reported no output file", server=result.backend,
                                prompt_id=result.prompt_id)
        return
    if all(ref.node_id for ref in result.outputs):
        got = {ref.node_id for ref in result.outputs}
        silent = [workflow.describe(n) for n in file_outputs if n not in got]
        if silent:
            raise ProtocolError(f"{where} but output node(s) {', '.join(capped(silent))} delivered no file",
                                server=result.backend, prompt_id=result.prompt_id)


def fetch_checked(label: str, result: PromptResult, ref: OutputRef, tmp: Path) -> None:
    """Fetch ``ref`` to ``tmp`` and check it is what its name says (``transfer.output_problem``)."""
    ref.fetch(tmp)
    problem = output_problem(tmp, ref.filename)
    if problem:
        node = f" of node {ref.node_id}" if ref.node_id else ""
        raise ProtocolError(f"{label}: server {result.backend!r} delivered output {ref.filename!r}{node} "
                            f"that is {problem}", server=result.backend, prompt_id=result.prompt_id)


__all__ = ["FolderNames", "IterationNames", "OutputNames", "PatternNames", "assign_outputs", "check_delivered",
           "fetch_checked", "iteration_names"]
