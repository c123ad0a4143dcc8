"""A small, honest in-memory stand-in for Foundry's ``nuke`` module, for tests.

It follows the real API's names and signatures (checked against the ``types-nuke`` stubs
by tests/test_nuke_fake.py) and models the behaviour the plug-in relies on:

- a node graph with knobs, Groups (``begin``/``end``/``with``), ``createNode`` and
  ``nodes.X(...)``, selection, ``toNode``, ``delete`` and per-node frame ranges;
- ``execute`` really renders: a Write whose upstream is a ``Read`` or a ``Constant``
  writes PNG frames with Pillow;
- threads: ``executeInMainThread`` queues the call for the simulated main thread and
  raises when called *from* the main thread (the real call hangs); ``message`` raises
  when called off the main thread; the test drains the queue with ``fake_run_main_thread``;
- ``menu``/``toolbar`` record ``addCommand`` and raise outside GUI mode.

Anything named ``fake_*`` is a test hook and does not exist in the real module. Misspelt
or unmodelled calls fail with AttributeError, which is the point of not using MagicMock.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from typing import Any, Callable, Iterable

GUI = True
NUKE_VERSION_MAJOR = 15
NUKE_VERSION_MINOR = 1
NUKE_VERSION_STRING = "15.1v1"
env: dict[str, Any] = {"gui": True, "NukeVersionMajor": 15, "NukeVersionString": "15.1v1"}
rawArgs: list[str] = []

STARTLINE = 0x1000
INVISIBLE = 0x400
READ_ONLY = 0x10000000
DISABLED = 0x80
INPUTS = 0x1
HIDDEN_INPUTS = 0x2


class CancelledError(Exception):
    """Raised by ``execute`` when the user cancels a render."""


# --------------------------------------------------------------------------- knobs

class Knob:
    """Base knob: a named value with flags; ``Knob(name, label=None)`` like the real one."""

    _default: Any = ""

    def __init__(self, name: str, label: str | None = None, *args: Any, **kwargs: Any) -> None:
        self._name = name
        self._label = label if label is not None else name
        self._value: Any = self._default
        self._flags = 0
        self._visible = True
        self._tooltip = ""
        self._node: Node | None = None

    def Class(self) -> str:
        return type(self).__name__

    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def label(self) -> str:
        return self._label

    def setLabel(self, label: str) -> None:
        self._label = label

    def node(self) -> Node | None:
        return self._node

    def value(self, *args: Any) -> Any:
        return self._value

    def getValue(self, *args: Any) -> Any:
        return self._value

    def setValue(self, val: Any, chan: int = -1) -> bool:
        self._value = val
        return True

    def setFlag(self, flag: int) -> None:
        self._flags |= flag

    def clearFlag(self, flag: int) -> None:
        self._flags &= ~flag

    def getFlag(self, flag: int) -> bool:
        return bool(self._flags & flag)

    def setVisible(self, visible: bool) -> None:
        self._visible = bool(visible)

    def visible(self) -> bool:
        return self._visible

    def setTooltip(self, text: str) -> None:
        self._tooltip = text

    def tooltip(self) -> str:
        return self._tooltip

    def __repr__(self) -> str:
        return f"<{self.Class()} {self._name}={self._value!r}>"


class String_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, value: str | None = None) -> None:
        super().__init__(name, label)
        self._value = "" if value is None else str(value)

    def setValue(self, val: Any, view: str = "default") -> None:  # type: ignore[override]
        self._value = str(val)

    def getText(self) -> str:
        return self._value


class EvalString_Knob(String_Knob):
    def evaluate(self) -> str:
        return self._value


class Multiline_Eval_String_Knob(EvalString_Knob):
    pass


class File_Knob(EvalString_Knob):
    def __init__(self, name: str, label: str | None = None) -> None:
        super().__init__(name, label)

    def fromUserText(self, s: str) -> None:
        """``"/p/a.####.png 1-48"``: the path, and the trailing range sets first/last knobs."""
        match = re.match(r"^(.*\S)\s+(-?\d+)-(-?\d+)\s*$", s)
        path = s.strip()
        if match:
            path, first, last = match.group(1), int(match.group(2)), int(match.group(3))
            if self._node is not None:
                for knob_name, value in (("first", first), ("origfirst", first), ("last", last), ("origlast", last)):
                    knob = self._node.knob(knob_name)
                    if knob is not None:
                        knob.setValue(value)
        self._value = path


class Int_Knob(Knob):
    _default = 0

    def setValue(self, val: Any, chan: int = -1) -> bool:
        self._value = int(val)
        return True

    def value(self, *args: Any) -> int:
        return int(self._value)


class Double_Knob(Knob):
    _default = 0.0

    def setValue(self, val: Any, chan: int = -1) -> bool:
        self._value = float(val)
        return True


class Array_Knob(Knob):
    """A multi-channel value (e.g. a Constant's colour)."""

    def __init__(self, name: str, label: str | None = None, size: int = 4) -> None:
        super().__init__(name, label)
        self._value = [0.0] * size

    def setValue(self, val: Any, chan: int = -1) -> bool:
        if chan >= 0:
            self._value[chan] = float(val)
        elif isinstance(val, (list, tuple)):
            self._value = [float(v) for v in val]
        else:
            self._value = [float(val)] * len(self._value)
        return True

    def value(self, index: int = -1) -> Any:
        return list(self._value) if index < 0 else self._value[index]


class Boolean_Knob(Knob):
    _default = False

    def __init__(self, name: str, label: str | None = None, value: bool = False) -> None:
        super().__init__(name, label)
        self._value = bool(value)

    def setValue(self, b: Any, chan: int = -1) -> bool:
        self._value = bool(b)
        return True

    def value(self, *args: Any) -> bool:
        return bool(self._value)


class Enumeration_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, items: Iterable[str] = ()) -> None:
        super().__init__(name, label)
        self._items = [str(i) for i in items]
        self._value = 0

    def values(self) -> list[str]:
        return list(self._items)

    def setValues(self, items: Iterable[str]) -> None:
        current = self.value()
        self._items = [str(i) for i in items]
        self._value = self._items.index(current) if current in self._items else 0

    def setValue(self, val: Any, chan: int = -1) -> bool:
        if isinstance(val, str):
            if val not in self._items:
                raise ValueError(f"Enumeration_Knob {self._name}: {val!r} is not one of {self._items}")
            self._value = self._items.index(val)
        else:
            if not 0 <= int(val) < len(self._items):
                raise ValueError(f"Enumeration_Knob {self._name}: index {val} out of range")
            self._value = int(val)
        return True

    def value(self, *args: Any) -> str:
        return self._items[self._value] if self._items else ""

    def getValue(self, *args: Any) -> float:
        return float(self._value)


