"""comfy-cluster inside ComfyUI: the Remote Render node, the cluster routes and the UI.

Copy or symlink this folder into ``ComfyUI/custom_nodes/`` and install the ``comfy_cluster``
core into ComfyUI's Python (README, "Inside ComfyUI"). The node and the routes only map
ComfyUI's inputs and requests to calls of the core.
"""

try:
    import comfy_cluster  # noqa: F401 - fail here, with the fix, rather than deep in a node
except ImportError as err:  # pragma: no cover - exercised by a broken install only
    import sys

    raise ImportError(f"comfy_cluster is not installed in this ComfyUI's Python ({sys.executable}); "
                      f"run: {sys.executable} -m pip install /path/to/comfy-cluster") from err

from . import routes
from .render_node import RemoteRender

NODE_CLASS_MAPPINGS = {"ComfyClusterRemoteRender": RemoteRender}
NODE_DISPLAY_NAME_MAPPINGS = {"ComfyClusterRemoteRender": "Remote Render (cluster / RunPod)"}
WEB_DIRECTORY = "./web"

routes.register()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
