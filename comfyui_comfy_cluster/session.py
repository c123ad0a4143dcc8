"""The one cluster session of this ComfyUI process, shared by the node and the routes."""

from comfy_cluster.app_session import AppSession

SESSION = AppSession()
