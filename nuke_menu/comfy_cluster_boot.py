"""Start-up for Nuke: put comfy-cluster and its dependencies on ``sys.path``, check them.

Nuke runs ``init.py`` and ``menu.py`` from each ``NUKE_PATH`` folder and puts the folder on
``sys.path``, so this file is importable there as a top-level module, with a reliable
``__file__`` (Nuke's own exec of ``init.py`` does not promise one). It imports nothing of
comfy-cluster at module level, and every function reports problems as readable text
instead of raising: a broken install must never stop Nuke from starting.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

#: Where ``NUKE_PATH`` points: this folder. Its parent holds ``comfy_cluster`` and ``nuke_menu``.
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: Extra folders (os.pathsep-separated) holding the dependencies installed for Nuke's Python.
DEPS_ENV = "NUKE_COMFYUI_PYTHONPATH"
#: import name -> pip name of every runtime dependency.
DEPENDENCIES = {"requests": "requests", "websocket": "websocket-client", "pydantic": "pydantic",
                "PIL": "pillow", "numpy": "numpy"}
PREFIX = "[comfy-cluster]"


def add_paths(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> list[str]:
    """Append the ``NUKE_COMFYUI_PYTHONPATH`` folders, then the repository, to ``sys.path``; returns them.

    Appended, never first: the repository root holds top-level files (``env.py``, ``tests``,
    ``bench``) that must not shadow Nuke's own modules or an installed comfy-cluster.
    """
    added = []
    extra = [p for p in environ.get(DEPS_ENV, "").split(os.pathsep) if p.strip()]
    for path in [*extra, ROOT]:
        if path not in sys.path:
            sys.path.append(path)
            added.append(path)
    return added


def missing_dependencies() -> list[str]:
    """pip names of the dependencies that do not import in this Python."""
    missing = []
    for module, package in DEPENDENCIES.items():
        try:
            importlib.import_module(module)
        except Exception:  # an ImportError, or a wheel built for another Python that fails on import
            missing.append(package)
    return missing


def dependency_message(missing: list[str]) -> str:
    """What is missing and the command that installs it for *this* Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (f"{PREFIX} the ComfyUI Cluster menu is off: {', '.join(missing)} cannot be imported by Nuke's "
            f"Python {version} ({sys.executable}).\n"
            f"{PREFIX} install them for this Python, e.g.:\n"
            f'{PREFIX}   "{sys.executable}" -m pip install --target "<folder>" requests websocket-client '
            f'pydantic pillow numpy\n'
            f"{PREFIX} then set {DEPS_ENV}=<folder> before starting Nuke (see the Nuke section of README.md).")


def config_problem() -> str | None:
    """A readable line if the cluster configuration in the environment is invalid."""
    try:
        from comfy_cluster.config_load import load_config
        from comfy_cluster.errors import ConfigError

        try:
            load_config()
        except ConfigError as err:
            return f"{PREFIX} configuration problem (the menu still loads; fix it and restart Nuke): {err}"
    except Exception as err:
        return f"{PREFIX} could not read the configuration: {type(err).__name__}: {err}"
    return None


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def init() -> bool:
    """``init.py``: paths and dependency check, no UI. True when the plug-in can run."""
    try:
        add_paths()
        missing = missing_dependencies()
        if missing:
            _say(dependency_message(missing))
            return False
        return True
    except BaseException:
        _say(f"{PREFIX} start-up failed, Nuke continues without it:\n{traceback.format_exc()}")
        return False


def menu() -> bool:
    """``menu.py``: the ComfyUI Cluster menus and panel (GUI sessions only). Never raises."""
    try:
        if not init():
            return False
        problem = config_problem()
        if problem:
            _say(problem)
        from nuke_menu import commands

        commands.install()
        return True
    except BaseException:
        _say(f"{PREFIX} the ComfyUI Cluster menu could not be added, Nuke continues without it:\n"
             f"{traceback.format_exc()}")
        return False
