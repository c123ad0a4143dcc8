"""``nukescripts.panels`` as the plug-in uses it, modelled on Foundry's source.

``registerWidgetAsPanel(widget, name, id, create=False)`` takes a *string of Python code*.
Nuke evaluates ``"__import__('nukescripts').panels.WidgetKnob(" + widget + ")"`` and
``WidgetKnob.makeUI()`` calls the class with no arguments; this fake does the same, so a
string that only works in the caller's namespace fails here as it does in Nuke.
"""

from __future__ import annotations

from typing import Any, Callable

import nuke

registered: dict[str, Callable[[], Any]] = {}


class WidgetKnob:
    def __init__(self, widget: Any) -> None:
        self.widgetClass = widget
        self.widget: Any = None

    def makeUI(self) -> Any:
        self.widget = self.widgetClass()
        return self.widget

    def getObject(self) -> WidgetKnob:
        return self


class _CustomKnob:
    def __init__(self, command: str) -> None:
        self.command = command
        self._object: WidgetKnob | None = None

    def getObject(self) -> WidgetKnob:
        if self._object is None:
            self._object = eval(self.command, {})  # a fresh namespace, like PyCustom_Knob
        return self._object


class PythonPanel:
    def __init__(self, title: str = "", id: str = "", scrollable: bool = True) -> None:
        self.title = title
        self.id = id
        self.customKnob: _CustomKnob | None = None
        self.pane: Any = None

    def addToPane(self, pane: Any = None) -> None:
        if self.customKnob is None:
            raise RuntimeError("panel has no widget")
        self.customKnob.getObject().makeUI()
        self.pane = pane
        if pane is not None:
            pane.panels.append(self)


def registerPanel(id: str, command: Callable[[], Any]) -> None:
    registered[id] = command


def registerWidgetAsPanel(widget: str, name: str, id: str, create: bool = False) -> PythonPanel | None:
    if not isinstance(widget, str):
        raise TypeError("registerWidgetAsPanel takes a string of Python code naming the widget class")

    def make() -> PythonPanel:
        panel = PythonPanel(name, id)
        panel.customKnob = _CustomKnob("__import__('nukescripts').panels.WidgetKnob(" + widget + ")")
        return panel

    if nuke.GUI:
        nuke.menu("Pane").addCommand(name, make)
    registerPanel(id, make)
    return make() if create else None