class PyScript_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, command: str | None = None) -> None:
        super().__init__(name, label)
        self._value = command or ""

    def execute(self) -> None:
        """Run the button's code as Nuke does: ``nuke`` bound, this node as ``thisNode()``."""
        _context_node.append(self._node)
        try:
            exec(compile(self._value, f"<{self._name}>", "exec"), {"nuke": sys.modules[__name__]})
        finally:
            _context_node.pop()


class Tab_Knob(Knob):
    pass


class Text_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, text: str | None = None) -> None:
        super().__init__(name, label)
        self._value = text or ""


# --------------------------------------------------------------------------- nodes

_node_counter: dict[str, int] = {}


def _common_knobs() -> list[Knob]:
    return [String_Knob("name", "name"), Multiline_Eval_String_Knob("label", "label"),
            Int_Knob("tile_color", "tile color"), Boolean_Knob("disable", "disable"),
            Boolean_Knob("selected", "selected"), Double_Knob("xpos", "xpos"), Double_Knob("ypos", "ypos"),
            String_Knob("knobChanged", "knobChanged"), String_Knob("onCreate", "onCreate")]


def _class_knobs(cls: str) -> list[Knob]:
    if cls == "Read":
        return [File_Knob("file", "file"), Int_Knob("first", "first"), Int_Knob("last", "last"),
                Int_Knob("origfirst", "origfirst"), Int_Knob("origlast", "origlast"),
                Boolean_Knob("raw", "raw"), PyScript_Knob("reload", "reload")]
    if cls == "Write":
        file_type = Enumeration_Knob("file_type", "file type", [" ", "png", "exr", "jpeg", "tiff"])
        return [File_Knob("file", "file"), file_type, Enumeration_Knob("channels", "channels", ["rgb", "rgba", "alpha"]),
                Boolean_Knob("raw", "raw"), Boolean_Knob("create_directories", "create directories"),
                Boolean_Knob("use_limit", "limit to range"), Int_Knob("first", "first"), Int_Knob("last", "last")]
    if cls == "Constant":
        color = Array_Knob("color", "color")
        color.setValue([0.0, 0.0, 0.0, 1.0])
        size = Array_Knob("size", "size", 2)
        size.setValue([32, 24])
        return [color, size]
    if cls == "Input":
        return [Int_Knob("number", "number")]
    return []


