"""One Qt import for Nuke 13-15 (PySide2) and Nuke 16+ (PySide6).

Only what the status panel uses; ``QAction``/``QShortcut`` moved modules between the
two, so the panel does not use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PySide6 import QtCore, QtGui, QtWidgets

    BINDING = "PySide6"
else:
    try:
        from PySide6 import QtCore, QtGui, QtWidgets

        BINDING = "PySide6"
    except ImportError:
        from PySide2 import QtCore, QtGui, QtWidgets

        BINDING = "PySide2"

__all__ = ["BINDING", "QtCore", "QtGui", "QtWidgets"]
