"""The Remote Render node: ComfyUI's inputs mapped to ``comfy_cluster.remote_render``.

local: the upstream runs here and the image passes through. cluster / runpod: the upstream
is *not* run here (lazy input): its graph, or the pasted API workflow, runs remotely and the
saved images come back as the node's IMAGE batch, shown as a preview.
"""

from __future__ import annotations

import logging
import queue
import uuid
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.utils
import folder_paths
import nodes
import torch
from server import PromptServer

from comfy_cluster import graph_capture, image_batch, remote_render
from comfy_cluster.errors import ComfyClusterError, Interrupted

from .session import SESSION

log = logging.getLogger(__name__)


class RemoteRender:
    """Render the graph upstream of ``image`` (or ``workflow_json``) on the cluster or RunPod."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "mode": (list(remote_render.MODES), {
                    "default": "cluster",
                    "tooltip": "local: run the upstream here; cluster: the studio's servers (RunPod overflow "
                               "as configured); runpod: the RunPod endpoint"}),
            },
            "optional": {
                "image": ("IMAGE", {"lazy": True, "tooltip": "In cluster/runpod mode the nodes that make this "
                                                             "image run remotely, not here"}),
                "workflow_json": ("STRING", {"multiline": True, "default": "",
                                             "tooltip": "An API-format workflow (Save (API Format)); when set "
                                                        "it is what runs remotely"}),
                "input_image": ("IMAGE", {"tooltip": "Sent as PNG to the workflow_json input named below"}),
                "input_binding": ("STRING", {"default": "LoadImage.image",
                                             "tooltip": "NODE.INPUT of workflow_json that receives input_image"}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "render"
    OUTPUT_NODE = True
    CATEGORY = "comfy_cluster"
    DESCRIPTION = "Runs its upstream graph (or a pasted API workflow) on the cluster or RunPod."

    @classmethod
    def IS_CHANGED(cls, mode: str = "cluster", **_: Any) -> Any:
        # The captured sub-graph is not part of ComfyUI's cache key: a remote run always runs.
        return float("nan") if mode != "local" else ""

    def check_lazy_status(self, mode: str, image: Any = None, **_: Any) -> list[str]:
        return ["image"] if mode == "local" and image is None else []

    def render(self, mode: str, prompt: dict[str, Any], unique_id: str, image: Any = None,
               workflow_json: str = "", input_image: Any = None, input_binding: str = "LoadImage.image",
               extra_pnginfo: Any = None) -> dict[str, Any]:
        leaked = SESSION.secret_in(prompt, extra_pnginfo, workflow_json)
        if leaked:
            raise ValueError(f"Remote Render node {unique_id}: the value of {leaked} appears in this workflow; "
                             "remove it: saved workflows and images carry every widget value")
        if mode == "local":
            if image is None:
                raise ValueError(f"Remote Render node {unique_id}: local mode passes 'image' through; connect it")
            return _answer(image)
        try:
            return _answer(self._remote(mode, prompt, str(unique_id), image_batch_of(input_image),
                                        workflow_json, input_binding))
        except Interrupted:
            mm.throw_exception_if_processing_interrupted()
            raise
        except ComfyClusterError as err:
            raise RuntimeError(f"Remote Render node {unique_id} ({mode}): {SESSION.redact(str(err))}") from None

    def _remote(self, mode: str, prompt: dict[str, Any], unique_id: str, input_image: Any,
                workflow_json: str, input_binding: str) -> torch.Tensor:
        pool = SESSION.pool()
        run_dir = Path(folder_paths.get_output_directory()) / "comfy_cluster" / uuid.uuid4().hex[:12]
        run_dir.mkdir(parents=True, mode=0o700)      # owner-only before any file lands in it
        inputs: dict[str, Path] = {}
        if workflow_json.strip():
            workflow: Any = graph_capture.parse_api_workflow(workflow_json)
            if input_image is not None:
                if input_image.shape[0] != 1:
                    raise ComfyClusterError(f"input_image holds {input_image.shape[0]} images; the workflow "
                                            f"input {input_binding} takes one")
                staged = image_batch.batch_to_pngs(input_image, run_dir / "inputs", f"node{unique_id}")
                inputs[input_binding] = staged[0]
        else:
            workflow = graph_capture.upstream_workflow(prompt, unique_id, "image",
                                                       filename_prefix=f"remote_render_{unique_id}")
            inputs.update(graph_capture.local_image_files(workflow, folder_paths.get_annotated_filepath))
        server = PromptServer.instance

        def status(text: str) -> None:
            server.send_progress_text(text, unique_id, server.client_id)

        status(remote_render.preflight(pool, mode))   # the cost before anything is sent; over budget refuses
        events: queue.Queue[Any] = queue.Queue()
        job = remote_render.start(workflow, pool=pool, mode=mode, inputs=inputs, output_dir=run_dir, events=events)
        bar = comfy.utils.ProgressBar(100, node_id=unique_id)

        outcome = remote_render.wait_for(job, events, pool=pool, node_count=len(workflow),
                                         on_progress=bar.update_absolute,
                                         on_status=status, interrupted=mm.processing_interrupted)
        status(outcome.cost_text)
        log.info("Remote Render node %s: %d image(s) from %s", unique_id, len(outcome.images), outcome.cost_text)
        return torch.from_numpy(image_batch.load_batch(outcome.images))


def image_batch_of(tensor: Any) -> Any:
    """An IMAGE tensor as the numpy batch the core converts; None stays None."""
    return None if tensor is None else tensor.detach().cpu().numpy()


def _answer(images: torch.Tensor) -> dict[str, Any]:
    """The IMAGE output plus ComfyUI's own preview of it."""
    return {"ui": nodes.PreviewImage().save_images(images)["ui"], "result": (images,)}
