"""Local <-> remote path mapping, by whole path components.

The artist's machine and a ComfyUI server see the same storage under different names:
``U:\\shots\\sh010`` on a Windows workstation is ``/mnt/projects/shots/sh010`` on the
Linux server. A mapping is a pair of prefixes. A path is mapped by the longest prefix it
lies under, matched component by component, so ``U:/proj`` never matches ``U:/project``.

A path is parsed into a *root* and a list of components:

- ``X:`` (drive letter, any case, followed by ``/``, ``\\`` or nothing),
- ``//server/share`` (UNC, either separator),
- ``/`` (POSIX),

``\\`` and ``/`` are both separators on input, ``.`` components and repeated separators
are dropped and ``..`` is resolved lexically. Windows roots (drive, UNC) compare without
regard to case, as Windows does; POSIX paths compare exactly.

The output takes the spelling of the target prefix and always uses ``/``: a POSIX server
gets ``/home/...``, a Windows local side gets ``U:/shots/...``, which Nuke and Python both
accept. Relative paths are never mapped. Everything here is pure: no I/O.

>>> from comfy_cluster.config import PathMapping
>>> m = PathMapper([PathMapping(local="U:/", remote="/home/kmmuser/ComfyUI/")])
>>> m.to_remote("u:\\\\input\\\\plate.1001.exr")
'/home/kmmuser/ComfyUI/input/plate.1001.exr'
>>> m.to_local("/home/kmmuser/ComfyUI/output/render_00001_.png")
'U:/output/render_00001_.png'
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Protocol

from .errors import TransferError

Direction = Literal["to_remote", "to_local"]

_DRIVE = re.compile(r"^([A-Za-z]):(?=[/\\]|$)")
_UNC = re.compile(r"^[/\\]{2}([^/\\]+)[/\\]+([^/\\]+)")


@dataclass(frozen=True)
class _Parsed:
    """A path split into a root and its components (``..`` resolved, no empties)."""

    root: str              # "X:" / "//server/share" / "/" as spelled in the input, with "/" separators
    windows: bool          # drive or UNC: compare without regard to case
    parts: tuple[str, ...]
    trailing: bool         # the input ended with a separator

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What two paths must share to be the same place."""
        if self.windows:
            return self.root.lower(), tuple(p.lower() for p in self.parts)
        return self.root, self.parts

    def render(self, parts: Iterable[str] | None = None, *, trailing: bool | None = None) -> str:
        """Spell the path (or this root with other components) with ``/`` separators."""
        body = "/".join(self.parts if parts is None else parts)
        end = self.trailing if trailing is None else trailing
        if self.root == "/":
            text = "/" + body
        elif body:
            text = f"{self.root}/{body}"
        else:
            text = self.root + "/"
        if end and body and not text.endswith("/"):
            text += "/"
        return text


def _parse(path: str) -> _Parsed | None:
    """Parse an absolute path; ``None`` for a relative path or a string that is not one."""
    if not path or "\x00" in path or "\n" in path or "\r" in path:
        return None
    unc = _UNC.match(path)
    drive = _DRIVE.match(path)
    if unc:
        root, windows, rest = f"//{unc.group(1)}/{unc.group(2)}", True, path[unc.end():]
    elif drive:
        root, windows, rest = f"{drive.group(1)}:", True, path[2:]
    elif path[0] in "/\\" and not path.startswith(("//", "\\\\")):
        root, windows, rest = "/", False, path
    else:
        return None
    parts: list[str] = []
    for part in re.split(r"[/\\]", rest):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return _Parsed(root, windows, tuple(parts), trailing=path[-1] in "/\\" and bool(parts))


def is_absolute(path: str) -> bool:
    """True for a drive (``U:/``), UNC (``//srv/share``) or POSIX (``/mnt``) path, in either separator style.

    >>> is_absolute("u:\\\\shots"), is_absolute("//nas/proj"), is_absolute("shots/sh010")
    (True, True, False)
    """
    return _parse(path) is not None


