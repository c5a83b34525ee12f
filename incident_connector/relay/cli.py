# -*- test-case-name: tests.integration.test_relay_admin -*-
"""
C{incident-relay}: managing the reference relay.

C{add}, C{regenerate-token} and C{revoke} change the registry (the SQLite file
in the data directory); the running relay notices a regenerated or revoked
token within a second and ends that connector's connections.  C{list} and
C{test} ask the running relay, over its admin socket
(C{DATA-DIR/admin.sock} unless C{--admin-socket} says otherwise).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from .registry import Registry

__all__ = ["AdminUnreachable", "adminRequest", "main"]


class AdminUnreachable(Exception):
    """
    The relay does not answer on its admin socket.
    """


class _UnixHTTPConnection(http.client.HTTPConnection):
    """
    HTTP over the relay's admin Unix socket.
    """

    def __init__(self, socketPath: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socketPath = socketPath

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socketPath)


def adminRequest(socketPath: str, method: str, path: str, body: object = None, timeout: float = 60) -> Any:
    """
    One request to the admin API; the decoded JSON answer.

    @raise AdminUnreachable: nothing answers on C{socketPath}.
    """
    connection = _UnixHTTPConnection(socketPath, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except OSError as e:
        raise AdminUnreachable(f"the relay does not answer on {socketPath}: {e.strerror or e}") from None
    finally:
        connection.close()
    try:
        return json.loads(body)
    except ValueError:
        return {"error": f"the relay answered {response.status} {response.reason}"}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _printListing(connectors: list[dict[str, Any]], out: TextIO) -> None:
    for c in connectors:
        port = c["allocated_port"] if c["allocated_port"] is not None else "-"
        connections = c["connections"]
        count = len(connections) if isinstance(connections, list) else "?"
        out.write(f"{c['id']}  {c['name']:20}  {c['status']:7}  connections={count}  port={port}\n")
        for conn in connections if isinstance(connections, list) else []:
            age = _age(conn["age_seconds"])
            out.write(f"    {conn['peer']:21}  {conn['state']:10}  age={age:5}  streams={conn['streams']}\n")


def _registryListing(registry: Registry) -> list[dict[str, Any]]:
    """
    What the registry alone knows, for when the relay does not answer.
    """
    return [
        {
            "id": c.id,
            "name": c.name,
            "description": c.description,
            "status": "revoked" if c.revoked else "unknown",
            "allocated_port": None,
            "connections": None,
            "created": c.created,
            "last_seen": c.lastSeen,
        }
        for c in registry.list()
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incident-relay", description="Manage the reference relay's connectors.")
    parser.add_argument("--data-dir", default="relay-data", help="the relay's --data-dir")
    parser.add_argument("--admin-socket", help="the relay's admin socket (default: DATA-DIR/admin.sock)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="register a connector; prints its ID and token (shown once)")
    add.add_argument("name")
    add.add_argument("--description", default="")
    add.add_argument("--json", action="store_true", help='print {"connector_id": ..., "api_token": ...}')
    regenerate = commands.add_parser(
        "regenerate-token",
        help="new token; the old one and every certificate issued with it stop working, live connections end",
    )
    regenerate.add_argument("id")
    regenerate.add_argument("--json", action="store_true")
    revoke = commands.add_parser(
        "revoke", help="like regenerate-token, but issues no new token: the connector is locked out until then"
    )
    revoke.add_argument("id")
    listing = commands.add_parser("list", help="connectors, status, port, and each connection's age and streams")
    listing.add_argument("--json", action="store_true")
    test = commands.add_parser("test", help="dial HOST:PORT through a connector's tunnel and say what happened")
    test.add_argument("id")
    test.add_argument("destination", metavar="HOST:PORT")
    test.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    socketPath = args.admin_socket or str(Path(args.data_dir) / "admin.sock")

    def error(message: str) -> int:
        sys.stderr.write(f"incident-relay: error: {message}\n")
        return 1

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
                return error(f"unknown connector ID {args.id}")
            out.write(
                json.dumps({"connector_id": args.id, "api_token": newToken}) + "\n" if args.json else f"{newToken}\n"
            )
        elif args.command == "revoke":
            if not registry.revoke(args.id):
                return error(f"unknown connector ID {args.id}")
            out.write(f"{args.id} revoked: its connections end within seconds; regenerate-token issues a new token\n")
        elif args.command == "list":
            try:
                answer = adminRequest(socketPath, "GET", "/v1/connectors")
                if "connectors" not in answer:
                    return error(str(answer.get("error", answer)))
                connectors = answer["connectors"]
            except AdminUnreachable as e:
                sys.stderr.write(f"incident-relay: {e}; live status unknown\n")
                connectors = _registryListing(registry)
            if args.json:
                out.write(json.dumps(connectors) + "\n")
            else:
                _printListing(connectors, out)
        else:
            try:
                answer = adminRequest(
                    socketPath,
                    "POST",
                    f"/v1/connectors/{quote(args.id, safe='')}/test",
                    {"destination": args.destination},
                )
            except AdminUnreachable as e:
                return error(str(e))
            if "result" not in answer:
                return error(str(answer.get("error", answer)))
            out.write(json.dumps(answer) + "\n" if args.json else f"{answer['result']}\n")
    finally:
        registry.close()
    return 0


def run() -> None:
    raise SystemExit(main())