_MAX_INPUTS = {"Read": 0, "Constant": 0, "Input": 0, "Write": 1, "Output": 1, "Dot": 1, "NoOp": 1, "Root": 0}


class Node:
    """A node: its class, knobs (common ones plus per-class ones) and input connections."""

    def __init__(self, cls: str, parent: Group | None = None) -> None:
        self._class = cls
        self._knobs: dict[str, Knob] = {}
        self._order: list[str] = []
        self._inputs: dict[int, Node] = {}
        self._parent = parent
        self._deleted = False
        for knob in _common_knobs() + _class_knobs(cls):
            self.addKnob(knob)
        _node_counter[cls] = _node_counter.get(cls, 0) + 1
        base = f"{cls}{_node_counter[cls]}"
        self._knobs["name"].setValue(base)
        self._width, self._height = 80, 18

    # identity
    def Class(self) -> str:
        return self._class

    def name(self) -> str:
        return str(self._knobs["name"].value())

    def fullName(self) -> str:
        if self._parent is None or isinstance(self._parent, Root):
            return self.name()
        return f"{self._parent.fullName()}.{self.name()}"

    def setName(self, name: str, uncollide: bool = False, updateExpressions: bool = False) -> None:
        parent = self._parent
        if parent is not None and any(n is not self and n.name() == name for n in parent._children):
            if not uncollide:
                raise ValueError(f"{name} is not unique")
            stem, k = name, 1
            while any(n.name() == f"{stem}{k}" for n in parent._children):
                k += 1
            name = f"{stem}{k}"
        self._knobs["name"].setValue(name)

    # knobs
    def addKnob(self, knob: Knob) -> None:
        if knob.name() in self._knobs and knob.name() != "name":
            raise ValueError(f"{self._class}: knob {knob.name()!r} already exists")
        knob._node = self
        self._knobs[knob.name()] = knob
        self._order.append(knob.name())

    def removeKnob(self, knob: Knob) -> None:
        del self._knobs[knob.name()]
        self._order.remove(knob.name())

    def knob(self, p: str | int, follow_link: bool = False) -> Knob | None:
        if isinstance(p, int):
            return self._knobs[self._order[p]] if 0 <= p < len(self._order) else None
        return self._knobs.get(p)

    def knobs(self) -> dict[str, Knob]:
        return dict(self._knobs)

    def allKnobs(self) -> list[Knob]:
        return [self._knobs[n] for n in self._order]

    def __getitem__(self, name: str) -> Knob:
        knob = self._knobs.get(name)
        if knob is None:
            raise NameError(f"{self.name()}: no knob named {name!r}")
        return knob

    # inputs
    def maxInputs(self) -> int:
        return _MAX_INPUTS.get(self._class, 1)

    def inputs(self) -> int:
        return self.maxInputs()

    def input(self, index: int) -> Node | None:
        node = self._inputs.get(index)
        return node if node is not None and not node._deleted else None

    def setInput(self, i: int, node: Node | None) -> bool:
        if not 0 <= i < self.maxInputs():
            return False
        if node is None:
            self._inputs.pop(i, None)
        else:
            self._inputs[i] = node
        return True

    def dependent(self) -> list[Node]:
        scope = self._parent._children if self._parent is not None else []
        return [n for n in scope if any(v is self for v in n._inputs.values())]

    # layout
    def xpos(self) -> int:
        return int(self._knobs["xpos"].value())

    def ypos(self) -> int:
        return int(self._knobs["ypos"].value())

    def setXYpos(self, x: int, y: int) -> None:
        self._knobs["xpos"].setValue(x)
        self._knobs["ypos"].setValue(y)

    def setXpos(self, x: int) -> None:
        self._knobs["xpos"].setValue(x)

    def setYpos(self, y: int) -> None:
        self._knobs["ypos"].setValue(y)

    def screenWidth(self) -> int:
        return self._width

    def screenHeight(self) -> int:
        return self._height

    def setSelected(self, selected: bool) -> None:
        self._knobs["selected"].setValue(selected)

    def isSelected(self) -> bool:
        return bool(self._knobs["selected"].value())

    # frame range
    def firstFrame(self) -> int:
        return self._frame_range()[0]

    def lastFrame(self) -> int:
        return self._frame_range()[1]

    def _frame_range(self) -> tuple[int, int]:
        if self._class == "Read":
            return int(self._knobs["first"].value()), int(self._knobs["last"].value())
        if self._class == "Input" and isinstance(self._parent, Group):
            upstream = self._parent.input(int(self._knobs["number"].value()))
            if upstream is not None:
                return upstream._frame_range()
        elif self._class != "Constant":
            upstream = self.input(0)
            if upstream is not None:
                return upstream._frame_range()
        r = root()
        return r.firstFrame(), r.lastFrame()

    def __repr__(self) -> str:
        return f"<{self._class} {self.name()}>"


