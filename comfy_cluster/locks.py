"""The cross-process file lock that guards the project's shared state files.

The RunPod admin switch, the pod registry and the SSH tunnels each keep state that
several processes (Nuke sessions, the CLI, ComfyUI) read and change; each change is made
under an exclusive advisory lock on a file beside that state.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ServerUnavailable


@contextmanager
def file_lock(path: Path, timeout: float, *, owner: str, server: str | None = None) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` across processes (flock, or msvcrt on Windows).

    Waits up to ``timeout`` seconds, then raises ``ServerUnavailable`` naming ``owner``
    (who wanted the lock) and the lock file.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if sys.platform == "win32":
                    import msvcrt
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                else:
                    import fcntl
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"{owner}: lock {path} still held after {timeout:g} s",
                                            server=server) from err
                time.sleep(0.05)
        try:
            yield
        finally:
            if sys.platform == "win32":
                import msvcrt
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            else:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["file_lock"]
