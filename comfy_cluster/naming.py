"""Output naming: which local file each image a server delivers goes to.

An animation writes frame ``f``'s k-th image to its ``FramePattern`` name, an iteration batch
formats ``{iteration}`` in, a single job keeps the server's file name inside a folder. A
chunk of frames (one prompt renders several) hands each output node's j-th image to the
chunk's j-th frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .backend import OutputRef, PromptResult
from .errors import WorkflowError
from .frames import FramePattern
from .jobs import FrameTask
from .transfer import safe_output_name

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


__all__ = ["FolderNames", "IterationNames", "OutputNames", "PatternNames", "assign_outputs", "iteration_names"]
