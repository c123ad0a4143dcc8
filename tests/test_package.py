"""The package surface: what `import comfy_cluster` gives, and what it must never pull in."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

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


ROOT = Path(__file__).resolve().parent.parent


def _declared(extra: str | None) -> set[str]:
    """Distribution names the core (``extra=None``) or an extra depends on, lower case."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower() for spec in specs}


def _third_party_imports(folder: Path) -> set[str]:
    """Top-level modules imported by the files in ``folder`` that are neither stdlib nor ours."""
    names: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("comfy_cluster", "nuke_menu")}


#: import name -> distribution name, where they differ
_DISTRIBUTION = {"websocket": "websocket-client", "PIL": "pillow", "yaml": "pyyaml"}


def test_the_emulator_extra_installs_everything_the_emulator_imports() -> None:
    """README's first command installs ``.[emulator]`` and runs the demo: nothing more may be needed."""
    wanted = {_DISTRIBUTION.get(n, n).lower() for n in _third_party_imports(ROOT / "comfy_cluster" / "emulator")}
    missing = wanted - _declared(None) - _declared("emulator")
    assert not missing, f"comfy_cluster/emulator imports {sorted(missing)}, not in dependencies or the emulator extra"


def test_env_module_is_importable_from_an_installed_wheel(tmp_path: Path) -> None:
    """The studio plan's entry point ``env.py`` ships in the wheel, outside the checkout."""
    src = tmp_path / "src"   # build from a copy: a build writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "tests", "bench", "docs", "build", "*.egg-info",
                                                             "__pycache__", ".mypy_cache", ".pytest_cache",
                                                             "demo-output"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:   # a wheel is installed by unpacking it (PEP 427)
        zf.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import env, comfy_cluster, nuke_menu; "
            "print(env.__file__); print(env.NUKE_COMFYUI_PORT({'NUKE_COMFYUI_PORT': '8190'}))")
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    where, port = done.stdout.split()
    assert Path(where).parent == site and port == "8190"


def test_mypy_is_clean_over_both_packages() -> None:
    """The core and the Nuke layer type-check together (config: [tool.mypy] in pyproject.toml),
    the Nuke layer against the real Nuke API stubs."""
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed: pip install -e '.[dev]'")
    if not any((Path(p) / "nuke-stubs" / "_nuke.pyi").is_file() for p in sys.path):
        pytest.fail("the Nuke API stubs are not installed: pip install types-nuke")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
