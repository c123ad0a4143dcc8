"""``comfy-cluster config add|remove|set|enable|disable|export|import|backup|restore``.

Registered under the ``config`` group of ``cli.py``; every command edits the servers file
through ``config_edit.ServersFile`` (validated, atomic, backed up)::

    comfy-cluster config add gpu-05 --ip 10.0.0.15 --port 8188 --priority 3
    comfy-cluster config set gpu-05 priority=2 max_queue=3
    comfy-cluster config disable gpu-05
    comfy-cluster config export backup.json
    comfy-cluster config restore            # the newest backup
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from .config_edit import ServersFile, parse_value, servers_file
from .errors import ConfigError


def _file(args: argparse.Namespace) -> ServersFile:
    return ServersFile(servers_file(args.servers, os.environ), environ=os.environ)


def _done(change: Any, out: TextIO) -> int:
    out.write(f"{change.message}\n")
    if change.backup is not None:
        out.write(f"previous version saved as {change.backup}\n")
    return 0


def cmd_add(args: argparse.Namespace, out: TextIO) -> int:
    fields = {"ip": args.ip, "port": args.port, "priority": args.priority, "dir_local": args.dir_local,
              "dir_remote": args.dir_remote, "transfer": args.transfer, "max_queue": args.max_queue}
    if args.disabled:
        fields["enabled"] = False
    return _done(_file(args).add(args.name, **fields), out)


def cmd_remove(args: argparse.Namespace, out: TextIO) -> int:
    return _done(_file(args).remove(args.name), out)


def cmd_set(args: argparse.Namespace, out: TextIO) -> int:
    values: dict[str, Any] = {}
    for item in args.assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config set: {item!r} is not FIELD=VALUE (e.g. priority=2)")
        values[key.strip()] = None if text == "" else parse_value(text)
    return _done(_file(args).set(args.name, values), out)


def cmd_enable(args: argparse.Namespace, out: TextIO) -> int:
    return _done(_file(args).enable(args.name, args.on), out)


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    servers = _file(args)
    if args.dest in (None, "-"):
        out.write(servers.export_text())
    else:
        out.write(f"exported {servers.path} to {servers.export_to(args.dest)}\n")
    return 0


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    return _done(_file(args).import_from(args.source, merge=args.merge), out)


def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    servers = _file(args)
    if args.list:
        for path in servers.backups():
            out.write(f"{path}\n")
        return 0
    out.write(f"backed up {servers.path} as {servers.backup()}\n")
    return 0


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    return _done(_file(args).restore(args.backup), out)


def register(group: argparse._SubParsersAction) -> None:
    """Add the editing commands to the ``config`` group."""
    p = group.add_parser("add", help="add a server to the servers file")
    p.add_argument("name")
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--priority", type=int, default=None, help="lower is preferred (default 1)")
    p.add_argument("--dir-local", default=None)
    p.add_argument("--dir-remote", default=None)
    p.add_argument("--transfer", choices=("upload", "shared"), default=None)
    p.add_argument("--max-queue", type=int, default=None)
    p.add_argument("--disabled", action="store_true", help="add it switched off")
    p.set_defaults(func=cmd_add)

    p = group.add_parser("remove", help="remove a server")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = group.add_parser("set", help="set fields of a server: priority=2 port=8189 (FIELD= removes it)")
    p.add_argument("name")
    p.add_argument("assignments", nargs="+", metavar="FIELD=VALUE")
    p.set_defaults(func=cmd_set)

    for action, on in (("enable", True), ("disable", False)):
        p = group.add_parser(action, help=f"{action} a server")
        p.add_argument("name")
        p.set_defaults(func=cmd_enable, on=on)

    p = group.add_parser("export", help="write the servers file to FILE (or stdout)")
    p.add_argument("dest", nargs="?", default=None, metavar="FILE")
    p.set_defaults(func=cmd_export)

    p = group.add_parser("import", help="take the servers of FILE (replacing them, or --merge by name)")
    p.add_argument("source", metavar="FILE")
    p.add_argument("--merge", action="store_true")
    p.set_defaults(func=cmd_import)

    p = group.add_parser("backup", help="back up the servers file now (--list: show the backups)")
    p.add_argument("--list", action="store_true")
    p.set_defaults(func=cmd_backup)

    p = group.add_parser("restore", help="put a backup back (default: the newest)")
    p.add_argument("backup", nargs="?", default=None)
    p.set_defaults(func=cmd_restore)


__all__ = ["register"]
