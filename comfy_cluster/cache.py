"""The result cache: never render the same thing twice.

A prompt's key is the sha256 of canonical JSON (sorted keys, no spaces) of:

- the graph as sent, seeds included, with the per-job output prefix the dispatcher sets
  (``comfy_cluster/<run>/<frame>_<attempt>``) replaced by one fixed value, and every input
  that reads a local file replaced by the sha256 of that file's bytes (so a moved plate
  with the same pixels still hits, and a re-exported plate with new pixels misses);
- the kind of backend that rendered it (``comfyui`` or ``runpod``): different builds of
  ComfyUI or other GPUs may give other pixels.

The index lives in the state folder (``<state dir>/result-cache/ab/<key>.json``, one small
file per key, written atomically) and lists the output files a render produced, with their
size and sha256. The outputs themselves stay where the render wrote them. A hit needs
every listed file present and unaltered (size and sha256); its files are then copied to
the frame's output names, or left alone when they already are those names. A frame served
from the cache is recorded in the journal with backend ``"cache"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .backend import OutputRef, PromptRequest
from .ledger import state_dir
from .outputs import OutputNames
from .transfer import atomic_write, file_sha256
from .workflow import Workflow

log = logging.getLogger(__name__)

#: The backend name a cached frame is recorded under (journal, events, summary).
CACHE_BACKEND = "cache"
CACHE_DIR = "result-cache"
_FIXED_PREFIX = "comfy_cluster/cached"


def kinds_for(backends: Iterable[Any], target: str | None) -> list[str]:
    """The backend kinds a frame could run on for ``target`` (auto: every kind in the pool)."""
    if target and (target == "runpod" or target.startswith("runpod:")):
        return ["runpod"]
    kinds = []
    for backend in backends:
        if target not in (None, "", "auto") and backend.name != target:
            continue
        kind = str(getattr(backend, "kind", "comfyui"))
        if kind not in kinds:
            kinds.append(kind)
    return kinds


class ResultCache:
    """The index of earlier renders, by key; ``restore`` and ``store`` are all ``run.py`` calls."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.directory = Path(directory) if directory is not None else state_dir(environ) / CACHE_DIR

    def __repr__(self) -> str:
        return f"ResultCache({str(self.directory)!r})"

    def key(self, request: PromptRequest, kind: str) -> str | None:
        """The key of ``request`` rendered on a ``kind`` backend; None when an input file cannot be read."""
        graph = Workflow.from_dict(request.workflow).with_output_prefix(_FIXED_PREFIX).to_dict()
        for (node_id, input_name), path in sorted(request.inputs.items()):
            try:
                graph[node_id]["inputs"][input_name] = "sha256:" + file_sha256(path)
            except (OSError, KeyError, TypeError):
                return None
        text = json.dumps({"workflow": graph, "kind": kind}, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _entry_path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def _entry(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._entry_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None

    def restore(self, request: PromptRequest, frames: tuple[int, ...], names: OutputNames,
                kinds: Iterable[str], *, run: str = "") -> dict[int, list[Path]] | None:
        """Put an earlier render's files at ``frames``' output names, or None (render it).

        Every listed file must be present with its recorded size and sha256; a missing or
        altered file makes it a miss (logged), and the frame is rendered again. Entries made
        by the same ``run`` are not used: within one run every frame renders, so what a run
        sends never depends on which of its identical frames finished first.
        """
        for kind in kinds:
            key = self.key(request, kind)
            entry = self._entry(key) if key is not None else None
            if entry is None or key is None or (run and entry.get("run") == run):
                continue
            files = self._valid(entry, len(frames))
            if files is None:
                continue
            placed: dict[int, list[Path]] = {f: [] for f in frames}
            moved = []
            for item in files:
                frame = frames[item["pos"]]
                src = Path(item["path"])
                ref = OutputRef(filename=item["filename"], node_id="", index=item["index"], fetch=_copier(src))
                dest = names.path(frame, item["index"], ref)
                if not _same_file(src, dest):
                    atomic_write(dest, ref.fetch)
                placed[frame].append(dest)
                moved.append({**item, "path": str(dest)})  # the newest copy is the one checked next time
            log.info("%s: unchanged since an earlier render (%s), %d file(s) reused from the cache",
                     request.label or request.prompt_id, kind, len(files))
            self._write(key, kind, moved, str(entry.get("run", "")))
            return placed
        return None

    def _valid(self, entry: dict[str, Any], count: int) -> list[dict[str, Any]] | None:
        files = entry["files"]
        if not files:
            return None
        for item in files:
            try:
                path, pos = Path(item["path"]), int(item["pos"])
                if pos >= count or path.stat().st_size != int(item["size"]):
                    raise ValueError("size")
                if file_sha256(path) != item["sha256"]:
                    raise ValueError("content")
            except (OSError, KeyError, TypeError, ValueError) as err:
                log.info("result cache: %s is missing or altered (%s): rendering again", item.get("path"),
                         getattr(err, "strerror", None) or err)
                return None
        return files

    def store(self, request: PromptRequest, files: Mapping[int, list[Path]], *, kind: str, run: str = "") -> None:
        """Record the files a render of ``request`` wrote (frames in ``files``' order)."""
        key = self.key(request, kind)
        if key is None or not files:
            return
        frames = tuple(files)
        items = [{"pos": pos, "index": index, "filename": path.name, "path": str(path),
                  "size": path.stat().st_size, "sha256": file_sha256(path)}
                 for pos, frame in enumerate(frames) for index, path in enumerate(files[frame])]
        self._write(key, kind, items, run)

    def _write(self, key: str, kind: str, items: list[dict[str, Any]], run: str) -> None:
        text = json.dumps({"key": key, "kind": kind, "run": run, "time": time.time(), "files": items}, indent=1)
        try:
            atomic_write(self._entry_path(key), _text_writer(text))
        except OSError as err:  # the cache is an optimisation: a full disk must not fail the frame
            log.warning("result cache: could not record %s: %s", key[:12], err.strerror or err)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _copier(src: Path) -> Callable[[Path], None]:
    def copy(dest: Path) -> None:
        shutil.copyfile(src, dest)
    return copy


def _text_writer(text: str) -> Callable[[Path], None]:
    def write(dest: Path) -> None:
        Path(dest).write_text(text, encoding="utf-8")
    return write


__all__ = ["CACHE_BACKEND", "ResultCache", "kinds_for"]
