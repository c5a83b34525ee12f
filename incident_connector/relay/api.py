# -*- test-case-name: tests.integration.test_relay_admin -*-
"""
The API connectors reach (C{--api-listen}): one endpoint,
C{POST /v1/connectors/{id}/ssh-certificate}, token in, certificate out.
Everything else answers 404 here; administration is on its own listener
(L{admin}).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from .ca import CertificateAuthority
from .registry import Registry

__all__ = ["BODY_LIMIT", "SmallBodyRequest", "jsonResponse", "makeConnectorAPI", "readJSON"]

_log = Logger()

BODY_LIMIT = 16 * 1024
"""
The largest request body read (a public key and a little JSON need under 1 KiB).
"""


class SmallBodyRequest(server.Request):
    """
    A request whose body is kept in memory and limited to L{BODY_LIMIT}:
    twisted.web would spool a larger one to a temporary file, so anyone who
    reaches the port could fill the disk.  A larger body ends the connection.
    """

    _bodySize = 0

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > BODY_LIMIT:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        self._bodySize += len(data)
        if self._bodySize > BODY_LIMIT:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        if self.channel is not None and not self.channel.transport.disconnecting:  # type: ignore[union-attr]
            _log.info(
                "closed a connection from {peer}: request body over {limit} bytes",
                peer=self.getClientAddress(),
                limit=BODY_LIMIT,
            )
            self.channel.transport.loseConnection()  # type: ignore[union-attr]


def jsonResponse(request: IRequest, status: int, document: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode() + b"\n"


def readJSON(request: IRequest) -> dict[str, Any] | None:
    """
    The request body as a JSON object, or L{None} if it is not one.
    """
    try:
        document = json.loads(request.content.read())
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


class _Connectors(resource.Resource):
    """
    C{/v1/connectors}: nothing of its own; C{{id}/ssh-certificate} below it.
    """

    def __init__(self, registry: Registry, ca: CertificateAuthority, knownHosts: Callable[[], str]) -> None:
        super().__init__()
        self.registry = registry
        self.ca = ca
        self.knownHosts = knownHosts

    def render(self, request: IRequest) -> bytes:
        return jsonResponse(request, 404, {"error": "not found"})

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        return _Connector(self, path.decode("utf-8", "replace"))


class _Connector(resource.Resource):
    def __init__(self, connectors: _Connectors, connectorId: str) -> None:
        super().__init__()
        self.connectors = connectors
        self.connectorId = connectorId

    def render(self, request: IRequest) -> bytes:
        return jsonResponse(request, 404, {"error": "not found"})

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        if path == b"ssh-certificate" and not request.postpath:
            return _Certificate(self.connectors, self.connectorId)
        return self


class _Certificate(resource.Resource):
    isLeaf = True

    def __init__(self, connectors: _Connectors, connectorId: str) -> None:
        super().__init__()
        self.connectors = connectors
        self.connectorId = connectorId

    def render_POST(self, request: IRequest) -> bytes:
        registry = self.connectors.registry
        if not registry.exists(self.connectorId):
            return jsonResponse(request, 404, {"error": "unknown connector"})
        authorization = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        generation = registry.authenticate(self.connectorId, token.strip()) if scheme.lower() == "bearer" else None
        if generation is None:
            _log.warn("certificate request for {id}: bad token", id=self.connectorId)
            return jsonResponse(request, 401, {"error": "invalid token"})
        document = readJSON(request)
        if document is None or not isinstance(document.get("public_key"), str):
            return jsonResponse(request, 400, {"error": 'expected {"public_key": "ssh-ed25519 ..."}'})
        try:
            certificate, validBefore = self.connectors.ca.sign(document["public_key"], self.connectorId, generation)
        except ValueError as e:
            return jsonResponse(request, 400, {"error": str(e)})
        _log.info("issued a certificate to {id}", id=self.connectorId)
        return jsonResponse(
            request,
            200,
            {
                "certificate": certificate,
                "known_hosts": self.connectors.knownHosts(),
                "relay_user": self.connectorId,
                "valid_before": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(validBefore)),
            },
        )


def makeConnectorAPI(registry: Registry, ca: CertificateAuthority, knownHosts: Callable[[], str]) -> server.Site:
    """
    The site for C{--api-listen}.

    @param knownHosts: returns the known_hosts text connectors should pin.
    """
    root = resource.Resource()
    v1 = resource.Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"connectors", _Connectors(registry, ca, knownHosts))
    site = server.Site(root, requestFactory=SmallBodyRequest)
    site.noisy = False
    return site
