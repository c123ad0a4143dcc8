"""The server status panel: a Qt widget Nuke docks like any other panel.

Nuke builds it with no arguments (``registerWidgetAsPanel`` evaluates a string naming the
class), so it finds the session's pool through ``core.shared_pool()``. A timer reads
``pool.snapshot()`` every second: the status cache, never the network. The enable
switches and the always-on toggle call the pool and the RunPod admin on a worker thread,
so a slow server or the RunPod API never freezes Nuke's UI.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from comfy_cluster.errors import ComfyClusterError

from . import core
from .pods_panel import PodsBox
from .qt import QtCore, QtGui, QtWidgets

log = logging.getLogger(__name__)

REFRESH_MS = 1000
COLUMNS = ("State", "Server", "Address", "Queue run/pend", "GPU", "VRAM free/total", "Ours", "s/job", "Priority",
           "Enabled")
STATE_COLOURS = {"online": "#3f9b4a", "busy": "#d08a1e", "booting": "#3b78c2", "offline": "#c0392b",
                 "disabled": "#7f7f7f", "blocked": "#c0392b", "idle": "#3f9b4a", "ready": "#3f9b4a"}
GIB = 1024 ** 3
GPU_COLUMN, VRAM_COLUMN = COLUMNS.index("GPU"), COLUMNS.index("VRAM free/total")


def _state_text(state: Any) -> str:
    return str(getattr(state, "value", state))


def _gib(value: int | None) -> str:
    return "-" if not value else f"{value / GIB:.1f}"


class StatusPanel(QtWidgets.QWidget):
    """Servers, the RunPod endpoint and the running batches of this Nuke session."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, *, pool: Any = None,
                 interval_ms: int = REFRESH_MS) -> None:
        super().__init__(parent)
        self.setObjectName("comfyClusterStatus")
        self.setWindowTitle("ComfyUI Cluster")
        self._pool = pool
        self._rows: dict[str, int] = {}
        self._switches: dict[str, QtWidgets.QCheckBox] = {}
        self._busy: set[str] = set()
        self._notes: list[str] = []
        self._notes_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self._build()
        self._runpod_read = False
        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self.refresh)
        self._timer.start(interval_ms)
        self.refresh()

    # -- layout --------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QtWidgets.QVBoxLayout(self)
        self.summary = QtWidgets.QLabel("")
        self.summary.setObjectName("summary")
        layout.addWidget(self.summary)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        layout.addWidget(self.table, 1)
        self.servers_button = QtWidgets.QPushButton("Edit servers...")
        self.servers_button.clicked.connect(self.open_servers_editor)
        layout.addWidget(self.servers_button)

        self.runpod_box = QtWidgets.QGroupBox("RunPod")
        grid = QtWidgets.QGridLayout(self.runpod_box)
        self.runpod_labels: dict[str, QtWidgets.QLabel] = {}
        for row, (key, title) in enumerate((("state", "State"), ("workers", "Workers min/max"),
                                            ("activity", "Running/idle"), ("queue", "Queue/in progress"),
                                            ("spend", "Spend today"))):
            grid.addWidget(QtWidgets.QLabel(title), row // 3, (row % 3) * 2)
            label = QtWidgets.QLabel("-")
            self.runpod_labels[key] = label
            grid.addWidget(label, row // 3, (row % 3) * 2 + 1)
        self.always_on = QtWidgets.QCheckBox("Always-on worker")
        self.always_on.toggled.connect(self._always_on_toggled)
        grid.addWidget(self.always_on, 1, 4, 1, 2)
        layout.addWidget(self.runpod_box)
        self.pods_box = PodsBox(lambda: self.pool, self._background)
        layout.addWidget(self.pods_box)

        self.batch_box = QtWidgets.QGroupBox("Active batches")
        self.batch_layout = QtWidgets.QVBoxLayout(self.batch_box)
        self.batch_bars: dict[int, tuple[QtWidgets.QLabel, QtWidgets.QProgressBar]] = {}
        self.no_batches = QtWidgets.QLabel("none")
        self.batch_layout.addWidget(self.no_batches)
        layout.addWidget(self.batch_box)

        self.notes = QtWidgets.QLabel("")
        self.notes.setWordWrap(True)
        layout.addWidget(self.notes)

    # -- reading (UI thread, no network) -------------------------------------------------------

    @property
    def pool(self) -> Any:
        if self._pool is None:
            self._pool = core.shared_pool()
        return self._pool

    def refresh(self) -> None:
        """Show the latest snapshot; called by the timer."""
        try:
            snapshot = self.pool.snapshot()
        except ComfyClusterError as err:
            self.summary.setText(f"Configuration problem: {err}")
            return
        self._show_servers(snapshot.servers)
        self._show_runpod(snapshot.runpod)
        self.pods_box.show_rows(snapshot.pods)
        if snapshot.runpod is not None and not self._runpod_read:
            self._runpod_read = True
            pool = self.pool
            self._background("runpod_settings", "read RunPod settings", lambda: core.read_runpod_settings(pool))
        self._show_batches(core.active())
        with self._notes_lock:
            self.notes.setText("\n".join(self._notes[-3:]))
        ready = sum(1 for s in snapshot.servers if _state_text(s.state) in core.READY_STATES)
        self.summary.setText(f"{ready} of {len(snapshot.servers)} servers online")

    def _show_servers(self, servers: tuple[Any, ...]) -> None:
        names = [s.name for s in servers]
        if names != list(self._rows):
            self.table.setRowCount(0)
            self._rows.clear()
            self._switches.clear()
            self.table.setRowCount(len(names))
            for row, name in enumerate(names):
                self._rows[name] = row
                switch = QtWidgets.QCheckBox()
                switch.setObjectName(f"enable:{name}")
                switch.toggled.connect(lambda on, n=name: self._enable_toggled(n, on))
                self._switches[name] = switch
                self.table.setCellWidget(row, len(COLUMNS) - 1, switch)
        for status in servers:
            self._show_server(self._rows[status.name], status)
        self.table.resizeColumnsToContents()

    def _show_server(self, row: int, status: Any) -> None:
        state = _state_text(status.state)
        device = status.devices[0] if status.devices else None
        gpu = "-" if device is None else _gpu_name(str(device.name))
        vram = "-" if device is None else f"{_gib(device.vram_free)}/{_gib(device.vram_total)} GB"
        stale = "" if state in core.READY_STATES or device is None else f"last seen: {gpu}, VRAM {vram} free/total"
        if stale:   # a server that does not answer has no current GPU or VRAM: blank, the last values in the tip
            gpu = vram = "-"
        spj = "-" if status.seconds_per_job is None else f"{status.seconds_per_job:.1f}"
        tunnel = status.tunnel   # a server behind SSH: its tunnel, the full text in the tooltip
        address = status.address if not tunnel else f"{status.address} via {_short(tunnel)}"
        texts = (state, status.name, address, f"{status.queue_running}/{status.queue_pending}", gpu, vram,
                 f"{status.in_flight}/{status.max_queue}", spj, str(status.priority))
        for column, text in enumerate(texts):
            item = self.table.item(row, column)
            if item is None:
                item = QtWidgets.QTableWidgetItem()
                self.table.setItem(row, column, item)
            item.setText(text)
            if column in (GPU_COLUMN, VRAM_COLUMN):
                item.setToolTip(stale)
            if column == 0:
                item.setBackground(QtGui.QColor(STATE_COLOURS.get(state, "#7f7f7f")))
                item.setForeground(QtGui.QColor("white"))
                item.setToolTip(status.last_error or "")
            if column == 2:
                item.setToolTip(tunnel or "")
        switch = self._switches[status.name]
        if status.name not in self._busy:
            switch.blockSignals(True)
            switch.setChecked(bool(status.enabled))
            switch.blockSignals(False)

    def _show_runpod(self, runpod: dict[str, Any] | None) -> None:
        self.runpod_box.setVisible(runpod is not None)
        if runpod is None:
            return
        workers, jobs = runpod.get("workers") or {}, runpod.get("jobs") or {}
        budget = runpod.get("daily_budget")
        spend = f"${runpod.get('spend_today', 0.0):.2f}" + (f" of ${budget:.2f}" if budget else "")
        texts = {
            "state": runpod.get("blocked_reason") or _state_text(runpod.get("state", "-")),
            "workers": f"{_dash(runpod.get('workers_min'))}/{_dash(runpod.get('workers_max'))}",
            "activity": f"{workers.get('running', 0)}/{workers.get('idle', 0)}",
            "queue": f"{jobs.get('inQueue', 0)}/{jobs.get('inProgress', 0)}",
            "spend": spend,
        }
        for key, text in texts.items():
            self.runpod_labels[key].setText(text)
        if "always_on" not in self._busy:
            self.always_on.blockSignals(True)
            self.always_on.setChecked((runpod.get("workers_min") or 0) >= 1)
            self.always_on.blockSignals(False)
        self.always_on.setEnabled(core.runpod_admin(self.pool) is not None)

    def _show_batches(self, active: list[core.ActiveWork]) -> None:
        keep = {id(a) for a in active}
        for key in [k for k in self.batch_bars if k not in keep]:
            label, bar = self.batch_bars.pop(key)
            label.deleteLater()
            bar.deleteLater()
        for entry in active:
            if id(entry) not in self.batch_bars:
                label, bar = QtWidgets.QLabel(), QtWidgets.QProgressBar()
                self.batch_layout.addWidget(label)
                self.batch_layout.addWidget(bar)
                label.show()  # children added to a visible widget stay hidden until shown
                bar.show()
                self.batch_bars[id(entry)] = (label, bar)
            label, bar = self.batch_bars[id(entry)]
            done, failed, total = entry.work.progress
            bar.setRange(0, max(total, 1))
            bar.setValue(done + failed)
            servers = ", ".join(f"{k}: {v}" for k, v in sorted(entry.servers.items()))
            label.setText(f"{entry.label}: {done}/{total} done" + (f", {failed} failed" if failed else "")
                          + (f" ({servers})" if servers else ""))
        self.no_batches.setVisible(not active)

    # -- switches (worker threads) -------------------------------------------------------------

    def _background(self, key: str, what: str, call: Callable[[], None]) -> threading.Thread:
        self._busy.add(key)

        def run() -> None:
            try:
                call()
            except ComfyClusterError as err:
                self._note(f"{what}: {err}")
            except Exception as err:
                log.exception("%s failed", what)
                self._note(f"{what} failed: {type(err).__name__}: {err}")
            finally:
                self._busy.discard(key)

        thread = threading.Thread(target=run, name=f"comfy-cluster panel {key}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def _note(self, text: str) -> None:
        with self._notes_lock:
            self._notes.append(text)

    def _enable_toggled(self, name: str, on: bool) -> None:
        pool = self.pool
        self._background(name, f"{'enable' if on else 'disable'} {name}", lambda: core.set_enabled(pool, name, on))

    def _always_on_toggled(self, on: bool) -> None:
        pool = self.pool
        self._background("always_on", "RunPod always-on worker",
                         lambda: self._note(core.set_always_on(pool, on)))

    def open_servers_editor(self) -> Any:
        """The servers editor on the file the pool watches (add, remove, priority, enable, import, export)."""
        from .config_dialog import ConfigDialog

        self.servers_dialog = ConfigDialog(self, path=getattr(self.pool, "config_path", None))
        self.servers_dialog.show()
        return self.servers_dialog

    # -- reading back (tests, scripts/panel_screenshot.py) --------------------------------------

    def server_names(self) -> list[str]:
        return list(self._rows)

    def cell(self, name: str, column: str) -> str:
        """The text shown for server ``name`` in ``column`` (a ``COLUMNS`` title)."""
        item = self.table.item(self._rows[name], COLUMNS.index(column))
        return "" if item is None else item.text()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self._timer.stop()
        super().closeEvent(event)


def _gpu_name(device: str) -> str:
    """ComfyUI's ``"cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"`` -> ``"NVIDIA GeForce RTX 4090"``."""
    name = device.split(" : ")[0].strip()
    first, _, rest = name.partition(" ")
    return rest.strip() if ":" in first and rest.strip() else name


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
