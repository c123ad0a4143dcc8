"""Reading an HTTP answer's body with a size cap and a deadline for the whole body.

A server (or a bucket) that drips a byte at a time passes every per-read timeout; only a
deadline for the whole body stops it. And a body over its cap is refused as soon as its
``Content-Length`` says so, or the moment the bytes read pass the cap. One helper for every
body the project reads in chunks: ComfyUI answers and downloads, bucket outputs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

#: Bytes asked of the socket per read.
CHUNK = 256 * 1024


def read_bounded(resp: Any, *, cap: int, deadline: float, too_big: Callable[[int], BaseException],
                 too_slow: Callable[[], BaseException], sink: Callable[[bytes], None] | None = None,
                 cut: bool = False, read_timeout: float | None = None) -> bytes:
    """Read urllib3 response ``resp`` in chunks by ``deadline`` (``time.monotonic``), refusing
    past ``cap`` with ``too_big(bytes)``, or with ``cut`` returning what fit; ``too_slow()`` once
    the deadline passes. With ``sink`` the chunks go there and b"" is returned.

    Before each read the socket timeout is set to the time left (at most ``read_timeout``),
    so the deadline holds to the read where the connection is reachable (urllib3's own
    responses), and between reads always. On any error the response is closed, so a half-read
    connection is never reused.
    """
    declared = resp.headers.get("Content-Length", "")
    buf = bytearray()
    seen = 0
    try:
        if not cut and declared.isdigit() and int(declared) > cap:
            raise too_big(int(declared))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_slow()
            sock = getattr(resp.connection, "sock", None)   # no connection once the body is all read
            if sock is not None:
                sock.settimeout(left if read_timeout is None else min(left, read_timeout))
            chunk = resp.read1(CHUNK)
            if not chunk:
                return bytes(buf)
            seen += len(chunk)
            if seen > cap:
                if cut:
                    resp.close()
                    return bytes(buf)
                raise too_big(seen)
            if sink is not None:
                sink(chunk)
            else:
                buf += chunk
    except BaseException:
        resp.close()
        raise


__all__ = ["CHUNK", "read_bounded"]
