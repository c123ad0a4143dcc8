"""Emulated servers for tests and the demo.

``process.EmulatorThread`` / ``process.EmulatorProcess`` start a ComfyUI-compatible server
(``comfyui.ComfyEmulator``) whose nodes (``nodes.NODES``) do real image work with
ComfyUI's float32 arithmetic. Import from the submodules; this package imports nothing, so
loading a sibling emulator does not pull in aiohttp.
"""
