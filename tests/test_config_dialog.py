"""The servers editor of the Nuke status panel, offscreen: an edit made with its widgets
reaches the session's running pool (emulated ComfyUI servers over loopback)."""

from __future__ import annotations

import json
import os

import pytest

from tests.fake_nuke import install
from tests.helpers import named_child, wait_until

install()
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

from comfy_cluster.config_load import load_config_file  # noqa: E402
from comfy_cluster.emulator.process import EmulatorThread  # noqa: E402
from nuke_menu import core  # noqa: E402
from nuke_menu.panel import StatusPanel  # noqa: E402
from nuke_menu.qt import QtWidgets  # noqa: E402


@pytest.fixture
def servers():
    emus = [EmulatorThread(name=f"gpu-0{i}").start() for i in (1, 2)]
    try:
        yield emus
    finally:
        for emu in emus:
            emu.stop()


@pytest.fixture
def session(qtbot, tmp_path, servers, monkeypatch):
    """A Nuke session whose pool comes from NUKE_COMFYUI_SERVERS=@file, as core builds it."""
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "gpu-01", "ip": "127.0.0.1", "port": servers[0].port}],
                                "poll_interval": 0.1}))
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", f"@{path}")
    core.set_shared_pool(None, None)
    pool = core.shared_pool()
    panel = StatusPanel(interval_ms=100)
    qtbot.addWidget(panel)
    dialog = panel.open_servers_editor()
    qtbot.addWidget(dialog)
    try:
        yield path, pool, panel, dialog
    finally:
        dialog.close()
        panel.close()
        for thread in dialog.threads + panel.threads:
            thread.join(timeout=10)
        pool.close()
        core.set_shared_pool(None, None)


def settle(qtbot, dialog) -> None:
    """Wait for the dialog's worker threads, then for its timer to show their outcome."""
    for thread in dialog.threads:
        thread.join(timeout=10)
    qtbot.waitUntil(lambda: not dialog._results, timeout=5000)


def test_panel_edits_reach_the_running_pool(qtbot, session, servers, tmp_path):
    path, pool, panel, dialog = session
    assert dialog.server_names() == ["gpu-01"] and str(path) in dialog.path_label.text()
    wait_until(lambda: pool.get_server_by_name("gpu-01").state.value == "online", what="gpu-01 online")

    dialog.name_edit.setText("gpu-02")
    dialog.ip_edit.setText("127.0.0.1")
    dialog.port_edit.setValue(servers[1].port)
    dialog.priority_edit.setValue(3)
    dialog.add_button.click()
    settle(qtbot, dialog)
    assert "added server 'gpu-02'" in dialog.message.text()
    assert dialog.server_names() == ["gpu-01", "gpu-02"]
    wait_until(lambda: pool.get_server_by_name("gpu-02") is not None
               and pool.get_server_by_name("gpu-02").state.value == "online", what="gpu-02 in the running pool")
    qtbot.waitUntil(lambda: (panel.refresh(), panel.server_names() == ["gpu-01", "gpu-02"])[1], timeout=5000)

    named_child(dialog, QtWidgets.QSpinBox, "priority:gpu-02").setValue(7)
    settle(qtbot, dialog)
    wait_until(lambda: pool.get_server_by_name("gpu-02").priority == 7, what="priority 7 in the pool")

    named_child(dialog, QtWidgets.QCheckBox, "enabled:gpu-01").setChecked(False)
    settle(qtbot, dialog)
    wait_until(lambda: not pool.get_server_by_name("gpu-01").enabled, what="gpu-01 disabled in the pool")
    assert not next(s for s in load_config_file(path).servers if s.name == "gpu-01").enabled

    exported = tmp_path / "exported.json"
    dialog.export_to(exported)
    settle(qtbot, dialog)
    assert json.loads(exported.read_text()) == json.loads(path.read_text())

    dialog.table.selectRow(0)
    dialog.remove_button.click()
    settle(qtbot, dialog)
    wait_until(lambda: [s.name for s in pool.servers] == ["gpu-02"], what="gpu-01 removed from the pool")

    dialog.import_from(exported)
    settle(qtbot, dialog)
    assert dialog.server_names() == ["gpu-01", "gpu-02"]
    wait_until(lambda: sorted(s.name for s in pool.servers) == ["gpu-01", "gpu-02"], what="import reached the pool")


def test_a_bad_edit_shows_why_and_changes_nothing(qtbot, session):
    path, pool, panel, dialog = session
    raw = path.read_bytes()
    dialog.name_edit.setText("gpu-09")
    dialog.ip_edit.setText("http://10.0.0.9")
    dialog.add_button.click()
    settle(qtbot, dialog)
    assert "ip: must be a host name or address only, without a scheme" in dialog.message.text()
    assert path.read_bytes() == raw and dialog.server_names() == ["gpu-01"]


def test_an_environment_only_configuration_is_refused_in_the_dialog(qtbot, monkeypatch):
    from nuke_menu.config_dialog import ConfigDialog

    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", '[{"name": "gpu-01", "ip": "10.0.0.1", "port": 8188}]')
    dialog = ConfigDialog()
    qtbot.addWidget(dialog)
    assert "cannot be edited in place" in dialog.message.text() and "config export" in dialog.message.text()
    assert not dialog.add_button.isEnabled() and not dialog.import_button.isEnabled()
    dialog.close()
