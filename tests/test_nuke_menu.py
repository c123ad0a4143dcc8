"""Start-up: init.py/menu.py as Nuke runs them, the menu commands, the registered panel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.fake_nuke import install

install()
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

import nuke  # noqa: E402
import nukescripts  # noqa: E402

from nuke_menu import commands, core  # noqa: E402
from nuke_menu import settings as s  # noqa: E402

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "nuke_menu")
LABELS = [name for name, _, _ in commands.COMMANDS]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    nuke.fake_reset(gui=True)
    nukescripts.panels.registered.clear()
    core.set_shared_pool(None)
    yield
    core.set_shared_pool(None)


def test_startup_adds_the_menu_to_the_toolbar_and_the_menu_bar(capsys):
    nuke.fake_startup([PLUGIN_DIR])
    for menu_name in ("Nodes", "Nuke"):
        menu = nuke.menu(menu_name).findItem(commands.MENU_NAME)
        assert isinstance(menu, nuke.Menu)
        assert [i.name() for i in menu.items()] == LABELS
    assert nuke.menu("Pane").findItem(commands.PANEL_TITLE) is not None
    assert commands.PANEL_ID in nukescripts.panels.registered
    assert "[comfy-cluster]" not in capsys.readouterr().err


def test_terminal_sessions_run_init_only():
    nuke.fake_reset(gui=False)
    nuke.fake_startup([PLUGIN_DIR])
    nuke.fake_reset(gui=True)
    assert nuke._menus == {}


def test_a_missing_dependency_prints_how_to_install_it_and_nuke_starts(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydantic", None)  # import pydantic -> ImportError
    nuke.fake_startup([PLUGIN_DIR])
    err = capsys.readouterr().err
    assert "pydantic cannot be imported" in err and "-m pip install --target" in err
    assert "NUKE_COMFYUI_PYTHONPATH" in err
    assert nuke.menu("Nuke").findItem(commands.MENU_NAME) is None


def test_a_bad_configuration_is_a_readable_line_and_the_menu_still_loads(monkeypatch, capsys):
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", '[{"name": "gpu-01", "ip": "10.0.0.5", "port": 70000}]')
    nuke.fake_startup([PLUGIN_DIR])
    err = capsys.readouterr().err
    assert "configuration problem" in err and "70000" in err and "Traceback" not in err
    assert nuke.menu("Nuke").findItem(commands.MENU_NAME) is not None


def test_a_broken_menu_install_never_raises(monkeypatch, capsys):
    def broken() -> None:
        raise RuntimeError("menu exploded")

    monkeypatch.setattr(commands, "install", broken)
    nuke.fake_startup([PLUGIN_DIR])
    assert "menu exploded" in capsys.readouterr().err


def test_the_panel_string_builds_the_widget_in_a_fresh_namespace(qapp):
    from nuke_menu.panel import StatusPanel

    class Snapshot:
        servers = ()
        runpod = None
        pods = ()

    class Pool:
        runpod = None

        def snapshot(self) -> Snapshot:
            return Snapshot()

    core.set_shared_pool(Pool())
    commands.install()
    panel = commands.show_status_panel()
    widget = panel.customKnob.getObject().widget
    assert isinstance(widget, StatusPanel), "built with no arguments from the registered string"
    assert panel.pane is nuke.getPaneFor("Properties.1")
    widget.close()


def test_create_command_makes_a_render_node_wired_to_the_selection():
    read = nuke.nodes.Read(file="/plates/a.####.png", first=1, last=10)
    read.setSelected(True)
    node = commands.create_render_node()
    assert node.input(0) is read and node[s.KNOB_MARKER].value()
    assert node[s.KNOB_TARGET].values() == ["auto", "runpod"]
    assert node.firstFrame() == 1 and node.lastFrame() == 10


def test_commands_without_a_selection_say_so():
    commands.submit_selected()
    commands.render_range()
    assert nuke.fake_messages == ["Submit to ComfyUI Cluster: select one or more ComfyUI Render nodes first",
                                  "Render frame range: select one or more ComfyUI Render nodes first"]


def test_render_range_and_iterate_set_the_knobs_from_the_prompt(monkeypatch):
    sent = []
    monkeypatch.setattr(commands.submit, "submit_nodes", lambda nodes: sent.append(list(nodes)) or [])
    node = commands.create_render_node()
    node.setSelected(True)
    nuke.fake_answers.extend(["1001-1100x2", "nonsense", "6"])
    commands.render_range()
    assert (node[s.KNOB_FIRST].value(), node[s.KNOB_LAST].value(), node[s.KNOB_STEP].value()) == (1001, 1099, 2)
    assert node[s.KNOB_MODE].value() == s.Mode.RANGE.value and not node[s.KNOB_USE_INPUT_RANGE].value()
    commands.render_range()
    assert "frame range 'nonsense'" in nuke.fake_messages[-1]
    commands.iterate()
    assert node[s.KNOB_MODE].value() == s.Mode.ITERATIONS.value and node[s.KNOB_ITERATIONS].value() == 6
    assert sent == [[node], [node]]


def test_startup_appends_the_repository_after_nukes_own_paths(monkeypatch):
    """The repository root (env.py, tests/, bench/) never shadows a module Nuke already has."""
    from nuke_menu import comfy_cluster_boot

    root = comfy_cluster_boot.ROOT
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != root] + ["/nuke/site"])
    monkeypatch.setenv(comfy_cluster_boot.DEPS_ENV, "/studio/deps")
    assert comfy_cluster_boot.add_paths() == ["/studio/deps", root]
    assert sys.path[-3:] == ["/nuke/site", "/studio/deps", root]