def normalize(path: str) -> str:
    """The canonical spelling of an absolute path (``/`` separators, no ``.``/``..``); others unchanged.

    >>> normalize("U:\\\\shots\\\\.\\\\sh010\\\\..\\\\sh020\\\\")
    'U:/shots/sh020/'
    """
    parsed = _parse(path)
    return path if parsed is None else parsed.render()


class Prefixes(Protocol):
    """A local prefix and the server's name for it (``config.PathMapping`` is one)."""

    @property
    def local(self) -> str: ...

    @property
    def remote(self) -> str: ...


@dataclass(frozen=True)
class _Rule:
    source: _Parsed
    target: _Parsed


class PathMapper:
    """Maps paths between the artist's side (local) and a server's side (remote)."""

    def __init__(self, mappings: Iterable[Prefixes]) -> None:
        pairs = []
        for mapping in mappings:
            local, remote = _parse(mapping.local), _parse(mapping.remote)
            if local is None or remote is None:
                bad = mapping.local if local is None else mapping.remote
                raise TransferError(f"path mapping {mapping.local!r} -> {mapping.remote!r}: "
                                    f"{bad!r} is not an absolute path")
            pairs.append((local, remote))
        self._mappings = tuple((p[0].render(), p[1].render()) for p in pairs)
        # Longest prefix first; the sort is stable, so equal lengths keep the configured order.
        self._to_remote = sorted((_Rule(lo, re_) for lo, re_ in pairs), key=lambda r: -len(r.source.parts))
        self._to_local = sorted((_Rule(re_, lo) for lo, re_ in pairs), key=lambda r: -len(r.source.parts))

    def __repr__(self) -> str:
        return f"PathMapper({[{'local': lo, 'remote': re_} for lo, re_ in self._mappings]!r})"

    def __bool__(self) -> bool:
        return bool(self._mappings)

    def try_map(self, path: str, direction: Direction = "to_remote") -> str | None:
        """The mapped path, or ``None`` when no mapping covers ``path``."""
        rules = self._rules(direction)
        parsed = _parse(path)
        if parsed is None:
            return None
        root, parts = parsed.key
        for rule in rules:
            src_root, src_parts = rule.source.key
            n = len(src_parts)
            if root == src_root and parts[:n] == src_parts:
                rest = parsed.parts[n:]
                return rule.target.render(rule.target.parts + rest, trailing=parsed.trailing)
        return None

    def to_remote(self, path: str) -> str:
        """The server's name for a local path; ``TransferError`` if no mapping covers it."""
        return self._map_or_raise(path, "to_remote")

    def to_local(self, path: str) -> str:
        """The artist's name for a server path; ``TransferError`` if no mapping covers it."""
        return self._map_or_raise(path, "to_local")

    def map_strings(self, obj: Any, direction: Direction = "to_remote") -> Any:
        """A deep copy of ``obj`` with every string that lies under a mapping rewritten.

        Dict keys, relative paths, prompts and any string outside the mappings are left alone.
        """
        self._rules(direction)
        return self._map_obj(obj, direction)

    def _map_obj(self, obj: Any, direction: Direction) -> Any:
        if isinstance(obj, str):
            mapped = self.try_map(obj, direction)
            return obj if mapped is None else mapped
        if isinstance(obj, dict):
            return {key: self._map_obj(value, direction) for key, value in obj.items()}
        if isinstance(obj, list):
            return [self._map_obj(value, direction) for value in obj]
        if isinstance(obj, tuple):
            return tuple(self._map_obj(value, direction) for value in obj)
        return copy.deepcopy(obj)

    def _map_or_raise(self, path: str, direction: Direction) -> str:
        mapped = self.try_map(path, direction)
        if mapped is None:
            side = "local" if direction == "to_remote" else "remote"
            known = ", ".join(lo if direction == "to_remote" else re_ for lo, re_ in self._mappings) or "none"
            raise TransferError(f"path {path!r} is not under any {side} mapping (mapped {side} folders: {known})")
        return mapped

    def _rules(self, direction: str) -> list[_Rule]:
        if direction == "to_remote":
            return self._to_remote
        if direction == "to_local":
            return self._to_local
        raise ValueError(f"direction must be 'to_remote' or 'to_local', got {direction!r}")


__all__ = ["PathMapper", "is_absolute", "normalize"]
