# -*- test-case-name: tests.test_token -*-
"""
The relay's HTTP API:

  - C{POST /v1/connectors/{id}/ssh-certificate}: token in, certificate out;
  - C{GET /v1/connectors}: every connector with its live status;
  - C{POST /v1/connectors/{id}/test}: dial a destination through the tunnel
    and say which of proxy unreachable / not allowed / refused / ok it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from .ca import CertificateAuthority
from .registry import Registry
from .ssh import Forwards

__all__ = ["makeAPI"]

_log = Logger()


def _json(request: IRequest, status: int, document: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode() + b"\n"


class _SOCKSProbe(protocol.Protocol):
    """
    A SOCKS5 client that asks for one CONNECT and reports the reply code
    (or L{None} if the connection closed without one).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.buffer = b""
        self.result: defer.Deferred[int | None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        name = self.host.encode("idna")
        request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + self.port.to_bytes(2, "big")
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


class _Connectors(resource.Resource):
    def __init__(self, api: RelayAPI) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: IRequest) -> bytes:
        return _json(request, 200, {"connectors": [c.asJSON() for c in self.api.registry.list()]})

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        return _Connector(self.api, path.decode("utf-8", "replace"))


class _Connector(resource.Resource):
    def __init__(self, api: RelayAPI, connectorId: str) -> None:
        super().__init__()
        self.api = api
        self.connectorId = connectorId

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        if path == b"ssh-certificate":
            return _Certificate(self.api, self.connectorId)
        if path == b"test":
            return _Test(self.api, self.connectorId)
        return resource.NoResource()


def _body(request: IRequest) -> dict[str, Any] | None:
    try:
        document = json.loads(request.content.read())
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


class _ConnectorAction(resource.Resource):
    """
    A leaf under one connector: C{api} and C{connectorId} are what it acts on.
    """

    isLeaf = True

    def __init__(self, api: RelayAPI, connectorId: str) -> None:
        super().__init__()
        self.api = api
        self.connectorId = connectorId


class _Certificate(_ConnectorAction):
    def render_POST(self, request: IRequest) -> bytes:
        api = self.api
        if not api.registry.exists(self.connectorId):
            return _json(request, 404, {"error": "unknown connector"})
        authorization = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not api.registry.checkToken(self.connectorId, token.strip()):
            _log.warn("certificate request for {id}: bad token", id=self.connectorId)
            return _json(request, 401, {"error": "invalid token"})
        document = _body(request)
        if document is None or not isinstance(document.get("public_key"), str):
            return _json(request, 400, {"error": 'expected {"public_key": "ssh-ed25519 ..."}'})
        try:
            certificate, validBefore = api.ca.sign(document["public_key"], self.connectorId)
        except ValueError as e:
            return _json(request, 400, {"error": str(e)})
        _log.info("issued a certificate to {id}", id=self.connectorId)
        return _json(
            request,
            200,
            {
                "certificate": certificate,
                "known_hosts": api.knownHosts(),
                "relay_user": self.connectorId,
                "valid_before": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(validBefore)),
            },
        )


class _Test(_ConnectorAction):
    def render_POST(self, request: IRequest) -> bytes | int:
        document = _body(request)
        destination = document.get("destination") if document else None
        host, _, portText = str(destination or "").rpartition(":")
        if not host or not portText.isdigit():
            return _json(request, 400, {"error": 'expected {"destination": "host:port"}'})

        async def probe() -> None:
            outcome = await self.api.probe(self.connectorId, host.strip("[]"), int(portText))
            request.write(_json(request, 200, {"destination": destination, "result": outcome}))
            request.finish()

        defer.ensureDeferred(probe())
        return server.NOT_DONE_YET


class RelayAPI:
    """
    What the API resources share.

    @ivar knownHosts: returns the known_hosts text connectors should pin.
    """

    def __init__(
        self,
        reactor: Any,
        registry: Registry,
        ca: CertificateAuthority,
        forwards: Forwards,
        knownHosts: Callable[[], str],
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.ca = ca
        self.forwards = forwards
        self.knownHosts = knownHosts

    async def probe(self, connectorId: str, host: str, port: int) -> str:
        """
        Dial C{host}:C{port} through C{connectorId}'s tunnel.
        """
        forwardPort = self.forwards.portFor(connectorId)
        if forwardPort is None:
            return "proxy_unreachable"
        endpoint = TCP4ClientEndpoint(self.reactor, self.forwards.listenHost, forwardPort, timeout=10)
        try:
            client = cast(
                _SOCKSProbe, await endpoint.connect(protocol.Factory.forProtocol(lambda: _SOCKSProbe(host, port)))
            )
            code = await client.result.addTimeout(30, self.reactor)
        except Exception:
            return "proxy_unreachable"
        if code is None:
            return "proxy_unreachable"
        return _OUTCOMES.get(code, "host_unreachable")


def makeAPI(api: RelayAPI) -> server.Site:
    root = resource.Resource()
    v1 = resource.Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"connectors", _Connectors(api))
    site = server.Site(root)
    site.noisy = False
    return site
