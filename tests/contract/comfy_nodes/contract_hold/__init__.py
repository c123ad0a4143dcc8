"""A test-only ComfyUI node package: ``ContractHold`` keeps a real server busy until interrupted.

The contract tests need a running prompt on demand (to hold a queue, to interrupt one); on a
CPU-only ComfyUI nothing stock runs long enough on purpose. It waits in short slices and
raises ComfyUI's own interrupt exception, as a sampler does, or fails after ``seconds``.
"""

import time

import comfy.model_management


class ContractHold:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "token": ("STRING", {"default": ""}),
            "seconds": ("FLOAT", {"default": 120.0, "min": 0.0, "max": 600.0}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "hold"
    CATEGORY = "comfy-cluster/test"

    def hold(self, token, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(0.02)
        raise RuntimeError(f"ContractHold {token!r} was not interrupted within {seconds} s")


NODE_CLASS_MAPPINGS = {"ContractHold": ContractHold}