class Group(Node):
    """A node that holds nodes; its inputs are its Input nodes in ``number`` order."""

    def __init__(self, cls: str = "Group", parent: Group | None = None) -> None:
        self._children: list[Node] = []
        super().__init__(cls, parent)

    def begin(self) -> Group:
        _context.append(self)
        return self

    def end(self) -> None:
        if len(_context) < 2 or _context[-1] is not self:
            raise RuntimeError(f"{self.name()}.end() without a matching begin()")
        _context.pop()

    def __enter__(self) -> Group:
        return self.begin()

    def __exit__(self, type: Any, value: Any, traceback: Any) -> None:
        self.end()

    def nodes(self) -> list[Node]:
        return [n for n in self._children if not n._deleted]

    def node(self, s: str) -> Node | None:
        return next((n for n in self.nodes() if n.name() == s), None)

    def selectedNodes(self) -> list[Node]:
        return [n for n in self.nodes() if n.isSelected()]

    def maxInputs(self) -> int:
        return sum(1 for n in self.nodes() if n.Class() == "Input")

    def _frame_range(self) -> tuple[int, int]:
        output = next((n for n in self.nodes() if n.Class() == "Output"), None)
        if output is not None:
            return output._frame_range()
        return super()._frame_range()


class Root(Group):
    def __init__(self) -> None:
        super().__init__("Root", None)
        self.addKnob(Int_Knob("first_frame", "frame range"))
        self.addKnob(Int_Knob("last_frame", ""))
        self._knobs["first_frame"].setValue(1)
        self._knobs["last_frame"].setValue(100)
        self._knobs["name"].setValue("Root")

    def firstFrame(self) -> int:
        return int(self._knobs["first_frame"].value())

    def lastFrame(self) -> int:
        return int(self._knobs["last_frame"].value())

    def name(self) -> str:
        """The script's path, or ``"Root"`` for an unsaved script, as in Nuke."""
        return str(self._knobs["name"].value())


