"""Edit the servers file without a text editor: add, remove, set, enable, disable, import,
export, backup and restore.

The file is the one ``NUKE_COMFYUI_SERVERS=@FILE`` or ``--servers FILE`` names. Every change
follows the same path, so a bad edit can never leave a broken file behind:

1. read the current document (a JSON array of servers, or an object with ``servers``);
2. apply the change to a copy, keeping every other top-level key (``runpod``, ``pods``, ...)
   and the document's form (array stays array) untouched;
3. validate the copy exactly as loading does (``config_load.config_from_document``):
   a ``ConfigError`` names the server and the field, and nothing is written;
4. copy the current file to a timestamped backup in ``<state dir>/config-backups/`` (the
   newest ``KEEP_BACKUPS`` per servers file are kept);
5. write the new text atomically (temp file, fsync, ``os.replace``), after checking that
   nobody changed the file since step 1.

A running pool notices the new file (``ConfigWatcher``: inode, size and mtime) and re-reads
it with ``load_configuration``; no restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import ClusterConfig
from .config_load import ENDPOINT_ID_VAR, SERVERS_VAR, config_from_document, parse_document, read_document
from .errors import ConfigError
from .ledger import state_dir
from .transfer import atomic_write

log = logging.getLogger(__name__)

#: Backups kept per servers file; the oldest go first.
KEEP_BACKUPS = 20
BACKUP_DIR = "config-backups"
_BACKUP_RE = re.compile(r"(\d{8}T\d{6}\.\d{6})\.json$")
_edit_lock = threading.Lock()


def servers_file(servers_arg: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The servers file to edit: ``--servers FILE``, else ``NUKE_COMFYUI_SERVERS=@FILE``.

    An environment-only configuration (the variable holds JSON, or is unset) is refused
    with the steps to move it to a file.
    """
    if servers_arg:
        return Path(servers_arg)
    text = (environ.get(SERVERS_VAR) or "").strip()
    if text.startswith("@") and text[1:].strip():
        return Path(text[1:].strip())
    if text:
        raise ConfigError(f"{SERVERS_VAR} holds the servers as JSON in the environment, which cannot be edited "
                          f"in place. Move it to a file: `comfy-cluster config export servers.json`, then set "
                          f"{SERVERS_VAR}=@/path/to/servers.json (or pass --servers FILE), then edit again")
    raise ConfigError(f"no servers file to edit: {SERVERS_VAR} is not set. Create one with "
                      f"`comfy-cluster --servers servers.json config add NAME --ip IP` and set "
                      f"{SERVERS_VAR}=@/path/to/servers.json")


def validate_document(data: Any, source: str) -> ClusterConfig:
    """Check a servers document exactly as ``load_config_file`` would; ``ConfigError`` if not.

    The ``runpod`` object is checked even without an ``endpoint_id`` in it (loading takes
    one from ``RUNPOD_ENDPOINT_ID`` then), so a bad policy is caught at edit time.
    """
    policy = data.get("runpod") if isinstance(data, dict) else None
    env = {ENDPOINT_ID_VAR: "edit-check"} if isinstance(policy, dict) and "endpoint_id" not in policy else {}
    return config_from_document(data, source, env)


