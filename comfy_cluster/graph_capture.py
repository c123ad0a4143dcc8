"""Cut the part of a running ComfyUI graph that feeds one node's input, to run it elsewhere.

A custom node gets the whole API-format prompt of the current run (hidden ``PROMPT``). It
is ComfyUI's live, validated dict: list widgets were unwrapped in place and nodes with
``IS_CHANGED`` carry an ``is_changed`` fingerprint (possibly NaN, which strict JSON
refuses). So the capture copies only ``class_type``, ``inputs`` and ``_meta`` of each
ancestor, re-wraps list constants as ``{"__value__": [...]}``, and ends the sub-graph in a
``SaveImage`` fed by the captured link (comfyui_custom_nodes.md sec. 4).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import WorkflowError
from .workflow import Workflow, is_link

log = logging.getLogger(__name__)

#: Id of the output node added to a captured sub-graph (never a ComfyUI id: those are digits).
OUTPUT_NODE_ID = "comfy_cluster_output"
EXPORT_HINT = "export it from ComfyUI with Save (API Format) (Workflow > Export (API) in the new menu)"


def upstream_workflow(prompt: Mapping[str, Any], node_id: str, input_name: str, *,
                      filename_prefix: str = "comfy_cluster_remote") -> dict[str, Any]:
    """The ancestors of ``prompt[node_id].inputs[input_name]`` plus a SaveImage of that link.

    Raises ``WorkflowError`` naming the node and input when the input is not wired, or when
    the graph links to a node it does not hold.
    """
    node = prompt.get(node_id)
    if not isinstance(node, Mapping):
        raise WorkflowError(f"node {node_id}: not in the prompt of this run")
    link = node.get("inputs", {}).get(input_name)
    if not is_link(link):
        raise WorkflowError(f"node {node_id} input {input_name!r}: not connected; wire the image to render "
                            "remotely into it, or give the node an API-format workflow")
    graph: dict[str, Any] = {}
    todo = [str(link[0])]
    while todo:
        nid = todo.pop()
        if nid in graph:
            continue
        source = prompt.get(nid)
        if not isinstance(source, Mapping) or "class_type" not in source:
            raise WorkflowError(f"node {nid}: linked from the graph upstream of node {node_id} but not in the prompt")
        inputs = {name: _rewrapped(value, f"node {nid} input {name!r}")
                  for name, value in dict(source.get("inputs") or {}).items()}
        graph[nid] = {"class_type": source["class_type"], "inputs": inputs}
        if isinstance(source.get("_meta"), Mapping):
            graph[nid]["_meta"] = dict(source["_meta"])
        todo.extend(str(v[0]) for v in inputs.values() if is_link(v))
    if node_id in graph:
        raise WorkflowError(f"node {node_id}: its own output feeds its input {input_name!r}")
    graph[OUTPUT_NODE_ID] = {"class_type": "SaveImage",
                             "inputs": {"images": [str(link[0]), link[1]], "filename_prefix": filename_prefix},
                             "_meta": {"title": f"output of node {node_id}"}}
    log.debug("captured %d nodes upstream of node %s.%s", len(graph) - 1, node_id, input_name)
    return graph


def _rewrapped(value: Any, where: str) -> Any:
    """A constant the executor unwrapped, back in its wire form; links stay as they are."""
    try:
        value = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise WorkflowError(f"{where}: cannot be sent as JSON ({err})") from None
    if isinstance(value, list) and not is_link(value):
        return {"__value__": value}
    return value


def local_image_files(graph: Mapping[str, Any], resolve: Callable[[str], str | None]) -> dict[str, Path]:
    """``{"<id>.image": file}`` for every LoadImage of ``graph``, so the files travel with it.

    ``resolve`` maps a LoadImage value (``"plate.png [input]"``) to a local path (ComfyUI's
    ``folder_paths.get_annotated_filepath``); a file it cannot find is a ``WorkflowError``
    naming the node.
    """
    files: dict[str, Path] = {}
    for nid, node in graph.items():
        if node.get("class_type") != "LoadImage":
            continue
        name = node.get("inputs", {}).get("image")
        if not isinstance(name, str):
            continue
        path = resolve(name)
        if not path or not Path(path).is_file():
            raise WorkflowError(f"node {nid} LoadImage input 'image': {name!r} is not in ComfyUI's input folder")
        files[f"{nid}.image"] = Path(path)
    return files


def parse_api_workflow(text: str, *, where: str = "workflow_json") -> Workflow:
    """An API-format workflow from pasted JSON; a ``WorkflowError`` that says how to export one."""
    if not text.lstrip().startswith("{"):
        raise WorkflowError(f"{where}: expected an API-format workflow (a JSON object); {EXPORT_HINT}")
    try:
        return Workflow.load(text)
    except WorkflowError as err:
        raise WorkflowError(f"{where}: {err.message}; {EXPORT_HINT}") from None
