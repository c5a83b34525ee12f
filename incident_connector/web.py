# -*- test-case-name: tests.test_e2e -*-
"""
The HTTP side: C{/metrics} (prometheus_client's own Twisted resource),
C{/healthz} (the process answers) and C{/readyz} (a forward is granted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from prometheus_client.twisted import MetricsResource
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from .metrics import ConnectorMetrics
from .tunnel.service import RelayService

__all__ = ["makeSite"]


class HealthResource(resource.Resource):
    """
    A small JSON status document.

    @ivar relays: the relay connections to report on.
    @ivar requireForward: answer 503 unless at least one forward is granted.
    """

    isLeaf = True

    def __init__(self, relays: Sequence[RelayService], requireForward: bool) -> None:
        super().__init__()
        self.relays = relays
        self.requireForward = requireForward

    def render_GET(self, request: IRequest) -> bytes:
        ports = [relay.allocatedPort for relay in self.relays if relay.allocatedPort is not None]
        errors = [relay.lastError for relay in self.relays if relay.lastError]
        ready = bool(ports)
        ok = ready or not self.requireForward
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        body = {
            "status": "ok" if ok else "unavailable",
            "relay": self.relays[0].relayName if self.relays else None,
            "connections_up": len(ports),
            "allocated_ports": ports,
            "streams_active": sum(relay.streamsActive for relay in self.relays),
            "last_error": errors[-1] if errors else None,
        }
        return json.dumps(body).encode() + b"\n"


def makeSite(metrics: ConnectorMetrics, relays: Sequence[RelayService]) -> server.Site:
    """
    The site served on C{--metrics-listen}.
    """
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"healthz", HealthResource(relays, requireForward=False))
    root.putChild(b"readyz", HealthResource(relays, requireForward=True))
    site = _QuietSite(root)
    site.noisy = False
    return site


class _QuietSite(server.Site):
    """
    No access log: probes scrape every few seconds and would drown the tunnel's own lines.
    """

    def log(self, request: object) -> None:
        pass