def parse_value(text: str) -> Any:
    """``priority=2`` -> 2, ``enabled=false`` -> False, ``ip=10.0.0.5`` -> "10.0.0.5" (JSON, else text)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Change:
    """What an edit did: a line for the user, the new configuration and the backup made."""

    message: str
    config: ClusterConfig
    backup: Path | None


class ServersFile:
    """One servers file and its backups. Methods that change it return a ``Change``."""

    def __init__(self, path: str | os.PathLike[str], *, backup_dir: Path | None = None,
                 environ: Mapping[str, str] = os.environ, keep: int = KEEP_BACKUPS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        tag = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:10]
        base = backup_dir if backup_dir is not None else state_dir(environ) / BACKUP_DIR
        self.backup_dir = base / f"{_safe_stem(self.path)}-{tag}"
        self.keep = max(1, keep)
        self._clock = clock

    def __repr__(self) -> str:
        return f"ServersFile({str(self.path)!r})"

    @property
    def source(self) -> str:
        return f"@{self.path}"

    # -- reading -----------------------------------------------------------------------

    def _read_raw(self) -> tuple[bytes | None, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as err:
            raise ConfigError(f"{self.source}: cannot read the file: {err.strerror or err}") from None
        return raw, parse_document(raw.decode("utf-8-sig", errors="replace"), self.source)

    def read(self) -> ClusterConfig:
        """The file's configuration, validated."""
        raw, data = self._read_raw()
        if raw is None:
            raise ConfigError(f"{self.source}: file not found")
        return validate_document(data, self.source)

    def document(self) -> Any:
        """The file's JSON document as it is (array or object); ``ConfigError`` if missing or bad."""
        raw, data = self._read_raw()
        if raw is None:
            raise ConfigError(f"{self.source}: file not found")
        return data

    # -- edits -------------------------------------------------------------------------

    def add(self, name: str, **fields: Any) -> Change:
        """Add a server; its fields are validated as in the file (``ip``, ``port``, ``priority``...)."""
        def edit(doc: dict[str, Any]) -> str:
            servers = doc["servers"]
            if any(_name_of(s).lower() == name.lower() for s in servers):
                raise ConfigError(f"{self.source}: a server named {name!r} already exists "
                                  "(names are unique regardless of case); use `config set` to change it")
            servers.append({"name": name, **{k: v for k, v in fields.items() if v is not None}})
            return f"added server {name!r}"
        return self._edit(edit, create=True)

    def remove(self, name: str) -> Change:
        def edit(doc: dict[str, Any]) -> str:
            doc["servers"].pop(self._index(doc["servers"], name))
            return f"removed server {name!r}"
        return self._edit(edit)

    def set(self, name: str, values: Mapping[str, Any]) -> Change:
        """Set fields of one server (``{"priority": 2}``); a ``None`` value removes the field."""
        if not values:
            raise ConfigError("nothing to set: give FIELD=VALUE, e.g. priority=2")
        if "name" in values and values["name"] != name:
            raise ConfigError("the name cannot be changed with set: add the server under the new name, then "
                              "remove the old one")

        def edit(doc: dict[str, Any]) -> str:
            server = doc["servers"][self._index(doc["servers"], name)]
            for key, value in values.items():
                if value is None:
                    server.pop(key, None)
                else:
                    server[key] = value
            shown = ", ".join(f"{k}={_shown(k, v)}" for k, v in values.items())
            return f"server {name!r}: {shown}"
        return self._edit(edit)

    def enable(self, name: str, on: bool = True) -> Change:
        def edit(doc: dict[str, Any]) -> str:
            doc["servers"][self._index(doc["servers"], name)]["enabled"] = on
            return f"{'enabled' if on else 'disabled'} server {name!r}"
        return self._edit(edit)

    def import_from(self, source: str | os.PathLike[str], *, merge: bool = False) -> Change:
        """Take the servers (and any other top-level keys) of another file.

        Without ``merge`` the imported servers replace the current ones; with it, they are
        added or, by name, replace the current server of that name. Top-level keys of the
        current file that the imported one does not have are kept.
        """
        src = Path(source)
        data = read_document(src, f"@{src}")
        validate_document(data, f"@{src}")
        imported = data if isinstance(data, list) else data["servers"]
        extra = {} if isinstance(data, list) else {k: v for k, v in data.items() if k != "servers"}

        def edit(doc: dict[str, Any]) -> str:
            servers = doc["servers"]
            if merge:
                for new in imported:
                    names = [_name_of(s).lower() for s in servers]
                    key = _name_of(new).lower()
                    if key in names:
                        servers[names.index(key)] = new
                    else:
                        servers.append(new)
            else:
                servers[:] = imported
            doc.update(extra)
            return f"imported {len(imported)} server(s) from {src}" + (" (merged)" if merge else "")
        return self._edit(edit, create=True)

    def export_to(self, dest: str | os.PathLike[str]) -> Path:
        """Write the current (validated) document to ``dest`` atomically."""
        data = self.document()
        validate_document(data, self.source)
        target = Path(dest)
        _write_text(target, _dump(data))
        log.info("exported %s to %s", self.path, target)
        return target

    def export_text(self) -> str:
        data = self.document()
        validate_document(data, self.source)
        return _dump(data)

    # -- backups -----------------------------------------------------------------------

    def backups(self) -> list[Path]:
        """Backups of this file, oldest first."""
        if not self.backup_dir.is_dir():
            return []
        return sorted(p for p in self.backup_dir.iterdir() if _BACKUP_RE.search(p.name))

    def backup(self) -> Path:
        """Copy the current file into the backup folder now; returns the backup's path."""
        raw, _ = self._read_raw()
        if raw is None:
            raise ConfigError(f"{self.source}: file not found, nothing to back up")
        return self._backup(raw)

    def restore(self, backup: str | os.PathLike[str] | None = None) -> Change:
        """Put a backup (default: the newest) back, after validating it; the current file is
        backed up first, so a restore can itself be undone."""
        if backup is None:
            found = self.backups()
            if not found:
                raise ConfigError(f"{self.source}: no backups in {self.backup_dir}")
            chosen = found[-1]
        else:
            chosen = Path(backup)
            if not chosen.is_file() and (self.backup_dir / chosen.name).is_file():
                chosen = self.backup_dir / chosen.name
        data = read_document(chosen, f"@{chosen}")
        with _edit_lock:
            cfg = validate_document(data, f"@{chosen}")
            raw, _ = self._read_raw()
            made = self._backup(raw) if raw is not None else None
            _write_text(self.path, chosen.read_text(encoding="utf-8-sig"))
        log.info("%s: restored %s (previous file backed up as %s)", self.path, chosen, made)
        return Change(message=f"restored {chosen}", config=cfg, backup=made)

    # -- the one write path ----------------------------------------------------------------

    def _index(self, servers: list[Any], name: str) -> int:
        for i, server in enumerate(servers):
            if _name_of(server) == name:
                return i
        known = ", ".join(_name_of(s) for s in servers) or "(none)"
        raise ConfigError(f"{self.source}: no server named {name!r}; servers: {known}", server=name)

    def _edit(self, edit: Callable[[dict[str, Any]], str], *, create: bool = False) -> Change:
        """Read, ``edit(doc)`` a copy (``doc["servers"]`` is the list), validate, back up, write."""
        with _edit_lock:
            raw, data = self._read_raw()
            if raw is None and not create:
                raise ConfigError(f"{self.source}: file not found")
            if raw is None:
                data = []
            if not isinstance(data, (list, dict)) or (isinstance(data, dict) and
                                                      not isinstance(data.get("servers"), list)):
                validate_document(data, self.source)  # raises with the loader's own message
            was_list = isinstance(data, list)
            doc: dict[str, Any] = json.loads(json.dumps({"servers": data} if was_list else data))
            message = edit(doc)
            new = doc["servers"] if was_list else doc
            cfg = validate_document(new, self.source)
            backup = self._backup(raw) if raw is not None else None
            if raw is not None and self.path.read_bytes() != raw:
                raise ConfigError(f"{self.source}: the file changed while it was being edited; nothing "
                                  "was written, try again")
            _write_text(self.path, _dump(new))
        log.info("%s: %s (backup %s)", self.path, message, backup)
        return Change(message=message, config=cfg, backup=backup)

    def _backup(self, raw: bytes) -> Path:
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        now = self._clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
        micro = f"{int(now % 1 * 1_000_000):06d}"
        dest = self.backup_dir / f"{_safe_stem(self.path)}.{stamp}.{micro}.json"
        while dest.exists():
            micro = f"{(int(micro) + 1) % 1000000:06d}"
            dest = self.backup_dir / f"{_safe_stem(self.path)}.{stamp}.{micro}.json"
        atomic_write(dest, _writer(raw))
        for old in self.backups()[:-self.keep]:
            old.unlink(missing_ok=True)
        return dest


