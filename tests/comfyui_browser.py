"""Headless Chromium (Debian's, via playwright) on a real ComfyUI page, for the frontend tests
and the screenshot script. A missing browser is an error, never a skip."""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: What ComfyUI sets once the extensions' setup ran (GraphCanvas.vue).
READY = "() => !!(window.app && window.app.extensionManager && window.app.graph)"


class BrowserMissing(RuntimeError):
    """Chromium or playwright is not installed."""


def seed_user_settings(user_dir: Path) -> None:
    """A fresh user dir would open the templates browser over the canvas: mark the tutorial done."""
    settings = user_dir / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))


@contextmanager
def comfy_page(url: str, *, width: int = 1400, height: int = 900) -> Iterator[tuple[object, list[str]]]:
    """A page on ``url`` once ComfyUI is ready; yields (page, console errors)."""
    if not CHROMIUM.exists():
        raise BrowserMissing(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise BrowserMissing("python playwright is missing: pip install -e '.[dev]'") from err
    profile = Path(tempfile.mkdtemp(prefix="comfy-cluster-chromium-"))
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                viewport={"width": width, "height": height})
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url, wait_until="domcontentloaded", timeout=120_000)
                page.wait_for_function(READY, timeout=120_000)
                yield page, errors
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
