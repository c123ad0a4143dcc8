"""The servers editor the status panel opens: add, remove, priority, enable; import, export.

Every change goes through ``comfy_cluster.config_edit.ServersFile`` (validated as loading
does, backed up, written atomically) on a worker thread, so a servers file on a slow share
never freezes Nuke; a timer on the UI thread shows the outcome. The session's pool watches
the file and takes the change on its next poll; nothing here talks to the pool.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from comfy_cluster.config_edit import ServersFile, servers_file
from comfy_cluster.errors import ComfyClusterError

from .qt import QtCore, QtWidgets

log = logging.getLogger(__name__)

COLUMNS = ("Server", "Address", "Priority", "Enabled")


class ConfigDialog(QtWidgets.QDialog):
    """Edit the servers file named by ``path`` (default: ``NUKE_COMFYUI_SERVERS=@FILE``)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, *, path: str | os.PathLike[str] | None = None,
                 environ: Mapping[str, str] = os.environ, interval_ms: int = 100) -> None:
        super().__init__(parent)
        self.setObjectName("comfyClusterServers")
        self.setWindowTitle("ComfyUI Cluster servers")
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._results: list[tuple[str, bool]] = []
        self._loading = False
        self.edits: ServersFile | None = None
        problem = None
        try:
            self.edits = ServersFile(servers_file(path, environ), environ=environ)
        except ComfyClusterError as err:
            problem = str(err)
        self._build()
        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self._apply_results)
        self._timer.start(interval_ms)
        if problem:
            self.message.setText(problem)
            for widget in (self.table, self.add_button, self.remove_button, self.import_button, self.export_button):
                widget.setEnabled(False)
        else:
            self.reload()

    # -- layout ------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QtWidgets.QVBoxLayout(self)
        self.path_label = QtWidgets.QLabel(str(self.edits.path) if self.edits else "")
        layout.addWidget(self.path_label)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        layout.addWidget(self.table, 1)

        row = QtWidgets.QHBoxLayout()
        self.name_edit = QtWidgets.QLineEdit()
        self.name_edit.setPlaceholderText("name (gpu-05)")
        self.ip_edit = QtWidgets.QLineEdit()
        self.ip_edit.setPlaceholderText("ip or host")
        self.port_edit = QtWidgets.QSpinBox()
        self.port_edit.setRange(1, 65535)
        self.port_edit.setValue(8188)
        self.priority_edit = QtWidgets.QSpinBox()
        self.priority_edit.setRange(0, 1000)
        self.priority_edit.setValue(1)
        self.add_button = QtWidgets.QPushButton("Add")
        self.add_button.clicked.connect(self.add_server)
        for widget in (self.name_edit, self.ip_edit, self.port_edit, self.priority_edit, self.add_button):
            row.addWidget(widget)
        layout.addLayout(row)

        buttons = QtWidgets.QHBoxLayout()
        self.remove_button = QtWidgets.QPushButton("Remove selected")
        self.remove_button.clicked.connect(self.remove_selected)
        self.import_button = QtWidgets.QPushButton("Import...")
        self.import_button.clicked.connect(lambda: self._pick(import_=True))
        self.export_button = QtWidgets.QPushButton("Export...")
        self.export_button.clicked.connect(lambda: self._pick(import_=False))
        for widget in (self.remove_button, self.import_button, self.export_button):
            buttons.addWidget(widget)
        layout.addLayout(buttons)
        self.message = QtWidgets.QLabel("")
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)

    # -- showing the file (UI thread) ----------------------------------------------------

    def reload(self) -> None:
        """Fill the table from the file (a small local read)."""
        assert self.edits is not None
        try:
            servers = self.edits.read().servers
        except ComfyClusterError as err:
            self.message.setText(str(err))
            return
        self._loading = True
        try:
            self.table.setRowCount(len(servers))
            for index, server in enumerate(servers):
                for column, text in enumerate((server.name, server.address)):
                    self.table.setItem(index, column, QtWidgets.QTableWidgetItem(text))
                priority = QtWidgets.QSpinBox()
                priority.setObjectName(f"priority:{server.name}")
                priority.setRange(0, 1000)
                priority.setValue(server.priority)
                priority.valueChanged.connect(lambda value, n=server.name: self.set_priority(n, value))
                self.table.setCellWidget(index, 2, priority)
                enabled = QtWidgets.QCheckBox()
                enabled.setObjectName(f"enabled:{server.name}")
                enabled.setChecked(server.enabled)
                enabled.toggled.connect(lambda on, n=server.name: self.set_enabled(n, on))
                self.table.setCellWidget(index, 3, enabled)
        finally:
            self._loading = False
        self.table.resizeColumnsToContents()

    def server_names(self) -> list[str]:
        items = [self.table.item(r, 0) for r in range(self.table.rowCount())]
        return [item.text() for item in items if item is not None]

    # -- changes (worker threads) --------------------------------------------------------

    def _run(self, what: str, call: Callable[[], Any]) -> threading.Thread:
        def work() -> None:
            try:
                result = call()
                text, ok = (getattr(result, "message", None) or f"{what}: done"), True
            except ComfyClusterError as err:
                text, ok = f"{what}: {err}", False
            except Exception as err:
                log.exception("%s failed", what)
                text, ok = f"{what} failed: {type(err).__name__}: {err}", False
            with self._lock:
                self._results.append((text, ok))

        thread = threading.Thread(target=work, name=f"comfy-cluster servers: {what}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def _apply_results(self) -> None:
        with self._lock:
            results, self._results = self._results, []
        if not results:
            return
        self.message.setText("\n".join(text for text, _ in results[-3:]))
        if self.edits is not None:
            self.reload()

    def add_server(self) -> threading.Thread | None:
        name, ip = self.name_edit.text().strip(), self.ip_edit.text().strip()
        if not name or not ip:
            self.message.setText("add: give the server a name and an ip or host name")
            return None
        edits = self._edits()
        port, priority = self.port_edit.value(), self.priority_edit.value()
        return self._run(f"add {name}", lambda: edits.add(name, ip=ip, port=port, priority=priority))

    def remove_selected(self) -> threading.Thread | None:
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        if not rows:
            self.message.setText("remove: select a server first")
            return None
        name = self.server_names()[rows.pop()]
        edits = self._edits()
        return self._run(f"remove {name}", lambda: edits.remove(name))

    def set_priority(self, name: str, priority: int) -> threading.Thread | None:
        if self._loading:
            return None
        edits = self._edits()
        return self._run(f"priority of {name}", lambda: edits.set(name, {"priority": priority}))

    def set_enabled(self, name: str, on: bool) -> threading.Thread | None:
        if self._loading:
            return None
        edits = self._edits()
        return self._run(f"{'enable' if on else 'disable'} {name}", lambda: edits.enable(name, on))

    def import_from(self, path: str | os.PathLike[str], *, merge: bool = False) -> threading.Thread:
        edits = self._edits()
        return self._run(f"import {Path(path).name}", lambda: edits.import_from(path, merge=merge))

    def export_to(self, path: str | os.PathLike[str]) -> threading.Thread:
        edits = self._edits()
        return self._run(f"export to {Path(path).name}", lambda: edits.export_to(path))

    def _pick(self, *, import_: bool) -> None:
        if import_:
            chosen, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Import servers", "", "JSON (*.json)")
            if chosen:
                self.import_from(chosen)
        else:
            chosen, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export servers", "servers.json", "JSON (*.json)")
            if chosen:
                self.export_to(chosen)

    def _edits(self) -> ServersFile:
        if self.edits is None:
            raise RuntimeError("no servers file to edit")
        return self.edits

    def closeEvent(self, event: Any) -> None:
        self._timer.stop()
        super().closeEvent(event)


__all__ = ["ConfigDialog"]
