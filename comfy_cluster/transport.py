"""The wire to one ComfyUI server: a urllib3 pool, bounded body reads, and the websocket.

Every HTTP call goes through ``Transport.exchange``: one pool per server, no automatic
retries, no redirects, timeouts per call, the body read in bounded chunks by a deadline
so a server that drips a byte at a time cannot hold the caller. HTTP and the websocket
trust the same CA bundle and take the same proxy rules, the ones requests uses.

Connection failures are translated here into ``comfy_cluster.errors``: refused or reset
-> ``ServerUnavailable``; a timeout -> ``ServerTimeout``; a broken or oversized answer ->
``ProtocolError``. What a status code means is the client's to judge.
"""

from __future__ import annotations

import http.client
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit

import certifi
import requests.utils
import urllib3
import websocket
from urllib3 import exceptions as u3

from .bounded_read import read_bounded
from .errors import ProtocolError, ServerTimeout, ServerUnavailable

_MIB = 1 << 20
#: Largest JSON body accepted from most routes; a bigger answer is not ComfyUI.
JSON_CAP = 16 * _MIB
#: ``/object_info`` with hundreds of custom nodes is legitimately large.
OBJECT_INFO_CAP = 64 * _MIB
#: Default cap for one downloaded output file.
DOWNLOAD_CAP = 4096 * _MIB
#: Bytes read from an error answer to quote from it.
ERROR_BODY_CAP = 64 * 1024
#: Connections kept per server: enough for every concurrent job and the monitor.
POOL_SIZE = 32

