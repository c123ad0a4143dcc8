"""``comfy-cluster tunnel start|stop|status [SERVER]``: the SSH tunnels of the configured servers.

``start`` opens (or finds) each tunnel and pins it, so it stays up after the command exits
and every process on the machine uses it; ``stop`` ends it whoever uses it (they re-make it
when they need it); ``status`` shows each tunnel and checks ComfyUI through it
(``GET /system_stats``). Without SERVER, every server with an ``ssh`` block.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, TextIO

from .cli_common import EXIT_FAILED, EXIT_OK, Parser, UsageError, cluster_config, table
from .errors import ComfyClusterError, ConfigError, TunnelError

#: The health check through a tunnel: a short connect, a short read.
HEALTH_CONNECT_S = 3.0
HEALTH_READ_S = 10.0


def _servers(args: argparse.Namespace) -> list[Any]:

    cfg = cluster_config(args)
    if args.server:
        named = [s for s in cfg.servers if s.name == args.server]
        if not named:
            raise UsageError(f"no server named {args.server!r}; servers: {', '.join(s.name for s in cfg.servers)}")
        if named[0].ssh is None:
            raise ConfigError(f"server {args.server!r} is not reached through SSH (it has no \"ssh\" block)",
                              server=args.server)
        return named
    tunnelled = [s for s in cfg.servers if s.ssh is not None]
    if not tunnelled:
        raise ConfigError(f"{cfg.source}: no server has an \"ssh\" block")
    return tunnelled


def health(server_cfg: Any, tunnel: Any) -> tuple[bool, str]:
    """``GET /system_stats`` through the tunnel: (ok, what to show)."""
    from .client import ComfyClient
    from .transport import Timeouts

    client = ComfyClient.from_config(tunnel.client_config(server_cfg), os.environ,
                                     timeouts=Timeouts(connect=HEALTH_CONNECT_S, read=HEALTH_READ_S,
                                                       transfer=HEALTH_READ_S))
    started = time.monotonic()
    try:
        stats = client.get_system_stats()
    except ComfyClusterError as err:
        return False, f"ComfyUI does not answer through the tunnel: {err}"
    finally:
        client.close()
    return True, f"ComfyUI {stats.comfyui_version or '?'} answers ({(time.monotonic() - started) * 1e3:.0f} ms)"


_HEADERS = ["SERVER", "SSH", "LOCAL", "PID", "TUNNEL", "DETAIL"]


def cmd_tunnel_start(args: argparse.Namespace, out: TextIO) -> int:
    from .tunnel import LOCAL_HOST, Tunnel

    rows, failed = [], 0
    for cfg in _servers(args):
        tunnel = Tunnel.for_server(cfg, environ=os.environ)
        try:
            port = tunnel.ensure()
            tunnel.pin()
            ok, detail = health(cfg, tunnel)
            status = tunnel.status()
            note = f"; {status.note}" if status.note else ""
            rows.append([cfg.name, cfg.ssh.label, f"{LOCAL_HOST}:{port}", str(status.pid), "up", detail + note])
        except TunnelError as err:
            ok = False
            rows.append([cfg.name, cfg.ssh.label, "-", "-", "failed", str(err)])
        finally:
            tunnel.release()   # pinned: it stays up
        failed += not ok
    out.write(table(rows, _HEADERS) + "\n")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_tunnel_stop(args: argparse.Namespace, out: TextIO) -> int:
    from .tunnel import LOCAL_HOST, Tunnel

    rows = []
    for cfg in _servers(args):
        record = Tunnel.for_server(cfg, environ=os.environ).stop()
        if record is None:
            rows.append([cfg.name, cfg.ssh.label, "-", "-", "stopped", "was not running"])
        else:
            users = f" ({len(record.users)} user(s) will re-open it when they need it)" if record.users else ""
            rows.append([cfg.name, cfg.ssh.label, f"{LOCAL_HOST}:{record.local_port}", str(record.pid), "stopped",
                         "ssh ended" + users])
    out.write(table(rows, _HEADERS) + "\n")
    return EXIT_OK


def cmd_tunnel_status(args: argparse.Namespace, out: TextIO) -> int:
    from .tunnel import LOCAL_HOST, Tunnel

    rows, failed = [], 0
    for cfg in _servers(args):
        tunnel = Tunnel.for_server(cfg, environ=os.environ)
        record = tunnel.shared_record()
        if record is None:
            failed += 1
            rows.append([cfg.name, cfg.ssh.label, "-", "-", "down", "no tunnel (comfy-cluster tunnel start opens one)"])
            continue
        ok, detail = health(cfg, tunnel)
        failed += not ok
        users = f"{len(record.users)} user(s)" + (", pinned" if record.pinned else "")
        rows.append([cfg.name, cfg.ssh.label, f"{LOCAL_HOST}:{record.local_port}", str(record.pid), "up",
                     f"{detail}; {users}"])
    out.write(table(rows, _HEADERS) + "\n")
    return EXIT_FAILED if failed else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tunnel start|stop|status [SERVER]`` to the ``comfy-cluster`` parser."""

    p = sub.add_parser("tunnel", help="SSH tunnels of servers reached through ssh: start, stop, status")
    group = p.add_subparsers(dest="tunnel_command", metavar="ACTION", required=True, parser_class=Parser)
    for action, func, text in (("start", cmd_tunnel_start, "open (or reuse) the tunnels and keep them up"),
                               ("stop", cmd_tunnel_stop, "end the tunnels, whoever uses them"),
                               ("status", cmd_tunnel_status, "each tunnel, and ComfyUI's answer through it")):
        action_parser = group.add_parser(action, help=text)
        action_parser.add_argument("server", nargs="?", metavar="SERVER", help="one server (default: all tunnelled)")
        action_parser.set_defaults(func=func)
