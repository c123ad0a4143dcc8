"""Run the real worker-comfyui ``handler.py`` on the runpod SDK's worker loop, for the contract tests.

Usage (with the handler venv's python): ``run_worker_comfyui.py HANDLER_DIR COMFY_HOST PID_FILE``.
handler.py hard-codes ``COMFY_HOST = "127.0.0.1:8188"`` and ``COMFY_PID_FILE =
"/tmp/comfyui.pid"`` (its container's start.sh starts ComfyUI on 8188 and writes that file);
tests run their servers on free ports, so this sets those two module constants and then
starts the loop exactly as handler.py's ``__main__`` does. Everything else (the RunPod URLs
and key) comes from the environment, as in a RunPod container.
"""

import os
import sys

handler_dir, comfy_host, pid_file = sys.argv[1:4]
del sys.argv[1:]  # runpod.serverless.start parses sys.argv for its own --rp_* flags
sys.path[:0] = [handler_dir, os.path.join(handler_dir, "src")]

import handler  # noqa: E402 - the path is set up just above
import runpod  # noqa: E402

handler.COMFY_HOST = comfy_host
handler.COMFY_PID_FILE = pid_file
print("worker-comfyui - Starting handler...", flush=True)
runpod.serverless.start({"handler": handler.handler})