# --------------------------------------------------------------------------- graph functions

_root = Root()
_context: list[Group] = [_root]
_context_node: list[Node | None] = []
_context_knob: list[Knob | None] = []


def root() -> Root:
    return _root


def thisGroup() -> Group:
    return _context[-1]


def thisNode() -> Node:
    node = _context_node[-1] if _context_node else None
    return node if node is not None else _context[-1]


def thisKnob() -> Knob | None:
    return _context_knob[-1] if _context_knob else None


def _new_node(typ: str, knob_values: dict[str, Any]) -> Node:
    parent = _context[-1]
    node: Node = Group(typ, parent) if typ == "Group" else Node(typ, parent)
    if typ == "Input":
        node["number"].setValue(sum(1 for n in parent.nodes() if n.Class() == "Input"))
    parent._children.append(node)
    name = knob_values.pop("name", None)
    if name is not None:
        node.setName(str(name), uncollide=True)
    elif node.name() in (n.name() for n in parent.nodes() if n is not node):
        node.setName(node.name(), uncollide=True)
    for key, value in knob_values.items():
        if key == "inputs":
            for i, upstream in enumerate(value):
                node.setInput(i, upstream)
        else:
            node[key].setValue(value)
    return node


def createNode(typ: str, knobs: str = "", inpanel: bool = True) -> Node:
    """UI-style creation: connects to the selected node and becomes the selection."""
    values: dict[str, Any] = {}
    parts = knobs.split()
    for key, value in zip(parts[::2], parts[1::2]):
        values[key] = value
    selected = selectedNodes()
    node = _new_node(typ, values)
    if selected and node.maxInputs() > 0:
        node.setInput(0, selected[-1])
    for other in _context[-1].nodes():
        other.setSelected(other is node)
    return node


class _Constructor:
    def __init__(self, typ: str) -> None:
        self._typ = typ

    def __call__(self, **kwargs: Any) -> Node:
        return _new_node(self._typ, dict(kwargs))


class Nodes:
    """``nuke.nodes.Read(file=..., inputs=[...])``: scripting-style creation, no connection."""

    def __getattr__(self, typ: str) -> _Constructor:
        if not typ[:1].isupper():
            raise AttributeError(typ)
        return _Constructor(typ)


nodes = Nodes()


def toNode(s: str) -> Node | None:
    scope: Group = _context[-1]
    parts = s.split(".")
    if parts[0] == "root":
        scope, parts = _root, parts[1:]
    node: Node | None = scope
    for part in parts:
        if not isinstance(node, Group):
            return None
        node = node.node(part)
    return node


def selectedNodes(filter: str | None = None) -> list[Node]:
    found = _context[-1].selectedNodes()
    return [n for n in found if filter is None or n.Class() == filter]


def selectedNode() -> Node:
    found = selectedNodes()
    if not found:
        raise ValueError("no node selected")
    return found[-1]


def allNodes(filter: str | None = None, group: Group | None = None, recurseGroups: bool = False) -> list[Node]:
    scope = group if group is not None else _context[-1]
    found: list[Node] = []
    for node in scope.nodes():
        if filter is None or node.Class() == filter:
            found.append(node)
        if recurseGroups and isinstance(node, Group):
            found.extend(allNodes(filter, node, True))
    return found


def delete(n: Node | None) -> None:
    if n is None:
        return
    n._deleted = True
    if n._parent is not None:
        n._parent._children.remove(n)


def frame(f: int | None = None) -> int:
    if f is not None:
        _state["frame"] = int(f)
    return int(_state["frame"])


