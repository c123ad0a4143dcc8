"""Files in and out of a ComfyUI server: stage inputs, fetch outputs, write them safely.

Two modes per server (``ServerConfig.transfer``):

- ``upload``: an input file is sent once per server with ``POST /upload/image`` under a
  content-hash name (``cc_<sha256[:24]>.png`` in the ``comfy_cluster`` subfolder), so the
  same frame is never sent twice; outputs come back with ``GET /view``.
- ``shared``: the server sees the artist's storage through a mount. Inputs are copied into
  ``<dir_local>/input/comfy_cluster/`` (same content names), every other path in the
  workflow is rewritten local -> remote, and outputs are read from the mapped output folder.

A file name that a server reports is never trusted as a path: ``safe_output_name`` keeps
a plain base name and ``safe_join`` proves the result stays inside its folder. Every file
we write lands atomically (temp file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import TransferError
from .paths import PathMapper, is_absolute
from .workflow import copy_graph

if TYPE_CHECKING:
    from .client import ComfyClient
    from .config import ServerConfig
    from .wire import OutputImage

log = logging.getLogger(__name__)

#: The input subfolder our staged files live in, on every server.
INPUT_SUBFOLDER = "comfy_cluster"
#: Longest output file name we write, in UTF-8 bytes (filesystems stop at 255).
MAX_NAME_BYTES = 200
_MAX_EXT_CHARS = 16
_CHUNK = 1 << 20
_EXT_RE = re.compile(r"\.[a-z0-9]{1,16}")
_WINDOWS_BAD = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks (never whole); OSError if unreadable.

    Remembered per file version (device, inode, size, modification time in ns), so a plate
    that the upload name and the result-cache key both need, or a retried frame, is read
    once: a rewrite or an atomic replace is a new version and is hashed again.
    """
    st = os.stat(path)
    return _sha256_of_version(os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_of_version(path: str, dev: int, ino: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_name(path: Path) -> str:
    """``cc_<sha256 hex[:24]><ext>``: the same bytes get the same name on every server.

    The extension is kept (lower case) when it is a plain one, because ComfyUI and PIL pick
    decoders by it.
    """
    try:
        digest = file_sha256(path)
    except OSError as err:
        raise TransferError(f"cannot read input file {str(path)!r}: {err.strerror or err}") from err
    ext = Path(path).suffix.lower()
    return f"cc_{digest[:24]}{ext if _EXT_RE.fullmatch(ext) else ''}"


class UploadCache:
    """Which content names each server already holds, so a frame is uploaded once per server.

    Thread-safe. ``ensure`` runs the upload at most once per (server, name) even when two
    threads stage the same file at the same time; a failed upload is not remembered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], threading.Lock] = {}

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._done

    def __len__(self) -> int:
        with self._lock:
            return len(self._done)

    def add(self, server: str, name: str) -> None:
        with self._lock:
            self._done.add((server, name))

    def ensure(self, server: str, name: str, upload: Callable[[], object]) -> bool:
        """Run ``upload`` unless ``server`` already has ``name``; True if it ran."""
        key = (server, name)
        with self._lock:
            if key in self._done:
                return False
            gate = self._pending.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._done:
                    return False
            upload()
            with self._lock:
                self._done.add(key)
                self._pending.pop(key, None)
            return True

    def forget(self, server: str) -> None:
        """Drop what we know about ``server`` (it restarted, or its input folder may be gone)."""
        with self._lock:
            self._done = {key for key in self._done if key[0] != server}


def _check_inputs(config: ServerConfig, workflow: dict, inputs: dict[tuple[str, str], Path]) -> None:
    for (node_id, input_name), path in inputs.items():
        where = f"server '{config.name}': node {node_id} input {input_name!r}"
        node = workflow.get(node_id)
        if not isinstance(node, dict):
            raise TransferError(f"{where}: the workflow has no node {node_id!r}", server=config.name)
        if not Path(path).is_file():
            raise TransferError(f"{where}: input file not found: {str(path)!r}", server=config.name)


def _set_input(workflow: dict, node_id: str, input_name: str, value: str) -> None:
    node = workflow[node_id]
    node["inputs"] = dict(node.get("inputs") or {}, **{input_name: value})


def stage_inputs(config: ServerConfig, client: ComfyClient, workflow: dict,
                 inputs: dict[tuple[str, str], Path], *, cache: UploadCache) -> dict:
    """A new workflow whose inputs point at files the server can read.

    ``inputs`` maps ``(node_id, input_name)`` to a local file; each such input becomes
    ``comfy_cluster/<content name>``. In shared mode every other path under a mapping is
    rewritten local -> remote too. The given workflow is never changed.
    """
    _check_inputs(config, workflow, inputs)
    staged = copy_graph(workflow)
    names: dict[tuple[str, str], str] = {}
    for key, path in inputs.items():
        name = content_name(Path(path))
        if config.transfer == "shared":
            _place_shared(config, Path(path), name)
        else:
            cache.ensure(config.name, name, functools.partial(client.upload_image, Path(path), name,
                                                              subfolder=INPUT_SUBFOLDER, overwrite=True))
        names[key] = f"{INPUT_SUBFOLDER}/{name}"
    if config.transfer == "shared":
        staged = PathMapper(config.mappings()).map_strings(staged, "to_remote")
    for (node_id, input_name), value in names.items():
        _set_input(staged, node_id, input_name, value)
    return staged


def _place_shared(config: ServerConfig, source: Path, name: str) -> None:
    """Copy ``source`` into the server's input folder through the mount, unless it is there."""
    if config.dir_local is None:
        raise TransferError(f"server '{config.name}': shared transfer needs dir_local to place input files "
                            "(the folder that holds ComfyUI's input/ as this machine sees it)", server=config.name)
    dest = Path(config.dir_local) / "input" / INPUT_SUBFOLDER / name
    try:
        if dest.is_file() and dest.stat().st_size == source.stat().st_size:
            return
    except OSError as err:
        raise TransferError(f"server '{config.name}': cannot check {str(dest)!r}: {err.strerror or err}",
                            server=config.name) from err
    atomic_write(dest, lambda tmp: shutil.copyfile(source, tmp))
    log.debug("server %s: placed %s as %s", config.name, source, dest)


def _argv_option(argv: list[str], option: str) -> str | None:
    """The last value of ``--option D`` or ``--option=D``, as argparse would take it."""
    value = None
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(option + "="):
            value = arg[len(option) + 1:]
    return value


def _join_remote(base: str, *parts: str) -> str:
    """Join on the server's side with ``/`` (ComfyUI on Windows accepts it too)."""
    text = base.rstrip("/\\")
    for part in parts:
        if part:
            text += "/" + part.strip("/\\")
    return text or "/"


def remote_output_dir(config: ServerConfig, argv: list[str]) -> str:
    """Where the server writes outputs, in its own terms.

    ``--output-directory`` from its argv (``SystemStats.argv``), else ``--base-directory``
    + ``/output``, else ``<dir_remote>/output``. A relative directory is taken relative to
    ``dir_remote`` (ComfyUI is normally started from its own folder).
    """
    output = _argv_option(argv, "--output-directory")
    base = _argv_option(argv, "--base-directory")
    if output is None and base is not None:
        output = _join_remote(base, "output")
    if output is not None and is_absolute(output):
        return output
    if config.dir_remote is None:
        raise TransferError(f"server '{config.name}': cannot tell where it writes outputs: no "
                            "--output-directory in its argv and no dir_remote", server=config.name)
    return _join_remote(config.dir_remote, output or "output")


def _safe_subfolder(subfolder: str, config: ServerConfig) -> list[str]:
    """A server's subfolder as plain components; anything that could climb out is refused."""
    parts = [p for p in re.split(r"[/\\]", subfolder or "") if p not in ("", ".")]
    if any(p == ".." or ":" in p or any(ord(c) < 32 for c in p) for p in parts) or \
            subfolder.startswith(("/", "\\")):
        raise TransferError(f"server '{config.name}': refusing output subfolder {subfolder!r}", server=config.name)
    return parts


def make_output_fetcher(config: ServerConfig, client: ComfyClient, image: OutputImage, *,
                        output_dir_remote: str | None) -> Callable[[Path], None]:
    """A ``fetch(dest)`` for one output image: ``GET /view`` (upload) or a copy through the mount (shared).

    In shared mode only ``output`` images are read through the mount (``temp`` previews live
    elsewhere and go over HTTP). ``output_dir_remote`` is the server's output folder
    (``remote_output_dir``); ``None`` means ``<dir_remote>/output``.
    """
    if config.transfer != "shared" or image.type != "output":
        def download(dest: Path) -> None:
            client.download(image, dest)
        return download
    name = safe_output_name(image.filename)
    if name != image.filename:
        raise TransferError(f"server '{config.name}': node {image.node_id} reported an unsafe output file name "
                            f"{image.filename!r}", server=config.name)
    base = output_dir_remote if output_dir_remote is not None else remote_output_dir(config, [])
    remote = _join_remote(base, *_safe_subfolder(image.subfolder, config), name)
    try:
        local = Path(PathMapper(config.mappings()).to_local(remote))
    except TransferError as err:
        raise TransferError(f"server '{config.name}': output {remote!r} of node {image.node_id} is not under "
                            f"a mapped folder: {err}", server=config.name) from err

    def copy_shared(dest: Path) -> None:
        try:
            shutil.copyfile(local, dest)
        except OSError as err:
            raise TransferError(f"server '{config.name}': cannot read output {str(local)!r} of node "
                                f"{image.node_id}: {err.strerror or err}", server=config.name) from err
    return copy_shared


def safe_output_name(name: str) -> str:
    """A plain file name from a name a server reported, or ``TransferError``.

    Only the base name is kept (after the last ``/`` or ``\\``); control characters, ``.``
    and ``..`` are refused; characters Windows cannot store become ``_``, a Windows device
    name gets a ``_`` prefix, and a long name is cut to ``MAX_NAME_BYTES`` keeping its
    extension.

    >>> safe_output_name("../../x.png"), safe_output_name("C:\\\\out\\\\CON.png")
    ('x.png', '_CON.png')
    """
    if not isinstance(name, str):
        raise TransferError(f"output file name must be a string, got {type(name).__name__}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise TransferError(f"refusing output file name with control characters: {name[:80]!r}")
    base = re.split(r"[/\\]", name)[-1]
    base = _WINDOWS_BAD.sub("_", base).rstrip(" .")
    if base in ("", ".", "..") or not base.strip("."):
        raise TransferError(f"refusing output file name {name[:80]!r}: no file name in it")
    if base.split(".")[0].strip().lower() in _WINDOWS_DEVICES:
        base = "_" + base
    return _cap(base)


def _cap(name: str) -> str:
    """Cut ``name`` to ``MAX_NAME_BYTES`` of UTF-8, keeping a short extension."""
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > _MAX_EXT_CHARS:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore").rstrip(" .")
    return (cut or "_") + suffix


def safe_join(folder: Path, name: str) -> Path:
    """``folder / safe_output_name(name)``, proven to be directly inside ``folder``."""
    path = Path(folder) / safe_output_name(name)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(folder):
        raise TransferError(f"refusing output file name {name[:80]!r}: it leaves {str(folder)!r}")
    return path


def atomic_write(dest: Path, fetch: Callable[[Path], object]) -> Path:
    """Have ``fetch`` write a temp file next to ``dest``, fsync it, then rename it into place.

    Readers see the old file or the whole new one, never a part. The temp file is removed on
    any error; the folder is created if missing.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name[:100]}.{uuid.uuid4().hex[:12]}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never follow or reuse someone else's file; 0o666 lets the umask decide as usual.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        fetch(tmp)
        with open(tmp, "r+b") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove temp file %s", tmp)
        if isinstance(err, OSError):
            raise TransferError(f"cannot write {str(dest)!r}: {err.strerror or err}") from err
        raise
    _fsync_folder(dest.parent)
    return dest


#: Extensions we decode before accepting an output, and the format PIL must find in them.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF",
                 ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def output_problem(path: Path, name: str) -> str | None:
    """Why the fetched file ``path`` is not the output ``name`` says it is, or None.

    A server's 200 proves nothing about the bytes: an image must decode completely in the
    format its extension names (a cut-off PNG, an HTML error page or random bytes do not);
    any other file (a video, say) must be non-empty. The pixels are decoded in full once.
    """
    try:
        size = os.path.getsize(path)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if size == 0:
        return "empty (0 bytes)"
    wanted = IMAGE_FORMATS.get(Path(name).suffix.lower())
    if wanted is None:
        return None
    from PIL import Image  # imported here: only fetched outputs need it

    try:
        with Image.open(path) as image:
            found = image.format
            if found == "PNG":
                image.verify()   # every chunk's CRC, through IEND: catches a cut after the pixels
        if found == wanted:
            with Image.open(path) as image:
                image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for a broken file
        return f"not a complete {wanted} image ({size} bytes: {type(err).__name__}: {err})"
    if found != wanted:
        return f"not a {wanted} image ({size} bytes, {found or 'unknown'} data)"
    return None


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the OS allows syncing a folder (not on Windows)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        log.debug("fsync of folder %s not supported", folder)
    finally:
        os.close(fd)


__all__ = [
    "INPUT_SUBFOLDER",
    "UploadCache",
    "atomic_write",
    "content_name",
    "file_sha256",
    "make_output_fetcher",
    "output_problem",
    "remote_output_dir",
    "safe_join",
    "safe_output_name",
    "stage_inputs",
]
