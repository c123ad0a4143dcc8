"""The package surface: what `import comfy_cluster` gives, and what it must never pull in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import comfy_cluster


def test_public_names_resolve() -> None:
    for name in comfy_cluster.__all__:
        assert getattr(comfy_cluster, name) is not None, name
    assert comfy_cluster.run.animation_submit is comfy_cluster.animation_submit


def test_core_imports_without_nuke_qt_or_the_emulator() -> None:
    """The core is plain Python: a farm box or a CI runner has no Nuke, no Qt and no aiohttp."""
    code = textwrap.dedent(
        """
        import importlib.abc, logging, pkgutil, sys

        BLOCKED = ("nuke", "nukescripts", "PySide2", "PySide6", "aiohttp")

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocker())
        import comfy_cluster
        for mod in pkgutil.iter_modules(comfy_cluster.__path__):
            if mod.name != "emulator":
                __import__(f"comfy_cluster.{mod.name}")
        handlers = logging.getLogger("comfy_cluster").handlers
        assert [type(h).__name__ for h in handlers] == ["NullHandler"], handlers
        assert logging.getLogger().handlers == [], "importing must not configure the root logger"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
