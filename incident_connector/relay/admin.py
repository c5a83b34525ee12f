# -*- test-case-name: tests.integration.test_relay_admin -*-
"""
The administrative API, on its own listener (C{--admin-listen}): by default a
Unix socket in the data directory, which only the relay's user (and root)
can reach; otherwise a loopback TCP port.  It has no credential of its own,
so L{checkAdminEndpoint} refuses anything else.

  - C{GET /v1/connectors}: every connector, its status and each of its
    connections (peer, state, age, streams);
  - C{POST /v1/connectors/{id}/test} with C{{"destination": "host:port"}}: dial
    a destination through the connector's tunnel and say which of
    C{proxy_unreachable} / C{destination_not_allowed} / C{connection_refused} /
    C{host_unreachable} / C{ok} it was.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, cast

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from .api import SmallBodyRequest, jsonResponse, readJSON
from .forwards import Forwards
from .registry import Registry

__all__ = ["AdminAPI", "checkAdminEndpoint", "makeAdminAPI"]


def checkAdminEndpoint(description: str) -> None:
    """
    Allow only a Unix socket or a TCP port on a loopback interface.

    @raise ValueError: saying why not.
    """
    fields = re.split(r"(?<!\\):", description)
    kind = fields[0].lower()
    if kind == "unix":
        return
    if kind in ("tcp", "tcp6", "ssl"):
        options = dict(field.split("=", 1) for field in fields[2:] if "=" in field)
        interface = options.get("interface", "").replace("\\:", ":")
        try:
            loopback = ipaddress.ip_address(interface).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return
    raise ValueError(
        f"{description!r}: the admin API has no credential of its own; "
        "listen on unix:PATH or on a loopback interface (tcp:PORT:interface=127.0.0.1)"
    )


class _SOCKSProbe(protocol.Protocol):
    """
    A SOCKS5 client that asks for one CONNECT and reports the reply code
    (or L{None} if the connection closed without one).
    """

    def __init__(self, name: bytes, port: int) -> None:
        self.name = name
        self.port = port
        self.buffer = b""
        self.result: defer.Deferred[int | None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        request = b"\x05\x01\x00\x03" + bytes([len(self.name)]) + self.name + self.port.to_bytes(2, "big")
        self.transport.write(b"\x05\x01\x00" + request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 4 and not self.result.called:
            self.result.callback(self.buffer[3])
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.result.called:
            self.result.callback(None)


_OUTCOMES = {
    0x00: "ok",
    0x02: "destination_not_allowed",
    0x05: "connection_refused",
    0x04: "host_unreachable",
    0x03: "host_unreachable",
}


class AdminAPI:
    """
    What the admin resources share.
    """

    def __init__(self, reactor: Any, registry: Registry, forwards: Forwards) -> None:
        self.reactor = reactor
        self.registry = registry
        self.forwards = forwards

    def connectors(self) -> list[dict[str, object]]:
        """
        Every registered connector with its live connections.
        """
        now = self.reactor.seconds()
        listing: list[dict[str, object]] = []
        for c in self.registry.list():
            sessions = self.forwards.sessionsOf(c.id)
            port = self.forwards.portFor(c.id)
            status = "revoked" if c.revoked else "online" if port is not None else "offline"
            listing.append(
                {
                    "id": c.id,
                    "name": c.name,
                    "description": c.description,
                    "status": status,
                    "allocated_port": port,
                    "connections": [s.asJSON(now) for s in sessions],
                    "created": c.created,
                    "last_seen": c.lastSeen,
                }
            )
        return listing

    async def probe(self, connectorId: str, name: bytes, port: int) -> str:
        """
        Dial C{name}:C{port} through C{connectorId}'s tunnel.
        """
        forwardPort = self.forwards.portFor(connectorId)
        if forwardPort is None:
            return "proxy_unreachable"
        endpoint = TCP4ClientEndpoint(self.reactor, self.forwards.listenHost, forwardPort, timeout=10)
        try:
            client = cast(
                _SOCKSProbe, await endpoint.connect(protocol.Factory.forProtocol(lambda: _SOCKSProbe(name, port)))
            )
            code = await client.result.addTimeout(30, self.reactor)
        except Exception:
            return "proxy_unreachable"
        if code is None:
            return "proxy_unreachable"
        return _OUTCOMES.get(code, "host_unreachable")


class _Connectors(resource.Resource):
    def __init__(self, api: AdminAPI) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: IRequest) -> bytes:
        return jsonResponse(request, 200, {"connectors": self.api.connectors()})

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        connectorId = path.decode("utf-8", "replace")
        if request.postpath == [b"test"]:
            return _Test(self.api, connectorId)
        return resource.NoResource()


class _Test(resource.Resource):
    isLeaf = True

    def __init__(self, api: AdminAPI, connectorId: str) -> None:
        super().__init__()
        self.api = api
        self.connectorId = connectorId

    def render_POST(self, request: IRequest) -> bytes | int:
        if not self.api.registry.exists(self.connectorId):
            return jsonResponse(request, 404, {"error": "unknown connector"})
        document = readJSON(request)
        destination = document.get("destination") if document else None
        host, _, portText = str(destination or "").rpartition(":")
        try:
            name = host.strip("[]").encode("idna")
        except UnicodeError:
            name = b""
        if not name or len(name) > 255 or not portText.isdigit() or not 0 < int(portText) < 65536:
            return jsonResponse(request, 400, {"error": 'expected {"destination": "host:port"}'})

        async def probe() -> None:
            outcome = await self.api.probe(self.connectorId, name, int(portText))
            request.write(jsonResponse(request, 200, {"destination": destination, "result": outcome}))
            request.finish()

        defer.ensureDeferred(probe())
        return server.NOT_DONE_YET


def makeAdminAPI(api: AdminAPI) -> server.Site:
    """
    The site for C{--admin-listen}.
    """
    root = resource.Resource()
    v1 = resource.Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"connectors", _Connectors(api))
    site = server.Site(root, requestFactory=SmallBodyRequest)
    site.noisy = False
    return site