_ARRIVING = " while the answer was still arriving"


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait: to connect, for an answer to a small call, for a file transfer."""

    connect: float = 3.05
    read: float = 30.0
    transfer: float = 300.0


def _reason(err: BaseException) -> str:
    """A short human cause for a connection failure (urllib3's text is a paragraph)."""
    text = str(err)
    lowered = text.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("failed to resolve", "host name not found"),
        ("getaddrinfo failed", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("connection reset", "connection reset by the server"),
        ("remotedisconnected", "the server closed the connection without answering"),
        ("connection aborted", "the server closed the connection"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network is unreachable"),
    ):
        if needle in lowered:
            return reason
    return text[-160:]


def _ca_bundle() -> str:
    """The CA certificates every call trusts: requests' rule ($REQUESTS_CA_BUNDLE, then
    $CURL_CA_BUNDLE, then certifi's bundle), for HTTP and the websocket alike."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


def _pool_manager(base_url: str, ca_bundle: str) -> urllib3.PoolManager:
    """One connection pool for one server, through the proxy the environment names for it.

    Proxies are read once, as requests reads them (``HTTP(S)_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``); credentials in the proxy URL become a ``Proxy-Authorization`` header.
    Nothing is retried here and nothing redirects: the dispatcher owns retries.
    """
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    tls["ca_cert_dir" if os.path.isdir(ca_bundle) else "ca_certs"] = ca_bundle
    options: dict[str, Any] = {"num_pools": 2, "maxsize": POOL_SIZE, "block": False, "retries": False, **tls}
    proxies = requests.utils.get_environ_proxies(base_url)
    proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all")
    if not proxy:
        return urllib3.PoolManager(**options)
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the proxy for {base_url} must be an http(s) URL, not {parts.scheme}://")
    headers = {}
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=auth)
    bare = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    return urllib3.ProxyManager(bare, proxy_headers=headers, **options)


class Transport:
    """One server's connections: ``exchange`` for HTTP, ``open_websocket`` for ``/ws``.

    ``base_url`` is the server's address (it may carry a path); ``root`` is the path every
    route goes under (that path plus the API prefix). The headers may hold a bearer token:
    they live only here and are never formatted.
    """

    def __init__(self, base_url: str, root: str, *, name: str, headers: Mapping[str, str],
                 timeouts: Timeouts) -> None:
        self.base_url = base_url
        self.name = name
        self.timeouts = timeouts
        self._root = root
        parts = urlsplit(base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._headers = dict(headers)
        self._ca_bundle = _ca_bundle()
        self._http = _pool_manager(base_url, self._ca_bundle)
        # Direct, the server's own pool takes the path alone (no URL parsing or pool lookup
        # per call); through a proxy the manager adds the proxy's headers and absolute URLs.
        self._direct: urllib3.HTTPConnectionPool | None = (
            None if isinstance(self._http, urllib3.ProxyManager) else self._http.connection_from_url(base_url))

    @property
    def headers(self) -> dict[str, str]:
        """A copy of the request headers. Never log or format these."""
        return dict(self._headers)

    def open_websocket(self, url: str) -> websocket.WebSocket:
        """A connected websocket to ``url`` with these headers and this CA bundle.

        Like HTTP, it follows no redirect; websocket-client reads the proxy from the same
        environment variables (``http_proxy`` / ``https_proxy``, ``no_proxy``).
        """
        sslopt: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
        sslopt["ca_cert_path" if os.path.isdir(self._ca_bundle) else "ca_certs"] = self._ca_bundle
        return websocket.create_connection(
            url, timeout=self.timeouts.connect, sslopt=sslopt, redirect_limit=0,
            header=[f"{k}: {v}" for k, v in self._headers.items()], suppress_origin=True,
            skip_utf8_validation=True, enable_multithread=True)

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        self._http.clear()
        if self._direct is not None:
            self._direct = self._http.connection_from_url(self.base_url)

    def exchange(self, method: str, route: str, *, body: bytes | None = None, content_type: str | None = None,
                 cap: int, sink: Callable[[bytes], None] | None = None, read_timeout: float | None = None,
                 prompt_id: str | None = None) -> tuple[int, bytes]:
        """One request through the server's pool, ``(status, body)``; the status is the caller's to judge.

        Every call carries its own timeouts: ``connect``, and ``read_timeout`` (default
        ``timeouts.read``) both for each socket read and for the whole answer, so a server
        that drips a byte at a time cannot hold the caller. With ``sink`` a 200 body is
        streamed there; an error body is always returned, cut short.
        """
        what = f"{method} {route.split('?', 1)[0]}"
        budget = read_timeout or self.timeouts.read
        deadline = time.monotonic() + budget
        headers = self._headers if content_type is None else {**self._headers, "Content-Type": content_type}
        try:
            options: dict[str, Any] = {
                "body": body, "headers": headers, "redirect": False, "retries": False, "preload_content": False,
                "timeout": urllib3.Timeout(connect=self.timeouts.connect, read=budget)}
            if self._direct is not None:
                resp = self._direct.urlopen(method, self._root + route, assert_same_host=False, **options)
            else:
                resp = self._http.urlopen(method, self._origin + self._root + route, **options)
        except u3.HTTPError as err:
            raise self._translate(err, what, budget, prompt_id, answering=False) from err
        status = resp.status
        ok = status == 200 or (status == 400 and sink is None)
        try:
            data = self._read_body(resp, what, cap if ok else ERROR_BODY_CAP, sink if status == 200 else None,
                                   deadline, budget, prompt_id, cut=not ok)
        finally:
            resp.release_conn()
        return status, data

    def _read_body(self, resp: urllib3.BaseHTTPResponse, what: str, cap: int, sink: Callable[[bytes], None] | None,
                   deadline: float, budget: float, prompt_id: str | None, *, cut: bool) -> bytes:
        """Read the body in bounded chunks by ``deadline``, refusing (or, with ``cut``, cutting) past ``cap``.

        An answer left unread closes its connection instead of returning it (``read_bounded``).
        """
        def too_big(size: int) -> ProtocolError:
            return ProtocolError(f"server '{self.name}': {what} answered {size} bytes, more than the {cap} "
                                 f"byte limit", server=self.name, prompt_id=prompt_id)

        def too_slow() -> ServerTimeout:
            return ServerTimeout(f"server '{self.name}': {what} timed out after {budget:g} s{_ARRIVING}",
                                 server=self.name, prompt_id=prompt_id)

        try:
            return read_bounded(resp, cap=cap, deadline=deadline, too_big=too_big, too_slow=too_slow,
                                sink=sink, cut=cut)
        except u3.HTTPError as err:
            raise self._translate(err, what, budget, prompt_id, answering=True) from err

    def _translate(self, err: u3.HTTPError, what: str, budget: float, prompt_id: str | None, *,
                   answering: bool) -> ServerUnavailable:
        """The project's error for a urllib3 failure; ``answering``: the head had arrived."""
        where = f"server '{self.name}': {what}"
        if isinstance(err, (u3.NewConnectionError, u3.ProxyError)):   # a NewConnectionError is a ConnectTimeoutError
            return ServerUnavailable(f"{where} failed: {_reason(err)}", server=self.name, prompt_id=prompt_id)
        if isinstance(err, u3.ConnectTimeoutError):
            return ServerTimeout(f"{where} could not connect within {self.timeouts.connect:g} s",
                                 server=self.name, prompt_id=prompt_id)
        if isinstance(err, u3.ReadTimeoutError):
            return ServerTimeout(f"{where} timed out after {budget:g} s" + _ARRIVING * answering,
                                 server=self.name, prompt_id=prompt_id)
        inner = err.args[1] if isinstance(err, u3.ProtocolError) and len(err.args) > 1 else None
        not_http = isinstance(inner, (http.client.BadStatusLine, http.client.LineTooLong)) and not isinstance(
            inner, http.client.RemoteDisconnected)
        if not_http or (answering and isinstance(err, (u3.ProtocolError, u3.DecodeError))):
            return ProtocolError(f"{where}: the answer broke off or could not be decoded",
                                 server=self.name, prompt_id=prompt_id)
        return ServerUnavailable(f"{where} failed: {_reason(err)}", server=self.name, prompt_id=prompt_id)


__all__ = ["DOWNLOAD_CAP", "ERROR_BODY_CAP", "JSON_CAP", "OBJECT_INFO_CAP", "POOL_SIZE", "Timeouts", "Transport"]
