"""Keep the fake ``nuke`` honest: its signatures follow the ``types-nuke`` stubs, and the
plug-in type-checks against the real stubs (not the fake) with mypy."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

from tests.fake_nuke import install

install()

import nuke  # noqa: E402

STUBS = next((Path(p) / "nuke-stubs" for p in sys.path if (Path(p) / "nuke-stubs" / "_nuke.pyi").is_file()), None)
needs_stubs = pytest.mark.skipif(STUBS is None, reason="types-nuke is not installed (pip install types-nuke)")

#: Module functions the plug-in calls.
FUNCTIONS = ["createNode", "delete", "execute", "message", "root", "menu", "toolbar", "toNode", "selectedNodes",
             "frame", "getInput"]
#: (class, method) pairs the plug-in calls.
METHODS = [("Node", "setInput"), ("Node", "setXYpos"), ("Node", "knob"), ("Node", "input"), ("Node", "setName"),
           ("Node", "screenHeight"), ("Group", "begin"), ("Group", "end"), ("Group", "nodes")]


def _stub_defs() -> dict[str, list[ast.FunctionDef]]:
    """Every def in the stubs, by ``name`` or ``Class.name`` (overloads give several)."""
    found: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(STUBS.glob("*.pyi")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                found.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        found.setdefault(f"{node.name}.{item.name}", []).append(item)
    return found


def _names(fn: ast.FunctionDef) -> list[str]:
    return [a.arg for a in fn.args.args if a.arg != "self"]


def _fake_names(obj) -> list[str]:
    return [p.name for p in inspect.signature(obj).parameters.values() if p.name != "self"]


@needs_stubs
@pytest.mark.parametrize("name", FUNCTIONS)
def test_fake_functions_take_the_stub_parameters(name):
    stubs = _stub_defs()
    fake = _fake_names(getattr(nuke, name))
    overloads = [_names(d) for d in stubs[name]]
    assert any(fake[:len(o)] == o for o in overloads), f"nuke.{name}{fake} vs stubs {overloads}"


@needs_stubs
@pytest.mark.parametrize("cls,method", METHODS)
def test_fake_methods_take_the_stub_parameters(cls, method):
    stub = _names(_stub_defs()[f"{cls}.{method}"][0])
    fake = _fake_names(getattr(getattr(nuke, cls), method))
    assert fake[:len(stub)] == stub, f"{cls}.{method}{fake} vs stub {stub}"


@needs_stubs
def test_execute_in_main_thread_and_plugin_add_path_match_the_stubs():
    stubs = _stub_defs()
    assert _fake_names(nuke.executeInMainThread) == _names(stubs["executeInMainThread"][0])
    assert _fake_names(nuke.pluginAddPath) == _names(stubs["pluginAddPath"][0])


def test_threading_traps_are_modelled():
    import threading

    nuke.fake_reset(gui=True)
    errors = []
    with pytest.raises(RuntimeError, match="hangs"):
        nuke.executeInMainThread(print, ("x",))
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, nuke.message, "hi")))
    thread.start()
    thread.join()
    assert errors and nuke.fake_messages == []


def test_terminal_mode_has_no_menus():
    nuke.fake_reset(gui=False)
    try:
        with pytest.raises(RuntimeError):
            nuke.menu("Nuke")
    finally:
        nuke.fake_reset(gui=True)