class ConfigWatcher:
    """Tells when a servers file was replaced or rewritten (inode, size, mtime), cheaply.

    ``changed()`` costs one ``stat``, at most once per ``interval`` seconds (the pool's
    monitor asks on every wake-up).
    """

    def __init__(self, path: str | os.PathLike[str], *, interval: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._checked = clock()
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def changed(self) -> bool:
        if self._clock() - self._checked < self.interval:
            return False
        self._checked = self._clock()
        now = self._signature()
        if now == self._seen or now is None:  # a missing file keeps the running configuration
            return False
        self._seen = now
        return True


def _shown(key: str, value: Any) -> str:
    """A value for a message; header values are never echoed (a studio may put a key in one)."""
    if key == "headers" and isinstance(value, dict):
        return f"<{len(value)} header(s)>"
    return "(removed)" if value is None else json.dumps(value)


def _name_of(server: Any) -> str:
    return str(server.get("name", "")) if isinstance(server, dict) else ""


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "servers"


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _writer(data: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        Path(tmp).write_bytes(data)
    return write


def _write_text(path: Path, text: str) -> None:
    mode = None
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        pass
    atomic_write(path, _writer(text.encode("utf-8")))
    if mode is not None:
        os.chmod(path, mode)


__all__ = ["Change", "ConfigWatcher", "ServersFile", "parse_value", "servers_file", "validate_document",
           "KEEP_BACKUPS"]
