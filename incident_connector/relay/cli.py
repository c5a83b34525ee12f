# -*- test-case-name: tests.test_token -*-
"""
C{incident-relay --data-dir DIR add NAME | regenerate-token ID | list}:
managing the reference relay's connector registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from .registry import Registry

__all__ = ["main"]


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="incident-relay", description="Manage the reference relay's connectors.")
    parser.add_argument("--data-dir", default="relay-data", help="the relay's --data-dir")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="register a connector; prints its ID and token (shown once)")
    add.add_argument("name")
    add.add_argument("--description", default="")
    add.add_argument("--json", action="store_true", help='print {"connector_id": ..., "api_token": ...}')
    regenerate = commands.add_parser("regenerate-token", help="new token; the old one stops working at once")
    regenerate.add_argument("id")
    regenerate.add_argument("--json", action="store_true")
    listing = commands.add_parser("list", help="connectors with online/offline, connections, allocated port")
    listing.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    registry = Registry(Path(args.data_dir) / "registry.sqlite3")
    try:
        if args.command == "add":
            connectorId, token = registry.add(args.name, args.description)
            if args.json:
                out.write(json.dumps({"connector_id": connectorId, "api_token": token}) + "\n")
            else:
                out.write(f"connector ID: {connectorId}\nAPI token:    {token}\n(the token is shown only now)\n")
        elif args.command == "regenerate-token":
            newToken = registry.regenerateToken(args.id)
            if newToken is None:
                sys.stderr.write(f"incident-relay: error: unknown connector ID {args.id}\n")
                return 1
            out.write(
                json.dumps({"connector_id": args.id, "api_token": newToken}) + "\n" if args.json else f"{newToken}\n"
            )
        else:
            connectors = registry.list()
            if args.json:
                out.write(json.dumps([c.asJSON() for c in connectors]) + "\n")
            for c in [] if args.json else connectors:
                port = c.allocatedPort if c.allocatedPort is not None else "-"
                status = "online" if c.online else "offline"
                out.write(f"{c.id}  {c.name:20}  {status:7}  connections={c.connections}  port={port}\n")
    finally:
        registry.close()
    return 0


def run() -> None:
    raise SystemExit(main())
