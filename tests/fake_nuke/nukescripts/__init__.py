"""A small stand-in for Foundry's ``nukescripts`` package (only ``panels``), for tests."""

from __future__ import annotations

from . import panels
from .panels import registerPanel, registerWidgetAsPanel

__all__ = ["panels", "registerPanel", "registerWidgetAsPanel"]