def pluginAddPath(args: str, addToSysPath: bool = True) -> None:
    path = os.path.abspath(args)
    if path in _plugin_path:
        _plugin_path.remove(path)
    _plugin_path.insert(0, path)
    if addToSysPath and path not in sys.path:
        sys.path.insert(0, path)


def pluginPath() -> list[str]:
    return list(_plugin_path)


# --------------------------------------------------------------------------- rendering

def _frame_path(pattern: str, frame_number: int) -> str:
    path = re.sub(r"#+", lambda m: f"{frame_number:0{len(m.group(0))}d}", pattern)
    return re.sub(r"%(0?\d*)d", lambda m: f"{frame_number:{m.group(1) or ''}d}", path)


def _pixels(node: Node | None, frame_number: int) -> Any:
    from PIL import Image

    if node is None:
        raise RuntimeError("input is not connected")
    cls = node.Class()
    if cls == "Read":
        path = _frame_path(str(node["file"].value()), frame_number)
        if not os.path.isfile(path):
            raise RuntimeError(f"{node.name()}: Read error: No such file or directory: {path}")
        with Image.open(path) as img:
            return img.convert("RGB")
    if cls == "Constant":
        color = node["color"].value()
        width, height = (int(v) for v in node["size"].value())
        rgb = tuple(max(0, min(255, int(round(c * 255)))) for c in color[:3])
        return Image.new("RGB", (width, height), rgb)
    if cls == "Input" and isinstance(node._parent, Group):
        return _pixels(node._parent.input(int(node["number"].value())), frame_number)
    if isinstance(node, Group) and cls == "Group":
        output = next((n for n in node.nodes() if n.Class() == "Output"), None)
        return _pixels(output, frame_number)
    if cls in ("Dot", "NoOp", "Output", "Write"):
        return _pixels(node.input(0), frame_number)
    raise RuntimeError(f"{node.name()}: the fake nuke cannot render a {cls} node")


def execute(nameOrNode: Node | str, start: int, end: int, incr: int = 1, views: list[str] | None = None,
            continueOnError: bool = False) -> None:
    """Render a Write node's frames ``start..end`` step ``incr`` to real PNG files."""
    node = toNode(nameOrNode) if isinstance(nameOrNode, str) else nameOrNode
    if node is None or node.Class() != "Write":
        raise ValueError(f"{nameOrNode!r} is not a Write node")
    if str(node["file_type"].value()).strip() not in ("png", ""):
        raise RuntimeError(f"{node.name()}: the fake nuke writes png only")
    for f in range(int(start), int(end) + 1, int(incr)):
        if _state["cancel_renders"]:
            raise RuntimeError("Cancelled")
        path = _frame_path(str(node["file"].value()), f)
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            if not node["create_directories"].value():
                raise RuntimeError(f"{node.name()}: Can't open output file: {path}: No such file or directory")
            os.makedirs(folder, exist_ok=True)
        _pixels(node.input(0), f).save(path, format="PNG")
        _executed.append((node.name(), f, path))


render = execute


# --------------------------------------------------------------------------- threads and UI

_main_thread: threading.Thread = threading.current_thread()
_main_queue: queue.Queue[tuple[Callable[..., Any], tuple, dict, threading.Event | None, list]] = queue.Queue()


def _on_main_thread() -> bool:
    return threading.current_thread() is _main_thread


def _wrap_args(args: Any) -> tuple:
    return args if isinstance(args, tuple) else (args,)


def executeInMainThread(call: Callable[..., Any], args: Any = (), kwargs: dict | None = None) -> None:
    if _on_main_thread():
        raise RuntimeError("executeInMainThread called from the main thread: the real Nuke hangs here")
    _main_queue.put((call, _wrap_args(args), dict(kwargs or {}), None, []))


def executeInMainThreadWithResult(call: Callable[..., Any], args: Any = (), kwargs: dict | None = None) -> Any:
    if _on_main_thread():
        raise RuntimeError("executeInMainThreadWithResult called from the main thread: the real Nuke hangs here")
    done = threading.Event()
    box: list = []
    _main_queue.put((call, _wrap_args(args), dict(kwargs or {}), done, box))
    done.wait()
    return box[0] if box else None


