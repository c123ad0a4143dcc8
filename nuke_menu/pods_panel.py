"""The status panel's "RunPod pods" box: pod rows (GPU, price, uptime, cost) and the
spawn, terminate and shutdown-all buttons.

It only maps widgets to ``Autoscaler`` calls: rows come from ``pool.snapshot().pods``
(no network on Nuke's UI thread), and each button runs its call through the panel's
``background`` helper, so the RunPod API never freezes the UI.
"""

from __future__ import annotations

from typing import Any, Callable

from .qt import QtWidgets

COLUMNS = ("Pod", "GPU", "$/h", "Uptime", "Cost", "State")


def _uptime(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s"


def _bound(call: Callable[[str], Any], name: str) -> Callable[[], None]:
    def run() -> None:
        call(name)
    return run


class PodsBox(QtWidgets.QGroupBox):
    """Shown only when the pool has a pod autoscaler."""

    def __init__(self, pool: Callable[[], Any], background: Callable[[str, str, Callable[[], None]], Any]) -> None:
        super().__init__("RunPod pods")
        self._pool = pool
        self._background = background
        layout = QtWidgets.QVBoxLayout(self)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        layout.addWidget(self.table)
        buttons = QtWidgets.QHBoxLayout()
        self.spawn_button = QtWidgets.QPushButton("Spawn pod")
        self.terminate_button = QtWidgets.QPushButton("Terminate selected")
        self.shutdown_button = QtWidgets.QPushButton("Shutdown all pods")
        self.spawn_button.clicked.connect(self.spawn)
        self.terminate_button.clicked.connect(self.terminate_selected)
        self.shutdown_button.clicked.connect(self.shutdown_all)
        for button in (self.spawn_button, self.terminate_button, self.shutdown_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.names: list[str] = []

    def _scaler(self) -> Any:
        return getattr(self._pool(), "autoscaler", None)

    def show_rows(self, rows: tuple[dict[str, Any], ...]) -> None:
        self.setVisible(self._scaler() is not None)
        self.names = [r["name"] for r in rows]
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = (r["name"], r["gpu"], f"${r['cost_per_hr']:.2f}", _uptime(r["uptime_s"]), f"${r['cost']:.4f}",
                     r["state"])
            for j, text in enumerate(cells):
                item = self.table.item(i, j)
                if item is None:
                    self.table.setItem(i, j, QtWidgets.QTableWidgetItem(text))
                elif item.text() != text:
                    item.setText(text)

    def spawn(self) -> None:
        scaler = self._scaler()
        if scaler is not None:
            self._background("pods_spawn", "spawn a RunPod pod", lambda: scaler.spawn())

    def terminate_selected(self) -> None:
        scaler = self._scaler()
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        if scaler is None:
            return
        for name in [self.names[r] for r in rows if r < len(self.names)]:
            self._background(f"pods_terminate_{name}", f"terminate {name}", _bound(scaler.terminate, name))

    def shutdown_all(self) -> None:
        scaler = self._scaler()
        if scaler is not None:
            self._background("pods_shutdown", "shut down every pod", lambda: scaler.shutdown_all())


__all__ = ["PodsBox"]
