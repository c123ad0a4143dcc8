"""Outputs from a bucket: worker-comfyui with ``BUCKET_ENDPOINT_URL`` set uploads each image
with ``rp_upload.upload_image`` and answers a presigned GET URL (``{"type": "s3_url", "data": url}``)
instead of base64.

The URL is fetched streamed, without the RunPod session (the API key never goes to the
bucket), with connect/read timeouts, a deadline for the whole body and a size cap
(``bounded_read``). Its query string is the signature and
the access key id: no message shows it (``redact_url``), and a filter on urllib3's
connection-pool logger cuts it from the request lines urllib3 logs at DEBUG.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3

from .bounded_read import read_bounded
from .errors import TransferError

log = logging.getLogger(__name__)

#: Bucket outputs bigger than this are refused (a 16k EXR is ~1.5 GB; nothing sane is bigger).
MAX_URL_OUTPUT_BYTES = 2 * 1024 ** 3
#: Seconds a whole bucket download may take: a URL that drips bytes is stopped, not waited on.
DOWNLOAD_DEADLINE = 900.0


def redact_url(url: str) -> str:
    """A presigned URL without its query (the signature) or credentials, fit for a message."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


_SIGNED_MARKERS = ("signature", "x-amz-", "credential", "token", "sig=")


class _PresignedQueryFilter(logging.Filter):
    """Cuts a presigned query off the paths urllib3 logs at DEBUG ("GET /key?X-Amz-Signature=...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_cut_signed_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def _cut_signed_query(text: str) -> str:
    path, sep, query = text.partition("?")
    return f"{path}?<redacted>" if sep and any(m in query.lower() for m in _SIGNED_MARKERS) else text


#: urllib3 logs every request line at DEBUG; a bucket URL's signature must not reach a log file.
logging.getLogger("urllib3.connectionpool").addFilter(_PresignedQueryFilter())


def download_url(url: str, dest: Path, *, what: str, limit: int, server: str, timeout: float = 120.0,
                 total: float = DOWNLOAD_DEADLINE) -> int:
    """Stream a bucket URL to ``dest``: size-capped, with connect/read timeouts and a deadline
    of ``total`` seconds for the whole body, and messages that show the URL without its
    signature. Fetched without our session, so the API key never goes to the bucket.
    Returns the bytes written."""
    shown = redact_url(url)
    written = 0

    def too_big(size: int) -> TransferError:
        return TransferError(f"{what}: {shown} is over the {limit}-byte limit ({size} bytes or more); "
                             "not downloaded", server=server)

    def too_slow() -> TransferError:
        return TransferError(f"{what}: {shown} was still arriving after {total:g} s; stopped", server=server)

    def write(chunk: bytes) -> None:
        nonlocal written
        fh.write(chunk)
        written += len(chunk)

    deadline = time.monotonic() + total
    try:
        with requests.get(url, timeout=(3.05, timeout), stream=True) as resp:
            if resp.status_code >= 400:
                raise TransferError(f"{what}: GET {shown} answered HTTP {resp.status_code} (an expired or "
                                    "revoked presigned URL answers 403)", server=server)
            resp.raw.decode_content = True
            with open(dest, "wb") as fh:
                read_bounded(resp.raw, cap=limit, deadline=deadline, too_big=too_big, too_slow=too_slow,
                             sink=write, read_timeout=timeout)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        raise TransferError(f"{what}: fetching {shown} failed: {type(err).__name__}", server=server) from None
    log.debug("%s: %d bytes from %s", what, written, shown)
    return written


__all__ = ["MAX_URL_OUTPUT_BYTES", "download_url", "redact_url"]