def message(prompt: str) -> None:
    if not _on_main_thread():
        raise RuntimeError("nuke.message called from a thread other than the main thread")
    fake_messages.append(str(prompt))


def ask(prompt: str) -> bool:
    if not _on_main_thread():
        raise RuntimeError("nuke.ask called from a thread other than the main thread")
    fake_messages.append(str(prompt))
    return bool(fake_answers.pop(0)) if fake_answers else False


def getInput(prompt: str, default: str = "") -> str | None:
    if not _on_main_thread():
        raise RuntimeError("nuke.getInput called from a thread other than the main thread")
    fake_messages.append(str(prompt))
    if fake_answers:
        answer = fake_answers.pop(0)
        return None if answer is None else str(answer)
    return default


class ProgressTask:
    """A progress bar; the real one closes when the Python object is released."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.message = ""
        self.progress = 0
        self.history: list[tuple[int, str]] = []
        self._cancelled = False
        fake_progress_tasks.append(self)

    def setMessage(self, message: str) -> None:
        self.message = str(message)
        self.history.append((self.progress, self.message))

    def setProgress(self, progress: int) -> None:
        if not isinstance(progress, int):
            raise TypeError("setProgress takes an int from 0 to 100")
        self.progress = max(0, min(100, progress))

    def isCancelled(self) -> bool:
        return self._cancelled

    def fake_cancel(self) -> None:
        self._cancelled = True


class MenuItem:
    def __init__(self, name: str, script: Any) -> None:
        self._name = name
        self._script = script
        self._enabled = True

    def name(self) -> str:
        return self._name

    def script(self) -> Any:
        return self._script

    def setEnabled(self, enabled: bool) -> None:
        self._enabled = bool(enabled)

    def invoke(self) -> None:
        """Run the command as a menu click does (a callable, or a string of Python)."""
        if callable(self._script):
            self._script()
        else:
            exec(compile(self._script, f"<menu {self._name}>", "exec"), dict(_plugin_globals))


class Menu(MenuItem):
    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self._items: list[MenuItem] = []
        self.shortcuts: dict[str, str] = {}
        self.icons: dict[str, str] = {}

    def _submenu(self, path: list[str]) -> Menu:
        menu = self
        for part in path:
            found = menu.findItem(part)
            if not isinstance(found, Menu):
                found = Menu(part)
                menu._items.append(found)
            menu = found
        return menu

    def addMenu(self, name: str, icon: str | None = None, tooltip: str | None = None, index: int = -1) -> Menu:
        parts = name.split("/")
        menu = self._submenu(parts)
        if icon:
            self.icons[name] = icon
        return menu

    def addCommand(self, name: str, command: Any = None, shortcut: str | None = None, icon: str | None = None,
                   tooltip: str | None = None, index: int = -1, readonly: bool = False, shortcutContext: int = 0,
                   tag: int = 0, tagTarget: int = 0) -> MenuItem:
        parts = name.split("/")
        menu = self._submenu(parts[:-1])
        if command is None:
            command = f"nuke.createNode({parts[-1]!r})"
        item = MenuItem(parts[-1], command)
        menu._items = [i for i in menu._items if i.name() != parts[-1]] + [item]
        if shortcut:
            self.shortcuts[name] = shortcut
        return item

    def addSeparator(self, **kwargs: Any) -> MenuItem:
        item = MenuItem("", "")
        self._items.append(item)
        return item

    def findItem(self, name: str) -> MenuItem | None:
        menu: MenuItem | None = self
        for part in name.split("/"):
            if not isinstance(menu, Menu):
                return None
            menu = next((i for i in menu._items if i.name() == part), None)
        return menu

    def items(self) -> list[MenuItem]:
        return list(self._items)

    def removeItem(self, name: str) -> None:
        self._items = [i for i in self._items if i.name() != name]


class ToolBar(Menu):
    pass


_menus: dict[str, Menu] = {}


def menu(name: str) -> Menu:
    if not GUI:
        raise RuntimeError("menu() is not available in terminal mode")
    return _menus.setdefault(name, ToolBar(name) if name == "Nodes" else Menu(name))


def toolbar(name: str, create: bool = True) -> ToolBar | None:
    if not GUI:
        raise RuntimeError("toolbar() is not available in terminal mode")
    if name not in _menus and not create:
        return None
    found = _menus.setdefault(name, ToolBar(name))
    return found if isinstance(found, ToolBar) else None


class _Pane:
    def __init__(self, name: str) -> None:
        self.name = name
        self.panels: list[Any] = []


def getPaneFor(panelName: str) -> _Pane | None:
    return _panes.get(panelName) if GUI else None


# --------------------------------------------------------------------------- test hooks (fake only)

fake_messages: list[str] = []
fake_answers: list[Any] = []
fake_progress_tasks: list[ProgressTask] = []
fake_main_thread_errors: list[BaseException] = []
_executed: list[tuple[str, int, str]] = []
_plugin_path: list[str] = []
_plugin_globals: dict[str, Any] = {}
_panes: dict[str, _Pane] = {}
_state: dict[str, Any] = {"frame": 1, "cancel_renders": False}


def fake_reset(*, gui: bool = True) -> None:
    """A fresh session: empty script, this thread is the main thread, GUI or ``nuke -t``."""
    global _root, _main_thread, GUI
    GUI = gui
    env["gui"] = gui
    _root = Root()
    _context[:] = [_root]
    _context_node.clear()
    _context_knob.clear()
    _node_counter.clear()
    _menus.clear()
    _panes.clear()
    _panes["Properties.1"] = _Pane("Properties.1")
    _plugin_path.clear()
    _plugin_globals.clear()
    _plugin_globals["nuke"] = sys.modules[__name__]
    _executed.clear()
    fake_messages.clear()
    fake_answers.clear()
    fake_progress_tasks.clear()
    fake_main_thread_errors.clear()
    _state.update(frame=1, cancel_renders=False)
    while not _main_queue.empty():
        _main_queue.get_nowait()
    _main_thread = threading.current_thread()


def fake_run_main_thread(until: Callable[[], bool], timeout: float = 30.0) -> None:
    """Be Nuke's event loop: run queued main-thread calls until ``until()`` and the queue is empty."""
    if not _on_main_thread():
        raise RuntimeError("fake_run_main_thread must run on the main thread")
    deadline = time.monotonic() + timeout
    while True:
        try:
            call, args, kwargs, done, box = _main_queue.get(timeout=0.02)
        except queue.Empty:
            if until():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"main-thread queue: condition not met within {timeout} s")
            continue
        try:
            box.append(call(*args, **kwargs))
        except BaseException as err:  # Nuke prints the traceback and keeps running
            fake_main_thread_errors.append(err)
        finally:
            if done is not None:
                done.set()


def fake_startup(plugin_dirs: list[str]) -> None:
    """Start a session the way Nuke does: init.py in every plug-in dir, then menu.py in GUI mode.

    Files run with ``nuke`` bound and no ``__file__``, through ``exec`` of their text.
    """
    for path in reversed(plugin_dirs):
        pluginAddPath(path)
    for script in ("init.py", "menu.py") if GUI else ("init.py",):
        for path in list(_plugin_path):
            file_path = os.path.join(path, script)
            if os.path.isfile(file_path):
                with open(file_path, encoding="utf-8") as handle:
                    exec(compile(handle.read(), file_path, "exec"), _plugin_globals)


def fake_executed() -> list[tuple[str, int, str]]:
    """(Write node name, frame, path) for every frame ``execute`` wrote."""
    return list(_executed)


fake_reset()
